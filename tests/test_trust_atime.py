"""Issue 14, case 9: reading a DeepEP 2.1 cache does not reset its LRU clock.

DeepEP 2.1 writes no marker, so "last used" is the cubin's access time.
Entries are made 40 days old; `verify`, `inspect`, `export` and an `import`
that compares identical entries read every cubin (real processes, a real
filesystem with relatime, where a read of a file not read for a day does
update its atime); afterwards every entry must still be prunable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from jitcache.planning.variants import plan
from jitcache.store import reading
from jitcache.store.root import resolve_root
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import fill_plan

pytestmark = pytest.mark.nvcc

DAY = 86400.0


def _age(paths: list[Path], seconds: float) -> float:
    stamp = time.time() - seconds
    for entry in paths:
        for item in [*entry.iterdir(), entry]:
            os.utime(item, (stamp, stamp), follow_symlinks=False)
    return stamp


def _atimes(paths: list[Path]) -> dict[str, float]:
    return {str(p / name): (p / name).stat().st_atime for p in paths for name in ("kernel.cu", "kernel.cubin")}


def _reads_update_atime(directory: Path) -> bool:
    probe = directory / "atime-probe"
    probe.write_bytes(b"x")
    old = time.time() - 40 * DAY
    os.utime(probe, (old, old))
    probe.read_bytes()
    updated = probe.stat().st_atime > old + 1
    probe.unlink()
    return updated


def test_reading_a_21_cache_keeps_every_entry_prunable(tmp_path, cubins, test_profile):
    root = resolve_root(tmp_path / "root").ensure()
    entries = fill_plan(root.deep_ep_dir, plan(test_profile), cubins, style="2.1")
    if not _reads_update_atime(tmp_path):
        pytest.skip("this filesystem never updates atime on read (noatime): nothing to protect")
    _age(entries, 40 * DAY)
    before = _atimes(entries)

    assert run_cli("verify", "--cache-dir", str(root.path)).code == 0
    assert run_cli("inspect", "--cache-dir", str(root.path), "--profile", test_profile.source).code == 0
    bundle = tmp_path / "b.tar.zst"
    assert run_cli("export", "--cache-dir", str(root.path), "-o", str(bundle)).code == 0
    imported = run_cli("import", str(bundle), "--cache-dir", str(root.path), "--format", "json")
    assert imported.code == 0 and len(imported.json()["identical"]) == len(entries)  # compared every file

    assert _atimes(entries) == before
    done = run_cli("prune", "--cache-dir", str(root.path), "--older-than", "30d", "--dry-run", "--format", "json")
    assert done.code == 0 and len(done.json()["remove"]) == len(entries)


def test_without_o_noatime_the_atime_is_put_back(tmp_path, monkeypatch):
    """Where O_NOATIME is refused (a file we do not own, some network filesystems) the read restores it."""
    path = tmp_path / "kernel.cubin"
    path.write_bytes(b"\x7fELF" + b"\0" * 100)
    old = time.time() - 40 * DAY
    os.utime(path, (old, old))
    if not _reads_update_atime(tmp_path):
        pytest.skip("this filesystem never updates atime on read")
    monkeypatch.setattr(reading, "O_NOATIME", 0)  # as if the kernel refused the flag
    data = reading.read_bytes(path)
    assert len(data) == 104 and abs(path.stat().st_atime - old) < 1e-3
