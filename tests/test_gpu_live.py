"""The CPU tests' claims, on a real GPU with real DeepEP 2.5, at small scale (EP1, buckets 1, 2, 4).

Run on the H200 rig: ``pytest -m gpu tests/test_gpu_live.py`` (about a minute: three
buckets compile, ~12 s each). Deselected everywhere else by the ``gpu`` marker.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

PROFILE_TOML = """
description = "h200-ep1 with a cap of 4: the GPU test's small plan"
[model]
name = "deepseek-ai/DeepSeek-V3"
hidden = 7168
num_experts = 256
num_topk = 8
[parallel]
ep_size = 1
ranks_per_node = 1
[serving]
max_num_batched_tokens = 4
modes = ["decode"]
[target]
num_allocated_qps = 129
"""  # the GPU's own facts (SMs, shared memory, clock) left unknown: the live warmup reads them from the device


@pytest.fixture
def small_profile(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    pytest.importorskip("deep_ep")
    monkeypatch.setenv("JITCACHE_STATS", "0")
    monkeypatch.delenv("EP_JIT_CACHE_DIR", raising=False)
    path = tmp_path / "small-ep1.toml"
    path.write_text(PROFILE_TOML)
    return path


def test_live_warmup_then_strict_bucketed_trace_is_exact_and_compiles_nothing(small_profile, tmp_path):
    import torch
    import torch.distributed as dist

    from jitcache.runtime.dispatcher import BucketedDispatcher
    from jitcache.store.deepep_cache import committed_entries
    from jitcache.warm.live import init_single_rank_group, live_warmup_cli, load_report, make_buffer
    from jitcache.planning.profiles import load_profile

    root = tmp_path / "root"
    # No nvcc pass first: DeepEP compiles every step itself (the precompile has its own test below).
    report = live_warmup_cli(str(small_profile), cache_dir=root, progress=False, precompile=False)
    assert [r.num_max_tokens_per_rank for r in report.results] == [1, 2, 4]
    assert report.num_compiled == 3 and report.num_entries_written >= 12  # 4 families per bucket (+ barrier)
    assert load_report(load_profile(small_profile), root) == report

    # live_warmup_cli pointed EP_JIT_CACHE_DIR at the root; a "serving" buffer in this process reuses it.
    profile = load_profile(small_profile)
    init_single_rank_group(0)  # eager NCCL init: a lazy group makes EPBuffer segfault
    buffer = make_buffer(profile, dist.group.WORLD)
    try:
        dispatcher = BucketedDispatcher(buffer, profile, strict=True)  # warm set from a scan of the real cache
        assert dispatcher.warm_buckets == {1, 2, 4}
        before = committed_entries("2.5", [root / "deep_ep"])
        rng = random.Random(0)
        for step in range(50):
            n = rng.randint(1, 4)
            g = torch.Generator(device="cuda").manual_seed(step)
            idx = torch.rand((n, 256), generator=g, device="cuda").topk(8, dim=1).indices
            w = torch.rand((n, 8), generator=g, device="cuda")
            x = torch.randn((n, 7168), generator=g, device="cuda").to(torch.bfloat16)
            kw = {"topk_idx": idx, "topk_weights": w, "num_experts": 256, "do_expand": False, "do_cpu_sync": False}
            a = dispatcher.dispatch(x, **kw)
            b = buffer.dispatch(x, num_max_tokens_per_rank=profile.policy.bucket(n), **kw)
            assert a[0].shape[0] >= n and a[3].num_max_tokens_per_rank == profile.policy.bucket(n)
            ca = dispatcher.combine(a[0], a[3], topk_weights=a[2])
            cb = buffer.combine(b[0], b[3], topk_weights=b[2])
            torch.cuda.synchronize()
            for result in (a, b):
                assert int(result[3].psum_num_recv_tokens_per_scaleup_rank[-1]) == n
            order_a = a[3].recv_src_metadata[:n, 0].argsort()
            order_b = b[3].recv_src_metadata[:n, 0].argsort()
            assert torch.equal(a[0][:n][order_a], b[0][:n][order_b])
            assert torch.equal(a[1][:n][order_a], b[1][:n][order_b])
            assert torch.equal(ca[0], cb[0])
        assert committed_entries("2.5", [root / "deep_ep"]) == before
        assert dispatcher.stats().total_misses == 0
    finally:
        buffer.destroy()
        dist.destroy_process_group()


def test_live_warmup_precompiles_with_nvcc_and_deep_ep_then_compiles_nothing(small_profile, tmp_path):
    """The nvcc pass before the live steps, on the real DeepEP: every step then finds its kernels.

    In a new process: DeepEP reads EP_JIT_CACHE_DIR once per process, and the test above set it to its own root.
    """
    root = tmp_path / "root"
    code = ("import json, sys; from jitcache.warm.live import live_warmup_cli; "
            "r = live_warmup_cli(sys.argv[1], cache_dir=sys.argv[2], progress=False); "
            "print(json.dumps(r.to_dict()))")
    done = subprocess.run([sys.executable, "-c", code, str(small_profile), str(root)], capture_output=True, text=True,
                          env={**os.environ, "JITCACHE_STATS": "0"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    pre = report["precompile"]
    assert pre["status"] == "done", pre["reason"]
    assert set(pre["target_from_device"]) == {"num_device_sms", "num_smem_bytes", "clock_rate_khz"}
    # 3 buckets x 4 families + the barrier (which building the buffer may have compiled already)
    assert len(pre["entries"]) == 13 and pre["compiled"] + pre["cached"] == 13 and pre["failed"] == 0
    assert pre["missed_by_live"] == 0 and report["totals"]["compiled"] == 0, report["results"]
