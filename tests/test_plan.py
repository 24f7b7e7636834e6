"""The warmup plan: exact variant lists, de-duplication, determinism."""

from __future__ import annotations

import pytest

from jitcache.planning.profiles import builtin_profile_names, load_profile
from jitcache.planning.variants import FAMILIES, plan


def test_h200_plan_is_56_decode_variants():
    p = plan(load_profile("h200-ep1"))
    assert len(p) == 56 and len(p.buckets) == 14
    assert p.counts() == {"decode": {f: 14 for f in FAMILIES}}
    first = p.variants[0]
    assert (first.family, first.num_max_tokens_per_rank) == ("dispatch", 1)
    params = first.param_dict
    # The template arguments the profile decides (DeepEP 2.5 dispatch_impl, EP1 bf16).
    assert params["kernel"] == "dispatch_impl"
    assert (params["hidden_bytes"], params["num_sf_packs"], params["num_experts"], params["num_topk"]) == (14336, 0, 256, 8)
    assert (params["do_cpu_sync"], params["reuse_slot_indices"], params["num_scaleup_ranks"]) == (False, False, 1)


@pytest.mark.parametrize("name", ["h200-ep1", "h200x2-ep2"])
def test_the_buffer_barrier_is_in_the_plan(name):
    """Serving loads 57 kernels for h200-ep1: 56 variants and the barrier every buffer launches."""
    from jitcache.adapters.render25 import render_barrier
    from jitcache.adapters.render21 import render_barrier21
    from jitcache.store.kernels import parse_source

    p = plan(load_profile(name))
    (barrier,) = p.buffer_kernels
    assert p.kernels == p.variants + (barrier,) and barrier.num_max_tokens_per_rank is None
    assert (barrier.family, barrier.mode) == ("barrier", "buffer")
    data = p.to_dict()
    assert data["num_kernels"] == len(p) + 1 and data["buffer_kernels"][0]["family"] == "barrier"
    # it is the kernel the AOT compilers render for DeepEP 2.5 and 2.1: decoded, every plan parameter agrees
    for rendered in (render_barrier(p.profile), render_barrier21(p.profile)):
        decoded = parse_source(rendered.source)
        assert "template_args" not in decoded
        assert {k: decoded[k] for k, _ in barrier.params} == barrier.param_dict


def test_prefill_warms_the_cap_only_and_cached_shares_combines():
    prof = load_profile("deepseek-v3-ep8")
    p = plan(prof, ["decode", "prefill", "cached"])
    counts = p.counts()
    assert counts["prefill"] == {f: 1 for f in FAMILIES}
    # cached dispatches differ (reuse_slot_indices), its combines are decode's.
    assert counts["cached"] == {"dispatch": 14, "dispatch_copy_epilogue": 14}
    assert len(p) == 56 + 4 + 28
    prefill_dispatch = next(v for v in p if v.mode == "prefill" and v.family == "dispatch")
    assert prefill_dispatch.num_max_tokens_per_rank == 8192
    assert prefill_dispatch.param_dict["do_cpu_sync"] is True
    assert prefill_dispatch.param_dict["num_sf_packs"] == 7168 // 128  # fp8


def test_hybrid_kernels_for_multi_node():
    p = plan(load_profile("deepseek-v3-ep16x2"))
    kernels = {v.param_dict["kernel"] for v in p}
    assert {"hybrid_dispatch_impl", "hybrid_combine_impl"} <= kernels
    assert all(v.param_dict["num_scaleout_ranks"] == 2 for v in p)


def test_steps_are_ordered_and_rank_independent():
    p = plan(load_profile("deepseek-v3-ep8"))
    steps = p.steps()
    assert steps[0] == ("decode", 1)
    assert [b for _, b in steps] == sorted(b for _, b in steps)
    assert plan(load_profile("deepseek-v3-ep8")).fingerprint() == p.fingerprint()


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode 'train'"):
        plan(load_profile("h200-ep1"), ["train"])


@pytest.mark.parametrize("name", builtin_profile_names())
def test_every_builtin_plans(name):
    p = plan(load_profile(name))
    identities = [v.identity for v in p]
    assert len(identities) == len(set(identities))
    assert p.to_dict()["num_variants"] == len(p)


def test_a_profile_num_sms_is_part_of_its_dispatch_and_combine_variants_only():
    # So that a cache scan does not take kernels built for another SM count as warm; the two epilogues
    # run on every SM of the device whatever num_sms is (seen in the entries DeepEP wrote at EP2 on 2 H200s).
    p = plan(load_profile("h200x2-ep2"))
    pinned = {"dispatch", "combine"}
    assert {v.param_dict["num_sms"] for v in p if v.family in pinned} == {load_profile("h200x2-ep2").deep_ep.num_sms}
    assert all("num_sms" not in v.param_dict for v in p if v.family not in pinned)
    assert all("num_sms" not in v.param_dict for v in plan(load_profile("h200-ep1")))  # 0: DeepEP decides
