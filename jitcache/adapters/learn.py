"""Learn-from-live: derive every bucket's source from one entry DeepEP itself wrote.

For a DeepEP whose rendering rules jitcache does not carry (DeepEP 2.1 here,
or a newer 2.x), one live call per kernel family is enough: its ``kernel.cu``
differs from every other bucket's only in ``num_max_tokens_per_rank``
(DeepEP computes no other template argument from it). The argument's position
is read from the kernel's own header (the template parameter named
``kNumMaxTokensPerRank``), so no version-specific table is needed.

Before deriving anything the known entry's digest is recomputed from its
``kernel.cu``, the headers and the flags; if it does not match the directory
name, the digest rule (or the flags/paths given) is not the one that DeepEP
used, and jitcache refuses rather than fill the cache with entries DeepEP
would never find.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from jitcache.build.pool import BuildJob
from jitcache.adapters.digest21 import IncludeHasher21, cache_key21, flags21, nvcc_command21, with_include_hash
from jitcache.adapters.deepjit import IncludeHasher, cache_key, meta_json, nvcc_command, options_from_meta
from jitcache.errors import ToolchainError, UsageError
from jitcache.store.publish import COMMIT_MARKER
from jitcache.build.toolchain import Toolchain
from jitcache.planning.variants import WarmupPlan

__all__ = ["LearnedKernel", "derive_jobs_from_entry", "find_entries", "substitute_nmax", "template_param_index"]

_ENTRY_25 = re.compile(r"(\w+)\.([0-9a-f]{32})")
_ENTRY_21 = re.compile(r"kernel\.(\w+)\.([0-9a-f]{32})")
_REF = re.compile(r"&(deep_ep::(?:\w+::)*)(\w+)<([^;]*)>\)")
_INCLUDE = re.compile(r"#include <(deep_ep/[^>]+)>")


@dataclass(frozen=True)
class LearnedKernel:
    path: Path
    api: str            # "2.5" or "2.1"
    name: str
    digest: str
    source: str         # kernel.cu as DeepEP wrote it


def find_entries(path: str | Path) -> list[LearnedKernel]:
    """Entries at ``path``: one entry dir, a dir of entries, or a DeepEP cache root (with ``cache/``)."""
    path = Path(path)
    candidates = [path] if (path / "kernel.cu").is_file() else sorted(
        p for p in ((path / "cache") if (path / "cache").is_dir() else path).iterdir() if p.is_dir())
    found = []
    for entry in candidates:
        if not (entry / "kernel.cu").is_file():
            continue
        m21, m25 = _ENTRY_21.fullmatch(entry.name), _ENTRY_25.fullmatch(entry.name)
        match, api = (m21, "2.1") if m21 else (m25, "2.5")
        if match:
            found.append(LearnedKernel(entry, api, match.group(1), match.group(2),
                                       (entry / "kernel.cu").read_text(encoding="utf-8")))
    if not found:
        raise UsageError(f"--learn-from {path}: no DeepEP cache entry (<name>.<digest>/kernel.cu) there")
    return found


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
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
        raise ValueError(f"{function} is not defined in its header")
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
    raise ValueError(f"{function} has no template parameter {param}")


def substitute_nmax(source: str, header_text: str, value: int) -> tuple[str, int]:
    """``source`` with its kernel's num_max_tokens_per_rank argument replaced; returns (source, old value)."""
    ref = _REF.search(source)
    if ref is None:
        raise ValueError("no `&deep_ep::...<...>)` kernel reference in kernel.cu")
    index = template_param_index(header_text, ref.group(2))
    args = _split_top_level(ref.group(3))
    old = int(args[index])
    args[index] = str(value)
    new_ref = f"&{ref.group(1)}{ref.group(2)}<{', '.join(args)}>)"
    return source[:ref.start()] + new_ref + source[ref.end():], old


def _header_for(source: str, include_root: Path) -> str:
    match = _INCLUDE.search(source)
    if match is None:
        raise ValueError("kernel.cu includes no <deep_ep/...> header")
    return (include_root / match.group(1)).read_text(encoding="utf-8")


def derive_jobs_from_entry(the_plan: WarmupPlan, toolchain: Toolchain, learn_from: str | Path) -> tuple[BuildJob, ...]:
    """Jobs for every plan bucket of each family that ``learn_from`` has an entry of, digest rule checked first."""
    entries = find_entries(learn_from)
    buckets: dict[str, set[int]] = {}
    for v in the_plan:
        buckets.setdefault(v.family, set()).add(v.num_max_tokens_per_rank)
    jobs: dict[str, BuildJob] = {}
    for known in entries:
        if known.name not in buckets:
            continue
        for job in _derive(known, toolchain, sorted(buckets[known.name]), the_plan.profile.target.arch):
            jobs.setdefault(job.entry, job)
    if not jobs:
        raise UsageError(f"--learn-from {learn_from}: none of its entries ({', '.join(e.name for e in entries)}) "
                         f"is a kernel family of the plan ({', '.join(buckets)})")
    return tuple(jobs.values())


