"""Render the exact ``kernel.cu`` DeepEP 2.1 (``ElasticBuffer``; PyPI ``tokenspeed-deepep``) JIT-compiles.

DeepEP 2.1 is DeepEP 2.5's ancestor: the same four kernel families, the same
way of choosing warps and channels, but its own source text and token layout.
The facts below were read in DeepEP's ``csrc/kernels/elastic/{dispatch,
combine,barrier}.hpp`` and ``csrc/elastic/buffer.hpp`` and checked against the
``tokenspeed-deepep`` 2.1.0.post20260810 wheel: the source templates are
verbatim strings of its ``_C`` library (``tests/test_render21.py`` reads them
there), the template parameter lists are those of its ``deep_ep/include``
headers, and the integer rules were read in its machine code (``objdump -d``):

- source: ``\\n#include <deep_ep/impls/<header>.cuh>\\n\\nusing namespace
  deep_ep::elastic;\\n\\nstatic void __instantiate_kernel() {\\n    auto ptr =
  reinterpret_cast<void*>(&<kernel><args>);\\n}\\n`` (``fmt::format``: booleans
  print as ``true``/``false``); the hybrid (multi-node) kernels live in
  ``hybrid_dispatch``/``hybrid_combine``;
- token layout (``deep_ep/common/layout.cuh``): hidden, scale factors, metadata
  and mbarrier each aligned to 32 bytes, *without* 2.5's 64-byte RDMA
  alignment of the data part;
- dispatch warps: ``min((smem - notify_smem) / layout, 32 - notify_warps)``,
  4 notify warps (none in cached mode, which also reuses slot indices);
  epilogues and combine: ``min(smem / layout, 32)``;
- ``num_sms`` (``ElasticBuffer.get_theoretical_num_sms``, :mod:`jitcache.adapters.num_sms`):
  every SM of the device when there is no traffic (EP1), a bandwidth model of
  ``[target] nvlink_gbs``/``rdma_gbs`` otherwise, rounded as ``align(max(4,
  ceil(n * 1.25)), 2)`` and capped by the device; the copy and reduce
  epilogues use every SM of the device; an explicit ``num_sms`` is passed unchanged;
- ``num_qps`` as 2.5; timeout cycles: ``num_gpu_timeout_secs *
  cudaDevAttrClockRate (kHz) * 1000``;
- barrier: ``barrier_impl<nvlink, 1 + (scaleout > 1 and not sequential), 512,
  scaleout, scaleup, timeout, sequential>``.

What jitcache cannot check without a GPU running DeepEP 2.1 (its wheels do not
import on the rig's torch) is that a real 2.1 process asks for exactly these
sources; docs/aot.md says what is and is not proven. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from jitcache.adapters.num_sms import NumSmsRule, profile_num_sms
from jitcache.errors import ProfileError, UsageError
from jitcache.planning.profiles import Profile
from jitcache.adapters.render25 import (_MAX_CHANNELS_PER_SM, _NUM_NOTIFY_WARPS, _SF_PACK_BYTES, RenderedKernel, TargetFacts, _align,
                     _fmt, _notify_smem_bytes, _require, token_layout_num_bytes)
from jitcache.planning.variants import KernelVariant, WarmupPlan

__all__ = ["SOURCE_TEMPLATE21", "render_barrier21", "render_plan21", "render_variant21", "target_facts21",
           "token_layout_num_bytes21"]

#: DeepEP 2.1's ``generate_impl`` text; ``{header}`` and ``{call}`` stand for its two ``{}``.
SOURCE_TEMPLATE21 = ("\n#include <deep_ep/impls/{header}.cuh>\n\nusing namespace deep_ep::elastic;\n\n"
                     "static void __instantiate_kernel() {{\n    auto ptr = reinterpret_cast<void*>(&{call});\n}}\n")

_BARRIER_THREADS = 512


def token_layout_num_bytes21(num_hidden_bytes: int, num_sf_bytes: int, num_topk: int,
                             with_metadata: bool, with_mbarrier: bool) -> int:
    """``layout::TokenLayout(...).get_num_bytes<with_mbarrier>()`` of DeepEP 2.1: 2.5's without RDMA alignment."""
    return token_layout_num_bytes(num_hidden_bytes, num_sf_bytes, num_topk, with_metadata, with_mbarrier,
                                  rdma_alignment=1)


