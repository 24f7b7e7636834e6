"""Ship entries between ranks: after a split AOT compile, every rank's cache holds every entry.

When the nodes share no filesystem, what one rank built is packed (a flat
tar of the entry's files), all-gathered over the process group, and
published on the ranks that miss it by the same atomic rename as a compile.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any, Sequence

from jitcache.adapters.base import BuildJob
from jitcache.build.pool import backend_dir, entry_present, final_path, publish_job
from jitcache.errors import CacheError
from jitcache.store.publish import make_temp_dir, remove_tree
from jitcache.store.root import CacheRoot
from jitcache.warm.collectives import all_gather_bytes, initialized_dist

__all__ = ["exchange_entries", "local_world_size"]

log = logging.getLogger("jitcache.aot")


def local_world_size() -> int:
    """The ranks on this node: torchrun's ``LOCAL_WORLD_SIZE``, 1 when unset or not a positive integer."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _pack(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
    return buffer.getvalue()


def _unpack_and_publish(blob: bytes, root: CacheRoot, job: BuildJob) -> bool:
    build = make_temp_dir(backend_dir(root, job))
    kept = False
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            for member in tar.getmembers():
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    continue  # entries are flat; the marker is written by publish_entry, last
                data = tar.extractfile(member)
                (build / member.name).write_bytes(data.read() if data else b"")
        published = publish_job(build, final_path(root, job), job)
        kept = True
        return published
    finally:
        if not kept:
            remove_tree(build)


def exchange_entries(jobs: Sequence[BuildJob], root: CacheRoot, group: Any = None) -> tuple[str, ...]:
    """Make every rank's cache hold every job's entry, over the process group; returns what this rank received.

    A collective: every rank of ``group`` calls it with the same jobs. When the
    filesystem is shared nothing is missing anywhere and nothing is sent. An
    entry that cannot be read or written is logged and left out (not raised):
    the peers are in, or about to enter, the same collectives.
    """
    if initialized_dist() is None:
        return ()
    missing = [j.entry for j in jobs if not entry_present(final_path(root, j), j)]
    wanted = [json.loads(b) for b in all_gather_bytes(json.dumps(missing).encode(), group)]
    wanted_anywhere = {e for rank_missing in wanted for e in rank_missing}
    if not wanted_anywhere:
        return ()
    offer = {}
    for job in jobs:
        final = final_path(root, job)
        if job.entry in wanted_anywhere and job.entry not in missing and entry_present(final, job):
            try:
                offer[job.entry] = _pack(final)
            except (OSError, tarfile.TarError) as exc:
                log.warning("%s: cannot pack the entry to send it to other ranks (%s)", final, exc)
    offers = [pickle.loads(b) for b in all_gather_bytes(pickle.dumps(offer), group)]
    by_entry = {j.entry: j for j in jobs}
    received = []
    for entry in missing:
        blob = next((o[entry] for o in offers if entry in o), None)
        if blob is None:
            continue
        try:
            _unpack_and_publish(blob, root, by_entry[entry])
        except (OSError, CacheError, tarfile.TarError) as exc:
            log.warning("%s: cannot publish the entry received from another rank (%s)", entry, exc)
            continue
        received.append(entry)
    return tuple(received)
