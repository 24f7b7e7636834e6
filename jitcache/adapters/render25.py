"""Render the exact ``kernel.cu`` DeepEP 2.5 would JIT-compile for a variant on a target GPU.

DeepEP builds each source with ``std::format`` in ``csrc/kernels/ep/{dispatch,
combine}.hpp`` (booleans print as ``true``/``false``). Some template arguments
come from the profile (the plan's variant), others from the GPU DeepEP runs on:

- ``num_sms`` of dispatch/combine: ``[deep_ep] num_sms``, else
  ``EPBuffer.get_theoretical_num_sms`` (all the device's SMs at EP1; at EP>1 a
  bandwidth model fed by ``[target] nvlink_gbs``/``rdma_gbs``: :mod:`jitcache.adapters.num_sms`);
  the epilogues use every SM of the device;
- warps: as many tokens as fit in the opt-in shared memory per block
  (``TokenLayout::get_num_bytes``, ported below), capped at 32 warps;
- ``num_qps``: ``EPBuffer.get_theoretical_num_qps``, capped by ``num_allocated_qps``;
- timeout cycles: ``num_gpu_timeout_secs * clockRate(kHz) * 1000``.

The profile's ``[target]`` table carries the device facts, so a CPU-only
machine renders what DeepEP renders on the GPU. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jitcache.adapters.num_sms import NumSmsRule, profile_num_sms
from jitcache.errors import ProfileError, UsageError
from jitcache.planning.profiles import Profile
from jitcache.planning.variants import KernelVariant, WarmupPlan

__all__ = ["RenderedKernel", "TargetFacts", "render_plan", "render_variant", "target_facts",
           "token_layout_num_bytes"]

# deep_ep/include/deep_ep/common/compiled.cuh
_TMA_ALIGNMENT = 32
_RDMA_ALIGNMENT = 64
_SF_PACK_BYTES = 4  # sizeof(sf_pack_t): a union of float and int
# sizeof(cuda::barrier<thread_scope_block>) is 8 on the device; it is aligned up to 32 either way.
_MBARRIER_BYTES = 8
# csrc/kernels/ep/dispatch.hpp and csrc/buffers/ep.hpp
_NUM_NOTIFY_WARPS = 4
_MAX_CHANNELS_PER_SM = 8


def _align(value: int, to: int) -> int:
    return -(-value // to) * to


def token_layout_num_bytes(num_hidden_bytes: int, num_sf_bytes: int, num_topk: int,
                           with_metadata: bool, with_mbarrier: bool, *, rdma_alignment: int = _RDMA_ALIGNMENT) -> int:
    """``layout::TokenLayout(...).get_num_bytes<with_mbarrier>()`` of DeepEP 2.5.

    DeepEP 2.1's layout is the same without the 64-byte RDMA alignment (``rdma_alignment=1``).
    """
    if num_hidden_bytes % _TMA_ALIGNMENT:
        raise UsageError(f"num_hidden_bytes={num_hidden_bytes} is not a multiple of {_TMA_ALIGNMENT} "
                         "(DeepEP asserts it)")
    num_metadata_bytes = num_topk * 8 + ((1 + num_topk) * 4 if with_metadata else 0)
    data = _align(_align(num_hidden_bytes, _TMA_ALIGNMENT) + _align(num_sf_bytes, _TMA_ALIGNMENT)
                  + _align(num_metadata_bytes, _TMA_ALIGNMENT), rdma_alignment)
    return data + _align(_MBARRIER_BYTES if with_mbarrier else 0, _TMA_ALIGNMENT)


def _notify_smem_bytes(num_ranks: int, num_experts: int) -> int:
    return _align(num_ranks + num_experts, _NUM_NOTIFY_WARPS * 32) * 4


@dataclass(frozen=True)
class TargetFacts:
    """The per-GPU numbers DeepEP bakes into templates, as computed for one profile."""

    num_device_sms: int
    num_sms: int
    num_smem_bytes: int
    num_qps: int
    num_timeout_cycles: int
    num_channels_per_sm: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _require(profile: Profile, field: str, value: int) -> int:
    if value <= 0:
        raise ProfileError(profile.source, "is 0 (unknown): the AOT compiler needs the target GPU's value "
                           "to render the kernels DeepEP would build there", field=f"target.{field}",
                           hint="copy it from the GPU (torch.cuda.get_device_properties) or a built-in "
                                "profile such as h200-ep1")
    return value


#: ``EPBuffer.get_theoretical_num_sms`` (deep_ep/buffers/ep.py): 180 / 45 GB/s per SM, combine's terms counted,
#: ``align(max(4, ceil(n * 1.3)), 4)`` capped by the device's SMs rounded down to even.
NUM_SMS_RULE25 = NumSmsRule(sm_read_gbs=180, sm_write_gbs=45, with_combine_terms=True, factor=1.3, alignment=4,
                            even_cap=True)


def _theoretical_num_sms(profile: Profile) -> int:
    """``EPBuffer.get_theoretical_num_sms`` for the profile's facts (:mod:`jitcache.adapters.num_sms`)."""
    return profile_num_sms(profile, NUM_SMS_RULE25)


