"""Rendering of the live warmup: a rich progress bar with ETA on rank 0, then the report.

``cli/warmup_cmds.py`` calls :func:`run_live_warmup` when ``--aot`` is absent;
the engine only calls back with :class:`~jitcache.warm.live.WarmupProgress` events.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jitcache.warm.live import PRECOMPILE

from .output import Output, stdout_to_stderr


@contextmanager
def progress_bar(out: Output) -> Iterator[Callable[[Any], None]]:
    """A callback for :func:`jitcache.warm.live.warmup` that draws a bar on stderr (none with ``--format json``)."""
    if out.is_json or out.quiet:
        yield lambda event: None
        return
    bar = Progress(TextColumn("[bold]warmup[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=out.err, transient=False)
    task = None

    def on_event(event: Any) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("", total=event.total)
        if event.mode == PRECOMPILE:
            label = "compiling the plan's kernels with nvcc first (split over the ranks)"
        else:
            label = f"{event.mode} num_max_tokens_per_rank={event.num_max_tokens_per_rank}"
        if event.result is not None:
            label += f" {event.result.status} ({event.result.seconds:.1f} s)"
        bar.update(task, completed=event.done, description=label)

    with bar:
        yield on_event


def render_report(out: Output, report: Any) -> None:
    data = report.to_dict()

    def render(o: Output) -> None:
        o.table(f"{report.profile or 'policy'}: live warmup on rank {report.rank}/{report.world_size} "
                f"(DeepEP {report.api})",
                ["mode", "num_max_tokens_per_rank", "status", "seconds", "entries written"],
                [[r.mode, r.num_max_tokens_per_rank, r.status, f"{r.seconds:.2f}", len(r.entries_written)]
                 for r in report.results],
                justify={"num_max_tokens_per_rank": "right", "seconds": "right", "entries written": "right"})
        o.print(f"{len(report.results)} steps: {report.num_compiled} compiled, {report.num_cached} already cached, "
                f"{report.num_entries_written} cache entries written, {report.seconds:.1f} s in all; "
                f"cache: {', '.join(report.cache_dirs)}")
        if report.relocated:
            o.print(f"Relocated {len(report.relocated)} shipped entries to the names this DeepEP looks up "
                    "(no compile).")
        if report.precompile is not None:
            render_precompile(o, report.precompile, len(report.results))
        if report.remote is not None:
            r = report.remote
            o.print(f"Remote {r['remote']}: {r['pulled']} pulled ({r['relocated']} relocated), {r['compiled']} "
                    f"built here, {r['pushed']} pushed, {r['bytes_received']} B in, {r['bytes_sent']} B out, "
                    f"{r['seconds']:.1f} s.", markup=False)

    for message in (report.remote or {}).get("remote_errors", ()):
        out.warn(f"remote store: {message}; warmed locally (--remote-optional)")
    out.result(data, render)


def render_precompile(o: Output, pre: dict, num_steps: int) -> None:
    """One line on the nvcc pass before the live steps, and a warning when it failed or DeepEP still compiled."""
    if pre["status"] == "skipped":
        o.print(f"Precompile skipped: {escape(pre['reason'])}")
        return
    world = pre.get("world_size") or 1
    jobs = f"{pre.get('jobs')} jobs" + (f" on each of {world} ranks" if world > 1 else "")
    others = [(pre.get("cached"), "already cached"), (pre.get("deduplicated"), "built by another process"),
              (pre.get("received"), "shipped between ranks"), (pre.get("failed"), "failed")]
    line = (f"Precompiled {pre['compiled']} kernels with nvcc in {pre['wall_seconds']:.1f} s ({jobs})"
            + "".join(f", {n} {what}" for n, what in others if n))
    missed = pre.get("missed_by_live")
    o.print(line + ("; the live pass found them all" if missed == 0 else ""))
    if pre.get("target_from_device"):
        o.print("Target facts the profile left unknown, read from this GPU and buffer: "
                + ", ".join(f"{k}={v}" for k, v in sorted(pre["target_from_device"].items())))
    if pre["status"] == "failed":
        o.warn(f"precompile failed: {pre['reason']}")
    if missed:
        o.warn(f"{missed} of {num_steps} live steps still compiled after the precompile: jitcache's rendered "
               "DeepEP digests disagree with this DeepEP's, so those kernels were compiled by DeepEP")


def run_live_warmup(profile: str, modes: Optional[Sequence[str]], cache_dir: Optional[Path], out: Output, *,
                    jobs: Optional[int] = None, precompile: bool = True, relocate: bool = True,
                    remote: Optional[str] = None, remote_optional: bool = False) -> Any:
    """Run :func:`jitcache.warm.live.live_warmup` with a progress bar, render and return its report."""
    from jitcache.warm.live import LiveOptions, live_warmup

    options = LiveOptions(profile, None if modes is None else tuple(modes), cache_dir, jobs, precompile,
                          relocate=relocate, remote=remote, remote_optional=remote_optional)
    # With --format json, DeepEP's own prints (C++ and Python, to fd 1) go to stderr: stdout holds only the JSON.
    with stdout_to_stderr(out.is_json), progress_bar(out) as on_event:
        report = live_warmup(options, progress=on_event)
    if report.rank == 0:
        render_report(out, report)
    return report
