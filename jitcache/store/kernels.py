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
from itertools import repeat
from typing import Any

__all__ = ["TEMPLATE_PARAMS", "decode_instantiation", "instantiation_args", "parse_source", "symbol_problem"]

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

#: ``barrier_impl`` (``comm/barrier.cuh``), by arity: DeepEP 2.5 has ``kFlushStores``, 2.1 does not.
BARRIER_PARAMS: dict[int, tuple[str, ...]] = {
    8: ("is_scaleup_nvlink", "num_sms", "num_threads", "num_scaleout_ranks", "num_scaleup_ranks",
        "num_timeout_cycles", "flush_stores", "sequential"),
    7: ("is_scaleup_nvlink", "num_sms", "num_threads", "num_scaleout_ranks", "num_scaleup_ranks",
        "num_timeout_cycles", "sequential"),
}

# `&` then an optionally qualified template name and a flat argument list: the
# instantiation DeepEP takes the address of. Comments and #includes never match.
_INSTANTIATION = re.compile(r"&\s*((?:[A-Za-z_]\w*::)*)([A-Za-z_]\w*)\s*<([^<>;]*)>\s*\)")
_INT = re.compile(r"^[+-]?\d+[uUlL]*$")


def _value(text: str) -> Any:
    text = text.strip()
    if text.isdigit() and text.isascii():  # the common case, without the regex
        return int(text)
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
    values = [int(a) if a.isdigit() and a.isascii() else _value(a) for a in args]  # the common case inline
    names = BARRIER_PARAMS.get(len(values)) if kernel == "barrier_impl" else TEMPLATE_PARAMS.get(kernel)
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
    args = [part.strip() for part in args_text.split(",")] if args_text else []
    params = decode_instantiation(match.group(2), args)
    namespace = match.group(1).rstrip(":")
    if namespace:
        params["namespace"] = namespace
    return params


def instantiation_args(params: dict[str, Any]) -> list[Any] | None:
    """The template arguments of a decoded source, in the order it wrote them (``None``: not decoded)."""
    if "template_args" in params:
        return list(params["template_args"])
    names = TEMPLATE_PARAMS.get(params.get("kernel", ""))
    if names is None:
        return None
    try:
        return list(map(params.__getitem__, names))
    except KeyError:
        return None


# An Itanium-mangled integral template argument: L<builtin type><n for minus?><digits>E (Lb1E, Li132E, Ll198E).
_MANGLED_LITERAL = re.compile(r"L([abcdhijlmstxy])(n?)(\d+)E")
_MANGLED_RUN = re.compile(r"(?:L[abcdhijlmstxy]n?\d+E)*")
#: In a run of literals: each one's number as written, and a bool literal other than Lb0E / Lb1E.
_LITERAL_DIGITS = re.compile(r"L[abcdhijlmstxy](n?\d+)E")
_ODD_BOOL = re.compile(r"Lb(?!0E|1E)")


def _mangled_args(symbol: str, kernel: str) -> list[Any] | None:
    """The leading literal template arguments of ``kernel`` in a mangled symbol, ``None`` if it is not there."""
    marker = f"{len(kernel)}{kernel}I"
    at = symbol.find(marker)
    if at < 0:
        return None
    pos = at + len(marker)
    if symbol.startswith("J", pos):  # a pack: template <auto... kArgs>
        pos += 1
    values: list[Any] = []
    run = _MANGLED_RUN.match(symbol, pos)  # the literals in a row, then each (two regex calls, not one each)
    for kind, minus, digits in _MANGLED_LITERAL.findall(run.group()) if run else ():
        number = -int(digits) if minus else int(digits)
        values.append(bool(number) if kind == "b" else number)
    return values


def symbol_problem(symbols: tuple[str, ...], params: dict[str, Any]) -> str | None:
    """Why the cubin's single kernel is not the instantiation ``kernel.cu`` asks for, or ``None``.

    DeepEP loads the one kernel of the cubin whatever its name; a cubin of
    another kernel (or of the same template with other arguments) would run
    with the wrong compile-time sizes. The mangled name spells the template
    and its literal arguments; the source's arguments must be their prefix
    (DeepEP's templates add defaulted ones). Pure: no I/O.
    """
    kernel = params.get("kernel")
    if not kernel or len(symbols) != 1:
        return None
    wanted = instantiation_args(params)
    symbol = symbols[0]
    marker = f"{len(kernel)}{kernel}I"
    at = symbol.find(marker)
    if at < 0:
        return f"its kernel {symbol} is not {kernel}, the template kernel.cu instantiates"
    if wanted is not None and all(map(isinstance, wanted, repeat((bool, int)))):
        # What _mangled_args decodes (a bool literal is 0 or 1), compared as ints, in C-level maps.
        pos = at + len(marker) + (symbol.startswith("J", at + len(marker)))
        run = _MANGLED_RUN.match(symbol, pos)
        text = run.group() if run else ""
        expected = list(map(str, map(int, wanted)))
        if _LITERAL_DIGITS.findall(text)[:len(wanted)] == expected and not _ODD_BOOL.search(text):
            return None  # the digits as written are the ints (no sign, no leading zero, each bool 0 or 1)
        found = _MANGLED_LITERAL.findall(text)[:len(wanted)]
        if list(map(_literal_value, found)) != list(map(int, wanted)):
            return (f"its kernel {symbol} is {kernel} with other template arguments than kernel.cu's "
                    f"<{', '.join(map(str, wanted))}>")
    return None


def _literal_value(literal: tuple[str, str, str]) -> int:
    """The int a mangled literal ``(type, "n" or "", digits)`` compares as (what ``int()`` of
    :func:`_mangled_args`' value gives: a bool literal is 0 or 1)."""
    kind, minus, digits = literal
    number = int(digits)
    if kind == "b":
        return 1 if number else 0
    return -number if minus else number
