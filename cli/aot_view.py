"""Rendering of `warmup --aot`: progress while nvcc runs, then a table that fits 80 columns.

The library reports each finished kernel through ``on_result`` (a
:class:`~jitcache.build.pool.VariantResult`, in completion order); this module
turns that into:

- on a terminal (stderr): a rich progress bar over the kernels, with the last
  one finished, the count, elapsed time and ETA;
- in a log (stderr not a terminal): one line per finished kernel,
  ``[12/57] compiled dispatch bucket=64 3.1 s``;
- with ``--format json``: nothing but failures on stderr (stdout holds the JSON);

and, at the end, the report: one row per kernel, the entry's digest cut to 8
characters (the family and bucket have their own columns; the full names are in
the JSON and the report file).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .output import Output

DIGEST_CHARS = 8


def short_entry(entry: str) -> str:
    """``dispatch.6e83...`` / ``kernel.dispatch.6e83...`` / a Triton key -> the first 8 characters of the digest."""
    return entry.rsplit(".", 1)[-1][:DIGEST_CHARS]


def _what(result: Any) -> str:
    name = ("triton:" if result.backend == "triton" else "") + (result.family or result.label)
    bucket = "" if result.num_max_tokens_per_rank is None else f" bucket={result.num_max_tokens_per_rank}"
    return name + bucket


@contextmanager
def aot_progress(out: Output, total: int) -> Iterator[Callable[[Any], None]]:
    """An ``on_result`` callback for ``total`` kernels that shows progress on stderr (see the module docstring)."""
    done = 0

    def failed(result: Any) -> None:
        if result.status == "failed":
            out.warn(f"{result.label}: {result.message} (log: {result.log_path})")

    if out.quiet or out.is_json:
        yield failed
        return
    if not sys.stderr.isatty():
        width = len(str(total))

        def line(result: Any) -> None:
            nonlocal done
            done += 1
            out.info(f"[{done:>{width}}/{total}] {result.status} {_what(result)} {result.seconds:.1f} s")
            failed(result)

        yield line
        return

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]nvcc[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=out.err, transient=False)
    task = bar.add_task("", total=total)

    def advance(result: Any) -> None:
        bar.update(task, advance=1, description=f"{result.status} {_what(result)}")
        failed(result)

    with bar:
        yield advance


def render_report(out: Output, title: str, report: Any) -> None:
    """The report table (fits 80 columns) and its footer; ``--format json`` gets ``report.to_dict()``."""
    data = report.to_dict()

    def render(o: Output) -> None:
        rows = [[r.num_max_tokens_per_rank if r.num_max_tokens_per_rank is not None else "-",
                 ("triton:" if r.backend == "triton" else "") + (r.family or r.label),
                 r.status, f"{r.seconds:.1f}", short_entry(r.entry)] for r in report.results]
        o.table(title, ["bucket", "kernel", "status", "seconds", "digest"], rows,
                justify={"bucket": "right", "seconds": "right"})
        totals = data["totals"]
        only_triton = bool(report.results) and all(r.backend == "triton" for r in report.results)
        o.print(f"Into {report.triton_dir if only_triton else report.cache_dir}", markup=False)
        if data.get("toolchain", {}).get("deep_ep_headers_from"):
            o.print(f"Which DeepEP: {data['toolchain']['deep_ep_headers_from']} ({report.deep_ep_api} rules and "
                    "digest)", markup=False)
        o.print(f"{len(report.results)} kernels in {report.wall_seconds:.1f} s with {report.jobs} jobs: "
                + ", ".join(f"{n} {s}" for s, n in totals.items() if n) + f". Report: {report.report_path}",
                markup=False)

    out.result(data, render)
