"""BucketedDispatcher against the DeepEP test double: bucketing, pass-through, the miss guard, stats."""

from __future__ import annotations

import logging

import pytest

import fake_deep_ep as fake
from jitcache import BucketPolicy, ColdVariantError, UsageError
from jitcache.adapters.registry import buffer_api
from jitcache.runtime.dispatcher import BucketedDispatcher, local_num_tokens
from jitcache.store.deepep_cache import committed_entries, jit_cache_roots, warm_buckets_from_cache
from jitcache.planning.profiles import parse_profile

Rows = fake.Rows
isolated_deep_ep_env = fake.isolated_deep_ep_env  # autouse: see fake_deep_ep




def small_profile(cap=64, hidden=256, dtype="bf16"):
    return parse_profile({
        "model": {"name": "m", "hidden": hidden, "num_experts": 16, "num_topk": 4, "dispatch_dtype": dtype},
        "parallel": {"ep_size": 1, "ranks_per_node": 1},
        "serving": {"max_num_batched_tokens": cap, "modes": ["decode"]},
    }, source="test.toml", name="small")


def args(n, k=4):
    return {"topk_idx": Rows(n, k), "topk_weights": Rows(n, k), "num_experts": 16}


POLICY = BucketPolicy(64)


def test_detects_both_apis_and_the_v25_wheel_by_name():
    assert buffer_api(fake.EPBuffer) == "2.5"
    assert buffer_api(fake.ElasticBuffer(hidden=8)) == "2.1"
    v25 = type("EPBuffer", (), {"__module__": "deep_ep_v25.buffers.ep"})
    assert buffer_api(v25()) == "2.5"

    class Mine(fake.ElasticBuffer):
        pass

    assert buffer_api(Mine) == "2.1"
    with pytest.raises(UsageError, match="builtins.dict is not a DeepEP buffer"):
        buffer_api({})


def test_cache_roots_follow_deepep_rules(tmp_path):
    env = {"HOME": "/h"}
    assert jit_cache_roots("2.5", env) == (fake.Path("/h/.dj"),)
    assert jit_cache_roots("2.1", env) == (fake.Path("/h/.deep_ep"),)
    assert jit_cache_roots("2.5", {**env, "DJ_JIT_CACHE_DIR": "/d"}) == (fake.Path("/d"),)
    assert jit_cache_roots("2.5", {**env, "EP_JIT_CACHE_DIR": "/a:/b", "DJ_JIT_CACHE_DIR": "/d"}) == (
        fake.Path("/a"), fake.Path("/b"))
    assert jit_cache_roots("2.1", {**env, "EP_JIT_CACHE_DIR": "/e"}) == (fake.Path("/e"),)


def test_returns_exactly_what_deepep_returns_and_passes_everything_else_untouched():
    buf = fake.EPBuffer(num_max_tokens_per_rank=64, hidden=256)
    d = BucketedDispatcher(buf, POLICY, warm=POLICY.buckets())
    x, a = Rows(5, 256), args(5)
    marker = object()
    result = d.dispatch(x, **a, num_sms=20, cumulative_local_expert_recv_stats=marker, do_cpu_sync=False)
    assert result is buf.last_result
    call = buf.calls[-1]
    assert call["num_max_tokens_per_rank"] == 8
    assert call["x"] is x and call["topk_idx"] is a["topk_idx"] and call["topk_weights"] is a["topk_weights"]
    assert call["cumulative_local_expert_recv_stats"] is marker
    assert (call["num_sms"], call["do_cpu_sync"], call["num_experts"]) == (20, False, 16)


def test_combine_passes_through(monkeypatch):
    buf = fake.EPBuffer(hidden=256)
    d = BucketedDispatcher(buf, POLICY, warm=())
    sentinel, seen = object(), []
    monkeypatch.setattr(buf, "combine", lambda *a, **k: seen.append((a, k)) or sentinel)
    handle = object()
    assert d.combine("x", handle, topk_weights="w") is sentinel
    assert seen == [(("x", handle), {"topk_weights": "w"})]


@pytest.mark.parametrize("dp, expected", [([3, 17, 0], 32), ([0, 0], 1), ([64], 64), ((1, 2, 3), 4)])
def test_dp_list_sets_the_uniform_bucket(dp, expected):
    buf = fake.EPBuffer(hidden=256)
    d = BucketedDispatcher(buf, POLICY, warm=POLICY.buckets())
    d.dispatch(Rows(1, 256), **args(1), num_tokens_across_dp=dp)
    assert buf.calls[-1]["num_max_tokens_per_rank"] == expected


def test_dp_tensor_sets_the_uniform_bucket():
    torch = pytest.importorskip("torch")
    buf = fake.EPBuffer(hidden=256)
    d = BucketedDispatcher(buf, POLICY, warm=POLICY.buckets())
    d.dispatch(Rows(2, 256), **args(2), num_tokens_across_dp=torch.tensor([2, 40, 9]))
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 64


