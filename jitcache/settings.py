"""Every ``JITCACHE_*`` environment variable, read when it is needed (never at import) and validated.

One function per variable: it reads ``os.environ`` at the call, so a test or
a process that sets the variable later sees it, and a bad value is a
:class:`~jitcache.errors.UsageError` naming the variable and the value
(``Error: JITCACHE_ENTRY_LOCK_TIMEOUT='abc': not a number of seconds``) instead
of a traceback at import. :data:`SETTINGS` describes them all; the table in
docs/architecture.md is checked against it (tests/test_settings.py).

DeepEP's own variables (``EP_JIT_CACHE_DIR``, ``DJ_JIT_CACHE_DIR``,
``EP_NCCL_ROOT_DIR``...) are not here: they belong to the DeepEP version's
adapter (:mod:`jitcache.adapters`), which reads them as that DeepEP does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jitcache.errors import UsageError

__all__ = [
    "SETTINGS",
    "Setting",
    "compile_log",
    "debug",
    "entry_lock_timeout",
    "home",
    "import_max_bytes",
    "index_timeout",
    "lock_timeout",
    "metrics_enabled",
    "metrics_interval",
    "profile",
    "remote",
    "stats_dir",
    "stats_enabled",
    "stats_interval",
    "strict",
]


@dataclass(frozen=True)
class Setting:
    """One variable: its name, its default as the docs show it, who reads it, and what it does."""

    name: str
    default: str
    read_by: str
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting("JITCACHE_HOME", "$XDG_CACHE_HOME/jitcache, else ~/.cache/jitcache", "jitcache.store.root",
            "The jitcache root (holds deep_ep/, triton/, stats/, sources/, .jitcache/)."),
    Setting("JITCACHE_LOCK_TIMEOUT", "600", "jitcache.store.root (CacheRoot.lock)",
            "Seconds to wait for another command holding the root lock (prune, import, repair)."),
    Setting("JITCACHE_ENTRY_LOCK_TIMEOUT", "1800", "jitcache.build.pool (run_jobs)",
            "Seconds to wait for another process's compile of the same entry before failing that entry."),
    Setting("JITCACHE_COMPILE_LOG", "unset", "jitcache.build.pool",
            "A file that gets one line per compile started (tests count real compiles with it)."),
    Setting("JITCACHE_INDEX_TIMEOUT", "60", "jitcache.build.sources (jitcache sources fetch)",
            "Seconds to wait for the package index when fetching a DeepEP sdist."),
    Setting("JITCACHE_IMPORT_MAX_BYTES", "17179869184 (16 GiB)", "jitcache.store.bundle (jitcache import)",
            "The most bytes a bundle may extract to; a larger one is refused."),
    Setting("JITCACHE_STATS", "1", "jitcache.runtime.stats",
            "0/false/no/off: do not flush dispatch counters to files (the counters still count)."),
    Setting("JITCACHE_STATS_DIR", "<root>/stats", "jitcache.runtime.stats, jitcache stats",
            "Where serving processes write their dispatch counters."),
    Setting("JITCACHE_STATS_INTERVAL", "60", "jitcache.runtime.stats",
            "Seconds between two flushes of a process's counters."),
    Setting("JITCACHE_METRICS", "1", "jitcache.runtime.metrics",
            "0/false/no/off: no Prometheus metrics of the dispatch counters (a bad value: a warning, no metrics)."),
    Setting("JITCACHE_METRICS_INTERVAL", "5", "jitcache.runtime.metrics",
            "Seconds between two syncs of the counters into multiprocess metrics (PROMETHEUS_MULTIPROC_DIR)."),
    Setting("JITCACHE_PROFILE", "unset", "jitcache.plugin (vLLM plugin)",
            "The profile (built-in name or .toml path) whose bucket policy the plugin installs; unset: none."),
    Setting("JITCACHE_STRICT", "0", "jitcache.plugin (vLLM plugin)",
            "1/true/yes/on: a cold bucket raises ColdVariantError instead of logging a warning."),
    Setting("JITCACHE_REMOTE", "unset", "jitcache.store.remote (warmup --aot, push, pull)",
            "The remote store when --remote is not given: s3://bucket/prefix, gs://bucket/prefix, a directory, "
            "or a read-only https:// URL."),
    Setting("JITCACHE_DEBUG", "unset", "jitcache.cli",
            "Set (to anything): the CLI shows the traceback of an error, not only its message."),
)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None or not value.strip() else value.strip()


def _bad(name: str, value: str, why: str) -> UsageError:
    return UsageError(f"{name}={value!r}: {why}", hint=f"fix or unset {name} (docs/architecture.md lists every "
                                                       "JITCACHE_* variable)")


def _seconds(name: str, default: float, *, allow_zero: bool = True) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise _bad(name, value, "not a number of seconds") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise _bad(name, value, "must be a finite number of seconds >= 0" if allow_zero else
                   "must be a finite number of seconds > 0")
    return seconds


def _flag(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _bad(name, value, f"not a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})")


def home() -> Path | None:
    """``JITCACHE_HOME``: the jitcache root, or None for the default."""
    value = _raw("JITCACHE_HOME")
    return None if value is None else Path(value).expanduser()


def default_root() -> Path:
    """The jitcache root when no ``--cache-dir`` is given: ``JITCACHE_HOME``, else ``$XDG_CACHE_HOME/jitcache``,
    else ``~/.cache/jitcache``."""
    if (value := home()) is not None:
        return value
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "jitcache"
    return Path.home() / ".cache" / "jitcache"


#: The URL schemes the remote store opens (jitcache.store.remote.backend); a value without ``://`` is a directory.
REMOTE_SCHEMES = ("s3", "s3a", "gs", "http", "https", "file")


def remote() -> str | None:
    """``JITCACHE_REMOTE``: the remote store's URL when ``--remote`` is not given, else None."""
    value = _raw("JITCACHE_REMOTE")
    if value is not None and "://" in value and value.split("://", 1)[0].lower() not in REMOTE_SCHEMES:
        raise _bad("JITCACHE_REMOTE", value, "not a store URL: expected s3://, gs://, http(s)://, file:// or a "
                                             "directory path")
    return value


