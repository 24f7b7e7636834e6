"""The bucket policy: exhaustive edge cases + hypothesis properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitcache.planning.buckets import BucketPolicy


def test_powers_of_two_up_to_cap():
    policy = BucketPolicy(8192)
    assert policy.buckets() == tuple(1 << e for e in range(14))
    assert [policy.bucket(n) for n in (0, 1, 2, 3, 5, 8, 9, 4097, 8192)] == [1, 1, 2, 4, 8, 8, 16, 8192, 8192]


def test_non_power_of_two_cap_is_the_last_bucket():
    # vLLM's inline rule maps 5000 -> 8192, past a 6144-token buffer.
    policy = BucketPolicy(6144)
    assert policy.buckets()[-3:] == (2048, 4096, 6144)
    assert policy.bucket(5000) == 6144
    assert policy.bucket(6144) == 6144


def test_cap_of_one():
    policy = BucketPolicy(1)
    assert policy.buckets() == (1,)
    assert policy.bucket(0) == policy.bucket(1) == 1


def test_idle_rank_gets_smallest_bucket():
    assert BucketPolicy(8192, min_bucket=8).bucket(0) == 8


@pytest.mark.parametrize("bad", [-1, 8193, 10**9])
def test_out_of_range_names_value_and_cap(bad):
    with pytest.raises(ValueError, match=rf"num_tokens={bad}.*max_num_batched_tokens=8192"):
        BucketPolicy(8192).bucket(bad)


@pytest.mark.parametrize("bad", [1.0, 2.5, "3", None, True])
def test_non_integers_rejected(bad):
    with pytest.raises(ValueError, match="not an integer|outside"):
        BucketPolicy(8192).bucket(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_num_batched_tokens": 0}, "max_num_batched_tokens must be >= 1, got 0"),
    ({"max_num_batched_tokens": -5}, "max_num_batched_tokens must be >= 1, got -5"),
    ({"max_num_batched_tokens": 8.0}, "max_num_batched_tokens must be an integer"),
    ({"max_num_batched_tokens": 64, "steps_per_octave": 0}, "steps_per_octave must be >= 1"),
    ({"max_num_batched_tokens": 64, "alignment": 0}, "alignment must be >= 1"),
    ({"max_num_batched_tokens": 64, "min_bucket": 128}, "min_bucket=128 exceeds max_num_batched_tokens=64"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BucketPolicy(**kwargs)


def test_numpy_style_ints_accepted():
    class Index:  # what numpy / torch integer scalars look like to operator.index
        def __index__(self):
            return 5
    assert BucketPolicy(64).bucket(Index()) == 8


def test_for_dp_uses_the_maximum():
    policy = BucketPolicy(8192)
    assert policy.for_dp([3, 0, 17, 9]) == 32
    assert policy.for_dp((0, 0)) == 1
    with pytest.raises(ValueError, match="empty"):
        policy.for_dp([])
    with pytest.raises(ValueError, match="num_tokens=9000"):
        policy.for_dp([1, 9000])


def test_for_dp_accepts_tolist_objects():
    class Tensor:
        def tolist(self):
            return [4, 100]
    assert BucketPolicy(8192).for_dp(Tensor()) == 128


def test_steps_per_octave_two():
    policy = BucketPolicy(64, steps_per_octave=2)
    assert policy.buckets() == (1, 2, 3, 4, 6, 8, 12, 16, 23, 32, 46, 64)
    assert policy.max_padding_ratio < BucketPolicy(64).max_padding_ratio


def test_alignment_rounds_up():
    policy = BucketPolicy(100, alignment=8)
    assert policy.buckets() == (8, 16, 32, 64, 100)
    assert policy.bucket(3) == 8


def test_max_padding_ratio_pow2():
    policy = BucketPolicy(8192)
    assert policy.max_padding_ratio == pytest.approx(8192 / 4097)
    assert policy.max_padding_ratio < 2


def test_to_dict_round_trip():
    d = BucketPolicy(6144, steps_per_octave=2).to_dict()
    assert d["num_buckets"] == len(d["buckets"]) and d["buckets"][-1] == 6144


policies = st.builds(
    BucketPolicy,
    max_num_batched_tokens=st.integers(1, 1 << 16),
    steps_per_octave=st.integers(1, 4),
    alignment=st.sampled_from([1, 2, 4, 8, 16, 3, 6]),
)


@settings(max_examples=300, deadline=None)
@given(policies, st.data())
def test_properties(policy, data):
    cap = policy.max_num_batched_tokens
    n = data.draw(st.integers(0, cap))
    b = policy.bucket(n)
    assert n <= b <= cap
    assert b in policy.buckets()
    assert policy.bucket(b) == b  # idempotent
    m = data.draw(st.integers(0, cap))
    if n <= m:
        assert policy.bucket(n) <= policy.bucket(m)  # monotone
    assert b / max(n, 1) <= policy.max_padding_ratio + 1e-12


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1 << 20), st.data())
def test_pow2_properties(cap, data):
    policy = BucketPolicy(cap)
    n = data.draw(st.integers(1, cap))
    assert policy.bucket(n) < 2 * n
    assert len(policy.buckets()) == math.ceil(math.log2(cap)) + 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1 << 14), st.sampled_from([1, 2, 8, 16]), st.sampled_from([1, 4, 32]), st.data())
def test_fast_path_agrees_with_search(cap, alignment, min_bucket, data):
    if min_bucket > cap:
        return
    fast = BucketPolicy(cap, alignment=alignment, min_bucket=min_bucket)
    assert fast._fast
    n = data.draw(st.integers(0, cap))
    buckets = fast.buckets()
    expected = next(b for b in buckets if b >= n)
    assert fast.bucket(n) == expected
