"""Cache root: resolution order, layout, CACHEDIR.TAG, layout version, lock, activate, env exports."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import sys
import time
import types
from pathlib import Path

import pytest

from jitcache.errors import CacheError, CacheLockTimeout, UsageError
from jitcache.store.root import (
    CACHEDIR_TAG,
    LAYOUT_VERSION,
    CacheRoot,
    activate,
    env_exports,
    resolve_root,
)


def test_resolve_order(tmp_path, monkeypatch):
    monkeypatch.delenv("JITCACHE_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root(None).path == tmp_path / "home" / ".cache" / "jitcache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_root(None).path == tmp_path / "xdg" / "jitcache"
    monkeypatch.setenv("JITCACHE_HOME", str(tmp_path / "jh"))
    assert resolve_root(None).path == tmp_path / "jh"
    assert resolve_root(tmp_path / "explicit").path == tmp_path / "explicit"
    # resolving touches nothing
    assert not (tmp_path / "explicit").exists()


def test_resolve_rejects_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        resolve_root(tmp_path / "f")


def test_ensure_layout(tmp_path):
    old = os.umask(0o002)  # a permissive umask must not leak into the cache
    try:
        root = resolve_root(tmp_path / "c").ensure()
    finally:
        os.umask(old)
    assert (root.path / "CACHEDIR.TAG").read_text() == CACHEDIR_TAG
    assert root.deep_ep_dir == root.path / "deep_ep"
    assert (root.deep_ep_dir / "cache").is_dir() and (root.deep_ep_dir / "tmp").is_dir()
    assert root.triton_dir.is_dir() and root.meta_dir.is_dir()
    assert json.loads(root.layout_file.read_text())["layout"] == LAYOUT_VERSION
    for d in (root.path, root.deep_ep_dir, root.triton_dir, root.meta_dir):
        assert not stat.S_IMODE(d.stat().st_mode) & 0o022, d
    root.ensure()  # idempotent
    assert root.layout_version() == LAYOUT_VERSION


def test_newer_layout_refused(tmp_path):
    root = resolve_root(tmp_path).ensure()
    root.layout_file.write_text(json.dumps({"layout": LAYOUT_VERSION + 1}))
    with pytest.raises(CacheError, match="newer than this jitcache"):
        root.ensure()
    root.layout_file.write_text("{broken")
    with pytest.raises(CacheError, match="layout.json"):
        root.ensure()


def test_external_deep_ep_dir(tmp_path):
    root = CacheRoot.for_deep_ep_dir(tmp_path)
    assert root.deep_ep_dir == tmp_path and root.triton_dir is None
    assert root.meta_dir == tmp_path / ".jitcache"
    assert env_exports(root) == {"EP_JIT_CACHE_DIR": str(tmp_path)}


def test_env_exports_read_only_roots(tmp_path):
    root = resolve_root(tmp_path / "rw")
    shared = resolve_root(tmp_path / "shared").ensure()
    bare = tmp_path / "bare"
    (bare / "cache").mkdir(parents=True)
    env = env_exports(root, [shared.path, bare])
    assert env["EP_JIT_CACHE_DIR"] == f"{root.deep_ep_dir}:{shared.deep_ep_dir}:{bare}"
    assert env["TRITON_CACHE_DIR"] == str(root.triton_dir)
    with pytest.raises(CacheError, match="':'"):
        env_exports(root, [tmp_path / "a:b"])


def test_activate_sets_env(tmp_path, monkeypatch):
    monkeypatch.delenv("EP_JIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    root = activate(tmp_path / "c")
    assert os.environ["EP_JIT_CACHE_DIR"] == str(root.deep_ep_dir)
    assert os.environ["TRITON_CACHE_DIR"] == str(root.triton_dir)
    assert root.deep_ep_dir.is_dir()


def test_activate_refuses_after_deep_ep_initialised_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_ep", types.ModuleType("deep_ep"))
    monkeypatch.setenv("EP_JIT_CACHE_DIR", str(tmp_path / "other"))
    with pytest.raises(CacheError, match="already imported") as info:
        activate(tmp_path / "c")
    assert info.value.hint and "before importing deep_ep" in info.value.hint
    assert os.environ["EP_JIT_CACHE_DIR"] == str(tmp_path / "other")
    # the same dir again is fine
    monkeypatch.setenv("EP_JIT_CACHE_DIR", str(resolve_root(tmp_path / "c").deep_ep_dir))
    activate(tmp_path / "c")


def _hold_lock(path: str, ready, release) -> None:
    root = CacheRoot(Path(path))
    with root.lock(command="jitcache prune --max-size 1G"):
        ready.set()
        release.wait(30)


def test_lock_names_holder_and_times_out(tmp_path):
    root = resolve_root(tmp_path).ensure()
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(root.path), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        seen = []
        start = time.monotonic()
        with pytest.raises(CacheLockTimeout) as info:
            with root.lock(timeout=1.0, notice_after=0.3, on_wait=seen.append):
                pass
        assert time.monotonic() - start < 10
        assert len(seen) == 1 and seen[0].pid == proc.pid
        assert "jitcache prune" in seen[0].describe()
        assert str(root.lock_file) in str(info.value) and f"pid {proc.pid}" in str(info.value)
    finally:
        release.set()
        proc.join(30)
    with root.lock(timeout=5):  # free again once the holder is gone
        assert root.lock_holder().pid == os.getpid()
    assert not root.owner_file.exists()
