"""The warmup plan: every DeepEP kernel variant serving with a profile can request.

DeepEP 2.x JIT-compiles four kernel families per dispatch + combine, each a
template instantiated with the arguments below (read from
``csrc/kernels/ep/{dispatch,combine}.hpp`` of DeepEP 2.5). Which values they
take depends on the serving mode:

=========  =========  ===========  ===============  ==============================
mode       do_expand  do_cpu_sync  cached handle    num_max_tokens_per_rank
=========  =========  ===========  ===============  ==============================
decode     False      False        no               every bucket of the policy
prefill    True       True         no               the cap (callers pass ``None``)
cached     False      False        yes              every bucket of the policy
=========  =========  ===========  ===============  ==============================

Combine kernels depend only on the layout (expanded or not), so ``cached``
shares its combines with ``decode``; the plan lists each distinct variant once.

Besides these per-bucket variants, every buffer launches one more kernel DeepEP
compiles and serving loads: the ``barrier`` its constructor runs (one per
buffer, whatever the bucket). The plan lists it in ``buffer_kernels``;
``kernels`` is everything serving loads (coverage, ``prune --keep-profile``,
``export -p`` go by it).

Parameters that depend on the GPU rather than the model (SM count, warps,
QPs, timeout cycles) are filled in by the renderer of the AOT compiler from
the profile's ``[target]`` table; the plan holds what the profile decides.
This module is pure: no I/O, deterministic order.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Iterable

from jitcache.errors import UsageError
from jitcache.planning.profiles import MODES, Profile

__all__ = ["BUFFER_FAMILIES", "FAMILIES", "KernelVariant", "WarmupPlan", "plan"]

#: DeepEP's JIT names (the ``<name>`` of a ``<name>.<digest>`` cache entry), in launch order.
FAMILIES = ("dispatch", "dispatch_copy_epilogue", "combine", "combine_reduce_epilogue")

#: Kernels a buffer launches once, whatever the bucket (``mode`` "buffer", no ``num_max_tokens_per_rank``).
BUFFER_FAMILIES = ("barrier",)
BUFFER_MODE = "buffer"

#: What each mode sets, in DeepEP's own argument names.
_MODE_FLAGS = {
    "decode": {"do_expand": False, "do_cpu_sync": False, "cached_mode": False},
    "prefill": {"do_expand": True, "do_cpu_sync": True, "cached_mode": False},
    "cached": {"do_expand": False, "do_cpu_sync": False, "cached_mode": True},
}


@dataclass(frozen=True)
class KernelVariant:
    """One kernel DeepEP compiles: a family, the mode that asks for it, and its template arguments."""

    family: str
    mode: str                         # decode | prefill | cached; "buffer" for the barrier
    num_max_tokens_per_rank: int | None   # None: a buffer kernel (the barrier), the same for every bucket
    params: tuple[tuple[str, Any], ...]

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def identity(self) -> tuple:
        """What makes two variants the same kernel (the mode that asked is not part of it)."""
        return (self.family, self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "mode": self.mode,
                "num_max_tokens_per_rank": self.num_max_tokens_per_rank, "params": dict(self.params)}


@dataclass(frozen=True)
class WarmupPlan:
    """The ordered, de-duplicated list of variants for one profile.

    The order is the one warmup runs in on every rank: by bucket, then mode,
    then family, so that every rank issues the same collective sequence.
    """

    profile: Profile
    buckets: tuple[int, ...]
    variants: tuple[KernelVariant, ...]
    buffer_kernels: tuple[KernelVariant, ...] = ()

    def __len__(self) -> int:
        return len(self.variants)

    @property
    def kernels(self) -> tuple[KernelVariant, ...]:
        """Every kernel serving loads: the per-bucket variants, then the buffer's (the barrier)."""
        return self.variants + self.buffer_kernels

    def __iter__(self):
        return iter(self.variants)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{mode: {family: count}}``."""
        table: dict[str, Counter] = {}
        for v in self.variants:
            table.setdefault(v.mode, Counter())[v.family] += 1
        return {mode: dict(counter) for mode, counter in table.items()}

    def steps(self) -> tuple[tuple[str, int], ...]:
        """The ``(mode, num_max_tokens_per_rank)`` pairs a live warmup must run, in order."""
        seen: dict[tuple[str, int], None] = {}
        for mode in self.profile.serving.modes:
            for bucket in _mode_buckets(self.profile, mode, self.buckets):
                seen[(mode, bucket)] = None
        return tuple(sorted(seen, key=lambda s: (s[1], MODES.index(s[0]))))

    def fingerprint(self) -> str:
        """A hash of the exact variant list; ranks compare it before warming together."""
        import hashlib

        blob = json.dumps([v.to_dict() for v in self.variants], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "profile_fingerprint": self.profile.fingerprint(),
            "plan_fingerprint": self.fingerprint(),
            "policy": self.profile.policy.to_dict(),
            "modes": list(self.profile.serving.modes),
            "num_variants": len(self.variants),
            "num_kernels": len(self.kernels),
            "counts": self.counts(),
            "variants": [v.to_dict() for v in self.variants],
            "buffer_kernels": [v.to_dict() for v in self.buffer_kernels],
        }


def _mode_buckets(profile: Profile, mode: str, buckets: tuple[int, ...]) -> tuple[int, ...]:
    # Prefill keeps DeepEP's default (None -> the buffer's capacity), as vLLM does.
    return (profile.serving.max_num_batched_tokens,) if mode == "prefill" else buckets


def _variant_params(profile: Profile, family: str, flags: dict[str, bool], nmax: int) -> dict[str, Any]:
    m, p, d = profile.model, profile.parallel, profile.deep_ep
    elem_size = 1 if m.dispatch_dtype == "fp8" else 2
    # DeepSeek-style fp8: one float32 scale per 128 channels (sf_pack_t is 4 bytes).
    num_sf_packs = m.hidden // 128 if m.dispatch_dtype == "fp8" else 0
    hybrid = p.nodes > 1
    common = {
        "num_scaleout_ranks": p.nodes,
        "num_scaleup_ranks": p.ranks_per_node,
        "num_max_tokens_per_rank": nmax,
        "num_experts": m.num_experts,
        "num_topk": m.num_topk,
    }
    # dispatch and combine run on the SMs serving passes (set by the profile, 0 leaves it to DeepEP on the
    # GPU; DeepEP rounds it up to even); the two epilogues always run on every SM of the device.
    sms = {"num_sms": d.num_sms + d.num_sms % 2} if d.num_sms else {}
    if family == "dispatch":
        return {
            "kernel": "hybrid_dispatch_impl" if hybrid else "dispatch_impl",
            "is_scaleup_nvlink": True,
            "do_cpu_sync": flags["do_cpu_sync"],
            "reuse_slot_indices": flags["cached_mode"],
            "hidden_bytes": m.hidden * elem_size,
            "num_sf_packs": num_sf_packs,
            "expert_alignment": d.expert_alignment,
            **common, **sms,
        }
    if family == "dispatch_copy_epilogue":
        return {
            "kernel": "dispatch_copy_epilogue_impl",
            "do_expand": flags["do_expand"],
            "cached_mode": flags["cached_mode"],
            "do_zero_padding": False,
            "hidden_bytes": m.hidden * elem_size,
            "num_sf_packs": num_sf_packs,
            "expert_alignment": d.expert_alignment,
            **common,
        }
    layout = {"use_expanded_layout": flags["do_expand"], "allow_multiple_reduction": d.allow_multiple_reduction}
    if family == "combine":
        return {"kernel": "hybrid_combine_impl" if hybrid else "combine_impl", "is_scaleup_nvlink": True,
                **layout, "hidden": m.hidden, **common, **sms}
    return {"kernel": "combine_reduce_epilogue_impl", **layout, "hidden": m.hidden, **common}


def _barrier(profile: Profile) -> KernelVariant:
    """The barrier ``EPBuffer`` / ``ElasticBuffer`` launch at construction (``sequential=true``: one SM)."""
    p = profile.parallel
    params = {"kernel": "barrier_impl", "is_scaleup_nvlink": True, "num_sms": 1,
              "num_scaleout_ranks": p.nodes, "num_scaleup_ranks": p.ranks_per_node, "sequential": True}
    return KernelVariant("barrier", BUFFER_MODE, None, tuple(params.items()))


def plan(profile: Profile, modes: Iterable[str] | None = None) -> WarmupPlan:
    """Every DeepEP kernel variant serving with ``profile`` can request, once each.

    ``modes`` restricts the plan to some of the profile's modes (default: all of them).
    """
    chosen = tuple(profile.serving.modes if modes is None else modes)
    for mode in chosen:
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
    if modes is not None:
        profile = replace(profile, serving=replace(profile.serving, modes=chosen))
    buckets = profile.policy.buckets()
    seen: dict[tuple, KernelVariant] = {}
    for mode in sorted(chosen, key=MODES.index):
        flags = _MODE_FLAGS[mode]
        for bucket in _mode_buckets(profile, mode, buckets):
            for family in FAMILIES:
                params = _variant_params(profile, family, flags, bucket)
                variant = KernelVariant(family, mode, bucket, tuple(params.items()))
                seen.setdefault(variant.identity, variant)
    ordered = sorted(seen.values(), key=lambda v: (v.num_max_tokens_per_rank, MODES.index(v.mode),
                                                    FAMILIES.index(v.family)))
    return WarmupPlan(profile=profile, buckets=buckets, variants=tuple(ordered), buffer_kernels=(_barrier(profile),))
