"""Atomic publishing: marker inside, rename decides, losers discard, crashes leave nothing visible."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from jitcache.errors import CacheError
from jitcache.store.publish import (
    COMMIT_MARKER,
    atomic_write_text,
    make_temp_dir,
    publish_entry,
    remove_tree,
)


def _build(backend: Path, payload: str) -> Path:
    tmp = make_temp_dir(backend)
    (tmp / "kernel.cu").write_text(payload)
    (tmp / "kernel.cubin").write_bytes(payload.encode() * 10)
    return tmp


def test_publish_writes_marker_and_renames(tmp_path):
    tmp = _build(tmp_path, "a")
    assert tmp.parent == tmp_path / "tmp"
    final = tmp_path / "cache" / "dispatch.0123"
    assert publish_entry(tmp, final) is True
    assert (final / COMMIT_MARKER).is_file() and (final / "kernel.cu").read_text() == "a"
    assert not tmp.exists()


def test_publish_without_marker(tmp_path):
    final = tmp_path / "cache" / "kernel.dispatch.0123"
    assert publish_entry(_build(tmp_path, "a"), final, marker=None)
    assert not (final / COMMIT_MARKER).exists()


def test_loser_discards_its_copy(tmp_path):
    final = tmp_path / "cache" / "x.1"
    assert publish_entry(_build(tmp_path, "first"), final)
    second = _build(tmp_path, "second")
    assert publish_entry(second, final) is False
    assert not second.exists()
    assert (final / "kernel.cu").read_text() == "first"


def test_missing_tmp_dir(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        publish_entry(tmp_path / "nope", tmp_path / "cache" / "x.1")


def _racer(backend: str, index: int, start, results) -> None:
    tmp = _build(Path(backend), f"racer {index}")
    start.wait(30)
    results.put((index, publish_entry(tmp, Path(backend) / "cache" / "combine.ff")))


def test_many_processes_one_winner(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), i, start, results)) for i in range(6)]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    winners = [i for i, won in outcomes if won]
    assert len(winners) == 1
    final = tmp_path / "cache" / "combine.ff"
    assert (final / "kernel.cu").read_text() == f"racer {winners[0]}"
    assert (final / COMMIT_MARKER).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o644)


def test_remove_tree(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("x")
    remove_tree(d)
    assert list(tmp_path.iterdir()) == []
    remove_tree(d)  # already gone: fine
