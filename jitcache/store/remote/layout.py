"""Where things live in a remote store, and the per-profile index: pure functions, no I/O.

Layout under the remote URL (version :data:`REMOTE_LAYOUT`)::

    jitcache/v1/<env>/entries/<entry name>.jcb.tar.zst       one entry, as a one-entry bundle
    jitcache/v1/<env>/profiles/<profile>/<plan fp>.json      the index: which entries that plan has

``<env>`` is the fingerprint that decides whether an entry can serve at all:
``deepep-<api>/nvcc-<version>/<arch>`` (``deepep-2.5/nvcc-13.0.88/sm_90a``).
Within it, an entry is keyed by its directory name, which *is* the digest
DeepEP computes on the serving machine (its paths, flags and source enter it):
a node looks up exactly the names its own DeepEP will ask for, so a kernel
built for other install paths is simply not found under the serving name
(:mod:`jitcache.store.relocate` re-publishes it under the serving name after the pull).

Entry objects are written once (create-if-absent) and never changed; the
index is the only object that is rewritten, by compare-and-swap. The index
lists, per entry, the object's size and sha256 and the sha256 of its
``kernel.cu`` (``source``): a kernel's source does not hold install paths,
so a node whose DeepEP computes another name for the same kernel finds the
object by its source (:func:`resolve_objects`) and relocates it after the pull.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

from jitcache.adapters.registry import adapter_for_layout
from jitcache.errors import RemoteError
from jitcache.types import DEEP_EP_VERSIONS

from ..formats import classify_deep_ep_name
from ..model import SCHEMA_VERSION

__all__ = ["INDEX_KIND", "REMOTE_LAYOUT", "RemoteEnv", "decode_index", "encode_index", "entry_key", "index_key",
           "merge_index", "resolve_objects"]

REMOTE_LAYOUT = "jitcache/v1"
INDEX_KIND = "jitcache-remote-index"
ENTRY_SUFFIX = ".jcb.tar.zst"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NVCC = re.compile(r"^\d+\.\d+(\.\d+)?$")
_ARCH = re.compile(r"^sm_\d+[af]?$")


@dataclass(frozen=True)
class RemoteEnv:
    """What an entry's usefulness depends on besides its name: DeepEP API, nvcc version, GPU arch."""

    deep_ep_api: str        # a DeepEPVersion (jitcache.types)
    nvcc: str               # "13.0.88", from `nvcc --version` (V13.0.88)
    arch: str               # "sm_90a"

    def __post_init__(self) -> None:
        if self.deep_ep_api not in DEEP_EP_VERSIONS:
            raise RemoteError(f"remote key: DeepEP API must be {' or '.join(DEEP_EP_VERSIONS)}, "
                              f"got {self.deep_ep_api!r}")
        if not _NVCC.match(self.nvcc):
            raise RemoteError(f"remote key: nvcc version must look like 13.0.88, got {self.nvcc!r}")
        if not _ARCH.match(self.arch):
            raise RemoteError(f"remote key: arch must look like sm_90a, got {self.arch!r}")

    @property
    def prefix(self) -> str:
        return f"{REMOTE_LAYOUT}/deepep-{self.deep_ep_api}/nvcc-{self.nvcc}/{self.arch}"

    def to_dict(self) -> dict[str, str]:
        return {"deep_ep_api": self.deep_ep_api, "nvcc": self.nvcc, "arch": self.arch}


def api_of_entry_name(name: str) -> str | None:
    """The DeepEP API an entry directory name belongs to (its layout says it)."""
    kind = classify_deep_ep_name(name)
    found = None if kind is None else adapter_for_layout(kind[0])
    return None if found is None else found.version


def entry_key(env: RemoteEnv, name: str) -> str:
    if classify_deep_ep_name(name) is None:
        raise RemoteError(f"{name!r} is not a DeepEP cache entry name")
    return f"{env.prefix}/entries/{name}{ENTRY_SUFFIX}"


def index_key(env: RemoteEnv, profile: str, plan_fingerprint: str) -> str:
    safe = _SAFE.sub("_", profile).strip("._") or "profile"
    if not re.fullmatch(r"[0-9a-f]{8,64}", plan_fingerprint):
        raise RemoteError(f"remote key: plan fingerprint {plan_fingerprint!r} is not hex")
    return f"{env.prefix}/profiles/{safe}/{plan_fingerprint}.json"


