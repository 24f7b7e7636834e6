"""Capture a cache written by DeepEP itself (no jitcache involved) on the GPU rig.

Runs DeepEP 2.5 (EP1, hidden 7168, top-8, 256 experts, bf16) for a few decode
buckets, one cached-handle dispatch and one prefill (do_expand=True) call, each
from an empty ``EP_JIT_CACHE_DIR``, and records:

- which cache entries each call created, and how long it took;
- the device facts DeepEP bakes into its templates (SM count, shared memory,
  clock), for the profile's ``[target]`` table;
- a tarball of the cache (all kernel.cu, meta.json and cubins), which
  ``tests/data/deepep25-h200/`` is made from.

Usage on the device (after the rig's env.sh):  python benchmarks/gpu_capture_cache.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path


def entries(cache_dir: Path) -> set[str]:
    root = cache_dir / "cache"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--buckets", default="1,2,4")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="deepep-capture-"))
    os.environ["EP_JIT_CACHE_DIR"] = str(cache_dir)
    result: dict = {"machine": platform.node(), "cache_dir": str(cache_dir), "steps": [], "errors": []}

    import torch
    import torch.distributed as dist

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29511", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    import deep_ep

    props = torch.cuda.get_device_properties(0)
    result["device"] = {
        "name": props.name,
        "multi_processor_count": props.multi_processor_count,
        "shared_memory_per_block_optin": getattr(props, "shared_memory_per_block_optin", None),
        "clock_rate_khz": getattr(props, "clock_rate", None),
        "torch": torch.__version__,
        "deep_ep": deep_ep.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        result["device"]["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,clocks.max.sm,clocks.sm,driver_version", "--format=csv"],
            capture_output=True, text=True, timeout=30).stdout
    except Exception as exc:  # noqa: BLE001 - a missing tool is only a missing fact
        result["device"]["nvidia_smi"] = repr(exc)

    group = dist.group.WORLD
    probe = torch.ones(1, device="cuda")
    dist.all_reduce(probe)  # make sure the NCCL communicator exists before DeepEP asks for it
    hidden, num_topk, num_experts, cap = 7168, 8, 256, 8192
    buf = deep_ep.EPBuffer(group, num_max_tokens_per_rank=cap, hidden=hidden, num_topk=num_topk)
    result["buffer"] = {"num_allocated_qps": buf.num_allocated_qps,
                        "theoretical_num_sms": buf.get_theoretical_num_sms(num_experts, num_topk)}

    gen = torch.Generator(device="cuda").manual_seed(0)

    def inputs(n: int):
        x = torch.randn(n, hidden, dtype=torch.bfloat16, device="cuda", generator=gen)
        scores = torch.rand(n, num_experts, device="cuda", generator=gen)
        topk_idx = scores.topk(num_topk, dim=1).indices.to(deep_ep.topk_idx_t)
        topk_weights = torch.rand(n, num_topk, device="cuda", generator=gen)
        return x, topk_idx, topk_weights

    def step(label: str, fn) -> None:
        before = entries(cache_dir)
        t0 = time.perf_counter()
        record: dict = {"label": label}
        try:
            fn()
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 - keep going, report it
            record["error"] = traceback.format_exc()
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["new_entries"] = sorted(entries(cache_dir) - before)
        result["steps"].append(record)
        print(f"[capture] {label}: {record['seconds']} s, {len(record['new_entries'])} new", flush=True)

    handles = {}
    for n in [int(b) for b in args.buckets.split(",")]:
        def decode(n=n):
            x, idx, w = inputs(n)
            recv_x, _, recv_w, handle, _ = buf.dispatch(
                x, topk_idx=idx, topk_weights=w, num_experts=num_experts,
                num_max_tokens_per_rank=n, do_cpu_sync=False, do_expand=False)
            buf.combine(recv_x, handle, topk_weights=recv_w)
            handles[n] = (x, handle)
            result.setdefault("recv_shapes", {})[str(n)] = list(recv_x.shape)
        step(f"decode nmax={n}", decode)

    first = min(handles) if handles else None
    if first is not None:
        def cached():
            x, handle = handles[first]
            recv_x, _, _, handle2, _ = buf.dispatch(x, handle=handle, num_experts=num_experts)
            buf.combine(recv_x, handle2)
        step(f"cached nmax={first}", cached)

    def decode_none():
        x, idx, w = inputs(4)
        recv_x, _, recv_w, handle, _ = buf.dispatch(
            x, topk_idx=idx, topk_weights=w, num_experts=num_experts, do_cpu_sync=False, do_expand=False)
        buf.combine(recv_x, handle, topk_weights=recv_w)
        result["recv_shape_none_4_tokens"] = list(recv_x.shape)
    step("decode nmax=None (4 tokens)", decode_none)

    def prefill():
        x, idx, w = inputs(64)
        recv_x, _, recv_w, handle, _ = buf.dispatch(
            x, topk_idx=idx, topk_weights=w, num_experts=num_experts, do_expand=True)
        buf.combine(recv_x, handle, topk_weights=recv_w)
    step("prefill nmax=None do_expand=True", prefill)

    # A second process finds everything: hits only.
    result["all_entries"] = sorted(entries(cache_dir))
    tar_path = args.out / "deepep25_cache.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(cache_dir / "cache", arcname="cache")
    result["tarball_bytes"] = tar_path.stat().st_size
    (args.out / "capture.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
