"""Find what would crash or mislead a runtime, and repair it by quarantine, never by deletion.

Planned first, run second: :func:`verify` scans and plans (touches nothing),
:func:`repair` runs a plan under the root lock. ``--dry-run`` is the plan
alone. A repair moves each broken entry (and each orphaned build directory)
to ``<root>/quarantine/<timestamp>/...`` with one rename: the runtime then
sees a miss and recompiles, instead of aborting on the entry (DeepEP's
"Corrupted JIT cache directory ... please run rm -rf"), and the user keeps
the evidence.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from jitcache.errors import CacheError

from .model import SCHEMA_VERSION, Problem
from .owners import orphan_reason
from .publish import fsync_dir
from .root import CacheRoot, LockHolder, make_private_dir
from .scan import ORPHAN_AGE_S, CacheReport, scan

__all__ = ["QuarantineMove", "RepairResult", "VerifyReport", "repair", "verify"]


@dataclass(frozen=True)
class QuarantineMove:
    """Move ``source`` to ``destination`` because of ``codes``."""

    source: str
    destination: str
    codes: tuple[str, ...]
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "codes": list(self.codes),
                "size": self.size}


@dataclass(frozen=True)
class VerifyReport:
    """A scan's problems and the repair that would fix them."""

    scan: CacheReport
    moves: tuple[QuarantineMove, ...]
    unrepairable: tuple[Problem, ...]  # e.g. a root writable by others: a human must decide

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.scan.all_problems()

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "root": self.scan.root, "deep_ep_dir": self.scan.deep_ep_dir,
                "triton_dir": self.scan.triton_dir, "ok": self.ok,
                "entries_checked": len(self.scan.entries),
                "errors": sum(p.severity == "error" for p in self.problems),
                "warnings": sum(p.severity == "warning" for p in self.problems),
                "problems": [p.to_dict() for p in self.problems],
                "repair_plan": [m.to_dict() for m in self.moves],
                "unrepairable": [p.to_dict() for p in self.unrepairable]}


@dataclass(frozen=True)
class RepairResult:
    moved: tuple[QuarantineMove, ...]
    failed: tuple[tuple[QuarantineMove, str], ...]
    skipped: tuple[QuarantineMove, ...]  # gone (or fixed by a runtime) before we got to it

    def to_dict(self) -> dict[str, Any]:
        return {"moved": [m.to_dict() for m in self.moved],
                "failed": [{**m.to_dict(), "error": why} for m, why in self.failed],
                "skipped": [m.to_dict() for m in self.skipped]}


def _quarantine_name(root: CacheRoot) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return root.quarantine_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"


def verify(root: CacheRoot, *, check_cubins: bool = True, orphan_age: float = ORPHAN_AGE_S,
           expected_arch: str | None = None) -> VerifyReport:
    """Scan ``root`` and plan a quarantine move for every broken entry and orphaned build.

    ``expected_arch``: the serving GPU's arch; a cubin for another is broken.
    """
    report = scan(root, check_cubins=check_cubins, orphan_age=orphan_age, expected_arch=expected_arch)
    batch = _quarantine_name(root)
    moves: list[QuarantineMove] = []
    for entry in report.entries:
        if entry.status == "broken" and not entry.foreign:  # another tool's entry is its own business
            codes = tuple(sorted({p.code for p in entry.problems if p.severity == "error"}))
            moves.append(QuarantineMove(entry.path, str(batch / _relative(root, Path(entry.path))), codes,
                                        entry.size))
    unrepairable = []
    now = time.time()
    for problem in report.problems:
        if problem.code == "orphan_build":
            path = Path(problem.path)
            found = orphan_reason(path, now, orphan_age)
            if found is not None and not found[1]:
                continue  # reported, but perhaps another host's build: moved only once old
            moves.append(QuarantineMove(str(path), str(batch / _relative(root, path)), (problem.code,),
                                        _size(path)))
        elif problem.severity == "error":
            unrepairable.append(problem)
    return VerifyReport(scan=report, moves=tuple(moves), unrepairable=tuple(unrepairable))


def repair(root: CacheRoot, report: VerifyReport, *, on_wait: Callable[[LockHolder], None] | None = None,
           timeout: float | None = None) -> RepairResult:
    """Run ``report``'s moves under the root lock. Each move is one rename: all or nothing per entry."""
    moved, failed, skipped = [], [], []
    if not report.moves:
        return RepairResult((), (), ())
    with root.lock(command="jitcache verify --repair", on_wait=on_wait, timeout=timeout):
        for move in report.moves:
            source, destination = Path(move.source), Path(move.destination)
            if not source.exists():
                skipped.append(move)
                continue
            try:
                make_private_dir(destination.parent)
                os.rename(source, destination)
            except (OSError, CacheError) as exc:
                failed.append((move, getattr(exc, "strerror", None) or str(exc)))
                continue
            fsync_dir(source.parent)
            moved.append(move)
    return RepairResult(tuple(moved), tuple(failed), tuple(skipped))


def _relative(root: CacheRoot, path: Path) -> Path:
    try:
        return path.relative_to(root.path)
    except ValueError:
        return Path(path.name)


def _size(path: Path) -> int:
    total = 0
    for current, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(current) / name).lstat().st_size
            except OSError:
                pass
    return total