def _derive(known: LearnedKernel, toolchain: Toolchain, values: Iterable[int], arch: str) -> list[BuildJob]:
    header = _header_for(known.source, toolchain.deep_ep_include)
    if known.api == "2.5":
        return _derive25(known, toolchain, header, values)
    return _derive21(known, toolchain, header, values, arch)


def _refuse(known: LearnedKernel, computed: str, why: str) -> ToolchainError:
    return ToolchainError(
        f"{known.path}: recomputed digest {computed} does not match the entry's {known.digest}; {why}",
        hint="learn from an entry written with these headers and this nvcc, or pass the serving machine's paths "
             "(--target-nccl-include); jitcache will not write entries DeepEP would never find")


def _derive25(known: LearnedKernel, toolchain: Toolchain, header: str, values: Iterable[int]) -> list[BuildJob]:
    meta_path = known.path / "meta.json"
    try:
        learned = options_from_meta(meta_path.read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise ToolchainError(f"{meta_path}: cannot read the entry's flags ({exc})") from None
    includes = IncludeHasher([toolchain.deep_ep_include])
    computed = cache_key(known.source, learned.options, learned.nvcc_version_output, includes)
    if computed != known.digest:
        raise _refuse(known, computed, "the headers differ from the ones DeepEP used, or the digest rule changed")
    local_includes = [str(toolchain.deep_ep_include), str(toolchain.nccl_include)]
    jobs = []
    for value in values:
        source, _ = substitute_nmax(known.source, header, value)
        digest = cache_key(source, learned.options, learned.nvcc_version_output, includes)
        meta = meta_json(nvcc_command(learned.nvcc_path, "{dir}", learned.options, learned.include_dirs),
                         python_library_root=learned.python_library_root, include_dirs=learned.include_dirs,
                         nvcc_path=learned.nvcc_path, nvcc_version_output=learned.nvcc_version_output,
                         options=learned.options, extra_signature=learned.extra_signature,
                         include_prefixes=learned.include_prefixes)
        jobs.append(BuildJob(entry=f"{known.name}.{digest}", label=f"{known.name} nmax={value} (learned)",
                             files=(("kernel.cu", source),),
                             argv=tuple(nvcc_command(toolchain.nvcc, "{dir}", learned.options, local_includes)),
                             after=(("meta.json", meta),), marker=COMMIT_MARKER, num_max_tokens_per_rank=value,
                             family=known.name))
    return jobs


def _derive21(known: LearnedKernel, toolchain: Toolchain, header: str, values: Iterable[int],
              arch: str) -> list[BuildJob]:
    first, _, generated = known.source.partition("\n")
    includes = IncludeHasher21(toolchain.deep_ep_include)
    if with_include_hash(generated, includes) != known.source:
        raise ToolchainError(f"{known.path}/kernel.cu: its includes' hash ({first}) differs from the local DeepEP "
                             f"headers' ({toolchain.deep_ep_include})",
                             hint="use the headers of the DeepEP version that wrote the entry (--deep-ep-include)")
    nccl_root = str(Path(toolchain.target_nccl_include).parent)
    library_include = str(Path(toolchain.python_library_root) / "include")
    major, minor = toolchain.nvcc_release
    flags = flags21(arch=arch, nccl_root=nccl_root, library_include=library_include)
    computed = cache_key21(known.name, known.source, flags, major, minor)
    if computed != known.digest:
        raise _refuse(known, computed, f"flags tried: {flags!r}")
    local_flags = flags.replace(f"-I{library_include} ", f"-I{toolchain.deep_ep_include} ") + \
        f" -I {toolchain.nccl_include}"
    jobs = []
    for value in values:
        new_generated, _ = substitute_nmax(generated, header, value)
        code = with_include_hash(new_generated, includes)
        digest = cache_key21(known.name, code, flags, major, minor)
        jobs.append(BuildJob(entry=f"kernel.{known.name}.{digest}", label=f"{known.name} nmax={value} (learned 2.1)",
                             files=(("kernel.cu", code),),
                             argv=("/bin/sh", "-c", nvcc_command21(toolchain.nvcc, "{dir}", local_flags)),
                             marker=None, num_max_tokens_per_rank=value, family=known.name))
    return jobs

