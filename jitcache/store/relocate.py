"""Relocation: re-publish entries built for other install paths under the names the serving DeepEP computes.

An entry compiled where ``deep_ep`` or NCCL lived elsewhere (a CPU build box,
another image) holds the very ``kernel.cu`` serving asks for, and a cubin
valid here (the paths only enter the name and some embedded strings), under a
name this DeepEP never looks up. :func:`relocate` copies it, without
compiling, to the local name:

1. the source's own ``kernel.cu`` is read again and must equal the rendered
   one (with a plan) or name itself under the serving DeepEP (without one),
   and its cubin must be by the serving nvcc release for the plan's arch,
   before anything is written;
2. each copy is built in ``<deep_ep>/tmp/`` (same filesystem), DeepEP 2.5's
   ``meta.json`` rewritten for the serving machine's paths and the marker
   written inside; one ``syncfs`` makes them all durable, then each is
   published by one directory rename (the rename decides, as in
   :func:`jitcache.store.publish.publish_entry`): a relocation killed at any moment leaves whole entries
   only, and build dirs that ``verify --repair`` clears;
3. the old names stay (``jitcache prune`` removes what nothing uses).

On a read-only cache the coverage is still computed and the refusal says why;
nothing changes. :func:`relocate_entries` is the library entry point for code
that just published entries (``import``, a remote pull).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from jitcache.adapters.serving import (COMMIT_MARKER, ServingDeepEP, entry_family, is_committed, local_entry_name,
                                       serving_meta_json)
from jitcache.errors import CacheError

from .model import SCHEMA_VERSION
from .reading import read_bytes
from .names import RELOCATABLE, NameCoverage, name_coverage, source_compatibility
from .publish import fsync_dir, make_temp_dir, remove_tree
from .root import CacheRoot, LockHolder

__all__ = ["RelocationResult", "relocate", "relocate_entries", "relocate_for_plan", "writable_problem"]


@dataclass(frozen=True)
class RelocationResult:
    """What a relocation did: ``published`` maps new name -> the entry it was copied from."""

    deep_ep_dir: str
    serving: ServingDeepEP
    published: tuple[tuple[str, str], ...] = ()
    present: tuple[str, ...] = ()          # the local name was already there
    lost_race: tuple[str, ...] = ()        # another process published the same name meanwhile
    refused: tuple[tuple[str, str], ...] = ()   # (entry, why): its source or cubin does not fit
    unplanned: tuple[str, ...] = ()        # entries of this layout matching no planned entry: left alone
    coverage: NameCoverage | None = None   # before relocating (with a plan)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "deep_ep_dir": self.deep_ep_dir, "deep_ep": self.serving.to_dict(),
                "dry_run": self.dry_run,
                "published": [{"name": n, "from": s} for n, s in self.published],
                "present": list(self.present), "lost_race": list(self.lost_race),
                "refused": [{"entry": e, "why": w} for e, w in self.refused], "unplanned": list(self.unplanned),
                "coverage": None if self.coverage is None else self.coverage.to_dict()}


def writable_problem(directory: Path) -> str | None:
    """Why new entries cannot be published into ``directory``'s ``cache/`` (None: they can)."""
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        stat = os.statvfs(probe)
    except OSError as exc:
        return f"{probe}: {exc.strerror}"
    if stat.f_flag & getattr(os, "ST_RDONLY", 1):
        return f"{probe} is on a read-only filesystem"
    for path in (probe, directory / "cache", directory / "tmp"):
        if path.exists() and not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable by this user"
    return None


def _build_copy(deep_ep_dir: Path, source: Path, kernel_cu: str, serving: ServingDeepEP, arch: str) -> Path:
    """The relocated entry, complete with its marker, in a private build dir under ``<deep_ep>/tmp/``."""
    cubin = read_bytes(source / "kernel.cubin")
    tmp = make_temp_dir(deep_ep_dir)
    try:
        (tmp / "kernel.cu").write_text(kernel_cu, encoding="utf-8")
        (tmp / "kernel.cubin").write_bytes(cubin)
        meta = serving_meta_json(serving, arch)
        if meta is not None:
            (tmp / "meta.json").write_text(meta.replace("{dir}", str(tmp)), encoding="utf-8")
            (tmp / COMMIT_MARKER).write_bytes(b"")   # DeepJIT's marker, inside before the rename
        for item in tmp.iterdir():
            os.chmod(item, 0o644)
    except OSError as exc:
        remove_tree(tmp)
        raise CacheError(f"{tmp}: cannot write the relocated copy of {source.name} ({exc.strerror})",
                         path=tmp) from None
    return tmp


