"""The one place DeepEP versions are registered, and the questions answered by asking every adapter.

``ADAPTERS`` lists one :class:`~jitcache.adapters.base.DeepEPAdapter` per
version, in the order an ``api = "auto"`` search tries them (2.5 first: its
headers ship in an sdist anyone can fetch). Adding a version is one adapter
module and one line here (see docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jitcache.adapters.base import BuildJob, DeepEPAdapter, LearnedKernel, Toolchain
from jitcache.adapters.deepep21 import DeepEP21
from jitcache.adapters.deepep25 import DeepEP25
from jitcache.adapters.learn import header_for
from jitcache.errors import ToolchainError, UsageError
from jitcache.types import DEEP_EP_VERSIONS

if TYPE_CHECKING:
    from jitcache.adapters.deepjit import CompilerOptions
    from jitcache.planning.variants import WarmupPlan

__all__ = ["ADAPTERS", "adapter", "adapter_for_buffer", "adapter_for_headers", "adapter_for_layout", "adapters_for",
           "buffer_api", "derive_jobs_from_entry", "find_entries", "jobs_for_plan", "parse_entry_name"]

ADAPTERS: tuple[DeepEPAdapter, ...] = (DeepEP25(), DeepEP21())
_BY_VERSION: dict[str, DeepEPAdapter] = {a.version: a for a in ADAPTERS}
assert tuple(_BY_VERSION) == DEEP_EP_VERSIONS, "jitcache.types.DeepEPVersion must list every registered adapter"


def adapter(version: str) -> DeepEPAdapter:
    """The adapter of ``version`` ("2.5", "2.1"); :class:`UsageError` naming the known ones otherwise."""
    found = _BY_VERSION.get(version)
    if found is None:
        raise UsageError(f"DeepEP {version!r} has no jitcache adapter; known: {', '.join(_BY_VERSION)}")
    return found


def adapters_for(api: str) -> tuple[DeepEPAdapter, ...]:
    """The adapters a profile's ``[deep_ep] api`` allows, in search order (``"auto"``: all)."""
    return ADAPTERS if api == "auto" else (adapter(api),)


def adapter_for_layout(layout: str) -> DeepEPAdapter | None:
    """The adapter whose on-disk layout the store calls ``layout`` (``CacheEntry.format``)."""
    return next((a for a in ADAPTERS if a.layout == layout), None)


def parse_entry_name(dirname: str) -> tuple[DeepEPAdapter, str, str] | None:
    """``(adapter, family, digest)`` for a directory name under a DeepEP ``cache/``, else None."""
    for candidate in ADAPTERS:
        parsed = candidate.parse_entry_name(dirname)
        if parsed is not None:
            return candidate, parsed[0], parsed[1]
    return None


def adapter_for_headers(include_root: Path) -> DeepEPAdapter | None:
    """The version whose headers ``include_root`` (the folder holding ``deep_ep/``) holds, else None."""
    return next((a for a in ADAPTERS if a.has_headers(include_root)), None)


def adapter_for_buffer(buffer: Any) -> DeepEPAdapter:
    """The adapter of a DeepEP buffer instance or class (``EPBuffer``: 2.5, ``ElasticBuffer``: 2.1).

    Subclasses are recognised through their MRO. Raises :class:`UsageError` naming the type otherwise.
    """
    cls = buffer if isinstance(buffer, type) else type(buffer)
    by_class = {a.buffer_class: a for a in ADAPTERS}
    for klass in cls.__mro__:
        found = by_class.get(klass.__name__)
        if found is not None:
            return found
    packages = dict.fromkeys(p for a in ADAPTERS for p in a.packages)
    raise UsageError(f"{cls.__module__}.{cls.__qualname__} is not a DeepEP buffer "
                     f"(expected {' or '.join(by_class)} from {' or '.join(packages)})")


def buffer_api(buffer: Any) -> str:
    """``"2.5"`` for an ``EPBuffer`` (``deep_ep`` or ``deep_ep_v25``), ``"2.1"`` for an ``ElasticBuffer``."""
    return adapter_for_buffer(buffer).version


# -- jobs ------------------------------------------------------------------------------------------------


def jobs_for_plan(the_plan: WarmupPlan, toolchain: Toolchain, *, options: CompilerOptions | None = None,
                  with_barrier: bool = True) -> tuple[BuildJob, ...]:
    """One :class:`BuildJob` per variant of ``the_plan``, by the rules of the headers' DeepEP (2.5 or 2.1)."""
    wanted = the_plan.profile.deep_ep.api
    if wanted not in ("auto", toolchain.deep_ep_api):
        raise ToolchainError(
            f"{the_plan.profile.source}: [deep_ep] api = {wanted!r}, but the DeepEP headers found "
            f"({toolchain.deep_ep_include}) are DeepEP {toolchain.deep_ep_api}",
            hint="pass --deep-ep-include with that version's headers, `jitcache sources fetch` (2.5), "
                 "`pip install tokenspeed-deepep` (2.1), or set api = \"auto\"")
    return adapter(toolchain.deep_ep_api).jobs_for_plan(the_plan, toolchain, options=options,
                                                        with_barrier=with_barrier)


def find_entries(path: str | Path) -> list[LearnedKernel]:
    """Entries at ``path``: one entry dir, a dir of entries, or a DeepEP cache root (with ``cache/``)."""
    path = Path(path)
    candidates = [path] if (path / "kernel.cu").is_file() else sorted(
        p for p in ((path / "cache") if (path / "cache").is_dir() else path).iterdir() if p.is_dir())
    found = []
    for entry in candidates:
        if not (entry / "kernel.cu").is_file():
            continue
        parsed = parse_entry_name(entry.name)
        if parsed:
            found.append(LearnedKernel(entry, parsed[0].version, parsed[1], parsed[2],
                                       (entry / "kernel.cu").read_text(encoding="utf-8")))
    if not found:
        raise UsageError(f"--learn-from {path}: no DeepEP cache entry (<name>.<digest>/kernel.cu) there")
    return found


def derive_jobs_from_entry(the_plan: WarmupPlan, toolchain: Toolchain, learn_from: str | Path) -> tuple[BuildJob, ...]:
    """Jobs for every plan bucket of each family that ``learn_from`` has an entry of, digest rule checked first.

    For a DeepEP whose rendering rules jitcache does not carry, one live call
    per kernel family is enough: its ``kernel.cu`` differs from every other
    bucket's only in ``num_max_tokens_per_rank`` (:mod:`.learn`); the entry's
    adapter recomputes its digest before deriving anything.
    """
    entries = find_entries(learn_from)
    buckets: dict[str, set[int]] = {}
    for v in the_plan:
        buckets.setdefault(v.family, set()).add(v.num_max_tokens_per_rank)
    jobs: dict[str, BuildJob] = {}
    for known in entries:
        if known.name not in buckets:
            continue
        header = header_for(known.source, toolchain.deep_ep_include)
        derived = adapter(known.api).derive_jobs(known, toolchain, header, sorted(buckets[known.name]),
                                                 the_plan.profile.target.arch)
        for job in derived:
            jobs.setdefault(job.entry, job)
    if not jobs:
        raise UsageError(f"--learn-from {learn_from}: none of its entries ({', '.join(e.name for e in entries)}) "
                         f"is a kernel family of the plan ({', '.join(buckets)})")
    return tuple(jobs.values())
