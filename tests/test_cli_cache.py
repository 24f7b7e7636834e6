"""The cache commands end to end through the CLI entry point: output, JSON schema, exit codes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from jitcache.cli.app import main
from jitcache.planning.variants import plan
from store_fixtures import *  # noqa: F401,F403 (fixtures)

pytestmark = pytest.mark.nvcc


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_env(capsys, tmp_path):
    code, out, _ = run(capsys, "env", "--cache-dir", str(tmp_path / "c"), "--read-only-root", str(tmp_path / "ro"))
    assert code == 0
    assert f"export EP_JIT_CACHE_DIR={tmp_path}/c/deep_ep:{tmp_path}/ro" in out
    assert f"export TRITON_CACHE_DIR={tmp_path}/c/triton" in out
    code, out, _ = run(capsys, "env", "--cache-dir", str(tmp_path / "c"), "--format", "json")
    assert json.loads(out)["env"]["TRITON_CACHE_DIR"] == f"{tmp_path}/c/triton"


def test_inspect_human_and_json(capsys, filled_root, test_profile):
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(filled_root.path))
    assert code == 0
    assert "17 entries" in out and "dispatch_copy_epilogue" in out and "add_one" in out
    code, out, err = run(capsys, "inspect", "--cache-dir", str(filled_root.path), "--format", "json",
                         "--profile", test_profile.source)
    data = json.loads(out)  # stdout is only JSON
    assert data["schema"] == 1 and data["totals"]["entries"] == 17 and data["coverage"]["num_missing"] == 1
    assert [m["family"] for m in data["coverage"]["missing"]] == ["barrier"]   # filled_root has no barrier
    entry = next(e for e in data["entries"] if e["family"] == "dispatch")
    assert set(entry) >= {"backend", "format", "family", "key", "path", "size", "last_used", "status",
                          "params", "compiler", "arch", "problems"}


def test_inspect_coverage_names_missing(capsys, filled_root, test_profile):
    for p in (filled_root.deep_ep_dir / "cache").iterdir():
        if p.name.startswith("combine."):
            import shutil
            shutil.rmtree(p)
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(filled_root.path), "--profile", test_profile.source)
    assert code == 0 and "Profile store-test, DeepEP 2.5: 12/17 kernels cached; a DeepEP 2.5 server would compile 5 kernels" in out
    assert "missing: combine num_max_tokens_per_rank=8" in out
    assert "missing: barrier (launched once per buffer, whatever the bucket)" in out


def test_coverage_says_which_deep_ep_and_counts_only_its_entries(capsys, tmp_path, cubins, test_profile):
    """A cache of DeepEP 2.1 entries covers a 2.1 server only: inspect says so, and --deep-ep 2.5 shows the gap."""
    from store_fixtures import fill_plan

    root = tmp_path / "root"
    (root / "deep_ep").mkdir(parents=True)
    fill_plan(root / "deep_ep", plan(test_profile), cubins, style="2.1", barrier=True)
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(root), "--profile", test_profile.source)
    assert code == 0 and "17 entries" in out and "(DeepEP 2.1: 17)" in out
    assert "Profile store-test, DeepEP 2.1: all 17 kernels serving loads are in the cache" in out
    assert "Profile store-test, DeepEP 2.5: 0/17 kernels cached" in out
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(root), "--profile", test_profile.source,
                       "--deep-ep", "2.5", "--format", "json")
    data = json.loads(out)
    assert data["deep_ep_versions"] == {"2.5": 0, "2.1": 17}
    assert data["coverage"]["deep_ep"] == "2.5" and data["coverage"]["num_missing"] == 17
    assert data["coverage_by_deep_ep"]["2.1"]["num_missing"] == 0
    # verify and export say which DeepEP their entries are for, too
    code, out, _ = run(capsys, "verify", "--cache-dir", str(root))
    assert "Checked 17 entries (DeepEP 2.1: 17)" in out
    code, out, _ = run(capsys, "export", "--cache-dir", str(root), "-o", str(tmp_path / "b.tar.zst"))
    assert code == 0 and "Exported 17 entries (DeepEP 2.1: 17) to" in out


def test_barrier_is_in_coverage_keep_profile_and_export(capsys, filled_root, test_profile, cubins, tmp_path):
    """The buffer's barrier is an entry serving loads: coverage needs it, --keep-profile keeps it, -p ships it."""
    from store_fixtures import fill_plan

    (barrier,) = fill_plan(filled_root.deep_ep_dir, plan(test_profile), cubins, buckets=(), barrier=True)
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(filled_root.path), "--profile", test_profile.source)
    assert code == 0 and "all 17 kernels serving loads are in the cache" in out
    code, out, _ = run(capsys, "prune", "--cache-dir", str(filled_root.path), "--max-size", "0",
                       "--keep-profile", test_profile.source, "--format", "json")
    assert code == 0 and barrier.is_dir() and json.loads(out)["num_protected"] == 17
    code, out, _ = run(capsys, "export", "--cache-dir", str(filled_root.path), "-o", str(tmp_path / "p.tar.zst"),
                       "-p", test_profile.source, "--format", "json")
    assert code == 0 and json.loads(out)["entries"] == 17 and json.loads(out)["missing_variants"] == 0


