"""Least-recently-used eviction, planned first (a frozen plan that knows what it frees), run second.

``last_used`` is what each runtime touches on a hit (see :class:`CacheEntry`).
Entries that a kept profile's warmup plan needs are never chosen; broken
entries are left to ``verify --repair`` (quarantine, not deletion); another
tool's entries in a shared root (DeepGEMM's) are never chosen, only listed.
Removal renames the entry out of ``cache/`` first (one atomic step: a
runtime sees the entry or a miss, never half of it), then deletes it.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from jitcache.errors import UsageError

from .model import SCHEMA_VERSION, CacheEntry
from .publish import fsync_dir, remove_tree
from .root import CacheRoot, LockHolder, make_private_dir
from .scan import CacheReport, coverage, scan

__all__ = ["PrunePlan", "PruneResult", "parse_age", "parse_size", "plan_prune", "prune"]

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1000, "KIB": 1024, "M": 1024**2, "MB": 1000**2, "MIB": 1024**2,
               "G": 1024**3, "GB": 1000**3, "GIB": 1024**3, "T": 1024**4, "TB": 1000**4, "TIB": 1024**4}
_AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``"10G"``, ``"500MiB"``, ``"1.5GB"``, ``"0"`` -> bytes (K/M/G/T and KiB... are binary, KB... decimal)."""
    raw = text.strip().replace(" ", "")
    number = raw.rstrip("BbIiKkMmGgTt")
    unit = raw[len(number):].upper()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if value < 0 or unit not in _SIZE_UNITS:
        raise UsageError(f"--max-size: cannot read {text!r} as a size", hint="use e.g. 500M, 10G, 1.5GiB, 2TB")
    return int(value * _SIZE_UNITS[unit])


def parse_age(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"`` (or ``"90min"``), ``"45s"``, ``"2w"`` -> seconds.

    The unit is required: a bare ``5`` could mean days as well as seconds, and read as seconds it empties a cache.
    """
    raw = text.strip()
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):]
    hint = "give a unit: 30d, 12h, 90m, 45s (or 2w)"
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if value >= 0 and not unit:
        raise UsageError(f"--older-than {text!r}: a unit is required", hint=hint)
    if value < 0 or unit not in _AGE_UNITS:
        raise UsageError(f"--older-than: cannot read {text!r} as an age", hint=hint)
    return value * _AGE_UNITS[unit]


@dataclass(frozen=True)
class PrunePlan:
    """What a prune will remove, why, and what it keeps."""

    remove: tuple[CacheEntry, ...]
    reasons: tuple[str, ...]          # one per removed entry: "older_than" or "max_size"
    protected: tuple[str, ...]        # paths a kept profile needs
    size_before: int
    max_size: int | None
    older_than: float | None
    foreign: tuple[str, ...] = ()     # paths of other tools' entries (DeepGEMM's): never removed
    protected_size: int = 0           # bytes of the protected entries

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.remove)

    @property
    def size_after(self) -> int:
        return self.size_before - self.freed

    @property
    def max_size_reached(self) -> bool | None:
        """Whether the cache fits in ``max_size`` afterwards (``None`` without ``--max-size``); it does not
        when the entries a kept profile needs (or broken ones, left to ``verify --repair``) are larger."""
        return None if self.max_size is None else self.size_after <= self.max_size

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "max_size": self.max_size, "older_than_s": self.older_than,
                "size_before": self.size_before, "size_after": self.size_after, "freed": self.freed,
                "num_protected": len(self.protected), "foreign": list(self.foreign),
                "max_size_reached": self.max_size_reached, "protected_size": self.protected_size,
                "remove": [{**e.to_dict(), "reason": why} for e, why in zip(self.remove, self.reasons)]}


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[CacheEntry, ...]
    failed: tuple[tuple[CacheEntry, str], ...]

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed)


def plan_prune(report: CacheReport, *, max_size: int | None = None, older_than: float | None = None,
               keep_plans: Iterable[Any] = (), now: float | None = None) -> PrunePlan:
    """Choose entries to remove: those unused for ``older_than`` seconds, then the least recently
    used until the cache fits in ``max_size`` bytes. Entries a plan in ``keep_plans`` needs stay."""
    now = time.time() if now is None else now
    protected: set[str] = set()
    for kept in keep_plans:
        for _, paths in coverage(kept, report.entries).present:
            protected.update(paths)
    candidates = sorted((e for e in report.entries
                         if e.path not in protected and e.status != "broken" and not e.foreign),
                        key=lambda e: (e.last_used or 0.0, e.path))
    foreign = tuple(e.path for e in report.entries if e.foreign)
    remove: list[CacheEntry] = []
    reasons: list[str] = []
    size = report.size
    for entry in candidates:
        if older_than is not None and (entry.last_used or 0.0) < now - older_than:
            why = "older_than"
        elif max_size is not None and size > max_size:
            why = "max_size"
        else:
            continue
        remove.append(entry)
        reasons.append(why)
        size -= entry.size
    protected_size = sum(e.size for e in report.entries if e.path in protected)
    return PrunePlan(tuple(remove), tuple(reasons), tuple(sorted(protected)), report.size, max_size, older_than,
                     foreign, protected_size)


def prune(root: CacheRoot, the_plan: PrunePlan, *, on_wait: Callable[[LockHolder], None] | None = None,
          timeout: float | None = None) -> PruneResult:
    """Remove the plan's entries under the root lock."""
    removed, failed = [], []
    if not the_plan.remove:
        return PruneResult((), ())
    with root.lock(command="jitcache prune", on_wait=on_wait, timeout=timeout):
        trash = root.meta_dir / "trash"
        make_private_dir(trash)
        for leftover in trash.iterdir():  # a prune killed mid-delete
            remove_tree(leftover)
        for entry in the_plan.remove:
            source = Path(entry.path)
            if not source.exists():
                continue
            doomed = trash / f"{source.name}.{uuid.uuid4().hex[:8]}"
            try:
                os.rename(source, doomed)
            except OSError as exc:
                failed.append((entry, exc.strerror or str(exc)))
                continue
            fsync_dir(source.parent)
            remove_tree(doomed)
            removed.append(entry)
    return PruneResult(tuple(removed), tuple(failed))


def scan_and_plan(root: CacheRoot, **kwargs: Any) -> PrunePlan:
    return plan_prune(scan(root, check_cubins=False), **kwargs)
