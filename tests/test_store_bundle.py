"""Bundles: round trip, every import safety rule, fingerprints, concurrency, kill -9, atomicity."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from jitcache.errors import BundleError, CacheError
from jitcache.store.bundle import export_bundle, import_bundle
from jitcache.store.root import resolve_root
from jitcache.store.scan import scan
from jitcache.planning.variants import plan
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import bundle_members

pytestmark = pytest.mark.nvcc


def _tree(root) -> dict[str, str]:
    """Every file under the cache folders with its sha256 (the state 'exactly as before' compares)."""
    out = {}
    for base in (root.deep_ep_dir / "cache", root.triton_dir):
        for p in sorted(base.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root.path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _write_bundle(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], manifest: dict | None) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if manifest is not None:
            blob = json.dumps(manifest).encode()
            info = tarfile.TarInfo("manifest.json"); info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def _repack(src: Path, dst: Path, edit) -> Path:
    """Rewrite a real bundle through ``edit(members) -> members`` (members: list of (TarInfo, bytes))."""
    members = bundle_members(src.read_bytes())
    manifest_pos = [i for i, (m, _) in enumerate(members) if m.name == "manifest.json"][0]
    manifest = json.loads(members.pop(manifest_pos)[1])
    members, manifest = edit(members, manifest)
    return _write_bundle(dst, members, manifest)


@pytest.fixture
def bundle(filled_root, tmp_path):
    return export_bundle(filled_root, tmp_path / "cache.tar.zst")


def test_round_trip(filled_root, bundle, tmp_path):
    assert len(bundle.entries) == 17 and bundle.skipped == ()
    assert bundle.manifest["fingerprint"]["archs"] == ["sm_90a"]
    target = resolve_root(tmp_path / "other")
    result = import_bundle(target, bundle.path)
    assert len(result.published) == 17
    report = scan(target)
    assert len(report.entries) == 17 and all(e.status == "ok" for e in report.entries), report.all_problems()
    # DeepJIT markers are written by import; Triton groups point into the new root
    assert all((Path(e.path) / ".committed").exists() for e in report.entries if e.format == "deepjit")
    (grp,) = target.triton_dir.glob("*/__grp__*.json")
    assert all(p.startswith(str(target.triton_dir)) for p in json.loads(grp.read_text())["child_paths"].values())
    # no group/other write bits anywhere, whatever the umask
    for p in target.path.rglob("*"):
        assert not p.stat().st_mode & 0o022, p
    # a second import skips identical entries
    again = import_bundle(target, bundle.path)
    assert again.published == () and len(again.identical) == 17


def test_export_profile_only(filled_root, test_profile, tmp_path, cubins):
    from jitcache.planning.profiles import parse_profile
    the_plan = plan(test_profile)
    result = export_bundle(filled_root, tmp_path / "p.tar.zst", plan=the_plan)
    assert len(result.entries) == 16 and result.missing_variants == 1      # filled_root has no barrier
    # the buffer's barrier is an entry serving loads: `export -p` ships it
    from store_fixtures import fill_plan
    (barrier,) = fill_plan(filled_root.deep_ep_dir, the_plan, cubins, buckets=(), barrier=True)
    result = export_bundle(filled_root, tmp_path / "p2.tar.zst", plan=the_plan)
    assert len(result.entries) == 17 and result.missing_variants == 0 and barrier.name in result.entries


UNSAFE = {
    "symlink": lambda: (tarfile.TarInfo("deep_ep/cache/dispatch." + "a" * 32 + "/kernel.cubin"), tarfile.SYMTYPE,
                        "/etc/passwd"),
    "hardlink": lambda: (tarfile.TarInfo("deep_ep/cache/dispatch." + "a" * 32 + "/kernel.cubin"), tarfile.LNKTYPE,
                         "deep_ep/cache/x"),
    "device": lambda: (tarfile.TarInfo("deep_ep/cache/dispatch." + "a" * 32 + "/kernel.cubin"), tarfile.CHRTYPE, ""),
    "fifo": lambda: (tarfile.TarInfo("deep_ep/cache/dispatch." + "a" * 32 + "/kernel.cubin"), tarfile.FIFOTYPE, ""),
    "absolute": lambda: (tarfile.TarInfo("/tmp/evil/kernel.cubin"), tarfile.REGTYPE, ""),
    "escape": lambda: (tarfile.TarInfo("deep_ep/cache/../../../evil"), tarfile.REGTYPE, ""),
    "outside": lambda: (tarfile.TarInfo("meta/layout.json"), tarfile.REGTYPE, ""),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_unsafe_members_refused(filled_root, bundle, tmp_path, kind):
    info, typ, link = UNSAFE[kind]()
    info.type, info.linkname = typ, link
    data = b"x" if typ == tarfile.REGTYPE else None
    if data:
        info.size = 1
    evil = _repack(Path(bundle.path), tmp_path / "evil.tar.zst",
                   lambda members, manifest: ([(info, data), *members], manifest))
    before = _tree(filled_root)
    with pytest.raises(BundleError, match="refused"):
        import_bundle(filled_root, evil)
    assert _tree(filled_root) == before
    assert list((filled_root.deep_ep_dir / "tmp").iterdir()) == []
    assert not Path("/tmp/evil").exists()


def test_checksum_mismatch_leaves_cache_exactly_as_before(tmp_path, bundle):
    def flip(members, manifest):
        info, data = members[-1]
        return members[:-1] + [(info, bytes([data[0] ^ 1]) + data[1:])], manifest
    bad = _repack(Path(bundle.path), tmp_path / "bad.tar.zst", flip)
    target = resolve_root(tmp_path / "t").ensure()
    with pytest.raises(BundleError, match="sha256"):
        import_bundle(target, bad)
    assert _tree(target) == {}


@pytest.mark.parametrize("edit,match", [
    (lambda m, man: (m[1:], man), "files differ"),                                   # a file missing
    (lambda m, man: (m, {**man, "entries": man["entries"][1:]}), "not in the manifest"),  # an unlisted entry
    (lambda m, man: (m, None), "no jitcache manifest"),
    (lambda m, man: (m, {**man, "schema": 99}), "schema"),
])
def test_manifest_mismatches(tmp_path, bundle, edit, match):
    bad = _repack(Path(bundle.path), tmp_path / "bad.tar.zst", edit)
    target = resolve_root(tmp_path / "t").ensure()
    with pytest.raises(BundleError, match=match):
        import_bundle(target, bad)
    assert _tree(target) == {}


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(200))
    with pytest.raises(BundleError, match="not a readable"):
        import_bundle(resolve_root(tmp_path / "t"), junk)
    with pytest.raises(BundleError, match="no such bundle"):
        import_bundle(resolve_root(tmp_path / "t"), tmp_path / "nope")


def test_fingerprint_mismatch_needs_force(tmp_path, bundle):
    def other_nvcc(members, manifest):
        manifest["fingerprint"]["backends"]["deep_ep"]["2.5"]["nvcc"] = ["11.8.89"]
        return members, manifest
    bad = _repack(Path(bundle.path), tmp_path / "old.tar.zst", other_nvcc)
    target = resolve_root(tmp_path / "t")
    with pytest.raises(BundleError, match="nvcc: bundle '11.8.89'"):
        import_bundle(target, bad)
    assert _tree(target.ensure()) == {}
    result = import_bundle(target, bad, force=True)
    assert len(result.published) == 17 and result.forced_mismatches


def test_bundle_for_another_arch_needs_force(tmp_path, bundle):
    target = resolve_root(tmp_path / "t")
    with pytest.raises(BundleError, match=r"archs: bundle \['sm_90a'\], target here \['sm_100a'\]"):
        import_bundle(target, bundle.path, target_arch="sm_100a")
    assert _tree(target.ensure()) == {}
    assert len(import_bundle(target, bundle.path, target_arch="sm_90a").published) == 17


def test_bundle_unpacking_past_the_limit_is_refused(tmp_path, bundle, monkeypatch):
    monkeypatch.setenv("JITCACHE_IMPORT_MAX_BYTES", "1000")
    target = resolve_root(tmp_path / "t")
    with pytest.raises(BundleError, match="unpacks to more than 1000 bytes"):
        import_bundle(target, bundle.path)
    assert _tree(target.ensure()) == {}


def test_failure_while_publishing_takes_back_everything(tmp_path, bundle):
    target = resolve_root(tmp_path / "t").ensure()
    calls = []

    def boom(name):
        calls.append(name)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
    with pytest.raises(CacheError, match=r"No space left on device .*free there.*5 entries published before "
                                         r"the failure were taken back"):
        import_bundle(target, bundle.path, _after_publish=boom)
    assert _tree(target) == {}
    assert list((target.deep_ep_dir / "tmp").iterdir()) == []


def _import_worker(root: str, bundle: str, queue) -> None:
    result = import_bundle(resolve_root(root), bundle)
    queue.put((len(result.published), len(result.identical), len(result.lost_race)))


def test_two_imports_at_once(tmp_path, bundle):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_import_worker, args=(str(tmp_path / "t"), bundle.path, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(r[0] for r in results) == 17  # each entry published exactly once
    report = scan(resolve_root(tmp_path / "t"))
    assert len(report.entries) == 17 and all(e.status == "ok" for e in report.entries)


_SLOW_IMPORT = """
import sys, time
from jitcache.store.bundle import import_bundle
from jitcache.store.root import resolve_root
def slow(name):
    print("published", name, flush=True)
    time.sleep(0.2)