def test_inspect_deep_ep_dir(capsys, filled_root):
    code, out, _ = run(capsys, "inspect", "--deep-ep-dir", str(filled_root.deep_ep_dir), "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["totals"]["entries"] == 16 and data["triton_dir"] is None
    code, _, err = run(capsys, "inspect", "--deep-ep-dir", "/nonexistent/x")
    assert code == 2 and "no such directory" in err


def test_verify_repair_dry_run_then_repair(capsys, filled_root):
    victim = sorted((filled_root.deep_ep_dir / "cache").iterdir())[3]
    (victim / "kernel.cubin").write_bytes(b"")
    code, out, _ = run(capsys, "verify", "--cache-dir", str(filled_root.path))
    assert code == 1 and "empty_file" in out
    code, out, _ = run(capsys, "verify", "--cache-dir", str(filled_root.path), "--repair", "--dry-run")
    assert code == 1 and "Would move 1 item" in out and victim.exists()
    code, out, _ = run(capsys, "verify", "--cache-dir", str(filled_root.path), "--repair", "--format", "json")
    data = json.loads(out)
    assert code == 0 and len(data["repair"]["moved"]) == 1 and not victim.exists()
    code, out, _ = run(capsys, "verify", "--cache-dir", str(filled_root.path), "--format", "json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_prune_messages(capsys, filled_root, test_profile):
    code, out, _ = run(capsys, "prune", "--cache-dir", str(filled_root.path), "--max-size", "10G")
    assert code == 0 and "Nothing to remove" in out
    code, out, _ = run(capsys, "prune", "--cache-dir", str(filled_root.path), "--max-size", "0",
                       "--keep-profile", test_profile.source, "--dry-run")
    assert code == 0 and "Would remove 1 entries" in out
    code, out, _ = run(capsys, "prune", "--cache-dir", str(filled_root.path), "--max-size", "0",
                       "--keep-profile", test_profile.source)
    assert code == 0 and "Removed 1 entries" in out
    code, _, err = run(capsys, "prune", "--cache-dir", str(filled_root.path))
    assert code == 2 and "--max-size" in err
    code, _, err = run(capsys, "prune", "--cache-dir", str(filled_root.path), "--older-than", "soon")
    assert code == 2 and "soon" in err


def test_export_import(capsys, filled_root, test_profile, tmp_path):
    bundle = tmp_path / "b.tar.zst"
    code, out, _ = run(capsys, "export", "--cache-dir", str(filled_root.path), "-o", str(bundle),
                       "--profile", test_profile.source)
    assert code == 0 and "Exported 16 entries" in out
    code, out, _ = run(capsys, "import", str(bundle), "--cache-dir", str(tmp_path / "new"))
    assert code == 0 and "Imported 16 entries; 0 already present" in out
    code, out, _ = run(capsys, "import", str(bundle), "--cache-dir", str(tmp_path / "new"), "--format", "json")
    assert code == 0 and len(json.loads(out)["identical"]) == 16
    bundle.write_bytes(b"garbage")
    code, out, err = run(capsys, "import", str(bundle), "--cache-dir", str(tmp_path / "new"))
    assert code == 2 and "Error:" in err and out == ""


def test_lock_wait_is_announced(capsys, filled_root, monkeypatch):
    import multiprocessing

    from test_store_root import _hold_lock

    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(filled_root.path), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        monkeypatch.setenv("JITCACHE_LOCK_TIMEOUT", "4")
        (sorted((filled_root.deep_ep_dir / "cache").iterdir())[0] / "kernel.cubin").write_bytes(b"")
        code, _, err = run(capsys, "verify", "--cache-dir", str(filled_root.path), "--repair")
        assert "Waiting for the cache lock" in err and f"pid {proc.pid}" in err
        assert code == 1 and "gave up" in err
    finally:
        release.set()
        proc.join(30)
