"""Objects carry the contents fingerprint `export` writes, and a pull judges it exactly as `import` does.

Each case rewrites the manifest of a real pushed object (one of ElasticBuffer's
own DeepEP 2.1 entries, whose installed headers give the headers digest a
value here; its files and their sha256s untouched), stores it, and pulls it;
the very same bytes are then imported as a bundle file: the pull refuses
exactly what import refuses, with import's reason, and accepts what import
accepts (with ``force`` too).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from jitcache.errors import BundleError
from jitcache.store.bundle import import_bundle
from jitcache.store.fingerprint import contents_fingerprint
from jitcache.store.remote import RemoteEnv, RemoteStore, entry_key, pull, push
from jitcache.store.root import resolve_root
from jitcache.store.scan import scan
from jitcache.planning.variants import plan
from aot_fixtures import REPO
from remote_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import bundle_members

pytestmark = pytest.mark.nvcc
pytest.importorskip("obstore")

ENV = RemoteEnv("2.1", "13.0.88", "sm_90a")
ENV25 = RemoteEnv("2.5", "13.0.88", "sm_90a")
DATA21 = REPO / "tests" / "data" / "deepep21-h200" / "cache"


def _manifest(blob: bytes) -> dict:
    import zstandard

    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read())) as tar:
        return json.loads(tar.extractfile("manifest.json").read())


def _with_fingerprint(blob: bytes, change) -> bytes:
    """The same object with ``change(fingerprint)`` applied to its manifest (the files' sha256s still hold)."""
    import zstandard

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for member, data in bundle_members(blob):
            if member.name == "manifest.json":
                manifest = json.loads(data)
                change(manifest["fingerprint"])
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(out.getvalue())


@pytest.fixture
def pushed(tmp_path):
    from jitcache.store.fingerprint import deep_ep_facts

    if deep_ep_facts("2.1")[1] is None:
        pytest.skip("tokenspeed-deepep (DeepEP 2.1) is not installed")
    root = resolve_root(tmp_path / "box").ensure()
    source = sorted(DATA21.iterdir())[0]
    shutil.copytree(source, root.deep_ep_dir / "cache" / source.name)
    store = RemoteStore(str(tmp_path / "nfs"))
    assert push(root, store, ENV, names=[source.name]).pushed == (source.name,)
    entry = next(e for e in scan(root).entries if e.name == source.name)
    return store, entry


def test_pushed_objects_carry_the_contents_fingerprint_export_writes(pushed, filled_root, test_profile, tmp_path):
    from jitcache.store.fingerprint import deep_ep_facts

    store, entry = pushed   # DeepEP 2.1: no meta.json, the nvcc is the one keying the store
    fingerprint = _manifest(store.get(entry_key(ENV, entry.name)))["fingerprint"]
    assert fingerprint == contents_fingerprint([entry])
    facts = fingerprint["backends"]["deep_ep"]["2.1"]
    assert facts["nvcc"] == ["13.0.88"] and facts["archs"] == ["sm_90a"] and facts["entries"] == 1
    assert facts["headers"] == deep_ep_facts("2.1")[1] and facts["package"].startswith("tokenspeed-deepep")
    assert "triton" not in fingerprint["backends"] and "triton" not in fingerprint   # no Triton entry: no Triton fact

    nfs = RemoteStore(str(tmp_path / "nfs25"))   # DeepEP 2.5: the nvcc each entry's meta.json records
    push(filled_root, nfs, ENV25, plan=plan(test_profile))
    for e in (e for e in scan(filled_root).entries if e.backend == "deep_ep"):
        assert _manifest(nfs.get(entry_key(ENV25, e.name)))["fingerprint"] == contents_fingerprint([e])


def _headers(fp):
    fp["backends"]["deep_ep"]["2.1"]["headers"] = "0" * 64


def _nvcc(fp):
    fp["backends"]["deep_ep"]["2.1"]["nvcc"] = ["12.9.41"]


def _triton(fp):   # the false refusal of issue 12: a Triton fact for a bundle holding no Triton entry
    fp["backends"]["triton"] = {"entries": 0, "version": "triton 0.0.1", "archs": []}
    fp["triton"] = "triton 0.0.1"


def _arch(fp):
    fp["archs"] = ["sm_100a"]


def _nothing(fp):
    pass


@pytest.mark.parametrize("change,refused", [(_headers, "deep_ep 2.1 headers: bundle 000000000000"),
                                            (_nvcc, "nvcc: bundle '12.9.41' (DeepEP 2.1 entries), here '13.0.88'"), (_triton, None),
                                            (_arch, "the manifest says its cubins are for ['sm_100a']"),
                                            (_nothing, None)])
def test_a_pull_refuses_and_accepts_exactly_what_import_does(change, refused, pushed, tmp_path):
    store, entry = pushed
    blob = _with_fingerprint(store.get(entry_key(ENV, entry.name)), change)
    other = RemoteStore(str(tmp_path / "other"))
    assert other.put_new(entry_key(ENV, entry.name), blob)
    bundle = tmp_path / "object.jcb.tar.zst"
    bundle.write_bytes(blob)

    node = resolve_root(tmp_path / "node")
    got = pull(node, other, ENV, names=[entry.name])
    try:
        import_bundle(resolve_root(tmp_path / "imported"), bundle, target_arch=ENV.arch)
        imported = None
    except BundleError as exc:
        imported = exc.message.replace(f"{bundle}: ", "")
    if refused is None:
        assert imported is None and got.pulled == (entry.name,) and got.refused == ()
        return
    assert imported is not None and refused in imported
    assert [n for n, _ in got.refused] == [entry.name] and got.pulled == ()
    assert got.refused[0][1] == imported.replace(str(bundle), other.where(entry_key(ENV, entry.name)))
    assert not (node.deep_ep_dir / "cache" / entry.name).exists()
    if "manifest says" in refused:   # a manifest that lies about its cubins is refused even with force
        return
    forced = pull(resolve_root(tmp_path / "forced"), other, ENV, names=[entry.name], force=True)
    assert forced.pulled == (entry.name,) and forced.refused == ()


def test_the_package_owner_found_by_name_is_the_one_packages_distributions_names():
    """deep_ep_facts asks the known DeepEP distributions first (a pull's fingerprint check runs at every start):
    the answer must be packages_distributions()' own."""
    import importlib.metadata

    from jitcache.store.fingerprint import _owner

    owners = importlib.metadata.packages_distributions()
    for package in ("deep_ep", "deep_ep_v25"):
        expected = next((f"{d} {importlib.metadata.version(d)}" for d in owners.get(package, ())), None)
        assert _owner(package) == expected
    assert _owner("no_such_package_here") is None
