"""Issue 12 item 4: a bundle's fingerprint describes what it holds; import compares only what matters for it."""

from __future__ import annotations

from pathlib import Path

import pytest

import jitcache.store.fingerprint as fingerprint
from jitcache.errors import BundleError
from jitcache.planning.variants import plan
from jitcache.store.bundle import export_bundle, import_bundle
from jitcache.store.root import resolve_root
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from test_store_bundle import _repack

pytestmark = pytest.mark.nvcc


def test_a_deep_ep_bundle_records_deep_ep_facts_and_no_triton(filled_root, test_profile, tmp_path):
    bundle = export_bundle(filled_root, tmp_path / "deep.tar.zst", plan=plan(test_profile))
    fp = bundle.manifest["fingerprint"]
    assert set(fp["backends"]) == {"deep_ep"}                      # it holds no Triton entry: no Triton version
    facts = fp["backends"]["deep_ep"]["2.5"]
    assert facts["layout"] == "deepjit" and facts["entries"] == 16
    assert facts["nvcc"] == ["13.0.88"]                             # from the entries' meta.json
    assert facts["archs"] == fp["archs"] == ["sm_90a"]             # read from the cubins (ELF)
    whole = export_bundle(filled_root, tmp_path / "all.tar.zst").manifest["fingerprint"]
    assert whole["backends"]["triton"]["entries"] == 1 and whole["backends"]["triton"]["version"].startswith("triton ")


def test_no_false_refusal_for_a_backend_the_bundle_does_not_hold(filled_root, test_profile, tmp_path, monkeypatch):
    """The H200 refusal "triton: bundle 'triton 3.9.0', here 'triton 3.6.0'" for a bundle with no Triton entry."""
    bundle = export_bundle(filled_root, tmp_path / "deep.tar.zst", plan=plan(test_profile))

    def legacy(members, manifest):  # an older jitcache's flat fingerprint, Triton version and all
        manifest["fingerprint"] = {"nvcc": "13.0.88", "deep_ep": "tokenspeed-deepep 2.1.0", "triton": "triton 3.9.0",
                                   "archs": ["sm_90a"]}
        return members, manifest
    old = _repack(Path(bundle.path), tmp_path / "old.tar.zst", legacy)
    monkeypatch.setattr(fingerprint, "_triton_version", lambda: "triton 3.6.0")
    assert len(import_bundle(resolve_root(tmp_path / "a"), old).published) == 16
    assert len(import_bundle(resolve_root(tmp_path / "b"), bundle.path).published) == 16


def test_a_real_triton_mismatch_still_refuses(filled_root, tmp_path, monkeypatch):
    bundle = export_bundle(filled_root, tmp_path / "all.tar.zst")
    monkeypatch.setattr(fingerprint, "_triton_version", lambda: "triton 9.9.9")
    target = resolve_root(tmp_path / "t")
    with pytest.raises(BundleError, match=r"triton: bundle 'triton [\d.]+', here 'triton 9.9.9'"):
        import_bundle(target, bundle.path)
    assert not any((target.ensure().deep_ep_dir / "cache").iterdir())


def test_other_deep_ep_headers_refuse_and_an_unknown_fact_does_not(filled_root, test_profile, tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "deep_ep_facts", lambda api: ("deepinfer-ep 2.5.0", "a" * 64))
    bundle = export_bundle(filled_root, tmp_path / "deep.tar.zst", plan=plan(test_profile))
    assert bundle.manifest["fingerprint"]["backends"]["deep_ep"]["2.5"]["headers"] == "a" * 64
    monkeypatch.setattr(fingerprint, "deep_ep_facts", lambda api: ("deepinfer-ep 2.5.1", "b" * 64))
    with pytest.raises(BundleError, match=r"deep_ep 2.5 headers: bundle aaaaaaaaaaaa \(deepinfer-ep 2.5.0\), "
                                          r"here bbbbbbbbbbbb \(deepinfer-ep 2.5.1\)"):
        import_bundle(resolve_root(tmp_path / "t"), bundle.path)
    monkeypatch.setattr(fingerprint, "deep_ep_facts", lambda api: ("sgl-deep-ep-v25 2.5.0", "a" * 64))
    assert len(import_bundle(resolve_root(tmp_path / "same"), bundle.path).published) == 16  # same headers: fine
    monkeypatch.setattr(fingerprint, "deep_ep_facts", lambda api: (None, None))  # no DeepEP 2.5 here: unknown
    assert len(import_bundle(resolve_root(tmp_path / "u"), bundle.path).published) == 16


def test_the_installed_deep_ep_21_facts_are_its_own(monkeypatch):
    fingerprint.deep_ep_facts.cache_clear()
    package, headers = fingerprint.deep_ep_facts("2.1")
    if package is None:
        pytest.skip("tokenspeed-deepep (DeepEP 2.1) is not installed")
    assert package.startswith("tokenspeed-deepep 2.1") and len(headers) == 64
