"""Dispatch counters: per process in memory, flushed to the cache root, aggregated by `jitcache stats`.

Each serving process owns one file, ``<root>/stats/<host>-<pid>.json``, holding
its *cumulative* counters since it started. Nobody else writes that file, and
every write is a new file in the same directory, fsync'ed, then
``os.replace``'d over the old one, so a reader sees either the previous or the
next complete file, and several processes flushing at once cannot lose each
other's counts (there is no read-modify-write of a shared file to lose them
in). ``jitcache stats --zero`` does not delete files that live processes will
rewrite; it records a baseline that aggregation subtracts.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jitcache import settings
from jitcache.errors import UsageError
from jitcache.store.publish import write_json_atomic

__all__ = [
    "AggregateStats",
    "DispatchStats",
    "StatsSnapshot",
    "aggregate",
    "flush",
    "process_file",
    "process_total",
    "register_for_flush",
    "stats_dir",
    "write_json_atomic",
    "zero",
]

log = logging.getLogger("jitcache.stats")

#: Seconds between background flushes (``JITCACHE_STATS_INTERVAL``); ``JITCACHE_STATS=0`` disables flushing.
DEFAULT_FLUSH_INTERVAL = 60.0
BASELINE_FILE = "baseline.json"
_FORMAT = 1


def _pairs(counter: dict[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted((int(k), int(v)) for k, v in counter.items() if v))


@dataclass(frozen=True)
class StatsSnapshot:
    """Counters at one moment. ``real_rows``: the token counts buckets were computed from;
    ``padded_rows``: the buckets DeepEP was given (so padding = padded - real). Per bucket: ``calls``,
    ``misses``, ``refused``, ``real_rows_per_bucket`` (a bucket's padded rows are ``calls x bucket``)."""

    calls: tuple[tuple[int, int], ...] = ()
    misses: tuple[tuple[int, int], ...] = ()
    refused: tuple[tuple[int, int], ...] = ()
    passthrough: int = 0
    real_rows: int = 0
    padded_rows: int = 0
    real_rows_per_bucket: tuple[tuple[int, int], ...] = ()

    @property
    def bucketed_calls(self) -> int:
        return sum(n for _, n in self.calls)

    @property
    def total_misses(self) -> int:
        return sum(n for _, n in self.misses)

    @property
    def total_refused(self) -> int:
        return sum(n for _, n in self.refused)

    @property
    def padding_ratio(self) -> float | None:
        """``padded_rows / real_rows`` (1.0 = no padding), ``None`` before any row was seen."""
        return self.padded_rows / self.real_rows if self.real_rows else None

    def __add__(self, other: "StatsSnapshot") -> "StatsSnapshot":
        return StatsSnapshot(
            calls=_pairs(Counter(dict(self.calls)) + Counter(dict(other.calls))),
            misses=_pairs(Counter(dict(self.misses)) + Counter(dict(other.misses))),
            refused=_pairs(Counter(dict(self.refused)) + Counter(dict(other.refused))),
            passthrough=self.passthrough + other.passthrough,
            real_rows=self.real_rows + other.real_rows,
            padded_rows=self.padded_rows + other.padded_rows,
            real_rows_per_bucket=_pairs(Counter(dict(self.real_rows_per_bucket))
                                        + Counter(dict(other.real_rows_per_bucket))),
        )

    def __sub__(self, other: "StatsSnapshot") -> "StatsSnapshot":
        def minus(a, b):
            result = Counter(dict(a))
            result.subtract(dict(b))
            return _pairs({k: max(v, 0) for k, v in result.items()})
        return StatsSnapshot(calls=minus(self.calls, other.calls), misses=minus(self.misses, other.misses),
                             refused=minus(self.refused, other.refused),
                             passthrough=max(self.passthrough - other.passthrough, 0),
                             real_rows=max(self.real_rows - other.real_rows, 0),
                             padded_rows=max(self.padded_rows - other.padded_rows, 0),
                             real_rows_per_bucket=minus(self.real_rows_per_bucket, other.real_rows_per_bucket))

    def is_empty(self) -> bool:
        return not (self.calls or self.misses or self.refused or self.passthrough)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucketed_calls": self.bucketed_calls,
            "passthrough_calls": self.passthrough,
            "misses": self.total_misses,
            "refused": self.total_refused,
            "real_rows": self.real_rows,
            "padded_rows": self.padded_rows,
            "padding_ratio": self.padding_ratio,
            "calls_per_bucket": {str(b): n for b, n in self.calls},
            "misses_per_bucket": {str(b): n for b, n in self.misses},
            "refused_per_bucket": {str(b): n for b, n in self.refused},
            "real_rows_per_bucket": {str(b): n for b, n in self.real_rows_per_bucket},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StatsSnapshot":
        def pairs(key):
            return _pairs({int(b): int(n) for b, n in (data.get(key) or {}).items()})
        return cls(calls=pairs("calls_per_bucket"), misses=pairs("misses_per_bucket"),
                   refused=pairs("refused_per_bucket"), passthrough=int(data.get("passthrough_calls", 0)),
                   real_rows=int(data.get("real_rows", 0)), padded_rows=int(data.get("padded_rows", 0)),
                   real_rows_per_bucket=pairs("real_rows_per_bucket"))


#: Buckets up to this are counted in lists indexed by the bucket (the dispatcher's hot path: two list
#: increments, half the cost of two dict ones); larger ones in dicts.
LIST_MAX = 1 << 16


class _ThreadCounts:
    """One thread's counters. Only that thread writes them, so an update needs no lock and loses nothing."""

    __slots__ = ("calls", "hits", "misses", "refused", "passthrough", "real", "rows")

    def __init__(self) -> None:
        # hits[bucket] / rows[bucket]: calls and real rows per bucket up to LIST_MAX, grown to the largest
        # bucket seen; calls / real: the same for larger buckets. Padded rows are sum(bucket * calls).
        self.hits: list[int] = []
        self.rows: list[int] = []
        self.calls: defaultdict[int, int] = defaultdict(int)
        self.real: defaultdict[int, int] = defaultdict(int)
        self.misses: dict[int, int] = {}
        self.refused: dict[int, int] = {}
        self.passthrough = 0


class DispatchStats:
    """Thread-safe counters of one dispatcher (or of everything :func:`jitcache.install` patched).

    Every thread counts into its own :class:`_ThreadCounts` (no lock on the
    dispatch path, ~10x cheaper than a locked ``Counter``); :meth:`snapshot`
    sums them. No count is ever lost; a snapshot taken while other threads
    dispatch may include a call in ``calls`` and not yet in ``real_rows``
    (the next one is exact again).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the list of threads' counters, not the counters
        self._local = threading.local()
        self._threads: list[_ThreadCounts] = []

    def _mine(self) -> _ThreadCounts:
        try:
            return self._local.counts
        except AttributeError:
            counts = self._local.counts = _ThreadCounts()
            with self._lock:
                self._threads.append(counts)
            return counts

    def record(self, bucket: int, num_tokens: int, miss: bool = False) -> None:
        try:
            counts = self._local.counts
        except AttributeError:
            counts = self._mine()
        if 0 <= bucket <= LIST_MAX:
            if bucket >= len(counts.hits):
                grow = [0] * (bucket + 1 - len(counts.hits))
                # New lists, swapped in whole: a reader copying the old ones meanwhile sees no torn state.
                counts.hits, counts.rows = counts.hits + grow, counts.rows + grow
            counts.hits[bucket] += 1
            counts.rows[bucket] += num_tokens
        else:
            counts.calls[bucket] += 1
            counts.real[bucket] += num_tokens
        if miss:
            counts.misses[bucket] = counts.misses.get(bucket, 0) + 1

    def record_passthrough(self) -> None:
        self._mine().passthrough += 1

    def record_refused(self, bucket: int) -> None:
        refused = self._mine().refused
        refused[bucket] = refused.get(bucket, 0) + 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            threads = list(self._threads)
        calls: Counter = Counter()
        real: Counter = Counter()
        misses: Counter = Counter()
        refused: Counter = Counter()
        passthrough = 0
        for counts in threads:
            # dict(d) copies in one step under the GIL (int keys run no Python code), so a
            # concurrent insert by the owning thread cannot break the iteration.
            calls.update(dict(counts.calls))
            real.update(dict(counts.real))
            hits, rows = counts.hits, counts.rows  # list(l) copies in one step under the GIL, too
            calls.update({bucket: n for bucket, n in enumerate(list(hits)) if n})
            real.update({bucket: n for bucket, n in enumerate(list(rows)) if n})
            misses.update(dict(counts.misses))
            refused.update(dict(counts.refused))
            passthrough += counts.passthrough
        return StatsSnapshot(calls=_pairs(calls), misses=_pairs(misses), refused=_pairs(refused),
                             passthrough=passthrough, real_rows=sum(real.values()),
                             padded_rows=sum(bucket * n for bucket, n in calls.items()),
                             real_rows_per_bucket=_pairs(real))


# -- files ------------------------------------------------------------------------------------


def stats_dir(root: Any) -> Path:
    """``<root>/stats`` for a :class:`~jitcache.store.root.CacheRoot` (or a plain path)."""
    if getattr(root, "external", False):
        return Path(root.meta_dir) / "stats"
    return Path(getattr(root, "path", root)) / "stats"


def process_file(directory: Path, host: str | None = None, pid: int | None = None) -> Path:
    return Path(directory) / f"{host or socket.gethostname()}-{pid or os.getpid()}.json"


_STARTED = time.time()
_REGISTRY: list[DispatchStats] = []
_REGISTRY_LOCK = threading.Lock()
_FLUSHER: dict[str, Any] = {}


def process_total() -> StatsSnapshot:
    """Every counter of this process added up (what its stats file and its metrics say)."""
    return _process_total()


def _process_total() -> StatsSnapshot:
    with _REGISTRY_LOCK:
        members = list(_REGISTRY)
    total = StatsSnapshot()
    for member in members:
        total = total + member.snapshot()
    return total


def flush(directory: Path, snapshot: StatsSnapshot | None = None) -> Path:
    """Write this process's cumulative counters to ``<directory>/<host>-<pid>.json``."""
    snapshot = _process_total() if snapshot is None else snapshot
    path = process_file(directory)
    write_json_atomic(path, {
        "format": _FORMAT, "host": socket.gethostname(), "pid": os.getpid(), "started": _STARTED,
        "updated": time.time(), "process": _process_key(socket.gethostname(), os.getpid(), _STARTED),
        "stats": snapshot.to_dict(),
    })
    return path


def _process_key(host: str, pid: int, started: float) -> str:
    return f"{host}-{pid}-{started:.6f}"


def _flush_quietly() -> None:
    directory = _FLUSHER.get("dir")
    if directory is None:
        return
    total = _process_total()
    if total.is_empty():
        return
    try:
        flush(directory, total)
    except OSError as exc:  # a read-only or full cache root must never break serving
        if not _FLUSHER.get("warned"):
            _FLUSHER["warned"] = True
            log.warning("jitcache: cannot write dispatch stats to %s: %s", directory, exc)


def _flush_loop(interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        _flush_quietly()


def register_for_flush(stats: DispatchStats) -> None:
    """Count ``stats`` in this process's file, flushed every ``JITCACHE_STATS_INTERVAL`` s and at exit.

    ``JITCACHE_STATS=0`` turns flushing off (the counters, and their Prometheus metrics
    (:mod:`jitcache.runtime.metrics`, enabled by the dispatcher once per process), still work). The file
    goes to the default cache root's ``stats/`` (``JITCACHE_HOME``...), or to
    ``JITCACHE_STATS_DIR`` when set.
    """
    with _REGISTRY_LOCK:
        if any(member is stats for member in _REGISTRY):
            return
        _REGISTRY.append(stats)
    try:
        enabled = settings.stats_enabled()
    except UsageError as exc:  # a typo in the environment must not stop serving: no flushing, said once
        log.warning("jitcache: dispatch stats will not be flushed: %s", exc)
        return
    if not enabled:
        return
    with _REGISTRY_LOCK:
        if "thread" in _FLUSHER:
            return
        try:
            directory = settings.stats_dir()
            if directory is None:
                from jitcache.store.root import resolve_root
                directory = stats_dir(resolve_root(None))
            interval = settings.stats_interval(DEFAULT_FLUSH_INTERVAL)
        except Exception as exc:  # noqa: BLE001 - stats are best effort, serving is not
            log.warning("jitcache: dispatch stats will not be flushed: %s", exc)
            return
        stop = threading.Event()
        thread = threading.Thread(target=_flush_loop, args=(max(interval, 0.05), stop),
                                  name="jitcache-stats", daemon=True)
        _FLUSHER.update(dir=directory, thread=thread, stop=stop)
        thread.start()
        atexit.register(_flush_quietly)


# -- aggregation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessStats:
    host: str
    pid: int
    process: str
    updated: float
    stats: StatsSnapshot


@dataclass(frozen=True)
class AggregateStats:
    """Every process's counters added up, less the baseline of the last ``--zero``."""

    directory: str
    total: StatsSnapshot
    processes: tuple[ProcessStats, ...] = ()
    zeroed_at: float | None = None
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "processes": len(self.processes), "zeroed_at": self.zeroed_at,
                **self.total.to_dict(),
                "per_process": [{"host": p.host, "pid": p.pid, "updated": p.updated,
                                 "bucketed_calls": p.stats.bucketed_calls, "misses": p.stats.total_misses}
                                for p in self.processes],
                "warnings": list(self.warnings)}


def _read_process_files(directory: Path) -> tuple[list[ProcessStats], list[str]]:
    processes, warnings = [], []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    for name in names:
        if not name.endswith(".json") or name.startswith(".") or name == BASELINE_FILE:
            continue
        path = directory / name
        try:
            data = json.loads(path.read_text())
            processes.append(ProcessStats(host=str(data["host"]), pid=int(data["pid"]), process=str(data["process"]),
                                          updated=float(data.get("updated", 0.0)),
                                          stats=StatsSnapshot.from_dict(data["stats"])))
        except FileNotFoundError:
            continue  # removed while we listed
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.append(f"{path}: unreadable stats file, skipped ({exc})")
    return processes, warnings


def _read_baseline(directory: Path) -> tuple[dict[str, StatsSnapshot], float | None]:
    try:
        data = json.loads((directory / BASELINE_FILE).read_text())
        return ({key: StatsSnapshot.from_dict(value) for key, value in data["processes"].items()},
                float(data["zeroed_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, None


def aggregate(directory: str | Path) -> AggregateStats:
    """Add up every process file in ``directory`` (a damaged file is a warning, not an error)."""
    directory = Path(directory)
    processes, warnings = _read_process_files(directory)
    baseline, zeroed_at = _read_baseline(directory)
    total = StatsSnapshot()
    adjusted = []
    for proc in processes:
        stats = proc.stats - baseline[proc.process] if proc.process in baseline else proc.stats
        if zeroed_at is not None and proc.process not in baseline and proc.updated < zeroed_at:
            continue  # written before the zero by a process that did not exist any more then
        adjusted.append(ProcessStats(proc.host, proc.pid, proc.process, proc.updated, stats))
        total = total + stats
    return AggregateStats(directory=str(directory), total=total, processes=tuple(adjusted),
                          zeroed_at=zeroed_at, warnings=tuple(warnings))


def zero(directory: str | Path) -> AggregateStats:
    """Make the next :func:`aggregate` count from now; returns what was counted before."""
    directory = Path(directory)
    before = aggregate(directory)
    processes, _ = _read_process_files(directory)
    write_json_atomic(directory / BASELINE_FILE, {
        "zeroed_at": time.time(),
        "processes": {p.process: p.stats.to_dict() for p in processes},
    })
    return before

