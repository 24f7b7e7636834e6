"""Readers for the native cache formats: one directory in, one :class:`CacheEntry` out.

A reader never raises for a damaged entry: what is wrong becomes a
:class:`Problem` on the entry, so one bad directory cannot hide the rest
of the cache.

- DeepJIT (DeepEP 2.5, DeepGEMM): ``cache/<name>.<32 hex>/`` with
  ``kernel.cu``, ``kernel.cubin``, ``meta.json`` and ``.committed``; DeepJIT
  only sees an entry whose ``.committed`` exists and touches its mtime on a hit.
- DeepEP 2.1: ``cache/kernel.<name>.<32 hex>/`` with ``kernel.cu`` and
  ``kernel.cubin`` (optionally ``.ptx``/``.sass``), no marker, no metadata.
- Triton: ``<base32 key>/`` holding ``__grp__<name>.json`` (``child_paths``:
  file name -> absolute path) and the files it lists; Triton recompiles when
  any listed path is missing.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .elf import CubinInfo, InvalidCubin, arch_problem, entry_symbol_problem, normalize_arch, parse_cubin
from .kernels import parse_source, symbol_problem
from .model import CacheEntry, Problem
from .publish import COMMIT_MARKER
from .reading import read_bytes_and_stat, read_text
from .verdicts import VerdictCache

if TYPE_CHECKING:
    from jitcache.adapters.layouts import EntryLayoutRules

__all__ = [
    "DEEP_EP_FAMILIES",
    "TRITON_KEY",
    "classify_deep_ep_name",
    "is_deep_ep_kernel",
    "permission_problems",
    "read_deep_ep_entry",
    "read_triton_entry",
]

TRITON_KEY = re.compile(r"^[A-Z2-7]{16,}=*$")
_NVCC_RELEASE = re.compile(r"release (\d+\.\d+), V([\d.]+)")


#: DeepEP's own JIT names (``jit->compile("<name>", ...)`` in DeepEP 2.5's sources; 2.1 uses a subset, plus
#: the hybrid kernels). DeepGEMM writes the same ``<name>.<32 hex>`` entries into a shared DeepJIT root
#: (both default to ``$HOME/.dj``): an entry whose name is not one of these, and whose kernel.cu does not
#: instantiate a ``deep_ep::`` template, is another tool's, and jitcache never prunes, moves or ships it.
DEEP_EP_FAMILIES = frozenset({
    "barrier", "bucket_all_reduce", "bucket_hybrid_all_gather", "bucket_rdma_all_gather",
    "bucket_reduce_scatter", "combine", "combine_reduce_epilogue", "dispatch", "dispatch_copy_epilogue",
    "engram_fetch", "engram_fetch_wait", "ep_lb_prefetch_weights", "ep_lb_reduce_grads", "hybrid_combine",
    "hybrid_dispatch", "pp_recv", "pp_send",
})


_DEEP_EP_NAMESPACE = re.compile(r"\bdeep_ep::")


def is_deep_ep_kernel(family: str, params: dict[str, Any], source: str = "") -> bool:
    """Whether an entry is DeepEP's: one of its JIT names, or a kernel.cu in DeepEP's namespace
    (``deep_ep::ep::dispatch_impl<...>``, or 2.1's ``using namespace deep_ep::...``)."""
    if family in DEEP_EP_FAMILIES:
        return True
    if str(params.get("namespace", "")).split("::")[0] == "deep_ep":
        return True
    return bool(_DEEP_EP_NAMESPACE.search(source))


def classify_deep_ep_name(name: str) -> tuple[str, str, str] | None:
    """``(format, family, key)`` for an entry directory name under ``cache/``, else ``None``."""
    parsed = parse_layout_name(name)
    return None if parsed is None else (parsed[0].layout, parsed[1], parsed[2])


def _tree_stats(path: Path) -> tuple[int, list[tuple[Path, os.stat_result]]]:
    total, items = 0, []
    for current, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            item = Path(current) / name
            try:
                st = item.lstat()
            except OSError:
                continue
            items.append((item, st))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total, items


def permission_problems(path: Path | str, key: str | None,
                        items: Sequence[tuple[Path | str, os.stat_result]] | None = None,
                        ) -> list[Problem]:
    """Writable by group/others, or owned by someone else: a cubin here runs on the GPU as us.

    Symlinks are followed, as every runtime follows them: what counts is the
    file or directory a link lands on, and the directory holding that target
    (whoever can write it can swap the target). A dangling link is left to the
    missing-file checks.
    """
    problems: list[Problem] = []
    uid = os.getuid()
    try:
        top = os.lstat(path)
    except OSError:
        return problems
    if _plainly_ours(top, uid) and (not items or all(_plainly_ours(st, uid) for _, st in items)):
        return problems  # the common case: no symlink to follow, nothing to report
    for item, st in [(path, top), *(items or [])]:
        checks = [(item, st, "")]
        if stat.S_ISLNK(st.st_mode):
            try:
                target = Path(item).resolve(strict=True)
                checks = [(target, target.stat(), f" (through the symlink {item})"),
                          (target.parent, target.parent.stat(), f" (it holds the target of the symlink {item})")]
            except (OSError, RuntimeError):
                continue
        for where, info, via in checks:
            if info.st_uid != uid:
                problems.append(Problem("foreign_owner", str(where),
                                        f"owned by uid {info.st_uid}, not by the current user (uid {uid}){via}", key))
                return problems
            if info.st_mode & 0o022 and not (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
                                             and via.startswith(" (it holds")):
                problems.append(Problem("unsafe_permissions", str(where),
                                        f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}){via}",
                                        key))
                return problems
    return problems


