"""The dispatcher's counters as Prometheus metrics, when ``prometheus_client`` is installed (``jitcache[metrics]``).

Metrics (all counters; ``bucket`` is the ``num_max_tokens_per_rank`` DeepEP was given):

- ``jitcache_dispatch_calls_total{bucket}``: bucketed dispatches;
- ``jitcache_dispatch_misses_total{bucket}``: dispatches to a cold bucket (DeepEP JIT-compiled on the serving path);
- ``jitcache_dispatch_refused_total{bucket}``: cold dispatches strict mode refused;
- ``jitcache_dispatch_real_rows_total{bucket}``: the token counts the buckets were computed from;
- ``jitcache_dispatch_padded_rows_total{bucket}``: the rows DeepEP was given (``calls x bucket``);
- ``jitcache_dispatch_passthrough_total``: dispatches left alone (prefill, cached handle).

A serving process exposes them in one of two ways, chosen once, when its
first dispatcher is made (:func:`enable`):

- without ``PROMETHEUS_MULTIPROC_DIR``: a collector in ``prometheus_client``'s
  default registry reads the counters when scraped (nothing happens per
  dispatch, so the dispatcher stays as fast as without metrics);
- with it (``prometheus_client``'s multiprocess mode, as vLLM runs: its API
  server serves ``/metrics`` for the worker processes): real ``Counter``
  objects, which multiprocess mode keeps in files in that folder, brought up
  to the counters every ``JITCACHE_METRICS_INTERVAL`` seconds (default 5) and
  at exit; the serving process's ``MultiProcessCollector`` adds every process up.

``JITCACHE_METRICS=0`` turns both off. :func:`render_text` writes the same
metrics for a textfile collector (``jitcache stats --format prometheus``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Callable, Iterable

from jitcache import settings
from jitcache.errors import UsageError
from jitcache.runtime.stats import StatsSnapshot

__all__ = ["METRICS", "StatsCollector", "available", "enable", "render_text"]

log = logging.getLogger("jitcache.metrics")

DEFAULT_INTERVAL = 5.0

#: name (without ``_total``), help, how to read it from a snapshot: per-bucket pairs, or one number.
METRICS: tuple[tuple[str, str, Callable[[StatsSnapshot], Any]], ...] = (
    ("jitcache_dispatch_calls", "Bucketed DeepEP dispatches, by num_max_tokens_per_rank bucket.",
     lambda s: s.calls),
    ("jitcache_dispatch_misses", "Dispatches to a cold bucket: DeepEP JIT-compiled on the serving path.",
     lambda s: s.misses),
    ("jitcache_dispatch_refused", "Dispatches to a cold bucket refused by strict mode.", lambda s: s.refused),
    ("jitcache_dispatch_real_rows", "Token rows the buckets were computed from.", lambda s: s.real_rows_per_bucket),
    ("jitcache_dispatch_padded_rows", "Rows DeepEP was given (calls x bucket).",
     lambda s: tuple((b, n * b) for b, n in s.calls)),
    ("jitcache_dispatch_passthrough", "Dispatches left alone (prefill, cached handle).", lambda s: s.passthrough),
)


def available() -> bool:
    """Whether ``prometheus_client`` is importable."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class StatsCollector:
    """A ``prometheus_client`` collector reading a snapshot function at each collection."""

    def __init__(self, snapshot: Callable[[], StatsSnapshot], extra: Callable[[], Iterable[Any]] | None = None):
        self._snapshot = snapshot
        self._extra = extra

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        snapshot = self._snapshot()
        for name, documentation, read in METRICS:
            value = read(snapshot)
            if isinstance(value, int):
                yield CounterMetricFamily(name, documentation, value=value)
                continue
            family = CounterMetricFamily(name, documentation, labels=["bucket"])
            for bucket, count in value:
                family.add_metric([str(bucket)], count)
            yield family
        if self._extra is not None:
            yield from self._extra()


