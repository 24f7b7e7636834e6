"""Coverage by name: which planned entries the serving DeepEP will find, could find after a relocation, or lacks.

For every entry the serving DeepEP will look up for a plan
(:func:`jitcache.adapters.serving.planned_entries`):

- ``found``: a complete entry (its layout's commit rule) under exactly that
  name in one of the DeepEP cache roots;
- ``relocatable``: no entry under that name, but one under another name holds
  the very ``kernel.cu`` and a cubin built by the same nvcc release for the
  same arch (an entry built where ``deep_ep`` or NCCL lived elsewhere):
  :mod:`jitcache.store.relocate` can publish it under the right name;
- ``missing``: neither; serving would JIT-compile it.

Entries of the serving layout whose source matches no planned entry are
listed as ``unplanned`` (left alone). Nothing here writes.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from jitcache.adapters.serving import PlannedEntry, ServingDeepEP, entry_family, is_committed, planned_entries

from .model import SCHEMA_VERSION
from .reading import read_bytes

__all__ = ["FOUND", "MISSING", "RELOCATABLE", "NameCoverage", "Verdict", "name_coverage", "source_compatibility"]

FOUND, RELOCATABLE, MISSING = "found", "relocatable", "missing"


@dataclass(frozen=True)
class Verdict:
    """One planned entry: ``path`` is the entry found, or for ``relocatable`` the entry to copy from."""

    entry: PlannedEntry
    status: str
    path: str | None = None
    note: str = ""          # missing although an entry with its source exists: why it cannot be used

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry.to_dict(), "status": self.status, "path": self.path, "note": self.note or None}


@dataclass(frozen=True)
class NameCoverage:
    """Coverage of one plan for one serving DeepEP."""

    profile: str
    serving: ServingDeepEP
    roots: tuple[str, ...]
    verdicts: tuple[Verdict, ...]
    unplanned: tuple[str, ...] = ()

    def _with(self, status: str) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.status == status)

    @property
    def found(self) -> tuple[Verdict, ...]:
        return self._with(FOUND)

    @property
    def relocatable(self) -> tuple[Verdict, ...]:
        return self._with(RELOCATABLE)

    @property
    def missing(self) -> tuple[Verdict, ...]:
        return self._with(MISSING)

    @property
    def complete(self) -> bool:
        """The serving DeepEP will find every entry."""
        return all(v.status == FOUND for v in self.verdicts)

    def warm_buckets(self, buckets: Iterable[int]) -> frozenset[int]:
        """Buckets every one of whose planned entries is found."""
        cold = {v.entry.num_max_tokens_per_rank for v in self.verdicts if v.status != FOUND}
        return frozenset(b for b in buckets if b not in cold)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "profile": self.profile, "deep_ep": self.serving.to_dict(),
                "roots": list(self.roots), "num_entries": len(self.verdicts), "num_found": len(self.found),
                "num_relocatable": len(self.relocatable), "num_missing": len(self.missing),
                "complete": self.complete, "entries": [v.to_dict() for v in self.verdicts],
                "unplanned": list(self.unplanned)}


def _listing(roots: Sequence[Path]) -> list[tuple[Path, list[str]]]:
    out = []
    for root in roots:
        try:
            names = os.listdir(root / "cache")
        except OSError:
            names = []
        out.append((root / "cache", names))
    return out


def _read(path: Path) -> str | None:
    """A file's text, its atime left as it was (a maintenance read is not a use: :mod:`.reading`)."""
    try:
        return read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def source_compatibility(serving: ServingDeepEP, entry: Path, arch: str) -> str | None:
    """Why the cubin of ``entry`` cannot serve under another name (None: it can): wrong nvcc or arch."""
    if not (entry / "kernel.cubin").is_file():
        return "it has no kernel.cubin"
    meta_text = _read(entry / "meta.json")
    if meta_text is not None:
        try:
            meta = json.loads(meta_text)
            theirs_nvcc = str(meta["compiler_info"]["version"])
            theirs_arch = str(meta["compiler_options"]["arch"])
        except (ValueError, KeyError, TypeError):
            return "its meta.json is unreadable"
        from jitcache.adapters.base import release_line

        if release_line(theirs_nvcc) != serving.nvcc_release:
            return f"it was built by nvcc '{release_line(theirs_nvcc)}', the serving one is '{serving.nvcc_release}'"
        if theirs_arch.removeprefix("sm_") != arch.removeprefix("sm_"):
            return f"it was built for sm_{theirs_arch.removeprefix('sm_')}, the plan is for {arch}"
        return None
    from jitcache.store.elf import InvalidCubin, read_cubin

    try:
        info = read_cubin(entry / "kernel.cubin")
    except (InvalidCubin, OSError) as exc:
        return f"its cubin is unreadable ({exc})"
    if info.arch not in (arch, arch.rstrip("af")):  # "sm_90" when ptxas did not record the suffix
        return f"its cubin is for {info.arch}, the plan is for {arch}"
    return None


def name_coverage(the_plan: Any, serving: ServingDeepEP, roots: Sequence[str | Path], *, with_barrier: bool = True,
                  planned: Sequence[PlannedEntry] | None = None, report_unplanned: bool = True) -> NameCoverage:
    """Judge every planned entry of ``the_plan`` by the names ``serving`` will look up in ``roots``.

    ``roots``: the DeepEP cache roots, the writable one first (each holding ``cache/``).
    """
    paths = [Path(r) for r in roots]
    entries = tuple(planned) if planned is not None else planned_entries(the_plan, serving, with_barrier=with_barrier)
    arch = the_plan.profile.target.arch
    listing = _listing(paths)
    wanted = {e.name for e in entries}
    found: dict[str, str] = {}
    for cache, names in listing:
        for name in wanted.intersection(names):
            if name not in found and is_committed(serving.version, cache / name):
                found[name] = str(cache / name)
    missing = [e for e in entries if e.name not in found]
    # Other entries of this layout, by family: a relocatable source or an unplanned entry.
    by_source: dict[str, list[Path]] = defaultdict(list)
    families = {e.family for e in missing} if not report_unplanned else None
    unplanned: list[str] = []
    planned_sources = {e.kernel_cu for e in entries}
    if missing or report_unplanned:
        for cache, names in listing:
            for name in names:
                family = entry_family(serving.version, name)
                if family is None or name in wanted or (families is not None and family not in families):
                    continue
                path = cache / name
                text = _read(path / "kernel.cu")
                if text is None:
                    continue
                if text in planned_sources:
                    by_source[text].append(path)
                elif report_unplanned:
                    unplanned.append(str(path))
    verdicts = []
    for entry in entries:
        if entry.name in found:
            verdicts.append(Verdict(entry, FOUND, found[entry.name]))
            continue
        notes = []
        for source in by_source.get(entry.kernel_cu, ()):
            if not is_committed(serving.version, source):
                notes.append(f"{source.name}: not complete")
                continue
            why = source_compatibility(serving, source, arch)
            if why is None:
                verdicts.append(Verdict(entry, RELOCATABLE, str(source)))
                break
            notes.append(f"{source.name}: {why}")
        else:
            verdicts.append(Verdict(entry, MISSING, None, "; ".join(notes)))
    return NameCoverage(profile=the_plan.profile.name, serving=serving, roots=tuple(str(r) for r in paths),
                        verdicts=tuple(verdicts), unplanned=tuple(sorted(unplanned)))