def _plainly_ours(st: os.stat_result, uid: int) -> bool:
    """Not a symlink, owned by ``uid``, writable by neither group nor others: what
    :func:`permission_problems` passes without a word."""
    return st.st_uid == uid and not st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode)


def _stat_last_used(st: os.stat_result | None) -> float | None:
    return None if st is None else max(st.st_mtime, st.st_atime)


def _last_used(path: Path) -> float | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return max(st.st_mtime, st.st_atime)


def _scan_tree(top: str) -> tuple[int, list[tuple[str, os.stat_result]], dict[str, os.stat_result]]:
    """Bytes of regular files, ``(path, lstat)`` of everything below ``top``, and lstat by name at its top.

    One ``scandir`` per directory and one ``lstat`` per item: the stats that
    every later check of the entry reuses.
    """
    total, items, top_level = 0, [], {}
    stack = [top]
    while stack:
        current = stack.pop()
        try:
            listing = os.scandir(current)
        except OSError:
            continue
        with listing:
            for item in listing:
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                items.append((item.path, st))
                if current is top:
                    top_level[item.name] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(item.path)
                elif stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total, items, top_level


def _followed(path: str, st: os.stat_result | None) -> os.stat_result | None:
    """``stat`` (following a symlink) from an ``lstat`` result; ``None`` when absent or dangling."""
    if st is None or not stat.S_ISLNK(st.st_mode):
        return st
    try:
        return os.stat(path)
    except OSError:
        return None


def _check_stat(path: str, st: os.stat_result | None, key: str, problems: list[Problem]) -> bool:
    """True if ``st`` (a ``stat`` already taken; ``None``: absent) is a non-empty regular file; records
    the problem otherwise."""
    if st is not None and st.st_size and stat.S_ISREG(st.st_mode):
        return True
    name = os.path.basename(path)
    if st is None:
        problems.append(Problem("missing_file", path, f"{name} is missing", key))
    elif not stat.S_ISREG(st.st_mode):
        problems.append(Problem("missing_file", path, f"{name} is not a regular file", key))
    else:
        problems.append(Problem("empty_file", path, f"{name} is empty", key))
    return False


def _decoded_source(path: str, verdicts: VerdictCache, st: os.stat_result,
                    directory: str | None = None) -> tuple[dict[str, Any] | None, bool]:
    """``(template parameters or None, whether the source is in DeepEP's namespace)`` of ``kernel.cu``.

    ``directory``: the folder ``path`` is ``kernel.cu`` of (the verdict's key), when the caller knows it.
    """
    if directory is None:
        directory = path.rpartition("/")[0]
    name = path[len(directory) + 1:]
    hit, facts = verdicts.get_in(directory, name, st)
    if hit and isinstance(facts, list) and len(facts) == 2:
        return facts[0], bool(facts[1])
    try:
        data, after = read_bytes_and_stat(path, st.st_size)
    except OSError:
        return None, False
    text = data.decode("utf-8", errors="replace")
    decoded = parse_source(text)
    in_namespace = _DEEP_EP_NAMESPACE.search(text) is not None
    verdicts.put_in(directory, name, st, after, [decoded, in_namespace])
    return decoded, in_namespace


