"""`jitcache warmup`: compile every kernel a profile needs before serving.

``--aot`` compiles ahead of time with nvcc (no GPU, no DeepEP runtime) into
DeepEP's native cache layout; without it the live warmup of
:mod:`jitcache.warm.live` drives DeepEP itself, after the same nvcc compile split
over its ranks (``--no-precompile`` leaves all compiling to DeepEP).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Optional

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
    if not aot:
        from jitcache.store.remote import remote_url_from_env

        from .live_view import run_live_warmup

        run_live_warmup(profile, modes, cache_dir, out, jobs=jobs, precompile=precompile, relocate=relocate,
                        remote=remote_url_from_env(remote), remote_optional=remote_optional)
        return

    from jitcache.build.pool import AotReport
    from jitcache.warm.aot_entry import AotOptions, aot_warmup

    from .remote_cmds import remote_progress, render_remote_warmup

    options = AotOptions(profile=profile, modes=None if modes is None else tuple(modes), cache_dir=cache_dir,
                         jobs=jobs, deep_ep=deep_ep, nvcc=nvcc, deep_ep_include=deep_ep_include,
                         nccl_include=nccl_include, target_nccl_include=target_nccl_include,
                         target_deep_ep_root=target_deep_ep_root, learn_from=learn_from, distributed=distributed,
                         triton_modules=tuple(triton_modules or ()), triton_only=triton_only, remote=remote,
                         remote_optional=remote_optional, relocate=relocate)
    with ExitStack() as stack:
        bar: list[Callable[[Any], None]] = []

        def on_start(total: int) -> None:
            bar.append(stack.enter_context(aot_progress(out, total)))

        def on_result(result: Any) -> None:
            if bar:
                bar[-1](result)

        report = aot_warmup(options, on_note=out.info, on_start=on_start, on_result=on_result,
                            on_remote=remote_progress(out))
    if not isinstance(report, AotReport):  # a RemoteWarmupReport: the compile's report, then the store's
        render_remote_warmup(out, report, render_aot=lambda aot: render_report(out, _title(aot), aot))
        _check_ok(report.aot)
        return
    render_report(out, _title(report), report)
    _check_ok(report)


def _title(report: Any) -> str:
    api = "Triton" if report.deep_ep_api == "n/a" else f"DeepEP {report.deep_ep_api}"
    return f"{report.profile}: AOT warmup, {api}"


def _check_ok(report) -> None:
    if not report.ok:
        first = report.failed[0]
        raise CompileError(f"{len(report.failed)} of {len(report.results)} kernels failed to compile "
                           f"(first: {first.label}: {first.message})", log_path=first.log_path,
                           hint=f"compiler output is saved next to {report.report_path}")


def register(app: typer.Typer) -> None:
    app.command("warmup")(warmup)
