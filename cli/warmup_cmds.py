"""`jitcache warmup`: compile every kernel a profile needs before serving.

``--aot`` compiles ahead of time with nvcc (no GPU, no DeepEP runtime) into
DeepEP's native cache layout; without it the live warmup of
:mod:`jitcache.warm.live` drives DeepEP itself, after the same nvcc compile split
over its ranks (``--no-precompile`` leaves all compiling to DeepEP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jitcache.errors import CompileError, UsageError
from jitcache.planning import DEFAULT_PROFILE
from jitcache.types import DEEP_EP_VERSIONS

from .aot_view import aot_progress, render_report
from .output import Format, Output

FORMAT = typer.Option(Format.human, "--format", help="human (tables) or json (stdout holds only JSON).")


def warmup(
    profile: str = typer.Option(DEFAULT_PROFILE, "--profile", "-p",
                                help="A built-in profile name or a path to a profile .toml."),
    aot: bool = typer.Option(False, "--aot", help="Compile ahead of time with nvcc: no GPU, no DeepEP runtime."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", min=1,
        help="Parallel nvcc processes, per rank (default: all cores; split over torchrun ranks: cores / ranks of the "
             "node). Also the live warmup's precompile."),
    precompile: bool = typer.Option(
        True, "--precompile/--no-precompile",
        help="Live warmup: first compile the plan with nvcc, split over the ranks, into the folder DeepEP reads "
             "(DeepEP 2.5 or 2.1; skipped, with the reason, when no toolchain resolves). --no-precompile leaves every "
             "compile to DeepEP on every rank. An error with --aot, which is that compile."),
    relocate: bool = typer.Option(
        True, "--relocate/--no-relocate",
        help="Live warmup: first publish entries built for other install paths (a shipped cache) under the names "
             "this DeepEP looks up, without compiling (`jitcache relocate`). --aot --remote: also pull entries "
             "pushed for other install paths and publish them under the target's names."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="The jitcache root (default: ~/.cache/jitcache)."),
    modes: Optional[list[str]] = typer.Option(None, "--mode", "-m", help="Restrict to these modes (repeatable)."),
    deep_ep: Optional[str] = typer.Option(
        None, "--deep-ep", help="Which DeepEP will serve, 2.5 or 2.1 (--aot; default: the profile's [deep_ep] api; "
                                "needed when headers of both versions are found)."),
    deep_ep_include: Optional[Path] = typer.Option(
        None, "--deep-ep-include", help="DeepEP headers: an include dir, a deep_ep package dir, or a DeepEP sdist .tar.gz."),
    nccl_include: Optional[Path] = typer.Option(None, "--nccl-include", help="Local NCCL headers (dir with nccl.h)."),
    target_nccl_include: Optional[str] = typer.Option(
        None, "--target-nccl-include",
        help="The NCCL include dir as the serving machine spells it (it enters DeepEP's digest); default: the local one."),
    target_deep_ep_root: Optional[str] = typer.Option(
        None, "--target-deep-ep-root",
        help="The deep_ep package dir as the serving machine spells it (DeepEP 2.1's digest has <it>/include); "
             "default: the local package's."),
    learn_from: Optional[Path] = typer.Option(
        None, "--learn-from", help="An entry DeepEP wrote (<name>.<digest>/): adopt its flags, paths and compiler text."),
    nvcc: Optional[Path] = typer.Option(None, "--nvcc", help="The nvcc to compile with (default: PATH, $CUDA_HOME)."),
    distributed: bool = typer.Option(False, "--distributed",
                                     help="Split the variants over torch.distributed ranks (torchrun)."),
    triton_modules: Optional[list[str]] = typer.Option(
        None, "--triton-module",
        help="Import this module (repeatable); the Triton kernels it registers with jitcache.triton.register "
             "are compiled for every bucket in the same pool (--aot only)."),
    triton_only: bool = typer.Option(False, "--triton-only",
                                     help="Compile only the registered Triton kernels: no DeepEP toolchain needed."),
    remote: Optional[str] = typer.Option(
        None, "--remote", help="--aot: pull what a remote store has, compile only the rest, push what was compiled "
                               "(s3://..., gs://..., a directory, http(s):// read-only; default $JITCACHE_REMOTE)."),
    remote_optional: bool = typer.Option(False, "--remote-optional",
                                         help="A remote that is unreachable or denies access: warn, warm locally."),
    fmt: Format = FORMAT,
) -> None:
    """Compile every DeepEP kernel variant of a profile, so that serving compiles nothing."""
    out = Output(fmt)
    if (triton_modules or triton_only) and not aot:
        raise UsageError("--triton-module and --triton-only need --aot",
                         hint="Triton kernels are compiled ahead of time only")
    if triton_only and not triton_modules:
        raise UsageError("--triton-only needs at least one --triton-module registering kernels")
    if aot and not precompile:
        raise UsageError("--no-precompile applies to the live warmup; --aot is the nvcc compile itself",
                         hint="drop --no-precompile, or drop --aot to warm through DeepEP alone")
    if deep_ep is not None and deep_ep not in DEEP_EP_VERSIONS:
        raise UsageError(f"--deep-ep {deep_ep}: expected {' or '.join(DEEP_EP_VERSIONS)}")
    if deep_ep is not None and not aot:
        raise UsageError("--deep-ep applies to --aot", hint="the live warmup uses the DeepEP it runs")
    if learn_from is not None and not learn_from.is_dir():
        raise UsageError(f"--learn-from {learn_from}: no such directory",
                         hint="give an entry DeepEP wrote, <EP_JIT_CACHE_DIR>/cache/<name>.<digest>/")
    if remote is not None and not aot:
        raise UsageError("--remote needs --aot", hint="the live warmup does not use a remote store yet")
    if not aot:
        from .live_view import run_live_warmup

        run_live_warmup(profile, modes, cache_dir, out, jobs=jobs, precompile=precompile, relocate=relocate)
        return

    from jitcache.adapters.registry import adapter, derive_jobs_from_entry
    from jitcache.warm.aot import warmup_aot
    from jitcache.planning.profiles import load_profile
    from jitcache.store.root import resolve_root
    from jitcache.build.toolchain import resolve_toolchain
    from jitcache.planning.variants import plan

    prof = load_profile(profile)
    try:
        the_plan = plan(prof, modes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if distributed:
        _init_distributed()
    root = resolve_root(cache_dir)
    triton_jobs: tuple = ()
    if triton_modules:
        from jitcache.build.triton_aot import import_kernel_modules, jobs_for_triton

        kernels = import_kernel_modules(triton_modules)
        if not kernels:
            raise UsageError(f"--triton-module {', '.join(triton_modules)}: no kernel was registered",
                             hint="the module must call jitcache.triton.register(kernel, args_for_bucket) on import")
        buckets = sorted({nmax for _, nmax in the_plan.steps()})
        triton_jobs = jobs_for_triton(kernels, buckets, prof.target.arch)
        out.info(f"triton: {len(kernels)} kernels x {len(buckets)} buckets -> {len(triton_jobs)} cache entries "
                 f"for {prof.target.arch} -> {root.triton_dir}")
    if triton_only:
        out.info(f"{prof.name}: {len(triton_jobs)} kernels (Triton), "
                 f"{jobs or ('cores / ranks of the node' if distributed else 'all')} jobs -> {root.triton_dir}")
        with aot_progress(out, _share(len(triton_jobs), distributed)) as on_result:
            report = warmup_aot(the_plan, None, root, jobs=(), extra_jobs=triton_jobs, num_workers=jobs,
                                distributed=True if distributed else None, on_result=on_result)
        _render(out, prof, report)
        return
    from jitcache.build.sources import sources_dir

    toolchain = resolve_toolchain(nvcc=nvcc, deep_ep_include=deep_ep_include, nccl_include=nccl_include,
                                  target_nccl_include=target_nccl_include, python_library_root=target_deep_ep_root,
                                  api=deep_ep or prof.deep_ep.api, sources_dir=sources_dir(root.path))
    build_jobs = None
    if learn_from is not None:
        learned = adapter(toolchain.deep_ep_api).learn_toolchain(toolchain, Path(learn_from))
        if learned is not None:
            toolchain = learned
        else:
            build_jobs = derive_jobs_from_entry(the_plan, toolchain, learn_from)
    num_deep_ep = len(build_jobs) if build_jobs is not None else len(the_plan.kernels)
    out.info(f"{prof.name}: {num_deep_ep + len(triton_jobs)} kernels ({len(the_plan)} variants + the buffer's "
             f"barrier" + (f" + {len(triton_jobs)} Triton" if triton_jobs else "") + f"), DeepEP "
             f"{toolchain.deep_ep_api} rules, nvcc {'.'.join(map(str, toolchain.nvcc_release))}, "
             f"{jobs or ('cores / ranks of the node' if distributed else 'all')} jobs -> {root.deep_ep_dir}")
    out.info(toolchain.deep_ep_headers_from)

    from jitcache.store.remote import remote_url_from_env

    if (remote_url := remote_url_from_env(remote)) is not None:
        from .remote_cmds import run_remote_warmup

        api = f"DeepEP {toolchain.deep_ep_api}"
        with aot_progress(out, _share(num_deep_ep + len(triton_jobs), distributed)) as on_result:
            remote_report = run_remote_warmup(
                out, the_plan, toolchain, root, remote_url, optional=remote_optional, jobs=build_jobs,
                relocate=relocate,
                extra_jobs=triton_jobs, num_workers=jobs, distributed=True if distributed else None,
                on_result=on_result, render_aot=lambda aot: render_report(out, f"{prof.name}: AOT warmup, {api}", aot))
        _check_ok(remote_report.aot)
        return
    with aot_progress(out, _share(num_deep_ep + len(triton_jobs), distributed)) as on_result:
        report = warmup_aot(the_plan, toolchain, root, jobs=build_jobs, extra_jobs=triton_jobs, num_workers=jobs,
                            distributed=True if distributed else None, on_result=on_result)
    _render(out, prof, report)


def _share(total: int, distributed: bool) -> int:
    """How many of ``total`` jobs this rank compiles (``warmup_aot`` deals them out round-robin)."""
    if not distributed:
        return total
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    return len(range(rank, total, world))


def _render(out: Output, prof, report) -> None:
    api = "Triton" if report.deep_ep_api == "n/a" else f"DeepEP {report.deep_ep_api}"
    render_report(out, f"{prof.name}: AOT warmup, {api}", report)
    _check_ok(report)


def _check_ok(report) -> None:
    if not report.ok:
        first = report.failed[0]
        raise CompileError(f"{len(report.failed)} of {len(report.results)} kernels failed to compile "
                           f"(first: {first.label}: {first.message})", log_path=first.log_path,
                           hint=f"compiler output is saved next to {report.report_path}")


def _init_distributed() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        raise UsageError("--distributed needs torch", hint="pip install 'jitcache[torch]' or drop --distributed") from None
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")  # CPU work: no GPU needed to share entries


def register(app: typer.Typer) -> None:
    app.command("warmup")(warmup)
