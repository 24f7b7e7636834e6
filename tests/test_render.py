"""The renderer: DeepEP 2.5's exact kernel.cu text and GPU-derived template arguments."""

from __future__ import annotations

from dataclasses import replace

import pytest

from jitcache import load_profile, plan
from jitcache.errors import ProfileError
from jitcache.adapters.render25 import render_plan, target_facts, token_layout_num_bytes


def test_token_layout_bytes_by_hand():
    # hidden 7168 bf16, top-8, with metadata: 14336 + align32(8*8 + 9*4 = 100 -> 128) = 14464 (x64), + 32 mbarrier
    assert token_layout_num_bytes(14336, 0, 8, True, True) == 14496
    assert token_layout_num_bytes(14336, 0, 8, False, True) == 14432   # combine: 64 bytes of top-k
    assert token_layout_num_bytes(14336, 0, 0, False, False) == 14336  # reduce epilogue
    with pytest.raises(ValueError):
        token_layout_num_bytes(14337, 0, 8, True, True)


def test_h200_ep1_matches_the_sources_deepep_wrote():
    """The four instantiations of a real DeepEP 2.5 cache (H200, EP1, nmax 16), from DESIGN.md."""
    the_plan = plan(load_profile("h200-ep1"))
    kernels = {(k.name, k.variant.num_max_tokens_per_rank): k for k in render_plan(the_plan)}
    assert kernels["dispatch", 16].function == \
        "dispatch_impl<true, false, false, 132, 4, 15, 1, 14336, 0, 16, 256, 8, 1, 129, 198000000000>"
    assert kernels["combine", 16].function == \
        "combine_impl<true, false, true, 132, 16, 1, 7168, 16, 256, 8, 129, 198000000000>"
    assert kernels["combine_reduce_epilogue", 16].function == \
        "combine_reduce_epilogue_impl<false, true, 132, 16, 1, 1, 7168, 16, 256, 8>"
    assert kernels["dispatch_copy_epilogue", 16].function == \
        "dispatch_copy_epilogue_impl<false, false, false, 132, 1, 16, 1, 1, 14336, 0, 16, 256, 8, 1>"
    assert kernels["dispatch", 16].source == (
        "\n#include <deep_ep/impls/ep/dispatch.cuh>\n\nstatic void __instantiate_kernel() {\n"
        "    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::dispatch_impl<true, false, false, 132, 4, 15, 1, "
        "14336, 0, 16, 256, 8, 1, 129, 198000000000>);\n}\n")
    assert len(kernels) == 56


def test_target_facts_h200():
    facts = target_facts(load_profile("h200-ep1"))
    assert (facts.num_sms, facts.num_qps, facts.num_timeout_cycles) == (132, 129, 198_000_000_000)


def test_unknown_target_value_names_the_field():
    profile = load_profile("h200-ep1")
    profile = replace(profile, target=replace(profile.target, clock_rate_khz=0))
    with pytest.raises(ProfileError, match="target.clock_rate_khz"):
        target_facts(profile)


def test_multi_rank_num_sms_comes_from_the_bandwidth_model_or_the_profile():
    profile = load_profile("qwen3-30b-a3b-ep4")
    assert target_facts(profile).num_sms == 20  # [target] gpu = "h200-sxm": tests/test_num_sms_model.py
    unknown = replace(profile, target=replace(profile.target, nvlink_gbs=0.0))
    with pytest.raises(ProfileError, match="target.nvlink_gbs"):
        target_facts(unknown)
    profile = replace(profile, deep_ep=replace(profile.deep_ep, num_sms=23))
    assert target_facts(profile).num_sms == 24  # DeepEP aligns an explicit count to 2
