"""Issue 14, cases 6 and 7: a full disk and a read-only cache give an `Error:` naming the path and the free
space, a non-zero exit, nothing half-visible and the partial work reported; never a traceback.

The disk is a real tmpfs of 1 MiB filled to the free space each case needs
(where mounting is not allowed: the console script under RLIMIT_FSIZE); the
read-only cache is the same tmpfs remounted read-only. `warmup --aot` is the
real command with DeepEP 2.5's headers (one bucket: five real nvcc compiles,
done once for the module).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aot_fixtures import nccl_include  # noqa: F401 (fixture)
from fault_fixtures import can_mount, copy_tree, fill_to, free, read_only, run_cli_limited, small_disk
from store_fixtures import *  # noqa: F401,F403 (fixtures)

pytestmark = pytest.mark.nvcc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_bucket(tmp_path_factory, nccl_include, deep_ep25_sdist):  # noqa: F811
    """A real `warmup --aot` of h200-ep1 cut to one bucket: (profile, args, warm root)."""
    SDIST = deep_ep25_sdist
    base = tmp_path_factory.mktemp("one-bucket")
    profile = base / "one-bucket.toml"
    text = (REPO / "cache_profiles" / "h200-ep1.toml").read_text()
    profile.write_text(text.replace("max_num_batched_tokens = 8192", "max_num_batched_tokens = 1"))
    args = ["warmup", "--aot", "-p", str(profile), "--deep-ep-include", str(SDIST), "--nccl-include",
            str(nccl_include), "-j", "2"]
    warm = base / "warm"
    done = run_cli_limited(*args, "--cache-dir", str(warm))
    assert done.returncode == 0, done.stderr
    shutil.rmtree(warm / "meta" / "aot")
    return profile, args, warm


def _contract(done, *, needle: str | None = None) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert "Error:" in done.stderr, done.stderr
    if needle is not None:
        assert needle in done.stderr, done.stderr


def _whole(root: Path) -> None:
    """Nothing half-visible: every entry in cache/ is whole, no build directory of ours is left."""
    cache = root / "deep_ep" / "cache"
    for entry in cache.iterdir() if cache.is_dir() else ():
        assert (entry / ".committed").is_file() and (entry / "kernel.cubin").stat().st_size > 0, entry
    tmp = root / "deep_ep" / "tmp"
    assert not [p for p in tmp.iterdir()] if tmp.is_dir() else True, list(tmp.iterdir())


def _free_text(done) -> None:
    assert "free there" in done.stderr, done.stderr


# -- case 6: disk full ----------------------------------------------------------------------------


def test_warmup_with_no_space_at_all(tmp_path, one_bucket):
    _, args, _ = one_bucket
    with small_disk(tmp_path / "disk", "1m") as disk:
        if disk is None:
            done = run_cli_limited(*args, "--cache-dir", str(tmp_path / "disk" / "root"), fsize=1)
        else:
            fill_to(disk, 0)
            done = run_cli_limited(*args, "--cache-dir", str(disk / "root"))
        _contract(done)
        _free_text(done)
        assert str(tmp_path / "disk") in done.stderr


def test_warmup_running_out_of_space_midway(tmp_path, one_bucket):
    """Two entries to compile (dispatch, ~35 KiB of cubin, and combine), 24 KiB free: what fits is published
    whole, the rest is reported, with the free space."""
    _, args, warm = one_bucket
    if not can_mount():
        pytest.skip("needs a real small filesystem (the RLIMIT_FSIZE fallback cannot run out midway)")
    with small_disk(tmp_path / "disk", "2m") as disk:
        root = disk / "root"
        copy_tree(warm, root)
        doomed = [p for p in (root / "deep_ep" / "cache").iterdir() if p.name.split(".")[0] in ("dispatch", "combine")]
        assert len(doomed) == 2
        for entry in doomed:
            shutil.rmtree(entry)
        fill_to(disk, 24 << 10)
        done = run_cli_limited(*args, "--cache-dir", str(root))
        _contract(done)
        _free_text(done)
        _whole(root)
        # the partial work is in the output: how many were already there, compiled, failed
        assert "3 cached" in done.stdout + done.stderr, done.stdout + done.stderr


def test_import_on_a_full_disk(tmp_path, filled_root):
    from jitcache.store.bundle import export_bundle

    bundle = export_bundle(filled_root, tmp_path / "b.tar.zst").path
    with small_disk(tmp_path / "disk", "1m") as disk:
        if disk is None:
            done = run_cli_limited("import", bundle, "--cache-dir", str(tmp_path / "disk" / "root"), fsize=40 << 10)
            root = tmp_path / "disk" / "root"
        else:
            root = disk / "root"
            # reading a root that does not exist is refused (exit 2) and creates nothing on the full disk
            assert run_cli_limited("inspect", "--cache-dir", str(root)).returncode == 2 and not root.exists()
            root.mkdir()
            fill_to(disk, 40 << 10)
            done = run_cli_limited("import", bundle, "--cache-dir", str(root))
        _contract(done)
        _free_text(done)
        assert "nothing imported" in done.stderr.lower() or "nothing was imported" in done.stderr.lower()
        _whole(root)
        assert not any((root / "deep_ep" / "cache").iterdir()) if (root / "deep_ep" / "cache").is_dir() else True


def test_export_to_a_full_disk(tmp_path, filled_root):
    with small_disk(tmp_path / "disk", "1m") as disk:
        if disk is None:
            out = tmp_path / "disk" / "b.tar.zst"
            done = run_cli_limited("export", "--cache-dir", str(filled_root.path), "-o", str(out), fsize=4 << 10)
        else:
            fill_to(disk, 4 << 10)  # the bundle is ~11 KiB
            out = disk / "b.tar.zst"
            done = run_cli_limited("export", "--cache-dir", str(filled_root.path), "-o", str(out))
        _contract(done, needle=str(out))
        _free_text(done)
        assert [p.name for p in out.parent.iterdir() if p.name != ".filler"] == []  # no partial bundle


# -- case 7: read-only caches ---------------------------------------------------------------------


@pytest.fixture
def ro_root(tmp_path, one_bucket, cubins, test_profile):
    """The warm root on its own tmpfs, with a broken entry to repair and everything old enough to prune."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        root = (disk or tmp_path / "disk") / "root"
        copy_tree(one_bucket[2], root)
        victim = sorted((root / "deep_ep" / "cache").iterdir())[0]
        (victim / "kernel.cubin").write_bytes(b"")
        yield root