import_bundle(resolve_root(sys.argv[1]), sys.argv[2], _after_publish=slow)
"""


def test_kill_9_mid_import_leaves_only_whole_entries(tmp_path, bundle):
    target = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_IMPORT, str(target), bundle.path],
                            stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it publish a few entries, then kill it outright
        assert proc.stdout.readline().startswith("published")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    root = resolve_root(target)
    report = scan(root)
    assert 3 <= len(report.entries) < 17
    assert all(e.status == "ok" for e in report.entries), report.all_problems()
    # the staging directory is what is left; verify reports it once old, and a new import completes the cache
    result = import_bundle(root, bundle.path)
    assert len(result.published) + len(result.identical) == 17
    assert len(scan(root).entries) == 17


def _prune_loop(root: str, started, stop) -> None:
    """Evict the least recently used entry, one at a time, until told to stop."""
    from jitcache.store.prune import plan_prune, prune
    r = resolve_root(root)
    started.set()
    while not stop.is_set():
        report = scan(r, check_cubins=False)
        if not report.entries:
            break
        prune(r, plan_prune(report, max_size=report.size - 1))
        time.sleep(0.005)


def test_prune_during_export(filled_root, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started, stop = ctx.Event(), ctx.Event()
    pruner = ctx.Process(target=_prune_loop, args=(str(filled_root.path), started, stop))
    original = {e.name for e in scan(filled_root).entries}
    pruner.start()
    try:
        assert started.wait(60)
        result = export_bundle(filled_root, tmp_path / "racy.tar.zst")
    finally:
        stop.set()
        pruner.join(60)
    assert pruner.exitcode == 0
    assert set(result.entries) | set(result.skipped) <= original
    # whatever made it into the bundle is whole: it imports cleanly and verifies
    target = resolve_root(tmp_path / "t")
    imported = import_bundle(target, result.path)
    assert len(imported.published) == len(result.entries)
    assert all(e.status == "ok" for e in scan(target).entries)
