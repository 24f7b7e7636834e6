"""Scanning real caches: both DeepEP layouts, Triton, template decoding, cubin checks, coverage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from jitcache.store.elf import InvalidCubin, read_cubin
from jitcache.store.kernels import parse_source
from jitcache.store.root import CacheRoot
from jitcache.store.scan import coverage, scan, scan_deep_ep
from jitcache.planning.variants import plan
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import FAMILY_KERNELS, make_entry

pytestmark = pytest.mark.nvcc

DESIGN_EXAMPLES = {
    "deep_ep::ep::dispatch_impl<true, false, false, 132, 4, 15, 1, 14336, 0, 16, 256, 8, 1, 129, 198000000000>": {
        "is_scaleup_nvlink": True, "do_cpu_sync": False, "num_sms": 132, "hidden_bytes": 14336,
        "num_max_tokens_per_rank": 16, "num_experts": 256, "num_topk": 8, "num_scaleup_ranks": 1,
        "num_scaleout_ranks": 1, "num_timeout_cycles": 198000000000},
    "deep_ep::ep::combine_impl<true, false, true, 132, 16, 1, 7168, 128, 256, 8, 129, 198000000000>": {
        "use_expanded_layout": False, "allow_multiple_reduction": True, "hidden": 7168,
        "num_max_tokens_per_rank": 128, "num_scaleup_ranks": 1, "num_warps": 16},
    "deep_ep::ep::combine_reduce_epilogue_impl<false, true, 132, 16, 1, 1, 7168, 16, 256, 8>": {
        "num_warps": 16, "num_scaleout_ranks": 1, "num_scaleup_ranks": 1, "hidden": 7168,
        "num_max_tokens_per_rank": 16},
    "deep_ep::ep::dispatch_copy_epilogue_impl<false, false, false, 132, 1, 16, 1, 1, 14336, 0, 16, 256, 8, 1>": {
        "do_expand": False, "cached_mode": False, "num_channels": 1, "num_warps": 16, "hidden_bytes": 14336,
        "num_max_tokens_per_rank": 16, "expert_alignment": 1},
}


@pytest.mark.parametrize("inst", sorted(DESIGN_EXAMPLES))
def test_decode_real_instantiations(inst):
    source = f"#include <deep_ep/impls/ep/x.cuh>\n\nstatic void __instantiate_kernel() {{\n" \
             f"    auto ptr = reinterpret_cast<void*>(&{inst});\n}}\n"
    params = parse_source(source)
    assert params["kernel"] == inst.split("::")[-1].split("<")[0]
    for name, value in DESIGN_EXAMPLES[inst].items():
        assert params[name] == value, name
    assert params["namespace"] == "deep_ep::ep"


def test_decode_unknown_and_none():
    assert parse_source("int main() {}") is None
    params = parse_source("auto p = reinterpret_cast<void*>(&barrier_impl<1, 2, true>);")
    assert params == {"kernel": "barrier_impl", "template_args": [1, 2, True]}
    # a known template with another arity keeps raw args rather than mislabel them
    params = parse_source("auto p = reinterpret_cast<void*>(&combine_impl<1, 2>);")
    assert params["template_args"] == [1, 2]


def test_cubin_facts(cubins, tmp_path):
    path = tmp_path / "k.cubin"
    path.write_bytes(cubins["dispatch"])
    info = read_cubin(path)
    assert info.arch == "sm_90a" and info.sm == 90
    assert len(info.entry_symbols) == 1 and "dispatch_impl" in info.entry_symbols[0]
    path.write_bytes(cubins["two_kernels"])
    assert len(read_cubin(path).entry_symbols) == 2
    path.write_bytes(cubins["dispatch"][:700])
    with pytest.raises(InvalidCubin):
        read_cubin(path)


def test_scan_filled_root(filled_root, test_profile):
    report = scan(filled_root)
    deep = [e for e in report.entries if e.backend == "deep_ep"]
    tri = [e for e in report.entries if e.backend == "triton"]
    assert len(deep) == len(plan(test_profile)) == 16
    assert all(e.status == "ok" for e in report.entries), report.all_problems()
    assert {e.family for e in deep} == set(FAMILY_KERNELS)
    assert sorted({e.num_max_tokens_per_rank for e in deep}) == [1, 2, 4, 8]
    e = deep[0]
    assert e.format == "deepjit" and e.arch == "sm_90a" and e.compiler == "nvcc 13.0.88"
    assert e.params["num_experts"] == 256 and e.params["num_topk"] == 8 and e.size > 0
    assert e.last_used == pytest.approx((Path(e.path) / ".committed").stat().st_mtime)
    assert len(tri) == 1 and tri[0].family == "add_one" and tri[0].compiler.startswith("triton ")
    assert tri[0].arch == "sm_90a" and tri[0].params["num_warps"] == 4
    data = report.to_dict()
    assert data["schema"] == 1 and data["totals"]["entries"] == 17
    json.dumps(data)


def test_scan_deep_ep_21_layout(tmp_path, cubins, test_profile):
    variant = plan(test_profile).variants[0]
    path = make_entry(tmp_path, variant.family, variant.param_dict, cubins, style="2.1")
    entries, problems = scan_deep_ep(tmp_path)
    assert problems == ()
    (entry,) = entries
    assert entry.format == "deep_ep_2.1" and entry.status == "ok"
    assert entry.path == str(path) and entry.params["num_max_tokens_per_rank"] == 1
    assert entry.compiler == "ptxas 13.0.88"  # no meta.json in 2.1: the cubin says


def test_coverage(tmp_path, cubins, test_profile):
    from store_fixtures import fill_plan

    the_plan = plan(test_profile)
    fill_plan(tmp_path, the_plan, cubins, buckets=(1, 4))
    entries, _ = scan_deep_ep(tmp_path)
    cov = coverage(the_plan, entries)
    assert len(cov.present) == 8 and cov.num_variants == 17      # 16 variants + the buffer's barrier
    assert sorted({v.num_max_tokens_per_rank or 0 for v in cov.missing}) == [0, 2, 8]
    assert cov.to_dict()["num_missing"] == 9 and cov.missing[-1].family == "barrier"
    fill_plan(tmp_path / "b", the_plan, cubins, buckets=(1, 4), barrier=True)
    cov = coverage(the_plan, scan_deep_ep(tmp_path / "b")[0])
    assert len(cov.present) == 9 and cov.to_dict()["num_missing"] == 8
    fill_plan(tmp_path, the_plan, cubins, buckets=(), barrier=True)
    # the 2.1 layout covers the same variants
    fill_plan(tmp_path, the_plan, cubins, style="2.1", buckets=(2, 8))
    assert coverage(the_plan, scan_deep_ep(tmp_path)[0]).complete


def test_damaged_entry_is_a_problem_not_an_abort(filled_root):
    victims = sorted((filled_root.deep_ep_dir / "cache").iterdir())
    (victims[0] / "kernel.cubin").write_bytes(b"\x7fELF garbage")
    (victims[1] / "kernel.cu").unlink()
    (victims[2] / "meta.json").write_text("{not json")
    (victims[3] / ".committed").unlink()
    (filled_root.deep_ep_dir / "cache" / "garbage").mkdir()
    report = scan(filled_root)
    codes = {Path(p.path).parent.name if p.key else p.path: p.code for p in report.all_problems()}
    assert codes[victims[0].name] == "invalid_cubin"
    assert codes[victims[1].name] == "missing_file"
    assert codes[victims[2].name] == "bad_meta"
    assert codes[victims[3].name] == "not_committed"
    assert len(report.broken) == 4
    assert any(p.code == "unknown_entry" for p in report.all_problems())


def test_scan_missing_root(tmp_path):
    report = scan(CacheRoot(tmp_path / "nothing"))
    assert report.entries == () and report.problems == ()
