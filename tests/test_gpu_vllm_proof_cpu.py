"""The trace loop of benchmarks/gpu_vllm_proof.py on CPU: the DeepEP 2.1 test double patched by install()
(the plugin's own path is tests/test_vllm_plugin.py), vLLM's dispatch keywords inside the forward-context
stand-in, the direct call with the bucket, and the counts the GPU proof reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import fake_deep_ep as fake  # noqa: E402
from fake_vllm import vllm_forward_context  # noqa: E402,F401 - fixture
from jitcache.planning.profiles import load_profile, parse_profile  # noqa: E402
from jitcache.runtime.install import install  # noqa: E402
from jitcache.store.deepep_cache import committed_entries, jit_cache_roots  # noqa: E402

isolated_deep_ep_env = fake.isolated_deep_ep_env  # autouse
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_vllm_proof as proof  # noqa: E402


def test_the_vllm_profile_renders_what_vllms_buffer_asks_for():
    from jitcache.adapters.render21 import target_facts21

    profile = load_profile(proof.PROFILE)
    assert profile.deep_ep.api == "2.1"
    assert {k: getattr(profile.deep_ep, k) for k in proof.VLLM_BUFFER_FLAGS if k != "explicitly_destroy"} == \
        {k: v for k, v in proof.VLLM_BUFFER_FLAGS.items() if k != "explicitly_destroy"}
    facts = target_facts21(profile)
    assert (facts.num_sms, facts.num_qps) == (132, 9)  # no hybrid mode: min(num_sms, 8 + 1) QPs of 17 allocated


def test_the_trace_counts_and_compares_each_step(vllm_forward_context):  # noqa: F811
    profile = parse_profile({
        "model": {"name": "m", "hidden": 64, "num_experts": 8, "num_topk": 2},
        "parallel": {"ep_size": 1, "ranks_per_node": 1},
        "serving": {"max_num_batched_tokens": 48, "steps_per_octave": 2},
    }, source="tiny.toml", name="tiny")
    install(profile, strict=True, classes=[fake.ElasticBuffer], warm=profile.policy.buckets())
    buf = fake.ElasticBuffer(num_max_tokens_per_rank=48, hidden=64, num_topk=2)
    sizes = proof.trace_sizes(40, 7, 48)

    def compare(bucketed, direct, c1, c2):
        rows = [bucketed[0].shape[0], direct[0].shape[0]]
        return {"recv_equal": bucketed[3].num_max_tokens_per_rank == direct[3].num_max_tokens_per_rank,
                "combined_equal": c1[0] is bucketed[0] and c2[0] is direct[0], "valid_rows": rows}

    result = proof.run_trace(buf, profile, sizes, lambda n, step: (fake.Rows(n, 64), fake.Rows(n, 2), fake.Rows(n, 2)),
                             compare, lambda: committed_entries("2.1", jit_cache_roots("2.1")), log_every=0)
    assert result["steps"] == 40 and result["errors"] == 0 and result["passed"] is False  # the double compiles
    assert result["recv_equal"] == 40 and result["combined_equal"] == 40 and result["misses"] == 0
    # Through the patch: vLLM's power of two refined by the forward context to the policy's bucket, clamped at 48.
    bucketed = [c["num_max_tokens_per_rank"] for c in buf.calls[0::2]]
    assert bucketed == [profile.policy.bucket(n) for n in sizes]
    assert all(c["async_with_compute_stream"] is False and c["do_cpu_sync"] is False for c in buf.calls)
    assert sum(result["calls_per_bucket"].values()) == 40