def test_local_count_fp8_tuple_explicit_and_positional_sizes():
    buf = fake.EPBuffer(hidden=256)
    d = BucketedDispatcher(buf, POLICY, warm=POLICY.buckets())
    d.dispatch((Rows(9, 256), Rows(9, 2)), **args(9))
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 16
    assert local_num_tokens((Rows(9, 256), Rows(9, 2))) == 9
    d.dispatch(Rows(3, 256), **args(3), num_max_tokens_per_rank=37)  # a raw DP-padded size from the caller
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 64
    a = args(3)
    d.dispatch(Rows(3, 256), a["topk_idx"], a["topk_weights"], None, 16, 5)  # positional num_max_tokens_per_rank
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 8
    d.dispatch(Rows(3, 256), a["topk_idx"], a["topk_weights"], None, 16, None, None, 0, 0, None, False, False,
               None, False, False)  # past the shared prefix: named by signature
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 4
    with pytest.raises(UsageError, match="num_tokens=65 is outside 0..max_num_batched_tokens=64"):
        d.dispatch(Rows(65, 256), **args(65))


def test_prefill_and_cached_handle_are_not_bucketed():
    buf = fake.EPBuffer(num_max_tokens_per_rank=64, hidden=256)
    d = BucketedDispatcher(buf, POLICY, strict=True, warm=())  # strict with nothing warm: still not refused
    d.dispatch(Rows(5, 256), **args(5), do_expand=True, do_cpu_sync=True)
    assert buf.calls[-1]["num_max_tokens_per_rank"] is None
    handle = fake.FakeHandle(False, 16, 1, 8, 132, Rows(5, 4))
    d.dispatch(Rows(5, 256), topk_weights=Rows(5, 4), handle=handle)
    assert buf.calls[-1]["num_max_tokens_per_rank"] is None
    assert d.stats().passthrough == 2 and d.stats().bucketed_calls == 0


def test_cold_bucket_warns_once_and_counts_one_miss(caplog):
    buf = fake.EPBuffer(hidden=256)
    d = BucketedDispatcher(buf, POLICY, warm=[1, 2, 4])
    with caplog.at_level(logging.WARNING, logger="jitcache.deepep"):
        d.dispatch(Rows(5, 256), **args(5))
        d.dispatch(Rows(6, 256), **args(6))
        d.dispatch(Rows(20, 256), **args(20))
        d.dispatch(Rows(3, 256), **args(3))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "num_max_tokens_per_rank=8 is cold" in warnings[0] and "num_max_tokens_per_rank=32" in warnings[1]
    snap = d.stats()
    assert dict(snap.calls) == {4: 1, 8: 2, 32: 1}
    assert dict(snap.misses) == {8: 1, 32: 1}
    assert (snap.real_rows, snap.padded_rows) == (5 + 6 + 20 + 3, 8 + 8 + 32 + 4)
    assert d.warm_buckets == {1, 2, 4, 8, 32}


def test_strict_raises_before_deepep_is_called(tmp_path):
    buf = fake.EPBuffer(hidden=256)
    d = BucketedDispatcher(buf, POLICY, strict=True, warm=[1, 2])
    with pytest.raises(ColdVariantError) as info:
        d.dispatch(Rows(3, 256), **args(3))
    assert info.value.num_max_tokens_per_rank == 4
    assert "num_max_tokens_per_rank=4 is not warm" in str(info.value)
    assert buf.calls == [] and buf.compiles == []
    assert committed_entries("2.5", [tmp_path / "dj"]) == frozenset()
    assert dict(d.stats().refused) == {4: 1}
    d.dispatch(Rows(2, 256), **args(2))
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 2


@pytest.mark.parametrize("cls, layout", [(fake.EPBuffer, "2.5"), (fake.ElasticBuffer, "2.1")])
def test_cache_scan_knows_what_is_warm(tmp_path, cls, layout):
    profile = small_profile()
    buf = cls(num_max_tokens_per_rank=64, hidden=256)
    for n in (5, 30):  # compile buckets 8 and 32, decode path, through the raw buffer
        r = buf.dispatch(Rows(n, 256), **args(n), num_max_tokens_per_rank=POLICY.bucket(n), do_cpu_sync=False)
        buf.combine(r[0], r[3], topk_weights=r[2])
    buf.dispatch(Rows(3, 256), **args(3), num_max_tokens_per_rank=4, do_cpu_sync=True)  # not the decode path
    roots = jit_cache_roots(layout)
    assert warm_buckets_from_cache(layout, roots) == {8, 32}
    assert warm_buckets_from_cache(layout, roots, profile) == {8, 32}
    assert warm_buckets_from_cache(layout, roots, small_profile(hidden=512)) == frozenset()  # another model

    d = BucketedDispatcher(cls(hidden=256), profile, strict=True)  # warm=None: scan
    assert d.warm_buckets == {8, 32}
    d.dispatch(Rows(7, 256), **args(7))
    with pytest.raises(ColdVariantError):
        d.dispatch(Rows(9, 256), **args(9))


def test_dispatcher_forwards_other_attributes():
    buf = fake.EPBuffer(hidden=256)
    d = BucketedDispatcher(buf, POLICY, warm=())
    d.destroy()
    assert buf.destroyed and d.hidden == 256
