"""Rendering of the live warmup: a rich progress bar with ETA on rank 0, then the report.

``cli/warmup_cmds.py`` calls :func:`run_live_warmup` when ``--aot`` is absent;
the engine only calls back with :class:`~jitcache.engine.WarmupProgress` events.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .output import Output


@contextmanager
def progress_bar(out: Output) -> Iterator[Callable[[Any], None]]:
    """A callback for :func:`jitcache.engine.warmup` that draws a bar on stderr (none with ``--format json``)."""
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

    out.result(data, render)


def run_live_warmup(profile: str, modes: Optional[Sequence[str]], cache_dir: Optional[Path], out: Output) -> Any:
    """Run :func:`jitcache.engine.live_warmup_cli` with a progress bar, render and return its report."""
    from jitcache.engine import live_warmup_cli

    with progress_bar(out) as on_event:
        report = live_warmup_cli(profile, modes=modes, cache_dir=cache_dir, progress=on_event)
    if report.rank == 0:
        render_report(out, report)
    return report
