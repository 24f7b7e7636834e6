"""`jitcache stats`: dispatch counters of every serving process, added up (ccache -s style)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer

from jitcache.errors import UsageError

from .output import Format, Output


class StatsFormat(str, enum.Enum):
    human = "human"
    json = "json"
    prometheus = "prometheus"


def _rows(data: dict) -> list[list]:
    ratio = data["padding_ratio"]
    calls = data["bucketed_calls"]
    miss_rate = f"{100 * data['misses'] / calls:.2f} %" if calls else "-"
    return [
        ["Bucketed dispatch calls", calls],
        ["Passed through (prefill, cached handle)", data["passthrough_calls"]],
        ["Cold-variant misses (JIT on the serving path)", data["misses"]],
        ["Miss rate", miss_rate],
        ["Refused by strict mode", data["refused"]],
        ["Real rows", data["real_rows"]],
        ["Rows given to DeepEP (bucketed)", data["padded_rows"]],
        ["Padding overhead", f"{(ratio - 1) * 100:.1f} %" if ratio else "-"],
        ["Processes counted", data["processes"]],
    ]


def stats(
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="The cache root (default: JITCACHE_HOME, "
                                                                      "XDG_CACHE_HOME/jitcache, ~/.cache/jitcache)."),
    fmt: StatsFormat = typer.Option(StatsFormat.human, "--format",
                                    help="human (tables), json (stdout holds only JSON) or prometheus (the text "
                                         "format, for node_exporter's textfile collector)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="With --format prometheus: write this file atomically (a .prom in "
                                               "the textfile collector's folder) instead of stdout."),
    zero_: bool = typer.Option(False, "--zero", "-z", help="Count from zero from now on (files of live "
                                                            "processes are kept; a baseline is recorded)."),
) -> None:
    """Show dispatch statistics of the serving processes: calls per bucket, misses, padding."""
    if output is not None and fmt != StatsFormat.prometheus:
        raise UsageError("--output needs --format prometheus", hint="jitcache stats --format prometheus -o FILE.prom")
    if fmt == StatsFormat.prometheus and zero_:
        raise UsageError("--zero does not go with --format prometheus: Prometheus counters only grow")
    from jitcache.runtime.stats import aggregate, stats_dir, zero
    from jitcache.store.root import resolve_root

    root = resolve_root(cache_dir)
    directory = stats_dir(root)
    if fmt == StatsFormat.prometheus:
        _prometheus(directory, output)
        return
    out = Output(Format(fmt.value))
    if zero_:
        before = zero(directory)
        data = {**before.to_dict(), "zeroed": True}
        out.result(data, lambda o: o.print(
            f"Statistics zeroed ({before.total.bucketed_calls} bucketed calls, "
            f"{before.total.total_misses} misses counted before)."))
        return
    result = aggregate(directory)
    for warning in result.warnings:
        out.warn(warning)
    data = result.to_dict()

    def render(o: Output) -> None:
        o.table(None, ["", "value"], _rows(data), justify={"value": "right"})
        calls = dict(result.total.calls)
        misses = dict(result.total.misses)
        if calls or misses:
            o.table("Per bucket (num_max_tokens_per_rank)", ["bucket", "calls", "misses", "share"],
                    [[b, calls.get(b, 0), misses.get(b, 0),
                      f"{100 * calls.get(b, 0) / max(result.total.bucketed_calls, 1):.1f} %"]
                     for b in sorted(set(calls) | set(misses))],
                    justify={"bucket": "right", "calls": "right", "misses": "right", "share": "right"})
        if not result.processes:
            o.info(f"No statistics in {directory} yet: serving processes write them while they run.")

    out.result(data, render)


def _prometheus(directory: Path, output: Optional[Path]) -> None:
    from jitcache.runtime import metrics
    from jitcache.runtime.stats import aggregate

    if not metrics.available():
        raise UsageError("--format prometheus needs prometheus_client, which is not installed",
                         hint="pip install 'jitcache[metrics]'")
    result = aggregate(directory)
    out = Output(Format.human)
    for warning in result.warnings:
        out.warn(warning)
    text = metrics.render_text(result.total, processes=len(result.processes))
    if output is None:
        out.raw(text)
        return
    _write_atomic(output, text)
    out.info(f"Wrote {output} ({len(result.processes)} processes counted)")


def _write_atomic(path: Path, text: str) -> None:
    # node_exporter may read the folder at any moment: a temporary file beside it, then one rename.
    import os

    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UsageError(f"{path}: cannot write: {exc.strerror}") from None


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)
