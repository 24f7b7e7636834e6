"""Scan a whole cache into one frozen report; a damaged entry is a problem in it, never an abort.

Entry points: :func:`scan` (a jitcache root: DeepEP and Triton folders),
:func:`scan_deep_ep` (any DeepEP cache dir, including one DeepEP wrote on its
own) and :func:`scan_triton`; :func:`coverage` tells which variants of a
warmup plan have an entry. Scanning never takes the lock and changes no entry;
:func:`scan` remembers what it read in ``<meta>/verdicts.json`` (:mod:`.verdicts`).
"""

from __future__ import annotations

import gc
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .formats import TRITON_KEY, permission_problems, read_deep_ep_entry, read_triton_entry
from .model import SCHEMA_VERSION, CacheEntry, Problem, iso_time
from .owners import orphan_reason
from .root import CacheRoot
from .verdicts import VerdictCache

__all__ = ["DEEP_EP_CHILDREN", "ORPHAN_AGE_S", "ROOT_CHILDREN", "CacheReport", "Coverage", "coverage", "entry_matches", "scan", "scan_deep_ep",
           "scan_triton"]

#: A build directory untouched for this long belongs to a compile that died
#: (a DeepEP compile takes ~12 s; a live one keeps writing).
ORPHAN_AGE_S = 3600.0


@dataclass(frozen=True)
class CacheReport:
    """Everything one scan saw. ``problems`` holds those outside entries (root, orphans)."""

    root: str | None
    deep_ep_dir: str | None
    triton_dir: str | None
    entries: tuple[CacheEntry, ...]
    problems: tuple[Problem, ...] = ()
    scanned_at: float = field(default_factory=time.time)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def all_problems(self) -> tuple[Problem, ...]:
        return self.problems + tuple(p for e in self.entries for p in e.problems)

    @property
    def broken(self) -> tuple[CacheEntry, ...]:
        return tuple(e for e in self.entries if e.status == "broken")

    def summary(self) -> list[dict[str, Any]]:
        """Entries and bytes per (backend, family), sorted."""
        groups: dict[tuple[str, str], list[CacheEntry]] = defaultdict(list)
        for entry in self.entries:
            groups[(entry.backend, entry.family)].append(entry)
        return [{"backend": b, "family": f, "entries": len(es), "size": sum(e.size for e in es),
                 "broken": sum(e.status == "broken" for e in es)}
                for (b, f), es in sorted(groups.items())]

    def to_dict(self) -> dict[str, Any]:
        problems = self.all_problems()
        return {
            "schema": SCHEMA_VERSION,
            "root": self.root,
            "deep_ep_dir": self.deep_ep_dir,
            "triton_dir": self.triton_dir,
            "scanned_at": iso_time(self.scanned_at),
            "totals": {"entries": len(self.entries), "size": self.size, "broken": len(self.broken),
                       "errors": sum(p.severity == "error" for p in problems),
                       "warnings": sum(p.severity == "warning" for p in problems)},
            "summary": self.summary(),
            "entries": [e.to_dict() for e in self.entries],
            "problems": [p.to_dict() for p in problems],
        }


def _orphans(tmp_dir: Path, now: float, min_age: float) -> list[Problem]:
    """Build directories nobody is writing to: a dead owner's at once, an unknown owner's by age."""
    problems: list[Problem] = []
    if not tmp_dir.is_dir():
        return problems
    for child in sorted(tmp_dir.iterdir()):
        found = orphan_reason(child, now, min_age)
        if found is not None:
            problems.append(Problem("orphan_build", str(child), found[0]))
    return problems


#: What a jitcache root, and a DeepEP cache dir, hold; anything else in them is reported as stray.
ROOT_CHILDREN = frozenset({"CACHEDIR.TAG", "deep_ep", "triton", "meta", "quarantine", "sources"})
DEEP_EP_CHILDREN = frozenset({"cache", "tmp", ".jitcache"})


def _stray(path: Path, what: str) -> Problem:
    return Problem("stray_file", str(path), f"{what} is not part of the cache layout (left there by hand or by "
                   "another tool; jitcache neither reads nor removes it)")