def target_facts(profile: Profile) -> TargetFacts:
    t, m, p = profile.target, profile.model, profile.parallel
    allow_hybrid_mode = profile.deep_ep.allow_hybrid_mode
    prefer_overlap_with_compute = profile.deep_ep.prefer_overlap_with_compute
    num_device_sms = _require(profile, "num_device_sms", t.num_device_sms)
    num_smem_bytes = _require(profile, "num_smem_bytes", t.num_smem_bytes)
    clock_rate_khz = _require(profile, "clock_rate_khz", t.clock_rate_khz)
    num_allocated_qps = _require(profile, "num_allocated_qps", t.num_allocated_qps)
    requested = profile.deep_ep.num_sms
    num_sms = _align(requested, 2) if requested else _theoretical_num_sms(profile)
    num_qps = num_sms * 16 + 1 if allow_hybrid_mode else min(num_sms, 8 + 1)
    num_qps = min(num_qps, num_allocated_qps)
    channels = 1
    if p.nodes > 1:
        elem = 1 if m.dispatch_dtype == "fp8" else 2
        sf_packs = m.hidden // 128 if m.dispatch_dtype == "fp8" else 0
        dispatch_bytes = token_layout_num_bytes(m.hidden * elem, sf_packs * _SF_PACK_BYTES, m.num_topk, True, True)
        combine_bytes = token_layout_num_bytes(m.hidden * 2, 0, m.num_topk, False, True)
        channels = min((num_smem_bytes - _notify_smem_bytes(p.ep_size, m.num_experts)) // dispatch_bytes,
                       32 - _NUM_NOTIFY_WARPS)
        channels = min(num_smem_bytes // combine_bytes, channels)
        channels = min(channels // 2, _MAX_CHANNELS_PER_SM)
        if not prefer_overlap_with_compute:
            channels = min(channels, 4)
    return TargetFacts(num_device_sms=num_device_sms, num_sms=num_sms, num_smem_bytes=num_smem_bytes,
                       num_qps=num_qps, num_timeout_cycles=t.gpu_timeout_secs * clock_rate_khz * 1000,
                       num_channels_per_sm=channels)


@dataclass(frozen=True)
class RenderedKernel:
    """One ``jit->compile(name, source)`` call of DeepEP: the JIT name, the exact source, and its arguments."""

    name: str
    source: str
    function: str
    variant: KernelVariant | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "function": self.function,
                "num_max_tokens_per_rank": None if self.variant is None else self.variant.num_max_tokens_per_rank}


def _fmt(value: Any) -> str:
    # std::format prints bool as true/false and integers in decimal.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value))


def _instantiation(namespace: str, header: str, function: str, args: list[Any]) -> tuple[str, str]:
    call = f"{function}<{', '.join(_fmt(a) for a in args)}>"
    source = (f"\n#include <deep_ep/impls/{header}.cuh>\n\n"
              "static void __instantiate_kernel() {\n"
              f"    auto ptr = reinterpret_cast<void*>(&deep_ep::{namespace}::{call});\n"
              "}\n")
    return source, call


def render_variant(variant: KernelVariant, profile: Profile, facts: TargetFacts | None = None) -> RenderedKernel:
    """The exact kernel.cu DeepEP 2.5 compiles for ``variant`` on ``profile.target``."""
    facts = facts or target_facts(profile)
    v = variant.param_dict
    m, p = profile.model, profile.parallel
    scaleout, scaleup = v["num_scaleout_ranks"], v["num_scaleup_ranks"]
    num_ranks = scaleout * scaleup
    smem = facts.num_smem_bytes
    nmax, experts, topk = v["num_max_tokens_per_rank"], v["num_experts"], v["num_topk"]
    cps = facts.num_channels_per_sm
    family = variant.family
    if family == "dispatch":
        cached = v["reuse_slot_indices"]
        notify_warps = 0 if cached else _NUM_NOTIFY_WARPS
        hidden_bytes, sf_packs = v["hidden_bytes"], v["num_sf_packs"]
        if scaleout == 1:
            notify_smem = 0 if cached else _notify_smem_bytes(num_ranks, experts)
            layout = token_layout_num_bytes(hidden_bytes, sf_packs * _SF_PACK_BYTES, topk, True, True)
            warps = min((smem - notify_smem) // layout, 32 - notify_warps)
            args = [v["is_scaleup_nvlink"], v["do_cpu_sync"], cached, facts.num_sms, notify_warps, warps,
                    scaleup, hidden_bytes, sf_packs, nmax, experts, topk, v["expert_alignment"],
                    facts.num_qps, facts.num_timeout_cycles]
            source, call = _instantiation("ep", "ep/dispatch", "dispatch_impl", args)
        else:
            args = [v["do_cpu_sync"], cached, facts.num_sms, notify_warps, cps, cps, scaleout, scaleup,
                    hidden_bytes, sf_packs, nmax, experts, topk, v["expert_alignment"],
                    facts.num_qps, facts.num_timeout_cycles]
            source, call = _instantiation("ep", "ep/hybrid_dispatch", "hybrid_dispatch_impl", args)
    elif family == "dispatch_copy_epilogue":
        hidden_bytes, sf_packs = v["hidden_bytes"], v["num_sf_packs"]
        layout = token_layout_num_bytes(hidden_bytes, sf_packs * _SF_PACK_BYTES, topk, True, True)
        warps = min(smem // layout, 32)
        channels = facts.num_sms * cps if scaleout > 1 else 1
        args = [v["do_expand"], v["cached_mode"], v["do_zero_padding"], facts.num_device_sms, channels, warps,
                scaleout, scaleup, hidden_bytes, sf_packs, nmax, experts, topk, v["expert_alignment"]]
        source, call = _instantiation("ep", "ep/dispatch_copy_epilogue", "dispatch_copy_epilogue_impl", args)
    elif family == "combine":
        hidden = v["hidden"]
        layout = token_layout_num_bytes(hidden * 2, 0, topk, False, True)
        if scaleout == 1:
            warps = min(smem // layout, 32)
            args = [v["is_scaleup_nvlink"], v["use_expanded_layout"], v["allow_multiple_reduction"], facts.num_sms,
                    warps, num_ranks, hidden, nmax, experts, topk, facts.num_qps, facts.num_timeout_cycles]
            source, call = _instantiation("ep", "ep/combine", "combine_impl", args)
        else:
            args = [v["use_expanded_layout"], v["allow_multiple_reduction"], facts.num_sms, cps, cps, scaleout,
                    scaleup, hidden, nmax, experts, topk, facts.num_qps, facts.num_timeout_cycles]
            source, call = _instantiation("ep", "ep/hybrid_combine", "hybrid_combine_impl", args)
    elif family == "combine_reduce_epilogue":
        hidden = v["hidden"]
        warps = min(smem // token_layout_num_bytes(hidden * 2, 0, 0, False, False), 32)
        args = [v["use_expanded_layout"], v["allow_multiple_reduction"], facts.num_device_sms, warps,
                scaleout, scaleup, hidden, nmax, experts, topk]
        source, call = _instantiation("ep", "ep/combine_reduce_epilogue", "combine_reduce_epilogue_impl", args)
    else:
        raise UsageError(f"unknown kernel family {family!r}")
    del m, p
    return RenderedKernel(name=family, source=source, function=call, variant=variant)


def render_barrier(profile: Profile, facts: TargetFacts | None = None, *, is_scaleup_nvlink: bool = True,
                   flush_stores: bool = True, sequential: bool = True) -> RenderedKernel:
    """``comm::launch_barrier``'s kernel (one per buffer, not per bucket).

    The defaults are the barrier ``EPBuffer``'s constructor launches
    (``flush_stores=true, sequential=true``): on the H200 rig this renders
    DeepEP's own entry ``barrier.6e833446fb8ba2030693b64b92acf947`` exactly.
    """
    facts = facts or target_facts(profile)
    p = profile.parallel
    num_sms = 2 if (not sequential and p.nodes > 1) else 1
    args = [is_scaleup_nvlink, num_sms, 512, p.nodes, p.ranks_per_node, facts.num_timeout_cycles,
            flush_stores, sequential]
    source, call = _instantiation("comm", "comm/barrier", "barrier_impl", args)
    return RenderedKernel(name="barrier", source=source, function=call)


def render_plan(the_plan: WarmupPlan) -> tuple[RenderedKernel, ...]:
    """Every variant of a plan, rendered for its profile's target."""
    facts = target_facts(the_plan.profile)
    return tuple(render_variant(v, the_plan.profile, facts) for v in the_plan)
