"""`jitcache push | pull`: share a cache through a remote store (S3, GCS, a directory, HTTP(S) read-only).

The remote is ``--remote URL``, else ``JITCACHE_REMOTE``. Credentials and
endpoints are the store library's own (``AWS_*``, ``AWS_ENDPOINT_URL``,
``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``); see ``docs/remote.md``.
``warmup --aot --remote`` (in ``warmup_cmds``) renders through
:func:`render_remote_warmup` here.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from jitcache.errors import JitCacheError, RemoteError, UsageError
from jitcache.planning import DEFAULT_PROFILE
from jitcache.types import DEEP_EP_VERSIONS

from . import cache_cmds
from .output import Format, Output, human_bytes

DEEP_EP_ROOT, NCCL_INCLUDE = cache_cmds.DEEP_EP_ROOT.typer(), cache_cmds.NCCL_INCLUDE.typer()  # declared in ._spec
FORMAT = typer.Option(Format.human, "--format", help="human (tables) or json (stdout holds only JSON).")
PROFILE = typer.Option(DEFAULT_PROFILE, "--profile", "-p", help="A built-in profile name or a path to a profile .toml.")
REMOTE = typer.Option(None, "--remote", help="The store: s3://bucket/prefix, gs://bucket/prefix, a directory, or "
                                             "http(s)://... (read-only). Default: $JITCACHE_REMOTE.")
CACHE_DIR = typer.Option(None, "--cache-dir", help="The jitcache root (default: JITCACHE_HOME, "
                         "$XDG_CACHE_HOME/jitcache, ~/.cache/jitcache).")
API = typer.Option(None, "--deep-ep-api", help="2.5 or 2.1, when the profile says auto and no DeepEP is installed here.")
NVCC = typer.Option(None, "--nvcc", help="The serving nvcc: its version keys the store and enters the entry names "
                                         "(default: $CUDA_HOME/bin/nvcc, else nvcc on PATH).")
RELOCATE = typer.Option(True, "--relocate/--no-relocate", help="Pull what the serving DeepEP looks up, entries "
                        "pushed for other install paths too, and publish those also under its names (default on; "
                        "needs it findable here, as `import`). --no-relocate: every entry the index lists, as pushed.")


def _remote_url(remote: Optional[str]) -> str:
    from jitcache.store.remote import REMOTE_ENV, remote_url_from_env

    url = remote_url_from_env(remote)
    if url is None:
        raise UsageError(f"no remote store: pass --remote URL or set {REMOTE_ENV}",
                         hint="e.g. --remote s3://my-bucket/jitcache (credentials from AWS_* / AWS_PROFILE)")
    return url


def _setup(profile: str, remote: Optional[str], cache_dir: Optional[Path], api: Optional[str], nvcc: Optional[Path],
           serving: Any = None, explicit: bool = False, out: Optional[Output] = None):
    """Profile, plan, root, store, the store's key, and ``serving`` if it is the DeepEP of that key (else None)."""
    from jitcache.planning.profiles import load_profile
    from jitcache.warm.remote_warmup import remote_env
    from jitcache.build.sources import sources_dir
    from jitcache.store.remote import RemoteStore
    from jitcache.store.root import resolve_root
    from jitcache.planning.variants import plan

    if api is not None and api not in DEEP_EP_VERSIONS:
        raise UsageError(f"--deep-ep-api {api!r}: must be {' or '.join(DEEP_EP_VERSIONS)}")
    prof = load_profile(profile)
    root = resolve_root(cache_dir)
    root.check_layout()
    if api is None and serving is not None and prof.deep_ep.api in ("auto", serving.version):
        api = serving.version
    env = remote_env(prof, nvcc=None if nvcc is None else str(nvcc), deep_ep_api=api,
                     sources_dir=sources_dir(root.path),
                     nvcc_version_output=None if serving is None else serving.nvcc_version_output)
    if serving is not None and serving.version != env.deep_ep_api:
        why = f"the serving DeepEP found is {serving.version} ({serving.package_dir}), the store key {env.prefix}"
        if explicit:
            raise UsageError(f"--deep-ep-root: {why}", hint="give the DeepEP that serves these entries")
        if out is not None:
            out.warn(f"not relocating: {why} (pass --deep-ep-root/--nccl-include, or --no-relocate)")
        serving = None
    return prof, plan(prof), root, RemoteStore(_remote_url(remote)), env, serving