def _cubin_facts(path: str, verdicts: VerdictCache, st: os.stat_result, directory: str | None = None) -> CubinInfo:
    """:func:`read_cubin`, or the remembered verdict of the same bytes; raises :class:`InvalidCubin`."""
    if directory is None:
        directory = path.rpartition("/")[0]
    name = path[len(directory) + 1:]
    hit, facts = verdicts.get_in(directory, name, st)
    if not hit:
        try:
            data, after = read_bytes_and_stat(path, st.st_size)
        except OSError as exc:
            raise InvalidCubin(Path(path), f"unreadable ({exc.strerror})") from None
        try:
            info = parse_cubin(data, path)
        except InvalidCubin as exc:
            facts = ["invalid", exc.reason]
        else:
            facts = ["ok", info.abi_version, info.sm, info.arch, info.ptxas_version, list(info.entry_symbols)]
            verdicts.put_in(directory, name, st, after, facts)
            if info.size == st.st_size:
                return info  # what the facts below would build again
        verdicts.put_in(directory, name, st, after, facts)
    if facts[0] != "ok":
        raise InvalidCubin(Path(path), str(facts[1]))
    _, abi, sm, arch, ptxas, entries = facts
    return CubinInfo(path=path, size=st.st_size, abi_version=abi, sm=sm, arch=arch, ptxas_version=ptxas,
                     entry_symbols=tuple(entries))


def _meta_facts(path: str, verdicts: VerdictCache, st: os.stat_result,
                directory: str | None = None) -> tuple[str | None, str | None, str | None]:
    """``(why meta.json is bad or None, nvcc version or None, the arch it was compiled for or None)``."""
    if directory is None:
        directory = path.rpartition("/")[0]
    name = path[len(directory) + 1:]
    hit, facts = verdicts.get_in(directory, name, st)
    if hit:
        return facts[0], facts[1], facts[2]
    try:
        data, after = read_bytes_and_stat(path, st.st_size)
    except OSError as exc:
        return f"meta.json is unreadable ({exc.strerror})", None, None
    meta, why = _parse_meta(data)
    facts = [None, _nvcc_version(meta), _arch_in_meta(meta)] if meta is not None else [why, None, None]
    verdicts.put_in(directory, name, st, after, facts)
    return facts[0], facts[1], facts[2]


def parse_layout_name(dirname: str) -> tuple[EntryLayoutRules, str, str] | None:
    """:func:`jitcache.adapters.layouts.parse_entry_name` (the adapters' layouts, no adapter imported), that
    module loaded on first use: a scan of an empty root, or ``inspect`` on one, loads nothing of the adapters."""
    global parse_layout_name
    from jitcache.adapters.layouts import parse_entry_name

    parse_layout_name = parse_entry_name
    return parse_entry_name(dirname)


def _entry_adapter(name: str) -> tuple[EntryLayoutRules, str, str, str] | None:
    """``(layout rules, format, family, key)`` of an entry directory name, else ``None``: what
    :func:`classify_deep_ep_name` gives, with the layout's marker and metadata file
    (:mod:`jitcache.adapters.layouts`: no adapter is imported)."""
    parsed = parse_layout_name(name)
    if parsed is None:
        return None
    rules = parsed[0]
    return rules, rules.layout, parsed[1], parsed[2]


