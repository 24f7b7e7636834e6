"""The store against a cache DeepEP 2.5 wrote by itself on the H200 (tests/data/deepep25-h200)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jitcache.runtime.dispatcher import warm_buckets_from_cache
from jitcache.planning.profiles import load_profile
from jitcache.store.root import CacheRoot
from jitcache.store.scan import coverage, scan
from jitcache.store.verify import verify
from jitcache.planning.variants import plan

DATA = Path(__file__).parent / "data" / "deepep25-h200"
pytestmark = pytest.mark.skipif(not (DATA / "cache").is_dir(), reason="no captured DeepEP cache in tests/data")


@pytest.fixture
def real_root(tmp_path) -> CacheRoot:
    # a copy: git checkouts may carry group-writable modes, and tests must not touch tests/data
    shutil.copytree(DATA / "cache", tmp_path / "dj" / "cache")
    for p in (tmp_path / "dj").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return CacheRoot.for_deep_ep_dir(tmp_path / "dj")


def test_every_entry_reads_and_decodes(real_root):
    report = scan(real_root)
    names = sorted(p.name for p in (DATA / "cache").iterdir())
    assert sorted(e.name for e in report.entries) == names and len(names) >= 20
    for e in report.entries:
        assert e.format == "deepjit" and e.status == "ok", (e.name, e.problems)
        assert "template_args" not in e.params, e.name
        assert e.params["num_experts"] == 256 and e.params["num_topk"] == 8, e.name
        assert e.num_max_tokens_per_rank in (1, 2, 4, 8192), e.name
        assert e.arch == "sm_90a" and e.compiler == "nvcc 13.0.88", e.name
    assert {e.family for e in report.entries} == {"dispatch", "dispatch_copy_epilogue", "combine",
                                                   "combine_reduce_epilogue"}
    assert verify(real_root).ok


def test_coverage_of_the_rig_profile(real_root):
    # decode buckets 1, 2, 4 and the cap 8192 were run: 4 kernels each
    cov = coverage(plan(load_profile("h200-ep1")), scan(real_root).entries)
    assert len(cov.present) == 16
    # ... and the buffer's barrier (None: once per buffer) is not in this folder
    assert {v.num_max_tokens_per_rank for v in cov.missing} == {8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                                                 None}
    # prefill (do_expand) and cached entries are the plan's too
    full = load_profile("h200-ep1")
    from dataclasses import replace
    with_modes = replace(full, serving=replace(full.serving, modes=("decode", "prefill", "cached")))
    cov = coverage(plan(with_modes, ["prefill"]), scan(real_root).entries)
    assert [v.family for v in cov.missing] == ["barrier"]
    # the cached-handle dispatch of the nmax=1 handle: its dispatch + copy epilogue are there
    cov = coverage(plan(with_modes, ["cached"]), scan(real_root).entries)
    present = {(cov.plan.kernels[i].family, cov.plan.kernels[i].num_max_tokens_per_rank) for i, _ in cov.present}
    assert {("dispatch", 1), ("dispatch_copy_epilogue", 1)} <= present


def test_entries_built_for_another_sm_count_do_not_cover_a_profile_that_sets_it(real_root):
    from dataclasses import replace

    rig = load_profile("h200-ep1")
    entries = scan(real_root).entries
    same = replace(rig, deep_ep=replace(rig.deep_ep, num_sms=132))   # what DeepEP chose on the rig
    other = replace(rig, deep_ep=replace(rig.deep_ep, num_sms=64))
    assert len(coverage(plan(same), entries).present) == 16
    # dispatch and combine take num_sms; the epilogues run on every SM whatever it is
    still = {cov_plan.variants[i].family for cov_plan in [plan(other)]
             for i, _ in coverage(cov_plan, entries).present}
    assert still == {"dispatch_copy_epilogue", "combine_reduce_epilogue"}
    assert not warm_buckets_from_cache("2.5", [real_root.deep_ep_dir], other)


def test_cli_inspect_json(real_root, capsys):
    from jitcache.cli.app import main
    with pytest.raises(SystemExit) as info:
        main(["inspect", "--deep-ep-dir", str(real_root.path), "--format", "json"])
    assert info.value.code in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["entries"] == len(list((DATA / "cache").iterdir())) and data["totals"]["errors"] == 0


DATA_EP2 = Path(__file__).parent / "data" / "deepep25-h200x2"


def test_ep2_entries_deepep_wrote_make_their_buckets_warm_for_the_ep2_profile(tmp_path):
    # The scan the trace's strict BucketedDispatcher trusts: buckets 1 and 2 have all four decode kernels,
    # 4 only its dispatch. (It found no bucket warm at all while the epilogues were expected at num_sms 28.)
    shutil.copytree(DATA_EP2 / "cache", tmp_path / "dj" / "cache")
    root = CacheRoot.for_deep_ep_dir(tmp_path / "dj")
    assert all(e.status == "ok" for e in scan(root).entries)
    assert warm_buckets_from_cache("2.5", [root.deep_ep_dir], load_profile("h200x2-ep2")) == {1, 2}
    assert warm_buckets_from_cache("2.5", [root.deep_ep_dir], load_profile("h200x4-ep4")) == set()
