"""Decode the template arguments DeepEP baked into a cached ``kernel.cu``.

DeepEP writes one instantiation per kernel source::

    static void __instantiate_kernel() {
        auto ptr = reinterpret_cast<void*>(&deep_ep::ep::dispatch_impl<true, false, false, 132, ...>);
    }

(2.5 spells the namespace, 2.1 has ``using namespace deep_ep::elastic;`` and
a bare ``dispatch_impl<...>``). The argument order is the host code's
``std::format`` call in ``csrc/kernels/ep/{dispatch,combine}.hpp`` (2.5),
identical to the template parameter lists of ``impls/*.cuh`` in 2.1 and 2.5.
Names are DeepEP's own host-side argument names, as in
:mod:`jitcache.planning.variants`, so an entry and a plan variant compare key by key.
Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["TEMPLATE_PARAMS", "decode_instantiation", "parse_source"]

#: kernel template -> its non-defaulted parameters, in order.
TEMPLATE_PARAMS: dict[str, tuple[str, ...]] = {
    "dispatch_impl": (
        "is_scaleup_nvlink", "do_cpu_sync", "reuse_slot_indices", "num_sms",
        "num_notify_warps", "num_dispatch_warps", "num_scaleup_ranks",
        "hidden_bytes", "num_sf_packs", "num_max_tokens_per_rank",
        "num_experts", "num_topk", "expert_alignment", "num_qps", "num_timeout_cycles"),
    "hybrid_dispatch_impl": (
        "do_cpu_sync", "reuse_slot_indices", "num_sms",
        "num_notify_warps", "num_scaleout_warps", "num_forward_warps",
        "num_scaleout_ranks", "num_scaleup_ranks", "hidden_bytes", "num_sf_packs",
        "num_max_tokens_per_rank", "num_experts", "num_topk", "expert_alignment",
        "num_qps", "num_timeout_cycles"),
    "dispatch_copy_epilogue_impl": (
        "do_expand", "cached_mode", "do_zero_padding", "num_sms", "num_channels", "num_warps",
        "num_scaleout_ranks", "num_scaleup_ranks", "hidden_bytes", "num_sf_packs",
        "num_max_tokens_per_rank", "num_experts", "num_topk", "expert_alignment"),
    "combine_impl": (
        "is_scaleup_nvlink", "use_expanded_layout", "allow_multiple_reduction", "num_sms", "num_warps",
        "num_ranks", "hidden", "num_max_tokens_per_rank", "num_experts", "num_topk",
        "num_qps", "num_timeout_cycles"),
    "hybrid_combine_impl": (
        "use_expanded_layout", "allow_multiple_reduction", "num_sms",
        "num_scaleup_warps", "num_forward_warps", "num_scaleout_ranks", "num_scaleup_ranks",
        "hidden", "num_max_tokens_per_rank", "num_experts", "num_topk", "num_qps", "num_timeout_cycles"),
    "combine_reduce_epilogue_impl": (
        "use_expanded_layout", "allow_multiple_reduction", "num_sms", "num_warps",
        "num_scaleout_ranks", "num_scaleup_ranks", "hidden", "num_max_tokens_per_rank",
        "num_experts", "num_topk"),
}

# `&` then an optionally qualified template name and a flat argument list: the
# instantiation DeepEP takes the address of. Comments and #includes never match.
_INSTANTIATION = re.compile(r"&\s*((?:[A-Za-z_]\w*::)*)([A-Za-z_]\w*)\s*<([^<>;]*)>\s*\)")
_INT = re.compile(r"^[+-]?\d+[uUlL]*$")


def _value(text: str) -> Any:
    text = text.strip()
    if text == "true":
        return True
    if text == "false":
        return False
    if _INT.match(text):
        return int(text.rstrip("uUlL"))
    return text


def decode_instantiation(kernel: str, args: list[str]) -> dict[str, Any]:
    """Name the arguments of ``kernel<args...>``, adding the rank counts the plan compares.

    An unknown template, or a known one with another arity (a DeepEP version
    we have not read), keeps its raw arguments under ``template_args``.
    """
    values = [_value(a) for a in args]
    names = TEMPLATE_PARAMS.get(kernel)
    params: dict[str, Any] = {"kernel": kernel}
    if names is None or len(names) != len(values):
        params["template_args"] = values
        return params
    params.update(zip(names, values))
    # Non-hybrid kernels run on one scale-out rank; the plan states that explicitly.
    if kernel == "combine_impl":
        params.setdefault("num_scaleout_ranks", 1)
        params.setdefault("num_scaleup_ranks", params["num_ranks"])
    if kernel == "dispatch_impl":
        params.setdefault("num_scaleout_ranks", 1)
    if "num_ranks" not in params and isinstance(params.get("num_scaleup_ranks"), int):
        params["num_ranks"] = params["num_scaleout_ranks"] * params["num_scaleup_ranks"]
    return params


def parse_source(source: str) -> dict[str, Any] | None:
    """The decoded instantiation of a kernel source, or ``None`` if it holds none we can read."""
    matches = list(_INSTANTIATION.finditer(source))
    if not matches:
        return None
    match = matches[-1]
    args_text = match.group(3).strip()
    args = [a for a in (part.strip() for part in args_text.split(","))] if args_text else []
    params = decode_instantiation(match.group(2), args)
    namespace = match.group(1).rstrip(":")
    if namespace:
        params["namespace"] = namespace
    return params