def read_deep_ep_entry(path: Path | str, *, check_cubin: bool = True, expected_arch: str | None = None,
                       verdicts: VerdictCache | None = None) -> CacheEntry:
    """Read one ``cache/`` subdirectory of a DeepEP cache (either layout).

    With ``check_cubin`` the cubin's ELF is read: a CUDA ELF, exactly one
    kernel, the one ``kernel.cu`` instantiates, for the arch ``meta.json``
    records and, if given, ``expected_arch`` (the serving GPU's).
    ``verdicts`` remembers what was read out of each file (see
    :mod:`.verdicts`); every check on the entry runs either way, on fresh
    ``lstat`` results.
    """
    if verdicts is None:
        verdicts = VerdictCache(None)
    top = str(path)
    name = os.path.basename(top.rstrip("/"))
    kind = _entry_adapter(name)
    size, items, files = _scan_tree(top)
    problems: list[Problem] = permission_problems(top, name, items)
    if kind is None:
        problems.append(Problem("unknown_entry", top,
                                "not a DeepEP cache entry name (<name>.<32 hex> or kernel.<name>.<32 hex>)", name))
        return CacheEntry("deep_ep", "unknown", name, "", top, size, _last_used(Path(top)),
                          problems=tuple(problems))
    layout, fmt, family, key = kind
    meta_file = layout.meta_file if layout is not None else None
    prefix = os.path.join(top, "")  # "<top>/": every file's path is prefix + its name, as os.path.join spells it
    directory = prefix[:-1]
    params: dict[str, Any] = {}
    compiler = arch = None
    in_namespace = False
    source = prefix + "kernel.cu"
    source_st = _followed(source, files.get("kernel.cu"))
    if _check_stat(source, source_st, name, problems):
        assert source_st is not None
        decoded, in_namespace = _decoded_source(source, verdicts, source_st, directory)
        if decoded is None:
            problems.append(Problem("undecoded_source", source,
                                    "no template instantiation found in kernel.cu", name))
        else:
            params = dict(decoded)
    if family not in DEEP_EP_FAMILIES and not is_deep_ep_kernel(family, params, "deep_ep::" if in_namespace else ""):
        foreign = Problem("foreign_entry", top, f"not a DeepEP kernel ({family!r}: DeepGEMM's or another "
                          "tool's, in a shared DeepJIT root?): jitcache leaves it alone", name)
        marker_st = _followed(prefix + COMMIT_MARKER, files.get(COMMIT_MARKER))
        cubin_st = _followed(prefix + "kernel.cubin", files.get("kernel.cubin"))
        return CacheEntry("deep_ep", fmt, family, key, top, size,
                          _stat_last_used(marker_st) or _stat_last_used(cubin_st), params=params,
                          problems=(foreign,), foreign=True,
                          files=tuple(sorted(n for n, st in files.items() if stat.S_ISREG(st.st_mode))))
    meta_path = prefix + (meta_file or "meta.json")
    meta_st = _followed(meta_path, files.get(meta_file or "meta.json"))
    meta_why = meta_nvcc = meta_arch = None
    if meta_file is not None and meta_st is not None:
        meta_why, meta_nvcc, meta_arch = _meta_facts(meta_path, verdicts, meta_st, directory)
    cubin = prefix + "kernel.cubin"
    cubin_st = _followed(cubin, files.get("kernel.cubin"))
    if _check_stat(cubin, cubin_st, name, problems) and check_cubin:
        assert cubin_st is not None
        try:
            info = _cubin_facts(cubin, verdicts, cubin_st, directory)
        except InvalidCubin as exc:
            problems.append(Problem("invalid_cubin", cubin, exc.reason, name))
        else:
            arch = info.arch
            compiler = f"ptxas {info.ptxas_version}" if info.ptxas_version else None
            if (why := entry_symbol_problem(info) or symbol_problem(info.entry_symbols, params)) is not None:
                problems.append(Problem("entry_symbols", cubin, why, name))
            if (why := arch_problem(info, expected_arch, source="--arch")) is not None:
                problems.append(Problem("wrong_arch", cubin, why, name))
            elif meta_file is not None and (why := arch_problem(info, meta_arch, source=meta_file)) is not None:
                problems.append(Problem("wrong_arch", cubin, why, name))

    last_used = max(cubin_st.st_mtime, cubin_st.st_atime) if cubin_st is not None else None
    if layout is not None and layout.commit_marker is not None:
        marker = prefix + layout.commit_marker
        marker_st = _followed(marker, files.get(layout.commit_marker))
        if marker_st is not None:
            last_used = marker_st.st_mtime
        else:
            problems.append(Problem("not_committed", marker,
                                    f"no {layout.commit_marker} marker: DeepJIT treats it as absent, then fails to "
                                    "publish over it and loads it anyway", name))
    if meta_file is not None:
        if meta_st is None:
            problems.append(Problem("missing_meta", meta_path, "meta.json is missing", name))
        elif meta_why is not None:
            problems.append(Problem("bad_meta", meta_path, meta_why, name))
        elif meta_nvcc is not None:
            compiler = f"nvcc {meta_nvcc}"
    return CacheEntry("deep_ep", fmt, family, key, top, size, last_used, params=params,
                      compiler=compiler, arch=arch, problems=tuple(problems),
                      files=tuple(sorted(n for n, st in files.items() if stat.S_ISREG(st.st_mode))))


