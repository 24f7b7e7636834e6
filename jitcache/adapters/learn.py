"""Learn-from-live, the version-free half: swap ``num_max_tokens_per_rank`` in a source DeepEP itself wrote.

For a DeepEP whose rendering rules jitcache does not carry (DeepEP 2.1 here,
or a newer 2.x), one live call per kernel family is enough: its ``kernel.cu``
differs from every other bucket's only in ``num_max_tokens_per_rank``
(DeepEP computes no other template argument from it). The argument's position
is read from the kernel's own header (the template parameter named
``kNumMaxTokensPerRank``), so no version-specific table is needed.

Before deriving anything the entry's adapter (``DeepEPAdapter.derive_jobs``)
recomputes the known entry's digest from its ``kernel.cu``, the headers and
the flags; if it does not match the directory name, the digest rule (or the
flags/paths given) is not the one that DeepEP used, and jitcache refuses
rather than fill the cache with entries DeepEP would never find.
:func:`jitcache.adapters.registry.derive_jobs_from_entry` puts the two halves together.
"""

from __future__ import annotations

import re
from pathlib import Path

from jitcache.errors import HeaderError

__all__ = ["header_for", "substitute_nmax", "template_param_index"]

_REF = re.compile(r"&(deep_ep::(?:\w+::)*)(\w+)<([^;]*)>\)")
_INCLUDE = re.compile(r"#include <(deep_ep/[^>]+)>")


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if current:
        parts.append("".join(current).strip())
    return parts


def template_param_index(header_text: str, function: str, param: str = "kNumMaxTokensPerRank") -> int:
    """Position of ``param`` in the template parameter list of ``function`` defined in ``header_text``."""
    definition = re.search(rf"\b{re.escape(function)}\s*\(", header_text)
    if definition is None:
        raise HeaderError(f"{function} is not defined in its header")
    start = header_text.rfind("template", 0, definition.start())
    open_at = header_text.index("<", start)
    depth, index = 0, open_at
    for index in range(open_at, definition.start()):
        depth += {"<": 1, ">": -1}.get(header_text[index], 0)
        if depth == 0:
            break
    params = _split_top_level(header_text[open_at + 1:index])
    for position, text in enumerate(params):
        if re.search(rf"\b{param}\b", text.split("=")[0]):
            return position
    raise HeaderError(f"{function} has no template parameter {param}")


def substitute_nmax(source: str, header_text: str, value: int) -> tuple[str, int]:
    """``source`` with its kernel's num_max_tokens_per_rank argument replaced; returns (source, old value)."""
    ref = _REF.search(source)
    if ref is None:
        raise HeaderError("no `&deep_ep::...<...>)` kernel reference in kernel.cu")
    index = template_param_index(header_text, ref.group(2))
    args = _split_top_level(ref.group(3))
    old = int(args[index])
    args[index] = str(value)
    new_ref = f"&{ref.group(1)}{ref.group(2)}<{', '.join(args)}>)"
    return source[:ref.start()] + new_ref + source[ref.end():], old


def header_for(source: str, include_root: Path) -> str:
    match = _INCLUDE.search(source)
    if match is None:
        raise HeaderError("kernel.cu includes no <deep_ep/...> header")
    return (include_root / match.group(1)).read_text(encoding="utf-8")
