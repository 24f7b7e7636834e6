"""``jitcache.aot_warmup``: everything ``jitcache warmup --aot`` does, in one call with one frozen options object.

:func:`aot_warmup` takes an :class:`AotOptions` and runs, in this order:
``--learn-from`` checked, the profile loaded and planned, a gloo group
started for ``distributed``, the root resolved, the registered Triton
kernels' jobs made (``triton_modules``), then, unless ``triton_only``, the
toolchain resolved (nvcc, the DeepEP headers of ``deep_ep`` or the profile's
version, NCCL) and ``--learn-from`` applied the way the entry's DeepEP
adapter says (adopt its toolchain, or derive every bucket from it). The jobs
run in the parallel pool through :func:`jitcache.warm.aot.warmup_aot`, split
over the ranks and exchanged; with a remote store (``remote``, else
``$JITCACHE_REMOTE``) through :func:`jitcache.warm.remote_warmup.warmup_aot_remote`:
pull what the store has, compile the rest, push what was compiled.

It prints nothing. Narration goes to ``on_note``, the number of kernels this
rank will compile to ``on_start`` (once, before the first compile), each
kernel's result to ``on_result``, the store's progress to ``on_remote``;
``cli/warmup_cmds.py`` turns those into its lines and progress bar.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from jitcache import settings
from jitcache.adapters.base import BuildJob, Toolchain
from jitcache.adapters.registry import adapter, derive_jobs_from_entry
from jitcache.build.pool import AotReport, VariantResult
from jitcache.errors import JitCacheError, UsageError
from jitcache.planning.profiles import DEFAULT_PROFILE, Profile, load_profile
from jitcache.planning.variants import WarmupPlan, plan
from jitcache.store.root import CacheRoot, resolve_root
from jitcache.types import DEEP_EP_VERSIONS
from jitcache.warm.aot import warmup_aot

if TYPE_CHECKING:
    from jitcache.store.remote import RemoteProgress
    from jitcache.warm.remote_warmup import RemoteWarmupReport

__all__ = ["AotOptions", "aot_toolchain", "aot_warmup"]

log = logging.getLogger("jitcache.aot")


@dataclass(frozen=True)
class AotOptions:
    """What ``jitcache warmup --aot`` is asked to do (each field is the CLI option of the same name)."""

    profile: str | Path | Profile = DEFAULT_PROFILE
    modes: tuple[str, ...] | None = None
    cache_dir: str | Path | None = None
    jobs: int | None = None                      # nvcc processes per rank (None: cores, or cores / ranks of the node)
    deep_ep: str | None = None                   # which DeepEP will serve (None: the profile's [deep_ep] api)
    nvcc: str | Path | None = None
    deep_ep_include: str | Path | None = None    # an include dir, a deep_ep package dir, or a DeepEP sdist
    nccl_include: str | Path | None = None
    target_nccl_include: str | None = None       # the NCCL include dir as the serving machine spells it
    target_deep_ep_root: str | None = None       # the deep_ep package dir as the serving machine spells it
    learn_from: str | Path | None = None         # an entry DeepEP wrote
    distributed: bool = False                    # split over torch.distributed ranks (a gloo group if none yet)
    triton_modules: tuple[str, ...] = ()         # modules registering Triton kernels (jitcache.triton.register)
    triton_only: bool = False                    # only the registered Triton kernels: no DeepEP toolchain
    remote: str | None = None                    # a remote store URL (None: $JITCACHE_REMOTE, else no store)
    remote_optional: bool = False                # a store that cannot be reached: recorded, the warmup goes on
    relocate: bool = True                        # remote: also pull entries pushed for other install paths

    def __post_init__(self) -> None:
        if self.triton_only and not self.triton_modules:
            raise UsageError("--triton-only needs at least one --triton-module registering kernels")
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"--jobs {self.jobs}: must be at least 1")
        if self.deep_ep is not None and self.deep_ep not in DEEP_EP_VERSIONS:
            raise UsageError(f"--deep-ep {self.deep_ep}: expected {' or '.join(DEEP_EP_VERSIONS)}")
        if self.remote is not None and not self.remote.strip():
            raise UsageError("--remote must not be empty")
        if self.remote is not None and self.triton_only:
            raise UsageError("--remote shares DeepEP entries; --triton-only compiles none",
                             hint="drop --triton-only, or drop --remote")


def _init_distributed() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        raise UsageError("--distributed needs torch", hint="pip install 'jitcache[torch]' or drop --distributed") from None
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # CPU work: no GPU needed to share entries


def _share(total: int, distributed: bool) -> int:
    """How many of ``total`` jobs this rank compiles (:func:`warmup_aot` deals them out round-robin)."""
    if not distributed:
        return total
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    return len(range(rank, total, world))


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
                                  api=options.deep_ep or the_plan.profile.deep_ep.api,
                                  sources_dir=sources_dir(root.path))
    if options.learn_from is None:
        return toolchain, None
    learned = adapter(toolchain.deep_ep_api).learn_toolchain(toolchain, Path(options.learn_from))
    if learned is not None:
        return learned, None
    return toolchain, derive_jobs_from_entry(the_plan, toolchain, options.learn_from)


def aot_warmup(options: AotOptions, *, on_result: Callable[[VariantResult], None] | None = None,
               on_note: Callable[[str], None] | None = None, on_start: Callable[[int], None] | None = None,
               on_remote: Callable[[RemoteProgress], None] | None = None) -> AotReport | RemoteWarmupReport:
    """Everything ``jitcache warmup --aot`` does (see the module docstring); returns the report
    (a :class:`~jitcache.warm.remote_warmup.RemoteWarmupReport` with a remote store, its ``aot`` the compile's).

    Raises :class:`~jitcache.errors.UsageError` / :class:`~jitcache.errors.ToolchainError` /
    :class:`~jitcache.errors.ProfileError` before compiling anything when an input is wrong; a failed
    compile is a ``failed`` result in the report, not an exception.
    """
    note = on_note or (lambda _message: None)
    start = on_start or (lambda _total: None)
    if options.learn_from is not None and not Path(options.learn_from).is_dir():
        raise UsageError(f"--learn-from {options.learn_from}: no such directory",
                         hint="give an entry DeepEP wrote, <EP_JIT_CACHE_DIR>/cache/<name>.<digest>/")
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
    jobs_text = options.jobs or ("cores / ranks of the node" if options.distributed else "all")
    triton_jobs = _triton_jobs(options, the_plan, root, note)
    if options.triton_only:
        note(f"{profile.name}: {len(triton_jobs)} kernels (Triton), {jobs_text} jobs -> {root.triton_dir}")
        start(_share(len(triton_jobs), options.distributed))
        return warmup_aot(the_plan, None, root, jobs=(), extra_jobs=triton_jobs, num_workers=options.jobs,
                          distributed=distributed, on_result=on_result)
    toolchain, build_jobs = aot_toolchain(options, the_plan, root)
    num_deep_ep = len(build_jobs) if build_jobs is not None else len(the_plan.kernels)
    note(f"{profile.name}: {num_deep_ep + len(triton_jobs)} kernels ({len(the_plan)} variants + the buffer's "
         f"barrier" + (f" + {len(triton_jobs)} Triton" if triton_jobs else "") + f"), DeepEP "
         f"{toolchain.deep_ep_api} rules, nvcc {'.'.join(map(str, toolchain.nvcc_release))}, "
         f"{jobs_text} jobs -> {root.deep_ep_dir}")
    note(toolchain.deep_ep_headers_from)
    from jitcache.store.remote import remote_url_from_env

    remote_url = remote_url_from_env(options.remote)
    start(_share(num_deep_ep + len(triton_jobs), options.distributed))
    if remote_url is None:
        return warmup_aot(the_plan, toolchain, root, jobs=build_jobs, extra_jobs=triton_jobs,
                          num_workers=options.jobs, distributed=distributed, on_result=on_result)
    from jitcache.warm.remote_warmup import warmup_aot_remote

    note(f"remote: {remote_url} (pull what is there, compile the rest, push what was compiled)")
    return warmup_aot_remote(the_plan, toolchain, root, remote=remote_url, optional=options.remote_optional,
                             jobs=build_jobs, relocate=options.relocate, extra_jobs=triton_jobs,
                             num_workers=options.jobs, distributed=distributed, on_result=on_result,
                             on_remote=on_remote)