def lock_timeout(default: float) -> float:
    """``JITCACHE_LOCK_TIMEOUT``: seconds to wait for the root lock."""
    return _seconds("JITCACHE_LOCK_TIMEOUT", default)


def entry_lock_timeout() -> float:
    """``JITCACHE_ENTRY_LOCK_TIMEOUT``: seconds to wait for another process's compile of one entry."""
    return _seconds("JITCACHE_ENTRY_LOCK_TIMEOUT", 1800.0)


def compile_log() -> str | None:
    """``JITCACHE_COMPILE_LOG``: a file that gets one line per compile, or None."""
    return _raw("JITCACHE_COMPILE_LOG")


def index_timeout() -> float:
    """``JITCACHE_INDEX_TIMEOUT``: seconds to wait for the package index."""
    return _seconds("JITCACHE_INDEX_TIMEOUT", 60.0, allow_zero=False)


def import_max_bytes(default: int) -> int:
    """``JITCACHE_IMPORT_MAX_BYTES``: the most bytes a bundle may extract to."""
    value = _raw("JITCACHE_IMPORT_MAX_BYTES")
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise _bad("JITCACHE_IMPORT_MAX_BYTES", value, "not a whole number of bytes") from None
    if limit < 0:
        raise _bad("JITCACHE_IMPORT_MAX_BYTES", value, "must be >= 0")
    return limit


def stats_enabled() -> bool:
    """``JITCACHE_STATS``: whether serving processes flush their dispatch counters."""
    return _flag("JITCACHE_STATS", True)


def stats_dir() -> Path | None:
    """``JITCACHE_STATS_DIR``: where counters go, or None for ``<root>/stats``."""
    value = _raw("JITCACHE_STATS_DIR")
    return None if value is None else Path(value)


def stats_interval(default: float) -> float:
    """``JITCACHE_STATS_INTERVAL``: seconds between two flushes."""
    return _seconds("JITCACHE_STATS_INTERVAL", default, allow_zero=False)


def metrics_enabled() -> bool:
    """``JITCACHE_METRICS``: whether the dispatch counters are exposed as Prometheus metrics."""
    return _flag("JITCACHE_METRICS", True)


def metrics_interval(default: float) -> float:
    """``JITCACHE_METRICS_INTERVAL``: seconds between two syncs of multiprocess metrics."""
    return _seconds("JITCACHE_METRICS_INTERVAL", default, allow_zero=False)


def profile() -> str | None:
    """``JITCACHE_PROFILE``: the profile the vLLM plugin installs, or None."""
    return _raw("JITCACHE_PROFILE")


def strict() -> bool:
    """``JITCACHE_STRICT``: whether the plugin's dispatcher refuses a cold bucket."""
    return _flag("JITCACHE_STRICT", False)


def debug() -> bool:
    """``JITCACHE_DEBUG``: set to anything, the CLI shows tracebacks."""
    return _raw("JITCACHE_DEBUG") is not None