def _dispatch_layout(hidden_bytes: int, sf_packs: int, topk: int) -> int:
    return token_layout_num_bytes21(hidden_bytes, sf_packs * _SF_PACK_BYTES, topk, True, True)


#: ``ElasticBuffer.get_theoretical_num_sms`` (deep_ep/buffers/elastic.py): 200 / 50 GB/s per SM, dispatch's terms
#: only, ``align(max(4, ceil(n * 1.25)), 2)`` capped by the device's SMs.
NUM_SMS_RULE21 = NumSmsRule(sm_read_gbs=200, sm_write_gbs=50, with_combine_terms=False, factor=1.25, alignment=2,
                            even_cap=False)


def target_facts21(profile: Profile) -> TargetFacts:
    """The per-GPU template arguments DeepEP 2.1 computes for ``profile`` on ``profile.target``."""
    t, m, p = profile.target, profile.model, profile.parallel
    allow_hybrid_mode = profile.deep_ep.allow_hybrid_mode
    prefer_overlap_with_compute = profile.deep_ep.prefer_overlap_with_compute
    num_device_sms = _require(profile, "num_device_sms", t.num_device_sms)
    num_smem_bytes = _require(profile, "num_smem_bytes", t.num_smem_bytes)
    clock_rate_khz = _require(profile, "clock_rate_khz", t.clock_rate_khz)
    num_allocated_qps = _require(profile, "num_allocated_qps", t.num_allocated_qps)
    requested = profile.deep_ep.num_sms
    num_sms = requested if requested else profile_num_sms(profile, NUM_SMS_RULE21)
    num_qps = num_sms * 16 + 1 if allow_hybrid_mode else min(num_sms, 8 + 1)
    num_qps = min(num_qps, num_allocated_qps)
    channels = 1
    if p.nodes > 1:
        elem = 1 if m.dispatch_dtype == "fp8" else 2
        sf_packs = m.hidden // 128 if m.dispatch_dtype == "fp8" else 0
        dispatch_bytes = _dispatch_layout(m.hidden * elem, sf_packs, m.num_topk)
        combine_bytes = token_layout_num_bytes21(m.hidden * 2, 0, m.num_topk, False, True)
        channels = min((num_smem_bytes - _notify_smem_bytes(p.ep_size, m.num_experts)) // dispatch_bytes,
                       32 - _NUM_NOTIFY_WARPS)
        channels = min(num_smem_bytes // combine_bytes, channels)
        channels = min(channels // 2, _MAX_CHANNELS_PER_SM)
        if not prefer_overlap_with_compute:
            channels = min(channels, 4)
    return TargetFacts(num_device_sms=num_device_sms, num_sms=num_sms, num_smem_bytes=num_smem_bytes,
                       num_qps=num_qps, num_timeout_cycles=t.gpu_timeout_secs * clock_rate_khz * 1000,
                       num_channels_per_sm=channels)


def _source(header: str, kernel: str, args: list[Any]) -> tuple[str, str]:
    call = f"{kernel}<{', '.join(_fmt(a) for a in args)}>"
    return SOURCE_TEMPLATE21.format(header=header, call=call), call


def render_variant21(variant: KernelVariant, profile: Profile, facts: TargetFacts | None = None) -> RenderedKernel:
    """The generated source DeepEP 2.1 builds for ``variant`` (kernel.cu less its includes' hash line)."""
    facts = facts or target_facts21(profile)
    v = variant.param_dict
    scaleout, scaleup = v["num_scaleout_ranks"], v["num_scaleup_ranks"]
    nmax, experts, topk = v["num_max_tokens_per_rank"], v["num_experts"], v["num_topk"]
    smem, cps = facts.num_smem_bytes, facts.num_channels_per_sm
    family = variant.family
    if family == "dispatch":
        cached = v["reuse_slot_indices"]
        notify_warps = 0 if cached else _NUM_NOTIFY_WARPS
        hidden_bytes, sf_packs = v["hidden_bytes"], v["num_sf_packs"]
        if scaleout == 1:
            notify_smem = 0 if cached else _notify_smem_bytes(scaleup, experts)
            warps = min((smem - notify_smem) // _dispatch_layout(hidden_bytes, sf_packs, topk), 32 - notify_warps)
            args = [v["is_scaleup_nvlink"], v["do_cpu_sync"], cached, facts.num_sms, notify_warps, warps, scaleup,
                    hidden_bytes, sf_packs, nmax, experts, topk, v["expert_alignment"], facts.num_qps,
                    facts.num_timeout_cycles]
            source, call = _source("dispatch", "dispatch_impl", args)
        else:
            args = [v["do_cpu_sync"], cached, facts.num_sms, notify_warps, cps, cps, scaleout, scaleup,
                    hidden_bytes, sf_packs, nmax, experts, topk, v["expert_alignment"], facts.num_qps,
                    facts.num_timeout_cycles]
            source, call = _source("hybrid_dispatch", "hybrid_dispatch_impl", args)
    elif family == "dispatch_copy_epilogue":
        hidden_bytes, sf_packs = v["hidden_bytes"], v["num_sf_packs"]
        warps = min(smem // _dispatch_layout(hidden_bytes, sf_packs, topk), 32)
        channels = facts.num_sms * cps if scaleout > 1 else 1
        args = [v["do_expand"], v["cached_mode"], v["do_zero_padding"], facts.num_device_sms, channels, warps,
                scaleout, scaleup, hidden_bytes, sf_packs, nmax, experts, topk, v["expert_alignment"]]
        source, call = _source("dispatch_copy_epilogue", "dispatch_copy_epilogue_impl", args)
    elif family == "combine":
        hidden = v["hidden"]
        if scaleout == 1:
            warps = min(smem // token_layout_num_bytes21(hidden * 2, 0, topk, False, True), 32)
            args = [v["is_scaleup_nvlink"], v["use_expanded_layout"], v["allow_multiple_reduction"], facts.num_sms,
                    warps, scaleout * scaleup, hidden, nmax, experts, topk, facts.num_qps, facts.num_timeout_cycles]
            source, call = _source("combine", "combine_impl", args)
        else:
            args = [v["use_expanded_layout"], v["allow_multiple_reduction"], facts.num_sms, cps, cps, scaleout,
                    scaleup, hidden, nmax, experts, topk, facts.num_qps, facts.num_timeout_cycles]
            source, call = _source("hybrid_combine", "hybrid_combine_impl", args)
    elif family == "combine_reduce_epilogue":
        hidden = v["hidden"]
        warps = min(smem // token_layout_num_bytes21(hidden * 2, 0, 0, False, False), 32)
        args = [v["use_expanded_layout"], v["allow_multiple_reduction"], facts.num_device_sms, warps, scaleout,
                scaleup, hidden, nmax, experts, topk]
        source, call = _source("combine_reduce_epilogue", "combine_reduce_epilogue_impl", args)
    else:
        raise UsageError(f"unknown kernel family {family!r}")
    return RenderedKernel(name=family, source=source, function=call, variant=variant)


def render_barrier21(profile: Profile, facts: TargetFacts | None = None, *, is_scaleup_nvlink: bool = True,
                     sequential: bool = True) -> RenderedKernel:
    """``launch_barrier``'s kernel; ``ElasticBuffer.barrier()`` defaults to ``sequential=True``."""
    facts = facts or target_facts21(profile)
    p = profile.parallel
    num_sms = 2 if (p.nodes > 1 and not sequential) else 1
    args = [is_scaleup_nvlink, num_sms, _BARRIER_THREADS, p.nodes, p.ranks_per_node, facts.num_timeout_cycles,
            sequential]
    source, call = _source("barrier", "barrier_impl", args)
    return RenderedKernel(name="barrier", source=source, function=call)


def render_plan21(the_plan: WarmupPlan) -> tuple[RenderedKernel, ...]:
    """Every variant of a plan, rendered as DeepEP 2.1 would on the profile's target."""
    facts = target_facts21(the_plan.profile)
    return tuple(render_variant21(v, the_plan.profile, facts) for v in the_plan)
