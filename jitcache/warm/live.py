"""Live warmup: run every (mode, bucket) of the plan through DeepEP itself so that it compiles or loads each kernel.

The entry point :func:`live_warmup` (``jitcache warmup`` without ``--aot``)
takes a frozen :class:`LiveOptions`, builds the DeepEP buffer the profile
describes in a one-rank or torchrun process group, and runs
:func:`jitcache.warm.live_steps.warmup` on it: every step through DeepEP,
after the nvcc precompile (see there). The report is
:mod:`jitcache.warm.live_report`'s; both are re-exported here.

Only ``cli/`` prints: progress goes to a callback (the CLI draws the bar).
``torch`` is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from jitcache import settings
from jitcache.adapters.registry import adapters_for
from jitcache.errors import UsageError, WarmupError
from jitcache.planning.profiles import DEFAULT_PROFILE, Profile, load_profile
from jitcache.warm.prepass import PrecompileResult, precompile

from jitcache.warm.live_report import (CACHED, COMPILED, PRECOMPILE, StepResult, WarmupProgress, WarmupReport,
                                      load_report, report_path)
from jitcache.warm.live_steps import check_group_agreement, synthetic_inputs, warmup

__all__ = [
    "CACHED",
    "COMPILED",
    "PRECOMPILE",
    "check_group_agreement",
    "synthetic_inputs",
    "PrecompileResult",
    "StepResult",
    "WarmupProgress",
    "WarmupReport",
    "LiveOptions",
    "live_warmup",
    "live_warmup_cli",
    "load_report",
    "init_single_rank_group",
    "init_torchrun_group",
    "make_buffer",
    "precompile",
    "report_path",
    "warmup",
]

log = logging.getLogger("jitcache.engine")


def _aot_hint(profile: Profile) -> str:
    return (f"on a machine without a GPU or DeepEP, fill the cache ahead of time: "
            f"`jitcache warmup --aot --profile {profile.name}`, then ship it")


def _buffer_class(profile: Profile) -> type:
    import importlib

    wanted = adapters_for(profile.deep_ep.api)
    errors = []
    for version in wanted:
        for package in version.packages:
            try:
                module = importlib.import_module(package)
            except Exception as exc:  # noqa: BLE001 - ImportError, or a wheel built for another torch
                errors.append(f"{package}: {type(exc).__name__}: {exc}")
                continue
            cls = getattr(module, version.buffer_class, None)
            if isinstance(cls, type):
                return cls
    raise WarmupError(
        f"DeepEP is not importable, so a live warmup cannot run ({'; '.join(dict.fromkeys(errors)) or 'no buffer class'})",
        hint=f"{wanted[0].live_install_hint}, or {_aot_hint(profile)}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_buffer(profile: Profile, group: Any, buffer_cls: type | None = None) -> Any:
    """A DeepEP buffer built from the profile as serving builds it (capacity, dims, dtype, QPs, timeout).

    The settings that enter kernel templates (QPs, GPU timeout, the hybrid,
    overlap and reduction flags) must match
    serving's for the warmed kernels to be the ones serving asks for.
    """
    cls = buffer_cls or _buffer_class(profile)
    m, t = profile.model, profile.target
    return cls(group, num_max_tokens_per_rank=profile.serving.max_num_batched_tokens, hidden=m.hidden,
               num_topk=m.num_topk, use_fp8_dispatch=m.dispatch_dtype == "fp8",
               allow_multiple_reduction=profile.deep_ep.allow_multiple_reduction,
               allow_hybrid_mode=profile.deep_ep.allow_hybrid_mode,
               prefer_overlap_with_compute=profile.deep_ep.prefer_overlap_with_compute,
               num_allocated_qps=t.num_allocated_qps, num_gpu_timeout_secs=t.gpu_timeout_secs,
               explicitly_destroy=True)


def init_single_rank_group(device: int = 0) -> None:
    """Start a one-process NCCL group on ``device`` that DeepEP can build an EP1 buffer on.

    Learned on the H200 rig: the NCCL communicator must exist before DeepEP
    asks the group for it (a lazily initialised group, or a ``new_group``,
    makes ``EPBuffer.__init__`` segfault), hence ``device_id`` (eager init)
    and one collective first.
    """
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(device)
    dist.init_process_group("nccl", world_size=1, rank=0, init_method=f"tcp://127.0.0.1:{_free_port()}",
                            device_id=torch.device("cuda", device))
    dist.all_reduce(torch.ones(1, device="cuda"))


def init_torchrun_group() -> int:
    """Under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*`` set): a group DeepEP can use.

    The same rig lesson as :func:`init_single_rank_group`, for N ranks: the
    CUDA device from ``LOCAL_RANK`` first, then an eagerly initialised NCCL
    group on it (``device_id``) and one collective, before any ``EPBuffer``
    is built. Returns the local rank.
    """
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    dist.all_reduce(torch.ones(1, device="cuda"))
    return local_rank


@dataclass(frozen=True)
class LiveOptions:
    """What ``jitcache warmup`` (without ``--aot``) is asked to do; each field is the CLI option of that name."""

    profile: str | Path | Profile = DEFAULT_PROFILE
    modes: tuple[str, ...] | None = None
    cache_dir: str | Path | None = None
    jobs: int | None = None          # the precompile's nvcc processes per rank (None: cores / ranks of the node)
    precompile: bool = True          # the nvcc pass before the live steps
    seed: int = 0
    read_only_roots: tuple[str | Path, ...] = ()
    relocate: bool = True            # relocate a shipped cache under the serving DeepEP's names first
    remote: str | None = None        # a remote store: pull before, push what was built after
    remote_optional: bool = False    # a store unreachable or denying access: warn and warm locally

    def __post_init__(self) -> None:
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"--jobs {self.jobs}: must be at least 1")


def live_warmup(options: LiveOptions, *, progress: bool | Callable[[WarmupProgress], None] = True) -> WarmupReport:
    """``jitcache warmup`` without ``--aot``: build a DeepEP buffer from the profile and warm it.

    Runs inside an initialised torch.distributed job (torchrun); for an EP1
    profile it starts a one-process group itself. Points DeepEP at the cache
    root before importing it. Raises :class:`WarmupError` saying what to run
    instead when torch, a GPU, DeepEP or the right number of ranks is missing.
    ``precompile`` and ``jobs`` go to :func:`warmup`: the nvcc pass before the
    live steps (on by default) and its nvcc processes per rank (default: the
    cores divided by the ranks of the node). The caller renders the returned
    report (only ``cli/`` prints).
    """
    settings.entry_lock_timeout()  # a bad JITCACHE_* value is an error now, not a skipped precompile later
    prof = load_profile(options.profile)
    modes, cache_dir, read_only_roots = options.modes, options.cache_dir, options.read_only_roots
    seed, precompile, jobs, relocate = options.seed, options.precompile, options.jobs, options.relocate
    remote, remote_optional = options.remote, options.remote_optional
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise WarmupError("a live warmup needs PyTorch, which is not installed here", hint=_aot_hint(prof)) from None
    if not torch.cuda.is_available():
        raise WarmupError("a live warmup needs an NVIDIA GPU, and torch sees none (torch.cuda.is_available() is False)",
                          hint=_aot_hint(prof))
    from jitcache.store.root import activate

    root = activate(cache_dir, read_only_roots)  # before deep_ep is imported: it reads EP_JIT_CACHE_DIR once
    buffer_cls = _buffer_class(prof)
    ep_size = prof.parallel.ep_size
    created_group = False
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            # Not destroyed at the end: destroy_process_group after a multi-rank DeepEP buffer aborts
            # ("corrupted comm object"); the process exits right after the CLI renders the report.
            init_torchrun_group()
        elif ep_size == 1:
            init_single_rank_group()
            created_group = True
        else:
            raise WarmupError(
                f"profile {prof.name} has ep_size={ep_size}: the live warmup must run on all {ep_size} ranks",
                hint=(f"torchrun --nnodes {prof.parallel.nodes} --nproc-per-node {prof.parallel.ranks_per_node} "
                      f"-m jitcache.cli.app warmup --profile {prof.name}; or {_aot_hint(prof)}"))
    try:
        world = dist.get_world_size()
        if world != ep_size:
            raise WarmupError(f"profile {prof.name} has ep_size={ep_size} but this job has {world} ranks",
                              hint=f"launch with {ep_size} ranks, or pick the profile made for {world}")
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local_rank)
        group = dist.group.WORLD
        buffer = make_buffer(prof, group, buffer_cls)
        try:
            return warmup(buffer, prof, modes, progress, group=group, cache_dir=root.path, seed=seed,
                          precompile=precompile, jobs=jobs, relocate=relocate, remote=remote,
                          remote_optional=remote_optional)
        finally:
            buffer.destroy()
    finally:
        if created_group:
            dist.destroy_process_group()


def live_warmup_cli(profile: Profile | str, modes: Sequence[str] | None = None, cache_dir: str | Path | None = None,
                    progress: bool | Callable[[WarmupProgress], None] = True, *, seed: int = 0,
                    read_only_roots: Sequence[str | Path] = (), jobs: int | None = None,
                    precompile: bool = True, relocate: bool = True) -> WarmupReport:
    """:func:`live_warmup` with its options as keywords (the spelling scripts and the GPU proofs use)."""
    return live_warmup(LiveOptions(profile, None if modes is None else tuple(modes), cache_dir, jobs, precompile,
                                   seed, tuple(read_only_roots), relocate), progress=progress)
