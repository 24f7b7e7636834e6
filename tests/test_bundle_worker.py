"""import's check worker: a forked child takes the cubin checks of staged entries while staging writes; it only
takes verdicts, so a worker that dies or fails changes nothing but the time, and it never outlives the import.

Bundles are real exports of the 22 entries DeepEP 2.5 wrote on the H200 (tests/data/deepep25-h200); the
worker's threshold is lowered to one entry so that they get one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jitcache.store.bundle as bundle_mod
from jitcache.errors import BundleError
from jitcache.store.bundle import import_bundle
from jitcache.store.root import resolve_root
from test_bundle_reader import DATA, _parts, _tar, _with_cubin_of, _zst, real_bundle  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="no captured DeepEP cache in tests/data")


@pytest.fixture
def worker_results(monkeypatch) -> list[int]:
    """Lower the threshold to one entry; record how many verdicts each worker returned."""
    monkeypatch.setattr(bundle_mod, "_WORKER_MIN_ENTRIES", 1)
    counts: list[int] = []
    results = bundle_mod._CheckWorker.results

    def counted(self):
        out = results(self)
        counts.append(len(out))
        return out
    monkeypatch.setattr(bundle_mod._CheckWorker, "results", counted)
    return counts


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] == me:
                    out.add(int(pid))
            except (OSError, IndexError):
                pass
    return out


def test_the_worker_takes_every_verdict_and_is_gone_after(tmp_path, real_bundle, worker_results):
    before = _children()
    result = import_bundle(resolve_root(tmp_path / "target"), real_bundle)
    assert len(result.published) == 22
    assert worker_results == [22]  # every entry checked by the worker
    assert _children() == before


def test_a_bad_cubin_is_refused_through_the_worker(tmp_path, real_bundle, worker_results):
    members, manifest = _parts(real_bundle)
    names = sorted(e["name"] for e in manifest["entries"])
    victim = next(n for n in names if n.startswith("dispatch."))
    bad_members, bad_manifest = _with_cubin_of(members, manifest, victim, names[0])
    bundle = _zst(tmp_path / "bad.tar.zst", _tar(bad_members, bad_manifest, "gnu"))
    target = resolve_root(tmp_path / "target")
    before = _children()
    with pytest.raises(BundleError, match="entry_symbols") as caught:
        import_bundle(target, bundle)
    assert victim in str(caught.value) and "kernel.cubin" in str(caught.value)
    assert worker_results == [22]
    assert list((target.deep_ep_dir / "cache").iterdir()) == [] and list((target.deep_ep_dir / "tmp").iterdir()) == []
    assert _children() == before


def _dies(conn, parent_end) -> None:
    os._exit(3)


def _fails_every_entry(*args):
    raise RuntimeError("a check that fails in the worker")


@pytest.mark.parametrize("how", ["dies", "fails"])
def test_a_worker_that_dies_or_fails_leaves_the_checks_to_the_import(tmp_path, real_bundle, worker_results, how,
                                                                      monkeypatch):
    if how == "dies":
        monkeypatch.setattr(bundle_mod, "_check_worker_main", _dies)
    members, manifest = _parts(real_bundle)
    names = sorted(e["name"] for e in manifest["entries"])
    bad_members, bad_manifest = _with_cubin_of(members, json.loads(json.dumps(manifest)), names[-1], names[0])
    bundle = _zst(tmp_path / "bad.tar.zst", _tar(bad_members, bad_manifest, "gnu"))
    real_verdict = bundle_mod._deep_ep_verdict
    if how == "fails":  # in the child only (it forks with this module state); the parent checks for real
        parent = os.getpid()
        monkeypatch.setattr(bundle_mod, "_deep_ep_verdict",
                            lambda *a: _fails_every_entry(*a) if os.getpid() != parent else real_verdict(*a))
    with pytest.raises(BundleError, match="entry_symbols"):
        import_bundle(resolve_root(tmp_path / "bad"), bundle)
    good = _zst(tmp_path / "good.tar.zst", _tar(members, manifest, "gnu"))
    assert len(import_bundle(resolve_root(tmp_path / "good"), good).published) == 22
    assert worker_results == [0, 0]  # no verdict from the worker, every entry checked by the import itself


_SLOW_CHECKS = """
import os, sys, time
import jitcache.store.bundle as b
from jitcache.store.root import resolve_root
b._WORKER_MIN_ENTRIES = 1
real = b._deep_ep_verdict
parent = os.getpid()
def slow(*args):
    if os.getpid() != parent:
        with open(sys.argv[3], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(0.5)
    return real(*args)
b._deep_ep_verdict = slow
b.import_bundle(resolve_root(sys.argv[1]), sys.argv[2])
"""


def test_the_worker_ends_when_the_import_is_killed_outright(tmp_path, real_bundle):
    pid_file = tmp_path / "worker.pid"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CHECKS, str(tmp_path / "t"), str(real_bundle),
                             str(pid_file)])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists():
        state = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] \
            if Path(f"/proc/{worker}/stat").exists() else "X"
        if state == "Z":
            break  # exited, waiting for its new parent to reap it
        assert time.monotonic() < deadline, "the check worker outlived the import"
        time.sleep(0.1)
    root = resolve_root(tmp_path / "t")
    assert not (root.deep_ep_dir / "cache").exists() or list((root.deep_ep_dir / "cache").iterdir()) == []
