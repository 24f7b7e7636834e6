"""What a push or a pull did: frozen reports (``--format json`` carries ``"schema": 1``) and progress events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import SCHEMA_VERSION
from .layout import RemoteEnv

__all__ = ["PullReport", "PushReport", "RemoteProgress"]


@dataclass(frozen=True)
class RemoteProgress:
    """One step of a push or pull: ``phase`` is push | pull | publish, ``done`` of ``total``."""

    phase: str
    done: int
    total: int
    name: str | None = None


@dataclass(frozen=True)
class PushReport:
    remote: str
    env: RemoteEnv
    profile: str | None
    pushed: tuple[str, ...]            # written by this push
    present: tuple[str, ...]           # already in the store (someone pushed them first)
    skipped: tuple[tuple[str, str], ...]  # (entry, why): broken, another arch or DeepEP API, vanished
    bytes_sent: int
    seconds: float
    index: str | None = None           # the index object updated
    index_entries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "remote": self.remote, "env": self.env.to_dict(), "profile": self.profile,
                "pushed": list(self.pushed), "present": list(self.present),
                "skipped": [{"entry": n, "reason": r} for n, r in self.skipped],
                "bytes_sent": self.bytes_sent, "seconds": round(self.seconds, 3), "index": self.index,
                "index_entries": self.index_entries}


@dataclass(frozen=True)
class PullReport:
    remote: str
    env: RemoteEnv
    profile: str | None
    requested: int                     # names looked for (those the serving DeepEP computes, when it is known)
    pulled: tuple[str, ...]            # objects published into the local cache by this pull (under their names)
    local: tuple[str, ...]             # already in the local cache: not downloaded
    missing: tuple[str, ...]           # not in the store, under that name or another one with the same source
    refused: tuple[tuple[str, str], ...]  # (entry, why): failed a check; not published
    bytes_received: int
    seconds: float
    index: str | None = None           # the index read (None: names given by the caller)
    index_found: bool = True
    relocated: tuple[tuple[str, str], ...] = ()      # (serving name, the pulled entry it was copied from)
    not_relocated: tuple[tuple[str, str], ...] = ()  # (entry, why): relocation refused it
    serving: dict[str, Any] | None = None            # the DeepEP whose names were looked for (None: not known)
    timings: dict[str, float] | None = None          # seconds: index, names, download, verify_publish, relocate

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "remote": self.remote, "env": self.env.to_dict(), "profile": self.profile,
                "requested": self.requested, "pulled": list(self.pulled), "local": list(self.local),
                "missing": list(self.missing), "refused": [{"entry": n, "reason": r} for n, r in self.refused],
                "bytes_received": self.bytes_received, "seconds": round(self.seconds, 3), "index": self.index,
                "index_found": self.index_found, "relocated": [{"name": n, "from": f} for n, f in self.relocated],
                "not_relocated": [{"entry": n, "reason": r} for n, r in self.not_relocated],
                "deep_ep": self.serving, "timings": self.timings or {}}
