"""DeepEP's own JIT cache, read the way the DeepEP that serves reads it (roots, committed entries, warm buckets).

Which folders, which names and which commit rule are the version's
adapter's (:mod:`jitcache.adapters`); ``api`` is its version (``"2.5"``,
``"2.1"``). The runtime and the live warmup ask here what DeepEP would find.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from jitcache.adapters.registry import adapter
from jitcache.planning.profiles import Profile
from jitcache.planning.variants import plan
from jitcache.store.kernels import parse_source
from jitcache.store.model import CacheEntry
from jitcache.store.scan import coverage, scan_deep_ep

__all__ = ["committed_entries", "jit_cache_roots", "warm_buckets_from_cache"]


def jit_cache_roots(api: str, environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """DeepEP's JIT cache roots, the writable one first.

    2.5 (DeepJIT): ``EP_JIT_CACHE_DIR``, else ``DJ_JIT_CACHE_DIR``, else ``$HOME/.dj``; the
    value may be ``A:B:C`` (first writable, the others read-only lookups).
    2.1: ``EP_JIT_CACHE_DIR``, else ``$HOME/.deep_ep`` (one root).
    """
    return adapter(api).cache_roots(environ)


def committed_entries(api: str, roots: Iterable[str | Path]) -> frozenset[str]:
    """Names of the complete kernel entries under ``<root>/cache/`` of every root (a missing root is empty)."""
    version = adapter(api)
    names: set[str] = set()
    for root in roots:
        cache = Path(root) / "cache"
        try:
            children = list(os.scandir(cache))
        except OSError:
            continue
        for child in children:
            if child.is_dir() and version.parse_entry_name(child.name) and version.is_committed(Path(child.path)):
                names.add(child.name)
    return frozenset(names)


def warm_buckets_from_cache(api: str, roots: Iterable[str | Path], profile: Profile | None = None) -> frozenset[int]:
    """Buckets whose decode-mode kernels are already in DeepEP's cache (a scan of ``roots``).

    With a ``profile``: a bucket is warm when every decode variant the plan
    names for it (dispatch, copy epilogue, combine, reduce epilogue) has a
    usable entry (:func:`jitcache.store.scan.coverage`). Without one (a bare
    policy does not know the model): when a ``dispatch`` entry for that
    ``num_max_tokens_per_rank`` exists with ``do_cpu_sync=false`` and no slot
    reuse (the decode path), whatever its model.
    """
    version = adapter(api)
    entries: list[CacheEntry] = []
    for root in roots:
        found, _ = scan_deep_ep(root, check_cubins=False)
        entries.extend(e for e in found if e.status != "broken" and version.is_committed(Path(e.path)))
    if profile is not None:
        the_plan = plan(profile, ["decode"])
        missing = {v.num_max_tokens_per_rank for v in coverage(the_plan, entries).missing}
        return frozenset(b for b in the_plan.buckets if b not in missing)
    warm: set[int] = set()
    for entry in entries:
        params = entry.params if entry.family == "dispatch" else {}
        if not params and entry.family == "dispatch":
            try:
                params = parse_source((Path(entry.path) / "kernel.cu").read_text(errors="replace")) or {}
            except OSError:
                params = {}
        nmax = params.get("num_max_tokens_per_rank")
        if isinstance(nmax, int) and params.get("do_cpu_sync") is False and params.get("reuse_slot_indices") is False:
            warm.add(nmax)
    return frozenset(warm)