def _find_serving(out: Output, relocate: bool, deep_ep_root: Optional[Path], nccl_include: Optional[str],
                  nvcc: Optional[Path]) -> Any:
    """The serving DeepEP, as `import` finds it: an error only when it was named explicitly."""
    if not relocate:
        return None
    from jitcache.adapters.serving import locate_serving

    try:
        return locate_serving(deep_ep_root, nccl_include, nvcc=nvcc)
    except JitCacheError as exc:
        if deep_ep_root is not None or nccl_include is not None:
            raise
        out.warn(f"not relocating: {exc} (pass --deep-ep-root/--nccl-include, or --no-relocate)")
        return None


@contextmanager
def transfer_bar(out: Output) -> Iterator[Callable[[Any], None]]:
    """A callback for push/pull progress that draws a bar on stderr (none with ``--format json``)."""
    if out.is_json or out.quiet:
        yield lambda event: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}[/bold]"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=out.err, transient=True)
    tasks: dict[str, Any] = {}

    def on_event(event: Any) -> None:
        if event.phase not in tasks:
            tasks[event.phase] = bar.add_task(event.phase, total=event.total)
        bar.update(tasks[event.phase], completed=event.done)

    with bar:
        yield on_event


def pull_lines(report: Any) -> list[str]:
    parts = [f"Pulled {len(report.pulled)} entries ({human_bytes(report.bytes_received)}) in {report.seconds:.2f} s"]
    if report.local:
        parts.append(f"{len(report.local)} already here")
    if report.missing:
        parts.append(f"{len(report.missing)} not in the store")
    if report.refused:
        parts.append(f"{len(report.refused)} refused")
    lines = [", ".join(parts) + f" from {report.remote} ({report.env.prefix})."]
    if report.relocated or report.not_relocated:
        where = report.serving or {}
        lines.append(f"Relocated {len(report.relocated)} entries to the names DeepEP {where.get('version', '?')} at "
                     f"{where.get('package_dir', '?')} looks up (NCCL {where.get('nccl_include', '?')})"
                     + (f"; {len(report.not_relocated)} could not be" if report.not_relocated else "") + ".")
    return lines


def push_lines(report: Any) -> list[str]:
    line = (f"Pushed {len(report.pushed)} entries ({human_bytes(report.bytes_sent)}) in {report.seconds:.2f} s"
            + (f", {len(report.present)} already in the store" if report.present else "")
            + (f", {len(report.skipped)} skipped" if report.skipped else "") + f" to {report.remote}")
    if report.index:
        line += f"; index lists {report.index_entries}"
    return [line + "."]


def _lines(lines: list[str]) -> Callable[[Output], None]:
    def render(o: Output) -> None:
        for line in lines:
            o.print(line)
    return render


def push_cmd(profile: str = PROFILE, remote: Optional[str] = REMOTE, cache_dir: Optional[Path] = CACHE_DIR,
             api: Optional[str] = API, nvcc: Optional[Path] = NVCC, fmt: Format = FORMAT) -> None:
    """Push the profile's entries from the local cache to the remote store (never overwrites an object)."""
    from jitcache.store.remote import push

    out = Output(fmt)
    prof, the_plan, root, store, env, _ = _setup(profile, remote, cache_dir, api, nvcc)
    with transfer_bar(out) as bar:
        report = push(root, store, env, plan=the_plan, on_progress=bar)
    for name, why in report.skipped:
        out.warn(f"{name}: not pushed ({why})")
    if not report.pushed and not report.present:
        out.warn(f"no entry of {prof.name} is in {root.deep_ep_dir}: nothing to push (run `jitcache warmup` first)")
    out.result(report.to_dict(), _lines(push_lines(report)))