def _parse_meta(data: bytes) -> tuple[dict | None, str]:
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"meta.json is not valid JSON ({exc})"
    if not isinstance(parsed, dict):
        return None, f"meta.json must hold a JSON object, got {type(parsed).__name__}"
    return parsed, ""


_GPU_ARCH_FLAG = re.compile(r"(?:--gpu-architecture[= ]|-arch[= ])(\S+)")


def _arch_in_meta(meta: dict) -> str | None:
    """The arch DeepJIT compiled for, as ``meta.json`` records it (``compiler_options.arch`` or the command)."""
    options = meta.get("compiler_options")
    if isinstance(options, dict) and (arch := normalize_arch(options.get("arch"))):
        return arch
    command = meta.get("command")
    if isinstance(command, str) and (match := _GPU_ARCH_FLAG.search(command)):
        return normalize_arch(match.group(1))
    return None


def _nvcc_version(meta: dict) -> str | None:
    info = meta.get("compiler_info")
    version = info.get("version") if isinstance(info, dict) else None
    if isinstance(version, str) and (match := _NVCC_RELEASE.search(version)):
        return match.group(2)
    return None


def iter_triton_groups(path: Path) -> Iterator[Path]:
    return iter(sorted(path.glob("__grp__*.json")))


def read_triton_entry(path: Path, *, check_cubin: bool = True, verdicts: VerdictCache | None = None) -> CacheEntry:
    """Read one Triton cache key directory (a compiled kernel group, or a support file such as a launcher)."""
    if verdicts is None:
        verdicts = VerdictCache(None)
    key = path.name
    size, items = _tree_stats(path)
    problems = permission_problems(path, key, items)
    groups = list(iter_triton_groups(path))
    params: dict[str, Any] = {}
    compiler = arch = None
    last_used = None
    family = ""
    for group in groups:
        family = group.name[len("__grp__"):-len(".json")]
        last_used = max(last_used or 0.0, _last_used(group) or 0.0) or None
        try:
            data = json.loads(read_text(group))  # the group file's atime is Triton's "last used"
            children = data["child_paths"]
            if not isinstance(children, dict):
                raise TypeError("child_paths is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(Problem("bad_group", str(group), f"unreadable Triton group file ({exc})", key))
            continue
        for child_name, child_path in sorted(children.items()):
            local = path / child_name
            if not (isinstance(child_path, str) and os.path.exists(child_path)):
                problems.append(Problem("group_missing_file", str(local),
                                        f"group lists {child_name} at {child_path}, which does not exist "
                                        "(Triton recompiles the kernel)", key))
            elif Path(child_path).resolve().parent != path.resolve():
                problems.append(Problem("group_missing_file", str(local),
                                        f"group points {child_name} outside its directory: {child_path}", key))
        meta_file = path / f"{family}.json"
        meta = json.loads(read_text(meta_file)) if _is_json_object(meta_file) else {}
        for name in ("num_warps", "num_stages", "num_ctas", "shared"):
            if name in meta:
                params[name] = meta[name]
        if "triton_version" in meta:
            compiler = f"triton {meta['triton_version']}"
        target = meta.get("target")
        if isinstance(target, dict) and "arch" in target:
            arch = f"{target.get('backend', 'cuda')}:{target['arch']}"
        cubin = path / f"{family}.cubin"
        if check_cubin and cubin.exists() and cubin.stat().st_size:
            try:
                arch = _cubin_facts(str(cubin), verdicts, cubin.stat()).arch
            except InvalidCubin as exc:
                problems.append(Problem("invalid_cubin", str(cubin), exc.reason, key))
    if not groups:
        files = sorted(p.name for p, st in items if stat.S_ISREG(st.st_mode))
        family = files[0] if files else ""
        last_used = max((_last_used(p) or 0.0 for p, st in items), default=0.0) or _last_used(path)
    return CacheEntry("triton", "triton", family, key, str(path), size, last_used, params=params,
                      compiler=compiler, arch=arch, problems=tuple(problems),
                      files=tuple(sorted(p.name for p, st in items if p.parent == path and stat.S_ISREG(st.st_mode))))


def _is_json_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(read_text(path)), dict)
    except (OSError, ValueError):
        return False
