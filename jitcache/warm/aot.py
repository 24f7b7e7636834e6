"""The plan-level AOT compile: :func:`warmup_aot` runs a plan's jobs into a root, split over the ranks.

The jobs run in the parallel pool (:mod:`jitcache.build.pool`), dealt out
round-robin over torch.distributed ranks and exchanged between them
(:mod:`jitcache.warm.exchange`). The library entry point that does
everything ``jitcache warmup --aot`` does (profile, toolchain, learn-from,
Triton, distributed, remote) is :func:`jitcache.warm.aot_entry.aot_warmup`;
the live warmup's precompile and the remote warmup call :func:`warmup_aot`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any, Callable, Sequence

from jitcache.adapters.base import BuildJob, Toolchain
from jitcache.adapters.registry import jobs_for_plan
from jitcache.build.pool import AotReport, VariantResult, run_jobs, write_report
from jitcache.errors import UsageError
from jitcache.planning.variants import WarmupPlan
from jitcache.store.root import CacheRoot
from jitcache.warm.collectives import initialized_dist
from jitcache.warm.exchange import exchange_entries, local_world_size

__all__ = ["warmup_aot"]

log = logging.getLogger("jitcache.aot")


def warmup_aot(the_plan: WarmupPlan, toolchain: Toolchain | None, root: CacheRoot, *, jobs: Sequence[BuildJob] | None = None,
               extra_jobs: Sequence[BuildJob] = (), num_workers: int | None = None, distributed: bool | None = None, group: Any = None,
               on_result: Callable[[VariantResult], None] | None = None) -> AotReport:
    """Compile every variant of ``the_plan`` into ``root`` (see the module docstring); returns the report.

    ``distributed=None`` splits the work over torch.distributed ranks when a
    process group is initialised; ``False`` makes every rank build everything
    (locks still make that once per node). Split over ranks, ``num_workers=None``
    means the cores divided by torchrun's ``LOCAL_WORLD_SIZE`` (the ranks of
    this node); the report's ``jobs`` is the number used. ``extra_jobs``
    (Triton's, from :func:`jitcache.build.triton_aot.jobs_for_triton`) run in the
    same pool; with ``toolchain=None`` and no ``jobs`` they are the whole run.
    Under torch.distributed an exception while compiling fails this rank's
    jobs instead of leaving the barrier that its peers wait in.
    """
    start = time.perf_counter()
    if jobs is not None:
        deep_ep_jobs = tuple(jobs)
    else:
        deep_ep_jobs = jobs_for_plan(the_plan, toolchain) if toolchain is not None else ()
    all_jobs = deep_ep_jobs + tuple(extra_jobs)
    dist = initialized_dist() if distributed in (None, True) else None
    if distributed and dist is None:
        raise UsageError("--distributed needs an initialised torch.distributed process group")
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if dist else (0, 1)
    mine = all_jobs[rank::world]
    if num_workers is None and dist is not None:
        # Every rank of the node starts a pool: share the cores rather than oversubscribe them N-fold.
        num_workers = max(1, (os.cpu_count() or 1) // local_world_size())
    workers = max(1, num_workers or os.cpu_count() or 1)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        results, run_dir = run_jobs(mine, root, num_workers=workers, run_id=run_id, on_result=on_result)
    except Exception as exc:
        if dist is None:
            raise
        # A rank leaving here would skip the barrier below while its peers wait in it: fail its jobs instead.
        log.warning("rank %d: the AOT compile raised %s: %s", rank, type(exc).__name__, exc)
        run_dir = root.meta_dir / "aot" / run_id
        results = tuple(VariantResult(entry=j.entry, label=j.label, status="failed", seconds=0.0, family=j.family,
                                      num_max_tokens_per_rank=j.num_max_tokens_per_rank, backend=j.backend,
                                      message=f"{type(exc).__name__}: {exc}") for j in mine)
    received: tuple[str, ...] = ()
    if dist is not None:
        dist.barrier(group=group)
        received = exchange_entries(all_jobs, root, group)
        dist.barrier(group=group)
        others = [j for j in all_jobs if j not in mine]
        results = results + tuple(
            VariantResult(entry=j.entry, label=j.label, status="received" if j.entry in received else "cached",
                          seconds=0.0, family=j.family, num_max_tokens_per_rank=j.num_max_tokens_per_rank,
                          backend=j.backend)
            for j in others)
    report = AotReport(profile=the_plan.profile.name, deep_ep_api=toolchain.deep_ep_api if toolchain else "n/a",
                       cache_dir=str(root.deep_ep_dir), jobs=workers,
                       wall_seconds=time.perf_counter() - start, results=results,
                       toolchain=toolchain.to_dict() if toolchain else {},
                       rank=rank, world_size=world,
                       triton_dir=None if root.triton_dir is None else str(root.triton_dir))
    return write_report(report, run_dir)