def encode_index(profile: str, plan_fingerprint: str, env: RemoteEnv, entries: dict[str, dict[str, Any]]) -> bytes:
    """The index document: per entry name the object's size and sha256, and its kernel.cu's sha256 (``source``)."""
    doc = {"schema": SCHEMA_VERSION, "kind": INDEX_KIND, "profile": profile, "plan_fingerprint": plan_fingerprint,
           "env": env.to_dict(), "updated_at": time.time(),
           "entries": {name: {"size": int(e["size"]), "sha256": str(e["sha256"]),
                              **({"source": str(e["source"])} if e.get("source") else {})}
                       for name, e in sorted(entries.items())}}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def decode_index(data: bytes, where: str) -> dict[str, dict[str, Any]]:
    """``{entry name: {"size", "sha256"}}`` from an index; a malformed one is a :class:`RemoteError`."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise RemoteError(f"{where}: index is not valid JSON ({exc})", url=where) from None
    if not isinstance(doc, dict) or doc.get("kind") != INDEX_KIND:
        raise RemoteError(f"{where}: not a jitcache remote index", url=where)
    if doc.get("schema") != SCHEMA_VERSION:
        raise RemoteError(f"{where}: index schema {doc.get('schema')!r} is not {SCHEMA_VERSION}", url=where,
                          hint="pull with the jitcache version that pushed it")
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise RemoteError(f"{where}: index field 'entries' must be an object", url=where)
    out = {}
    for name, spec in entries.items():
        if (classify_deep_ep_name(name) is None or not isinstance(spec, dict)
                or not isinstance(spec.get("size"), int) or not re.fullmatch(r"[0-9a-f]{64}", str(spec.get("sha256")))):
            raise RemoteError(f"{where}: index entry {name!r} is malformed", url=where)
        out[name] = {"size": spec["size"], "sha256": spec["sha256"]}
        if spec.get("source") is not None:   # indexes written before sources were listed have none
            if not re.fullmatch(r"[0-9a-f]{64}", str(spec["source"])):
                raise RemoteError(f"{where}: index entry {name!r} has a malformed source digest", url=where)
            out[name]["source"] = spec["source"]
    return out


def _family(name: str) -> str | None:
    kind = classify_deep_ep_name(name)
    return None if kind is None else kind[1]


def resolve_objects(wanted: dict[str, str | None], listing: dict[str, dict[str, Any]]
                    ) -> tuple[dict[str, str], tuple[str, ...]]:
    """Which object to fetch for each wanted name: ``({wanted name: object name}, unlisted)``.

    ``wanted`` maps each name the serving DeepEP looks up to the sha256 of the
    ``kernel.cu`` it expects there (``None``: unknown). A name the index lists
    is fetched as it is; otherwise an object of the same kernel family with
    that source (built for other install paths: relocated after the pull),
    the first by name so every node picks the same one. ``unlisted``: wanted
    names with neither (an object may still exist under the exact name, pushed
    without an index).
    """
    by_source: dict[tuple[str | None, str], str] = {}
    for name in sorted(listing):
        if (source := listing[name].get("source")) is not None:
            by_source.setdefault((_family(name), source), name)
    chosen: dict[str, str] = {}
    unlisted = []
    for name, source in wanted.items():
        if name in listing:
            chosen[name] = name
        elif source is not None and (other := by_source.get((_family(name), source))) is not None:
            chosen[name] = other
        else:
            unlisted.append(name)
    return chosen, tuple(unlisted)


def merge_index(current: dict[str, dict[str, Any]], added: Iterable[tuple[str, dict[str, Any]]]
                ) -> dict[str, dict[str, Any]] | None:
    """``current`` plus ``added``; ``None`` when nothing is new (no write needed).

    An entry already listed keeps its listing: entry objects are written once,
    so the first listing is the one that matches the stored object.
    """
    merged = dict(current)
    changed = False
    for name, spec in added:
        if name not in merged:
            merged[name] = spec
            changed = True
    return merged if changed else None
