"""What a scan finds: entries and problems, as frozen dataclasses with a stable JSON form.

The JSON form (``to_dict``) is a documented, versioned schema (``docs/cache.md``):
add fields freely, never rename or remove one without bumping :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, get_args

from jitcache.types import EntryLayout

__all__ = ["BACKENDS", "SCHEMA_VERSION", "CacheEntry", "Problem", "iso_time"]

#: Version of the JSON documents `inspect`, `verify` and `prune` print.
SCHEMA_VERSION = 1

#: backend -> the on-disk formats it can come in.
#: (The DeepEP layouts are the adapters' own, ``a.layout for a in ADAPTERS``, a test holds them equal: named
#: here from the vocabulary so that importing the model, as every CLI command does, loads no adapter.)
BACKENDS = {"deep_ep": tuple(x for x in get_args(EntryLayout) if x != "triton"), "triton": ("triton",)}

#: Problem codes. "error": a runtime would crash, abort or load the wrong thing;
#: "warning": worth knowing, harmless to serving.
PROBLEM_CODES = {
    "missing_file": "error",
    "empty_file": "error",
    "invalid_cubin": "error",
    "entry_symbols": "error",
    "wrong_arch": "error",
    "not_committed": "error",
    "bad_meta": "error",
    "bad_group": "error",
    "group_missing_file": "error",
    "unsafe_permissions": "error",
    "foreign_owner": "error",
    "missing_meta": "warning",
    "undecoded_source": "warning",
    "orphan_build": "warning",
    "unknown_entry": "warning",
    "stray_file": "warning",
    "foreign_entry": "warning",
}


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return _dt.datetime.fromtimestamp(timestamp, tz=_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cache: ``code`` (stable, see :data:`PROBLEM_CODES`), where, and why."""

    code: str
    path: str
    message: str
    key: str | None = None  # the entry's directory name, when the problem belongs to an entry

    @property
    def severity(self) -> str:
        return PROBLEM_CODES.get(self.code, "error")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "path": self.path, "entry": self.key,
                "message": self.message}


@dataclass(frozen=True)
class CacheEntry:
    """One compiled kernel in a cache, in its backend's native format.

    ``family`` is DeepEP's JIT name (``dispatch``, ``combine``...) or the
    Triton kernel name; ``key`` the directory name's digest; ``params`` the
    template parameters decoded from ``kernel.cu`` (DeepEP's argument
    names, plus ``kernel``: the template's name) or Triton's compile options;
    ``last_used`` what the runtime touches on a hit (DeepJIT: the mtime of
    ``.committed``; others: the newest access or modification time of the
    file read on a hit).
    """

    backend: str
    format: str
    family: str
    key: str
    path: str
    size: int
    last_used: float | None
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    compiler: str | None = None
    arch: str | None = None
    problems: tuple[Problem, ...] = ()
    foreign: bool = False  # another tool's entry in a shared root (DeepGEMM in $HOME/.dj): never acted on
    #: Names of the regular files at the entry's top level, as the scan saw them (not in the JSON form:
    #: what ``export`` ships, without listing the directory again).
    files: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        """The entry's directory name."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def status(self) -> str:
        """``ok``, ``warning`` (only warnings) or ``broken`` (at least one error)."""
        if any(p.severity == "error" for p in self.problems):
            return "broken"
        return "warning" if self.problems else "ok"

    @property
    def num_max_tokens_per_rank(self) -> int | None:
        value = self.params.get("num_max_tokens_per_rank")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "format": self.format, "family": self.family, "key": self.key,
            "name": self.name, "path": self.path, "size": self.size, "last_used": iso_time(self.last_used),
            "status": self.status, "compiler": self.compiler, "arch": self.arch, "params": dict(self.params),
            "problems": [p.to_dict() for p in self.problems], "foreign": self.foreign,
        }