def render_text(snapshot: StatsSnapshot, *, processes: int | None = None) -> str:
    """The metrics of ``snapshot`` in Prometheus' text format (needs ``prometheus_client``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    def extra() -> Iterable[Any]:
        if processes is not None:
            from prometheus_client.core import GaugeMetricFamily

            yield GaugeMetricFamily("jitcache_stats_processes", "Serving processes whose counters are added up.",
                                    value=processes)

    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: snapshot, extra))
    return generate_latest(registry).decode()


class _MultiprocessCounters:
    """Counters in multiprocess mode, brought up to this process's totals by :meth:`sync` (deltas only)."""

    def __init__(self, snapshot: Callable[[], StatsSnapshot]) -> None:
        from prometheus_client import Counter

        self._snapshot = snapshot
        self._synced = StatsSnapshot()
        self._lock = threading.Lock()
        self._counters: dict[str, Any] = {}
        for name, documentation, read in METRICS:
            per_bucket = not isinstance(read(StatsSnapshot()), int)
            self._counters[name] = Counter(name, documentation, labelnames=("bucket",) if per_bucket else (),
                                           registry=None)

    def sync(self) -> None:
        with self._lock:
            now = self._snapshot()
            delta = now - self._synced
            for name, _, read in METRICS:
                value, counter = read(delta), self._counters[name]
                if isinstance(value, int):
                    if value:
                        counter.inc(value)
                    continue
                for bucket, count in value:
                    counter.labels(bucket=str(bucket)).inc(count)
            self._synced = now


_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


def enable(snapshot: Callable[[], StatsSnapshot] | None = None, *, registry: Any = None) -> str | None:
    """Expose this process's dispatch counters; once per process. Returns the mode, or ``None``.

    ``"collector"`` (a collector in ``registry``, default ``prometheus_client.REGISTRY``),
    ``"multiprocess"`` (``PROMETHEUS_MULTIPROC_DIR`` is set), or ``None``
    when ``prometheus_client`` is missing or ``JITCACHE_METRICS=0``. Never raises.
    """
    with _LOCK:
        if "mode" in _STATE:
            return _STATE["mode"]
        _STATE["mode"] = None
        try:
            wanted = settings.metrics_enabled()
        except UsageError as exc:  # never raises: a typo turns metrics off, said once
            log.warning("jitcache: no Prometheus metrics: %s", exc)
            return None
        if not wanted or not available():
            return None
        from jitcache.runtime.stats import process_total

        read: Callable[[], StatsSnapshot] = snapshot if snapshot is not None else process_total
        try:
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                counters = _MultiprocessCounters(read)
                interval = settings.metrics_interval(DEFAULT_INTERVAL)
                stop = threading.Event()

                def loop() -> None:
                    while not stop.wait(max(interval, 0.05)):
                        _sync_quietly(counters)

                thread = threading.Thread(target=loop, name="jitcache-metrics", daemon=True)
                thread.start()
                atexit.register(_sync_quietly, counters)
                _STATE.update(mode="multiprocess", counters=counters, stop=stop)
            else:
                from prometheus_client import REGISTRY

                (registry or REGISTRY).register(StatsCollector(read))
                _STATE["mode"] = "collector"
        except Exception as exc:  # noqa: BLE001 - metrics are best effort, serving is not
            log.warning("jitcache: dispatch metrics are off: %s: %s", type(exc).__name__, exc)
        return _STATE["mode"]


def sync() -> None:
    """Multiprocess mode: write the counters now (tests, and a process about to be killed)."""
    counters = _STATE.get("counters")
    if counters is not None:
        _sync_quietly(counters)


def _sync_quietly(counters: _MultiprocessCounters) -> None:
    try:
        counters.sync()
    except Exception as exc:  # noqa: BLE001
        if not _STATE.get("warned"):
            _STATE["warned"] = True
            log.warning("jitcache: cannot update the dispatch metrics: %s: %s", type(exc).__name__, exc)
