"""A profile's ``[deep_ep] num_sms`` reaches DeepEP from the live warmup and from BucketedDispatcher.

``num_sms`` is a template argument of every dispatch/combine kernel. At EP>1
DeepEP's own choice (``num_sms=0``) comes from a bandwidth model of the host,
so the EP2/EP4 profiles pin it; a dispatcher that forwarded 0 would make
DeepEP compile kernels the warmup never built. The test double bakes
``num_sms`` into its entries as DeepEP does (``0`` -> every SM, 132).
"""

from __future__ import annotations

import pytest

import fake_deep_ep as fake
from jitcache import BucketPolicy
from jitcache.runtime.dispatcher import BucketedDispatcher
from jitcache.store.deepep_cache import committed_entries, jit_cache_roots
from jitcache.warm.live import warmup
from jitcache.planning.profiles import load_profile, parse_profile

Rows = fake.Rows
isolated_deep_ep_env = fake.isolated_deep_ep_env  # autouse: see fake_deep_ep




def pinned_profile(num_sms=24, cap=16):
    return parse_profile({
        "model": {"name": "m", "hidden": 256, "num_experts": 16, "num_topk": 4},
        "parallel": {"ep_size": 1, "ranks_per_node": 1},
        "serving": {"max_num_batched_tokens": cap, "modes": ["decode"]},
        "deep_ep": {"num_sms": num_sms},
    }, source="pinned.toml", name="pinned")


def kw(n):
    return {"topk_idx": Rows(n, 4), "topk_weights": Rows(n, 4), "num_experts": 16}


@pytest.mark.parametrize("name, num_sms", [("h200x2-ep2", 28), ("h200x4-ep4", 20)])
def test_multi_gpu_profiles_pin_num_sms(name, num_sms):
    p = load_profile(name)
    assert p.parallel.ep_size == p.parallel.ranks_per_node and p.parallel.nodes == 1
    assert p.deep_ep.num_sms == num_sms and p.serving.max_num_batched_tokens == 8192
    assert (p.model.hidden, p.model.num_experts, p.model.num_topk, p.model.dispatch_dtype) == (7168, 256, 8, "bf16")


def test_dispatcher_fills_the_profiles_num_sms_when_the_caller_leaves_it_at_zero(tmp_path):
    buf = fake.EPBuffer(num_max_tokens_per_rank=16, hidden=256, num_topk=4)
    d = BucketedDispatcher(buf, pinned_profile(24), warm=range(1, 17))
    d.dispatch(Rows(3, 256), **kw(3))                                   # not passed
    d.dispatch(Rows(3, 256), num_sms=0, **kw(3))                        # DeepEP's "choose for me"
    d.dispatch(Rows(3, 256), num_sms=32, **kw(3))                       # the caller's own value wins
    d.dispatch(Rows(3, 256), Rows(3, 4), Rows(3, 4), None, 16, None, 1, 0)  # positional 0
    first = d.dispatch(Rows(3, 256), **kw(3))
    d.dispatch(Rows(3, 256), topk_weights=Rows(3, 4), handle=first[3])  # pass-through (cached handle)
    assert [c["num_sms"] for c in buf.calls] == [24, 24, 32, 24, 24, 24]
    assert [c["num_max_tokens_per_rank"] for c in buf.calls[:5]] == [4] * 5


def test_without_a_pinned_value_num_sms_is_left_to_deepep():
    buf = fake.EPBuffer(num_max_tokens_per_rank=16, hidden=256, num_topk=4)
    BucketedDispatcher(buf, pinned_profile(0), warm=range(1, 17)).dispatch(Rows(3, 256), **kw(3))
    BucketedDispatcher(buf, BucketPolicy(16), warm=range(1, 17)).dispatch(Rows(3, 256), num_sms=0, **kw(3))
    assert [c["num_sms"] for c in buf.calls] == [0, 0]


def test_warmup_and_dispatcher_agree_on_num_sms_so_serving_compiles_nothing():
    profile = pinned_profile(24)
    warm_buf = fake.EPBuffer(num_max_tokens_per_rank=16, hidden=256, num_topk=4)
    report = warmup(warm_buf, profile, progress=False, save=False)
    assert {c["num_sms"] for c in warm_buf.calls} == {24}
    roots = jit_cache_roots("2.5")
    before = committed_entries("2.5", roots)
    assert all(", 24, " in (r / "cache" / e / "kernel.cu").read_text() for r in roots for e in before)

    serve_buf = fake.EPBuffer(num_max_tokens_per_rank=16, hidden=256, num_topk=4)
    d = BucketedDispatcher(serve_buf, profile, strict=True, warm=report)
    for n in (1, 2, 3, 5, 9, 16):
        out = d.dispatch(Rows(n, 256), do_cpu_sync=False, **kw(n))
        d.combine(out[0], out[3], topk_weights=out[2])
    assert committed_entries("2.5", roots) == before and serve_buf.compiles == []
    assert d.stats().total_misses == 0