def _syncfs(path: Path) -> None:
    """Make what was written on ``path``'s filesystem durable: one ``syncfs(2)`` (``sync()`` where absent),
    instead of ~5 fsyncs per entry (a few ms each on a busy disk); the import does the same."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def _arch_of(source: Path, default: str | None) -> str | None:
    import json

    try:
        return "sm_" + str(json.loads(read_bytes(source / "meta.json"))["compiler_options"]["arch"]).removeprefix("sm_")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if default:
        return default
    from jitcache.store.elf import InvalidCubin, read_cubin

    try:
        return read_cubin(source / "kernel.cubin").arch
    except (InvalidCubin, OSError):
        return None


def relocate_entries(deep_ep_dir: str | Path, serving: ServingDeepEP, *, sources: Sequence[str | Path] | None = None,
                     arch: str | None = None, dry_run: bool = False,
                     _after_publish: Callable[[str], None] | None = None) -> RelocationResult:
    """Relocate entries by their own source, no plan needed (``import``, a remote pull).

    ``sources``: the entry dirs to consider (default: every entry of the
    serving layout under ``deep_ep_dir/cache``). Each is copied to the name
    the serving DeepEP computes for its ``kernel.cu`` (for ``arch``, default
    the one it was built for), when that differs and is not there yet.
    """
    deep_ep_dir = Path(deep_ep_dir)
    cache = deep_ep_dir / "cache"
    if sources is None:
        try:
            sources = sorted(cache / n for n in os.listdir(cache) if entry_family(serving.version, n))
        except OSError:
            sources = []
    plans: list[tuple[Path, str, str, str]] = []
    present, refused = [], []
    for source in (Path(s) for s in sources):
        family = entry_family(serving.version, source.name)
        if family is None or not is_committed(serving.version, source):
            continue
        try:
            kernel_cu = read_bytes(source / "kernel.cu").decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            refused.append((str(source), f"kernel.cu unreadable ({exc})"))
            continue
        entry_arch = _arch_of(source, arch)
        if entry_arch is None:
            refused.append((str(source), "its arch cannot be read"))
            continue
        try:
            name = local_entry_name(serving, family, kernel_cu, entry_arch)
        except (OSError, ValueError) as exc:
            refused.append((str(source), f"cannot hash its includes with the serving headers ({exc})"))
            continue
        if name is None:
            refused.append((str(source), "its includes' hash is not the serving DeepEP headers' (another DeepEP)"))
            continue
        if name == source.name:
            continue
        if (why := source_compatibility(serving, source, entry_arch)) is not None:
            refused.append((str(source), why))
            continue
        if is_committed(serving.version, cache / name):
            present.append(name)
            continue
        plans.append((source, name, kernel_cu, entry_arch))
    return _publish_all(deep_ep_dir, serving, plans, present, refused, (), None, dry_run, _after_publish)


def _publish_all(deep_ep_dir: Path, serving: ServingDeepEP, plans: list[tuple[Path, str, str, str]],
                 present: list[str], refused: list[tuple[str, str]], unplanned: tuple[str, ...],
                 coverage: NameCoverage | None, dry_run: bool,
                 after_publish: Callable[[str], None] | None) -> RelocationResult:
    published, lost = [], []
    if plans and not dry_run:
        if (why := writable_problem(deep_ep_dir)) is not None:
            raise CacheError(f"cannot relocate {len(plans)} entries into {deep_ep_dir / 'cache'}: {why}; "
                             "nothing was changed", path=deep_ep_dir,
                             hint="run it where the cache is writable (an init container), or "
                                  "point EP_JIT_CACHE_DIR at a writable root first")
        built: list[tuple[Path, str, Path]] = []
        try:
            for source, name, kernel_cu, arch in plans:
                try:
                    again = read_bytes(source / "kernel.cu").decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    again = None
                if again != kernel_cu:  # changed (or vanished) since it was judged: not the rendered source
                    refused.append((str(source), "its kernel.cu changed while relocating"))
                    continue
                built.append((_build_copy(deep_ep_dir, source, kernel_cu, serving, arch), name, source))
            cache = deep_ep_dir / "cache"
            cache.mkdir(parents=True, exist_ok=True)
            if built and os.stat(built[0][0]).st_dev != os.stat(cache).st_dev:
                raise CacheError(f"{deep_ep_dir / 'tmp'} and {cache} are on different filesystems: a rename would "
                                 "be a copy", path=cache)
            _syncfs(cache)  # every copy durable (files, markers, dirs) before a rename makes one visible
            while built:
                tmp, name, source = built.pop(0)
                try:
                    os.rename(tmp, cache / name)
                except OSError as exc:
                    remove_tree(tmp)
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        lost.append(name)
                        continue
                    raise CacheError(f"{cache / name}: cannot publish ({exc.strerror})", path=cache) from None
                published.append((name, str(source)))
                if after_publish is not None:
                    after_publish(name)
            fsync_dir(cache)
        finally:
            for tmp, _, _ in built:  # not published (an error): nothing half-visible stays behind
                remove_tree(tmp)
    elif dry_run:
        published = [(name, str(source)) for source, name, _, _ in plans]
    return RelocationResult(str(deep_ep_dir), serving, tuple(published), tuple(present), tuple(lost),
                            tuple(refused), unplanned, coverage, dry_run)


def relocate(root: CacheRoot, serving: ServingDeepEP, the_plan: Any = None, *, dry_run: bool = False,
             on_wait: Callable[[LockHolder], None] | None = None, timeout: float | None = None,
             _after_publish: Callable[[str], None] | None = None) -> RelocationResult:
    """Relocate what ``the_plan`` needs (every relocatable planned entry), or, without a plan, every entry
    of the serving layout by its own source; under the root lock when the root has one."""
    deep_ep_dir = root.deep_ep_dir
    if the_plan is None:
        if dry_run or writable_problem(deep_ep_dir) is not None:
            return relocate_entries(deep_ep_dir, serving, dry_run=True) if dry_run else \
                relocate_entries(deep_ep_dir, serving, _after_publish=_after_publish)
        with root.lock(command="jitcache relocate", on_wait=on_wait, timeout=timeout):
            return relocate_entries(deep_ep_dir, serving, _after_publish=_after_publish)
    if dry_run or writable_problem(deep_ep_dir) is not None:
        return relocate_for_plan(deep_ep_dir, serving, the_plan, dry_run=dry_run, _after_publish=_after_publish)
    with root.lock(command="jitcache relocate", on_wait=on_wait, timeout=timeout):
        return relocate_for_plan(deep_ep_dir, serving, the_plan, _after_publish=_after_publish)


def relocate_for_plan(deep_ep_dir: str | Path, serving: ServingDeepEP, the_plan: Any, *,
                      roots: Sequence[str | Path] | None = None, dry_run: bool = False,
                      _after_publish: Callable[[str], None] | None = None) -> RelocationResult:
    """Publish every relocatable planned entry of ``the_plan`` (sources found in ``roots``, default
    ``deep_ep_dir`` alone) into ``deep_ep_dir``, without a lock: each publish is one atomic rename, and two
    processes relocating the same entry end with one copy (the runtime's and the live warmup's path)."""
    deep_ep_dir = Path(deep_ep_dir)
    coverage = name_coverage(the_plan, serving, [deep_ep_dir, *(Path(r) for r in roots or () if Path(r) != deep_ep_dir)])
    plans = [(Path(v.path), v.entry.name, v.entry.kernel_cu, the_plan.profile.target.arch)
             for v in coverage.verdicts if v.status == RELOCATABLE and v.path]
    return _publish_all(deep_ep_dir, serving, plans, [], [], coverage.unplanned, coverage, dry_run, _after_publish)
