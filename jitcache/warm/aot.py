"""The AOT warmup: the library call behind ``jitcache warmup --aot``, and the plan-level compile it runs.

:func:`aot_warmup` takes one frozen :class:`AotOptions` and does everything
the CLI's ``--aot`` does: load the profile and plan it, resolve the toolchain
(nvcc, the DeepEP headers of the profile's version, NCCL), apply
``--learn-from`` the way the entry's DeepEP adapter says (adopt its toolchain,
or derive every bucket from it), add the registered Triton kernels' jobs,
start a gloo group for ``distributed``, then :func:`warmup_aot`: the jobs in
the parallel pool (:mod:`jitcache.build.pool`), split over the ranks and
exchanged (:mod:`jitcache.warm.exchange`). It returns the report and prints
nothing; narration goes to the optional ``on_note`` callback.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from jitcache import settings
from jitcache.adapters.base import BuildJob, Toolchain
from jitcache.adapters.registry import adapter, derive_jobs_from_entry, jobs_for_plan
from jitcache.build.pool import AotReport, VariantResult, run_jobs, write_report
from jitcache.errors import JitCacheError, UsageError
from jitcache.planning.profiles import DEFAULT_PROFILE, load_profile
from jitcache.planning.variants import WarmupPlan, plan
from jitcache.store.root import CacheRoot, resolve_root
from jitcache.warm.collectives import initialized_dist
from jitcache.warm.exchange import exchange_entries, local_world_size

__all__ = ["AotOptions", "aot_warmup", "warmup_aot"]

log = logging.getLogger("jitcache.aot")


@dataclass(frozen=True)
class AotOptions:
    """What ``jitcache warmup --aot`` is asked to do (each field is the CLI option of the same name)."""

    profile: str | Path = DEFAULT_PROFILE
    modes: tuple[str, ...] | None = None
    cache_dir: str | Path | None = None
    jobs: int | None = None                      # nvcc processes per rank (None: cores, or cores / ranks of the node)
    nvcc: str | Path | None = None
    deep_ep_include: str | Path | None = None    # an include dir, a deep_ep package dir, or a DeepEP sdist
    nccl_include: str | Path | None = None
    target_nccl_include: str | None = None       # the NCCL include dir as the serving machine spells it
    target_deep_ep_root: str | None = None       # the deep_ep package dir as the serving machine spells it
    learn_from: str | Path | None = None         # an entry DeepEP wrote
    distributed: bool = False                    # split over torch.distributed ranks (a gloo group if none yet)
    triton_modules: tuple[str, ...] = ()         # modules registering Triton kernels (jitcache.triton.register)
    triton_only: bool = False                    # only the registered Triton kernels: no DeepEP toolchain

    def __post_init__(self) -> None:
        if self.triton_only and not self.triton_modules:
            raise UsageError("--triton-only needs at least one --triton-module registering kernels")
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"--jobs {self.jobs}: must be at least 1")


def _init_distributed() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        raise UsageError("--distributed needs torch", hint="pip install 'jitcache[torch]' or drop --distributed") from None
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # CPU work: no GPU needed to share entries


def _triton_jobs(options: AotOptions, the_plan: WarmupPlan, root: CacheRoot,
                 note: Callable[[str], None]) -> tuple[BuildJob, ...]:
    if not options.triton_modules:
        return ()
    from jitcache.build.triton_aot import import_kernel_modules, jobs_for_triton

    kernels = import_kernel_modules(options.triton_modules)
    if not kernels:
        raise UsageError(f"--triton-module {', '.join(options.triton_modules)}: no kernel was registered",
                         hint="the module must call jitcache.triton.register(kernel, args_for_bucket) on import")
    buckets = sorted({nmax for _, nmax in the_plan.steps()})
    arch = the_plan.profile.target.arch
    jobs = jobs_for_triton(kernels, buckets, arch)
    note(f"triton: {len(kernels)} kernels x {len(buckets)} buckets -> {len(jobs)} cache entries "
         f"for {arch} -> {root.triton_dir}")
    return tuple(jobs)


def aot_toolchain(options: AotOptions, the_plan: WarmupPlan,
                  root: CacheRoot) -> tuple[Toolchain, tuple[BuildJob, ...] | None]:
    """The toolchain for ``options`` and, when ``--learn-from`` derives them, the DeepEP jobs."""
    from jitcache.build.sources import sources_dir
    from jitcache.build.toolchain import resolve_toolchain

    toolchain = resolve_toolchain(nvcc=options.nvcc, deep_ep_include=options.deep_ep_include,
                                  nccl_include=options.nccl_include, target_nccl_include=options.target_nccl_include,
                                  python_library_root=options.target_deep_ep_root,
                                  api=the_plan.profile.deep_ep.api, sources_dir=sources_dir(root.path))
    if options.learn_from is None:
        return toolchain, None
    learned = adapter(toolchain.deep_ep_api).learn_toolchain(toolchain, Path(options.learn_from))
    if learned is not None:
        return learned, None
    return toolchain, derive_jobs_from_entry(the_plan, toolchain, options.learn_from)


def aot_warmup(options: AotOptions, *, on_result: Callable[[VariantResult], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> AotReport:
    """Everything ``jitcache warmup --aot`` does (see the module docstring); returns the report.

    Raises :class:`~jitcache.errors.UsageError` / :class:`~jitcache.errors.ToolchainError` /
    :class:`~jitcache.errors.ProfileError` before compiling anything when an input is wrong; a failed
    compile is a ``failed`` result in the report, not an exception.
    """
    note = on_note or (lambda _message: None)
    settings.entry_lock_timeout()  # a bad JITCACHE_* value fails here, before any work
    profile = load_profile(options.profile)
    try:
        the_plan = plan(profile, options.modes)
    except JitCacheError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if options.distributed:
        _init_distributed()
    root = resolve_root(options.cache_dir)
    distributed = True if options.distributed else None
    triton_jobs = _triton_jobs(options, the_plan, root, note)
    if options.triton_only:
        return warmup_aot(the_plan, None, root, jobs=(), extra_jobs=triton_jobs, num_workers=options.jobs,
                          distributed=distributed, on_result=on_result)
    toolchain, build_jobs = aot_toolchain(options, the_plan, root)
    jobs_text = options.jobs or ("cores / ranks of the node" if options.distributed else "all")
    note(f"{profile.name}: {len(the_plan)} variants, DeepEP {toolchain.deep_ep_api} rules, nvcc "
         f"{'.'.join(map(str, toolchain.nvcc_release))}, {jobs_text} jobs -> {root.deep_ep_dir}")
    note(toolchain.deep_ep_headers_from)
    return warmup_aot(the_plan, toolchain, root, jobs=build_jobs, extra_jobs=triton_jobs, num_workers=options.jobs,
                      distributed=distributed, on_result=on_result)


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

