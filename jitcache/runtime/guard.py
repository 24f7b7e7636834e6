"""The miss guard's truth: which buckets the serving DeepEP will find, for the variant each call asks for.

A dispatch asks DeepEP for kernels whose template arguments come from the
call (fp8 or bf16 ``x``, ``expert_alignment``, ``do_cpu_sync``, ``num_sms``,
``num_experts``), the buffer (its settings, the GPU it runs on) and the
bucket. :class:`NameGuard` renders those kernels for every bucket of the
policy, names them as the serving DeepEP does (the buffer's own package,
NCCL root and nvcc: :func:`jitcache.adapters.serving.locate_serving`) and
looks the names up in DeepEP's cache roots: once per distinct call
signature, so the hot path is one dictionary lookup. DeepEP's defaults are
applied as DeepEP applies them (``expert_alignment=None`` -> 1,
``do_cpu_sync=None`` -> True).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from jitcache.adapters.serving import ServingDeepEP, is_committed, locate_serving, planned_entries
from jitcache.planning.profiles import Profile

__all__ = ["NameGuard", "Signature"]

log = logging.getLogger("jitcache.deepep")

#: ``(fp8, expert_alignment, do_cpu_sync, num_sms, num_experts)`` of one dispatch, DeepEP's defaults applied.
Signature = tuple


class NameGuard:
    """Warm buckets per call signature, by the entry names the serving DeepEP looks up in ``roots``."""

    def __init__(self, buffer: Any, profile: Profile, roots: Any, *, serving: ServingDeepEP | None = None) -> None:
        from jitcache.warm.prepass import buffer_headers, live_target_facts, with_live_target

        if serving is None:
            package_dir, _ = buffer_headers(buffer)
            serving = locate_serving(package_dir)
        self.serving = serving
        self.buffer = buffer
        self.roots = tuple(roots)
        profile, _ = with_live_target(profile, live_target_facts(buffer))
        amr = getattr(buffer, "allow_multiple_reduction", None)
        if isinstance(amr, bool):  # the buffer's own setting wins over the profile's assumption
            profile = replace(profile, deep_ep=replace(profile.deep_ep, allow_multiple_reduction=amr))
        self.profile = profile

    def profile_signature(self) -> Signature:
        p = self.profile
        return (p.model.dispatch_dtype == "fp8", p.deep_ep.expert_alignment, False, p.deep_ep.num_sms,
                p.model.num_experts)

    @staticmethod
    def signature(x: Any, expert_alignment: Any, do_cpu_sync: Any, num_sms: Any, num_experts: Any) -> Signature:
        return (isinstance(x, tuple), 1 if expert_alignment is None else int(expert_alignment),
                True if do_cpu_sync is None else bool(do_cpu_sync), int(num_sms or 0),
                None if num_experts is None else int(num_experts))

    def profile_for(self, signature: Signature) -> Profile:
        """The profile whose decode plan is what a call of ``signature`` asks DeepEP for."""
        from jitcache.warm.prepass import with_live_num_sms

        fp8, alignment, _, num_sms, num_experts = signature
        p = self.profile
        model = replace(p.model, dispatch_dtype="fp8" if fp8 else "bf16",
                        num_experts=num_experts or p.model.num_experts)
        deep_ep = replace(p.deep_ep, expert_alignment=alignment, num_sms=num_sms or p.deep_ep.num_sms)
        profile = replace(p, model=model, deep_ep=deep_ep)
        if not profile.deep_ep.num_sms:
            profile, _ = with_live_num_sms(profile, self.buffer)
        return profile

    def warm_buckets(self, signature: Signature) -> set[int]:
        """Buckets whose four kernels, as a call of ``signature`` asks for them, are all in the cache by name."""
        from jitcache.planning.variants import plan

        the_plan = plan(self.profile_for(signature), ["decode"])
        cpu_sync = signature[2]
        variants = tuple(replace(v, params=tuple((k, cpu_sync if k == "do_cpu_sync" else val) for k, val in v.params))
                         for v in the_plan.variants)
        entries = planned_entries(replace(the_plan, variants=variants), self.serving, with_barrier=False)
        present = set()
        for root in self.roots:
            cache = root / "cache"
            for entry in entries:
                if entry.name not in present and is_committed(self.serving.version, cache / entry.name):
                    present.add(entry.name)
        cold = {e.num_max_tokens_per_rank for e in entries if e.name not in present}
        warm = {b for b in the_plan.buckets if b not in cold}
        log.debug("jitcache: %s, call %s: warm buckets %s", self.serving.describe(), signature, sorted(warm))
        return warm
