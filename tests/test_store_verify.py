"""verify: every corruption the issue lists is found; --repair quarantines (never deletes); dry runs touch nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from jitcache.store.root import CacheRoot
from jitcache.store.verify import repair, verify
from store_fixtures import *  # noqa: F401,F403 (fixtures)

pytestmark = pytest.mark.nvcc


def _deep_entries(root: CacheRoot) -> list[Path]:
    return sorted((root.deep_ep_dir / "cache").iterdir())


def _corrupt_all(root: CacheRoot, cubins) -> dict[str, str]:
    """One corruption per listed failure mode; returns entry name -> expected problem code."""
    e = _deep_entries(root)
    expected = {}
    (e[0] / "kernel.cu").unlink(); expected[e[0].name] = "missing_file"
    (e[1] / "kernel.cubin").unlink(); expected[e[1].name] = "missing_file"
    (e[2] / "kernel.cubin").write_bytes(b""); expected[e[2].name] = "empty_file"
    (e[3] / "kernel.cu").write_text(""); expected[e[3].name] = "empty_file"
    (e[4] / "kernel.cubin").write_bytes(b"#!/bin/sh\necho not an elf\n" * 10); expected[e[4].name] = "invalid_cubin"
    (e[5] / "kernel.cubin").write_bytes(cubins["dispatch"][:1500]); expected[e[5].name] = "invalid_cubin"
    blob = bytearray(cubins["dispatch"]); blob[18:20] = (62).to_bytes(2, "little")  # EM_X86_64
    (e[6] / "kernel.cubin").write_bytes(bytes(blob)); expected[e[6].name] = "invalid_cubin"
    (e[7] / "kernel.cubin").write_bytes(cubins["two_kernels"]); expected[e[7].name] = "entry_symbols"
    (e[8] / ".committed").unlink(); expected[e[8].name] = "not_committed"
    (e[9] / "meta.json").write_text("{truncated"); expected[e[9].name] = "bad_meta"
    os.chmod(e[10] / "kernel.cubin", 0o666); expected[e[10].name] = "unsafe_permissions"
    # Triton: a group that lists a file that is gone
    (group_dir,) = [d for d in root.triton_dir.iterdir() if d.is_dir()]
    next(group_dir.glob("*.cubin")).unlink(); expected[group_dir.name] = "group_missing_file"
    return expected


def test_verify_finds_every_corruption(filled_root, cubins):
    expected = _corrupt_all(filled_root, cubins)
    # orphaned builds: an old DeepEP tmp dir, and a fresh one (a live compile: left alone)
    old = filled_root.deep_ep_dir / "tmp" / "3f2a9c1e-dead-4bad-beef-000000000000"
    old.mkdir()
    (old / "kernel.cu").write_text("half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (filled_root.deep_ep_dir / "tmp" / "fresh").mkdir()
    # and a jitcache Triton build that died (kill -9 of an AOT worker)
    dead_triton = filled_root.triton_dir / "tmp" / "jitcache-0123456789abcdef"
    dead_triton.mkdir(parents=True)
    os.utime(dead_triton, (time.time() - 7200, time.time() - 7200))

    result = verify(filled_root)
    found = {}
    for p in result.problems:
        if p.key:
            found.setdefault(p.key, set()).add(p.code)
    for name, code in expected.items():
        assert code in found.get(name, set()), (name, code, found.get(name))
    assert not result.ok
    orphans = [p for p in result.problems if p.code == "orphan_build"]
    assert sorted(p.path for p in orphans) == sorted([str(old), str(dead_triton)])
    assert len(result.moves) == len(expected) + 2
    data = result.to_dict()
    assert data["schema"] == 1 and data["errors"] >= len(expected)
    json.dumps(data)


def test_repair_quarantines_and_runtime_view_is_clean(filled_root, cubins):
    expected = _corrupt_all(filled_root, cubins)
    before = {p.name for p in _deep_entries(filled_root)}
    result = verify(filled_root)
    outcome = repair(filled_root, result)
    assert len(outcome.moved) == len(result.moves) and not outcome.failed
    after = {p.name for p in _deep_entries(filled_root)}
    assert before - after == {n for n in expected if n in before}
    # nothing deleted: every bad entry is in quarantine, whole
    for move in outcome.moved:
        assert Path(move.destination).is_dir() and not Path(move.source).exists()
        assert str(filled_root.quarantine_dir) in move.destination
    again = verify(filled_root)
    assert again.ok, again.problems
    assert len(again.scan.entries) == 16 + 1 - len(expected)


def test_verify_is_read_only(filled_root, cubins):
    _corrupt_all(filled_root, cubins)
    snapshot = sorted(str(p) for p in filled_root.path.rglob("*"))
    verify(filled_root)
    assert sorted(str(p) for p in filled_root.path.rglob("*")) == snapshot


def test_root_writable_by_others_is_flagged_not_moved(filled_root):
    os.chmod(filled_root.path, 0o777)
    try:
        result = verify(filled_root)
        assert [p.code for p in result.unrepairable] == ["unsafe_permissions"]
        assert result.unrepairable[0].path == str(filled_root.path)
        assert result.moves == ()
    finally:
        os.chmod(filled_root.path, 0o755)
    os.chmod(filled_root.deep_ep_dir / "cache", 0o775)
    assert [p.path for p in verify(filled_root).unrepairable] == [str(filled_root.deep_ep_dir / "cache")]


def test_bare_deep_ep_dir(tmp_path, cubins, test_profile):
    from jitcache.planning.variants import plan
    from store_fixtures import fill_plan

    fill_plan(tmp_path / "dj", plan(test_profile), cubins, buckets=(1,))
    root = CacheRoot.for_deep_ep_dir(tmp_path / "dj")
    victim = sorted((tmp_path / "dj" / "cache").iterdir())[0]
    (victim / "kernel.cubin").write_bytes(b"")
    outcome = repair(root, verify(root))
    assert [Path(m.source).name for m in outcome.moved] == [victim.name]
    assert (tmp_path / "dj" / ".jitcache" / "quarantine").is_dir()
    assert verify(root).ok