def pull_cmd(profile: str = PROFILE, remote: Optional[str] = REMOTE, cache_dir: Optional[Path] = CACHE_DIR,
             force: bool = typer.Option(False, "--force", help="Publish even if built for another nvcc/DeepEP."),
             relocate: bool = RELOCATE, deep_ep_root: Optional[Path] = DEEP_EP_ROOT,
             nccl_include: Optional[str] = NCCL_INCLUDE, api: Optional[str] = API, nvcc: Optional[Path] = NVCC,
             fmt: Format = FORMAT) -> None:
    """Pull what the serving DeepEP looks up from the remote store (each entry verified as `import` does, then
    relocated to the names it computes)."""
    from jitcache.store.remote import pull

    out = Output(fmt)
    serving = _find_serving(out, relocate, deep_ep_root, nccl_include, nvcc)
    prof, the_plan, root, store, env, serving = _setup(
        profile, remote, cache_dir, api, nvcc, serving, explicit=deep_ep_root is not None or nccl_include is not None,
        out=out)
    with transfer_bar(out) as bar:
        report = pull(root, store, env, plan=the_plan, serving=serving, relocate=relocate, force=force,
                      on_progress=bar)
    for name, why in report.not_relocated:
        out.warn(f"{name}: pulled, not relocated ({why})")
    if not report.index_found:
        out.warn(f"{store.where(report.index or '')}: no index: nothing was pushed for {prof.name} with "
                 f"{env.prefix} yet")
    out.result(report.to_dict(), _lines(pull_lines(report)))
    if report.refused:
        first, why = report.refused[0]
        raise RemoteError(f"{len(report.refused)} objects refused (first: {first}: {why}); the other entries "
                          "were pulled", url=store.url, hint="the store holds damaged or foreign objects: "
                          "delete them there and push again")


def remote_progress(out: Output) -> Callable[[Any], None]:
    """`warmup --aot --remote`'s store progress: pull and push say one line each when done (the compile's
    progress bar is the only live display)."""

    def on_remote(event: Any) -> None:
        if event.done == event.total and event.phase in ("pull", "push"):
            out.info(f"remote {event.phase}: {event.total} objects")

    return on_remote


def render_remote_warmup(out: Output, report: Any, *, render_aot: Callable[[Any], None]) -> None:
    """`warmup --aot --remote`'s report (:func:`jitcache.warm.remote_warmup.warmup_aot_remote`'s).

    ``render_aot(aot_report)`` renders the AOT part for people; with
    ``--format json`` stdout holds the one remote-warmup document.
    """
    for message in report.remote_errors:
        out.warn(f"remote store: {message}; warmed locally (--remote-optional)")
    if report.pull is not None:
        for name, why in report.pull.refused:
            out.warn(f"{name}: refused from the store ({why}); compiled here instead")
    if out.is_json:
        out.result(report.to_dict())
        return
    render_aot(report.aot)
    if report.pull is not None:
        for line in pull_lines(report.pull):
            out.print(line)
    if report.push is not None:
        for line in push_lines(report.push):
            out.print(line)
    elif not report.remote_errors:
        out.print(f"Nothing pushed: {report.remote} is read-only.")
    data = report.to_dict()
    out.print(f"Remote warmup: {report.pulled} pulled, {report.compiled} compiled, {report.pushed} pushed, "
              f"{human_bytes(data['bytes_received'])} in, {human_bytes(data['bytes_sent'])} out, "
              f"{report.seconds:.1f} s.")


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)
    app.command("pull")(pull_cmd)
