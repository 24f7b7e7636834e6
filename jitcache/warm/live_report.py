"""The live warmup's report: one :class:`StepResult` per step, :class:`WarmupProgress` events,
the :class:`WarmupReport` written under the root's meta folder, and :func:`load_report`.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jitcache._version import __version__
from jitcache.planning.profiles import Profile, load_profile
from jitcache.store.publish import write_json_atomic
from jitcache.types import StepStatus

__all__ = ["CACHED", "COMPILED", "PRECOMPILE", "StepResult", "WarmupProgress", "WarmupReport", "load_report", "report_path"]

COMPILED: StepStatus = "compiled"
CACHED: StepStatus = "cached"
PRECOMPILE = "precompile"  # the mode of the progress event sent before the nvcc pass


@dataclass(frozen=True)
class StepResult:
    """One warmup step: a mode and a ``num_max_tokens_per_rank``, and what DeepEP did for it."""

    mode: str
    num_max_tokens_per_rank: int
    status: StepStatus  # "compiled": new cache entries appeared during the step; "cached": none did
    seconds: float
    entries_written: tuple[str, ...] = ()
    num_tokens: int = 0


@dataclass(frozen=True)
class WarmupProgress:
    """Sent to the progress callback before (``result is None``) and after each step, on rank 0 only.

    When the nvcc pass runs, one event with ``mode == PRECOMPILE`` (``done`` 0,
    ``num_max_tokens_per_rank`` 0) comes first, before the pass.
    """

    done: int
    total: int
    mode: str
    num_max_tokens_per_rank: int
    elapsed: float
    eta: float | None
    result: StepResult | None = None


@dataclass(frozen=True)
class WarmupReport:
    """What a live warmup did, per step and in total. Saved as JSON in the cache root's ``meta/``.

    ``seconds`` covers the live steps; the nvcc pass before them, when it ran,
    is in ``precompile`` (its own ``wall_seconds``).
    """

    profile: str | None
    profile_fingerprint: str | None
    plan_fingerprint: str
    api: str
    policy: dict
    modes: tuple[str, ...]
    rank: int
    world_size: int
    cache_dirs: tuple[str, ...]
    results: tuple[StepResult, ...]
    seconds: float
    created: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    jitcache_version: str = __version__
    # PrecompileResult.to_dict() plus "missed_by_live"; None when the warmup ran without it (or predates it).
    precompile: dict | None = None
    # Entries published under this DeepEP's names from copies built for other install paths (relocation).
    relocated: tuple[str, ...] = ()
    # With a remote store: pulled, relocated, compiled, pushed, bytes each way, seconds, errors (LiveRemote.finish).
    remote: dict | None = None

    @property
    def num_compiled(self) -> int:
        return sum(r.status == COMPILED for r in self.results)

    @property
    def num_cached(self) -> int:
        return sum(r.status == CACHED for r in self.results)

    @property
    def num_entries_written(self) -> int:
        return sum(len(r.entries_written) for r in self.results)

    def warm_buckets(self, mode: str = "decode") -> frozenset[int]:
        """Buckets this warmup left compiled for ``mode`` (what a :class:`BucketedDispatcher` may trust)."""
        return frozenset(r.num_max_tokens_per_rank for r in self.results if r.mode == mode)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["modes"] = list(self.modes)
        data["cache_dirs"] = list(self.cache_dirs)
        data["relocated"] = list(self.relocated)
        data["results"] = [{**asdict(r), "entries_written": list(r.entries_written)} for r in self.results]
        data["totals"] = {"steps": len(self.results), "compiled": self.num_compiled, "cached": self.num_cached,
                          "entries_written": self.num_entries_written, "seconds": self.seconds}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WarmupReport":
        fields = dict(data)
        fields.pop("totals", None)
        fields["modes"] = tuple(fields["modes"])
        fields["cache_dirs"] = tuple(fields["cache_dirs"])
        fields["relocated"] = tuple(fields.get("relocated") or ())
        fields["results"] = tuple(StepResult(**{**r, "entries_written": tuple(r["entries_written"])})
                                  for r in fields["results"])
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "WarmupReport":
        from jitcache.errors import CacheError

        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise CacheError(f"{path}: no warmup report", path=path,
                             hint="run `jitcache warmup` for this profile first") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"{path}: unreadable warmup report ({exc})", path=path) from None


def report_path(meta_dir: str | Path, profile: Profile | str | None, plan_fingerprint: str = "") -> Path:
    """``<meta>/warmup-<profile>.json`` (``warmup-policy-<plan hash>.json`` for a bare policy)."""
    name = profile.name if isinstance(profile, Profile) else profile
    return Path(meta_dir) / (f"warmup-{name}.json" if name else f"warmup-policy-{plan_fingerprint}.json")


def load_report(profile: Profile | str, cache_dir: str | Path | None = None) -> WarmupReport:
    """The last saved warmup report of ``profile`` in the cache root."""
    from jitcache.store.root import resolve_root

    name = profile.name if isinstance(profile, Profile) else load_profile(profile).name
    return WarmupReport.load(report_path(resolve_root(cache_dir).meta_dir, name))


# -- what every rank must agree on ------------------------------------------------------------