@pytest.mark.parametrize("command", ["prune", "verify --repair", "warmup --aot", "export", "import"])
def test_read_only_cache(tmp_path, ro_root, one_bucket, filled_root, command):
    from jitcache.store.bundle import export_bundle

    bundle = export_bundle(filled_root, tmp_path / "in.tar.zst").path
    _, warm_args, _ = one_bucket
    before = sorted(str(p.relative_to(ro_root)) for p in ro_root.rglob("*"))
    with read_only(ro_root.parent):
        argv = {
            "prune": ["prune", "--cache-dir", str(ro_root), "--older-than", "0s"],
            "verify --repair": ["verify", "--cache-dir", str(ro_root), "--repair"],
            "warmup --aot": [*warm_args, "--cache-dir", str(ro_root)],
            "export": ["export", "--cache-dir", str(filled_root.path), "-o", str(ro_root / "out.tar.zst")],
            "import": ["import", bundle, "--cache-dir", str(ro_root)],
        }[command]
        done = run_cli_limited(*argv)
        _contract(done)
        assert str(ro_root) in done.stderr and "read-only" in done.stderr.lower(), done.stderr
        # reading still works
        assert run_cli_limited("inspect", "--cache-dir", str(ro_root), "--format", "json").returncode == 0
    assert sorted(str(p.relative_to(ro_root)) for p in ro_root.rglob("*")) == before
