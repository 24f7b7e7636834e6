"""DeepEP 2.1 AOT with real nvcc against the tokenspeed-deepep wheel's headers: two real kernels, no GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aot_fixtures import nccl_include, nvcc  # noqa: F401
from jitcache.adapters.registry import jobs_for_plan
from jitcache.warm.aot import warmup_aot
from jitcache.errors import ToolchainError
from jitcache.planning.profiles import load_profile
from jitcache.store.elf import entry_symbol_problem, read_cubin
from jitcache.store.root import resolve_root
from jitcache.build.toolchain import resolve_toolchain
from jitcache.planning.variants import plan

from test_render21 import wheel  # noqa: F401


@pytest.fixture(scope="module")
def toolchain21(wheel, nccl_include, nvcc):  # noqa: F811
    return resolve_toolchain(nvcc=nvcc, deep_ep_include=wheel, nccl_include=nccl_include, api="2.1")


@pytest.mark.nvcc
def test_real_2_1_dispatch_and_combine_compile_into_deepeps_layout(tmp_path, toolchain21):
    """CI's proof for 2.1: h200-ep1's first dispatch and combine, rendered by us, built by nvcc, published."""
    the_plan = plan(load_profile("h200-ep1"))
    jobs = [j for j in jobs_for_plan(the_plan, toolchain21) if j.num_max_tokens_per_rank == 1
            and j.family in ("dispatch", "combine")]
    assert len(jobs) == 2
    root = resolve_root(tmp_path / "root")
    report = warmup_aot(the_plan, toolchain21, root, jobs=jobs, num_workers=2)
    assert report.ok, [r.message for r in report.failed]
    assert report.deep_ep_api == "2.1" and report.count("compiled") == 2
    assert report.toolchain["deep_ep_headers_from"].startswith("DeepEP 2.1 headers from --deep-ep-include")
    for job in jobs:
        entry = root.deep_ep_dir / "cache" / job.entry
        assert sorted(p.name for p in entry.iterdir()) == ["kernel.cu", "kernel.cubin"]  # 2.1: no marker, no meta
        assert (entry / "kernel.cu").read_text().startswith("// Includes' hash value: ")
        info = read_cubin(entry / "kernel.cubin")
        assert entry_symbol_problem(info) is None and info.arch == "sm_90a"
        assert info.entry_symbols[0].startswith(f"_ZN7deep_ep7elastic{len(job.family) + 5}{job.family}_impl")
    # a second run finds both entries: nothing compiles
    again = warmup_aot(the_plan, toolchain21, root, jobs=jobs, num_workers=2)
    assert again.count("cached") == 2
    assert json.loads(Path(again.report_path).read_text())["deep_ep_api"] == "2.1"


def test_profile_api_must_match_the_headers(toolchain21):
    from dataclasses import replace

    profile = load_profile("h200-ep1")
    wants_25 = replace(profile, deep_ep=replace(profile.deep_ep, api="2.5"))
    with pytest.raises(ToolchainError, match=r"api = '2.5'.*DeepEP 2.1") as info:
        jobs_for_plan(plan(wants_25), toolchain21)
    assert "jitcache sources fetch" in info.value.hint and "tokenspeed-deepep" in info.value.hint
    assert len(jobs_for_plan(plan(replace(profile, deep_ep=replace(profile.deep_ep, api="2.1"))), toolchain21)) == 56 + 1  # + the EPBuffer barrier