def stray_problems(directory: Path, known: frozenset[str], what: str) -> list[Problem]:
    """Names in ``directory`` that the layout does not have (a warning each; nothing is touched)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [_stray(directory / name, f"{what} {name!r}") for name in names if name not in known]


def scan_deep_ep(directory: str | Path, *, check_cubins: bool = True, orphan_age: float = ORPHAN_AGE_S,
                 expected_arch: str | None = None, verdicts: VerdictCache | None = None,
                 ) -> tuple[tuple[CacheEntry, ...], tuple[Problem, ...]]:
    """Every entry under ``<directory>/cache/`` (both DeepEP layouts) and the problems outside them.

    An entry that is a symlink is read through it, as DeepEP does (its
    target's permissions count); a file, or anything else that is not a
    directory, in ``cache/`` is a ``stray_file`` warning. ``verdicts``: what
    earlier scans read out of the files (:mod:`.verdicts`).
    """
    directory = Path(directory)
    verdicts = verdicts if verdicts is not None else VerdictCache(None)
    entries = []
    problems: list[Problem] = []
    try:
        with os.scandir(directory / "cache") as listing:
            children = sorted(listing, key=lambda item: item.name)
    except OSError:
        children = []
    for child in children:  # one scandir: d_type says what each child is without a stat
        if child.name.startswith(".") and ".deleting-" in child.name:
            continue  # remove_tree's rename-then-delete in flight
        if not child.is_dir():
            problems.append(_stray(Path(child.path), f"{'symlink' if child.is_symlink() else 'file'} "
                                                     f"{child.name!r} in cache/"))
            continue
        entries.append(read_deep_ep_entry(child.path, check_cubin=check_cubins, expected_arch=expected_arch,
                                          verdicts=verdicts))
    problems += _orphans(directory / "tmp", time.time(), orphan_age)
    return tuple(entries), tuple(problems)


def scan_triton(directory: str | Path, *, check_cubins: bool = True, orphan_age: float = ORPHAN_AGE_S,
                verdicts: VerdictCache | None = None) -> tuple[tuple[CacheEntry, ...], tuple[Problem, ...]]:
    """Every key directory of a Triton cache, Triton's leftover ``tmp.pid_*`` write directories,
    and jitcache's own dead build directories under ``tmp/``."""
    directory = Path(directory)
    entries: list[CacheEntry] = []
    now = time.time()
    problems = _orphans(directory / "tmp", now, orphan_age)
    if directory.is_dir():
        for child in sorted(directory.iterdir()):
            if not child.is_dir() or child.is_symlink() or not TRITON_KEY.match(child.name):
                continue
            entries.append(read_triton_entry(child, check_cubin=check_cubins, verdicts=verdicts))
            for leftover in sorted(child.glob("tmp.pid_*")):
                age = now - leftover.lstat().st_mtime
                if age >= orphan_age:
                    problems.append(Problem("orphan_build", str(leftover),
                                            f"Triton write directory left for {age / 3600:.1f} h", child.name))
    return tuple(entries), tuple(problems)


def scan(root: CacheRoot, *, check_cubins: bool = True, orphan_age: float = ORPHAN_AGE_S,
         expected_arch: str | None = None) -> CacheReport:
    """Scan a jitcache root (or, for ``CacheRoot.for_deep_ep_dir``, a bare DeepEP cache).

    ``expected_arch`` (``verify --arch sm_90a``): every cubin must be for it.
    What was read out of each file is remembered in the root's meta folder
    (:mod:`.verdicts`), so the next scan (``verify`` after ``inspect``,
    ``export`` after ``verify``) reads only what changed; every check runs
    on every scan.
    """
    with _collector_paused():
        return _scan(root, check_cubins=check_cubins, orphan_age=orphan_age, expected_arch=expected_arch)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a scan runs (back as it was after).

    A scan builds tens of objects per entry and frees none of them: each
    generational pass the allocations trigger walks every object of the
    report so far for nothing (10-20% of a 10,000-entry cold scan). The
    objects a scan makes hold no reference cycles, and nothing is collected
    later that would not be collected anyway.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _scan(root: CacheRoot, *, check_cubins: bool, orphan_age: float, expected_arch: str | None) -> CacheReport:
    verdicts = VerdictCache.for_root(root) if check_cubins else VerdictCache(None)
    problems: list[Problem] = []
    # The folders a runtime resolves entries through: whoever can write them can swap a cubin.
    for directory in (root.path, root.deep_ep_dir, root.deep_ep_dir / "cache", root.triton_dir):
        if directory is not None and directory.exists():
            problems += permission_problems(directory, None)
    if not root.external and root.path.is_dir():
        problems += stray_problems(root.path, ROOT_CHILDREN, "root entry")
    if root.deep_ep_dir.is_dir():
        problems += stray_problems(root.deep_ep_dir, DEEP_EP_CHILDREN, "DeepEP cache dir entry")
    deep_entries, deep_problems = scan_deep_ep(root.deep_ep_dir, check_cubins=check_cubins, orphan_age=orphan_age,
                                               expected_arch=expected_arch, verdicts=verdicts)
    entries, problems = list(deep_entries), problems + list(deep_problems)
    if root.triton_dir is not None:
        tri_entries, tri_problems = scan_triton(root.triton_dir, check_cubins=check_cubins, orphan_age=orphan_age,
                                                verdicts=verdicts)
        entries += tri_entries
        problems += tri_problems
    verdicts.save()
    return CacheReport(root=str(root.path), deep_ep_dir=str(root.deep_ep_dir),
                       triton_dir=None if root.triton_dir is None else str(root.triton_dir),
                       entries=tuple(entries), problems=tuple(problems))


# -- coverage against a plan ------------------------------------------------------------------


def entry_matches(entry: CacheEntry, variant: Any) -> bool:
    """Whether ``entry`` is the kernel ``variant`` (a :class:`jitcache.planning.variants.KernelVariant`) asks for.

    Same family, and every parameter the plan decides equal to the decoded
    one. Parameters the plan leaves to the GPU (SM count, warps, QPs,
    timeouts) are not compared; a plan parameter the entry does not carry
    (an older DeepEP's template) does not count against it.
    """
    if entry.backend != "deep_ep" or entry.family != variant.family or entry.status == "broken":
        return False
    params = entry.params
    if "template_args" in params:
        return False
    for name, value in variant.params:
        if name in params and params[name] != value:
            return False
    # a buffer kernel (the barrier) has no bucket; a bucket's variant needs the decoded one
    return variant.num_max_tokens_per_rank is None or "num_max_tokens_per_rank" in params


@dataclass(frozen=True)
class Coverage:
    """Which variants of a plan have a usable entry: ``present`` maps variant index -> entry paths."""

    plan: Any
    present: tuple[tuple[int, tuple[str, ...]], ...]
    missing: tuple[Any, ...]

    @property
    def num_variants(self) -> int:
        """Every kernel serving loads: the plan's variants and the buffer's barrier."""
        return len(_kernels(self.plan))

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.plan.profile.name, "plan_fingerprint": self.plan.fingerprint(),
                "num_variants": self.num_variants, "num_present": len(self.present),
                "num_missing": len(self.missing), "missing": [v.to_dict() for v in self.missing]}


def _kernels(plan: Any) -> tuple[Any, ...]:
    return tuple(getattr(plan, "kernels", plan.variants))


def coverage(plan: Any, entries: Iterable[CacheEntry]) -> Coverage:
    """Match every plan variant against the entries (see :func:`entry_matches`)."""
    by_family: dict[str, list[CacheEntry]] = defaultdict(list)
    for entry in entries:
        by_family[entry.family].append(entry)
    present, missing = [], []
    for index, variant in enumerate(_kernels(plan)):
        found = tuple(e.path for e in by_family.get(variant.family, ()) if entry_matches(e, variant))
        if found:
            present.append((index, found))
        else:
            missing.append(variant)
    return Coverage(plan=plan, present=tuple(present), missing=tuple(missing))
