"""Capture caches written by DeepEP 2.1 itself (``deep_ep.ElasticBuffer``, no jitcache involved) on the GPU rig.

Two shapes, each from an empty ``EP_JIT_CACHE_DIR``, one rank (EP1):

- ``bf16``: the ``h200-ep1`` profile (hidden 7168, top-8, 256 experts), every power of two 1..8192,
  dispatched the way vLLM 0.33's DeepEP V2 path does (keywords, ``do_expand=False``,
  ``do_cpu_sync=False``, ``async_with_compute_stream=False``), then combined. This is also the
  "DeepEP 2.1 alone" cold baseline: seconds and new entries per bucket.
- ``fp8``: ``use_fp8_dispatch=True`` with ``expert_alignment=128`` and ``do_cpu_sync=True`` (the call
  DeepEP 2.1's own ``tests/elastic/test_ep.py`` makes) for a few buckets.

Then a second process loads the bf16 cache again (new entries must be 0). It records the buffer's
``get_theoretical_num_sms`` and the bandwidths DeepEP measured (for the offline num_sms model), the
device facts, DeepEP's install paths (they enter 2.1's digest), and tars each cache for ``tests/data``.

Usage on the device (rig env.sh sourced, DeepEP 2.1 first on PYTHONPATH):
    python benchmarks/gpu_capture_cache21.py --out $OUT
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

HIDDEN, NUM_TOPK, NUM_EXPERTS, CAP = 7168, 8, 256, 8192


def entries(cache_dir: Path) -> set[str]:
    root = cache_dir / "cache"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def run_shape(label: str, buckets: list[int], fp8: bool, port: int) -> dict:
    """One process's work for one shape (called in a child so each shape starts from a clean import)."""
    import torch
    import torch.distributed as dist

    cache_dir = Path(os.environ["EP_JIT_CACHE_DIR"])
    result: dict = {"label": label, "cache_dir": str(cache_dir), "fp8": fp8, "steps": []}
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    probe = torch.ones(1, device="cuda")
    dist.all_reduce(probe)
    import deep_ep

    props = torch.cuda.get_device_properties(0)
    result["device"] = {
        "name": props.name, "multi_processor_count": props.multi_processor_count,
        "shared_memory_per_block_optin": getattr(props, "shared_memory_per_block_optin", None),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "deep_ep": getattr(deep_ep, "__version__", None), "deep_ep_file": deep_ep.__file__,
    }
    t0 = time.perf_counter()
    buf = deep_ep.ElasticBuffer(dist.group.WORLD, num_max_tokens_per_rank=CAP, hidden=HIDDEN, num_topk=NUM_TOPK,
                                use_fp8_dispatch=fp8, allow_hybrid_mode=True, prefer_overlap_with_compute=True,
                                allow_multiple_reduction=True, explicitly_destroy=True)
    result["buffer_seconds"] = round(time.perf_counter() - t0, 3)
    facts: dict = {"num_allocated_qps": buf.num_allocated_qps, "num_ranks": buf.num_ranks}
    for attr in ("num_rdma_ranks", "num_nvlink_ranks", "num_scaleout_ranks", "num_scaleup_ranks",
                 "allow_hybrid_mode", "prefer_overlap_with_compute"):
        facts[attr] = getattr(buf, attr, None)
    try:
        facts["theoretical_num_sms"] = buf.get_theoretical_num_sms(NUM_EXPERTS, NUM_TOPK)
    except Exception:  # noqa: BLE001 - record, go on
        facts["theoretical_num_sms_error"] = traceback.format_exc()
    try:
        from deep_ep.buffers import elastic as _elastic
        for fn in ("get_nvlink_gbs", "get_rdma_gbs"):
            try:
                facts[fn] = getattr(_elastic, fn)()
            except Exception as exc:  # noqa: BLE001
                facts[fn] = f"error: {exc!r}"
    except Exception as exc:  # noqa: BLE001
        facts["bandwidth_error"] = repr(exc)
    try:
        from deep_ep.utils.find_pkgs import find_nccl_root
        facts["nccl_root"] = str(find_nccl_root())
    except Exception as exc:  # noqa: BLE001
        facts["nccl_root"] = f"error: {exc!r}"
    facts["package_dir"] = str(Path(deep_ep.__file__).parent)
    result["buffer"] = facts

    gen = torch.Generator(device="cuda").manual_seed(0)

    def inputs(n: int):
        x = torch.randn(n, HIDDEN, dtype=torch.bfloat16, device="cuda", generator=gen)
        scores = torch.rand(n, NUM_EXPERTS, device="cuda", generator=gen)
        weights, idx = torch.topk(scores.softmax(-1), NUM_TOPK, dim=-1)
        if fp8:
            from deep_ep.utils.math import per_token_cast_to_fp8
            x = per_token_cast_to_fp8(x)
        return x, idx.to(deep_ep.topk_idx_t), weights

    for n in buckets:
        before = entries(cache_dir)
        record: dict = {"bucket": n}
        t0 = time.perf_counter()
        try:
            x, idx, w = inputs(n)
            kwargs = dict(x=x, topk_idx=idx, topk_weights=w, num_experts=NUM_EXPERTS, num_max_tokens_per_rank=n,
                          do_expand=False, async_with_compute_stream=False)
            if fp8:
                kwargs.update(expert_alignment=128, do_cpu_sync=True)
            else:
                kwargs.update(do_cpu_sync=False)
            recv_x, _, recv_w, handle, _ = buf.dispatch(**kwargs)
            recv = recv_x[0] if isinstance(recv_x, tuple) else recv_x
            record["recv_shape"] = list(recv.shape)
            # combine takes the experts' bf16 output, whatever the dispatch dtype
            buf.combine(recv if not fp8 else recv.to(torch.bfloat16), handle=handle, topk_weights=recv_w)
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001
            record["error"] = traceback.format_exc()
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["new_entries"] = sorted(entries(cache_dir) - before)
        result["steps"].append(record)
        print(f"[capture21] {label} nmax={n}: {record['seconds']} s, {len(record['new_entries'])} new"
              + (" ERROR" if "error" in record else ""), flush=True)
    result["all_entries"] = sorted(entries(cache_dir))
    buf.destroy()
    dist.destroy_process_group()
    return result


def child(args: argparse.Namespace) -> int:
    result = run_shape(args.label, [int(b) for b in args.buckets.split(",")], args.fp8, args.port)
    Path(args.part).write_text(json.dumps(result, indent=2))
    return 0


def spawn(label: str, cache_dir: Path, buckets: str, fp8: bool, port: int, out: Path) -> dict:
    part = out / f"part_{label}.json"
    # DeepEP prints each nvcc command it runs: the exact flags that enter 2.1's key, kept in log_<label>.txt
    env = dict(os.environ, EP_JIT_CACHE_DIR=str(cache_dir), EP_JIT_PRINT_COMPILER_COMMAND="1")
    cmd = [sys.executable, __file__, "--child", "--label", label, "--buckets", buckets, "--port", str(port),
           "--part", str(part)] + (["--fp8"] if fp8 else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    wall = round(time.perf_counter() - t0, 3)
    (out / f"log_{label}.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode != 0 or not part.exists():
        return {"label": label, "rc": proc.returncode, "process_seconds": wall, "stderr_tail": proc.stderr[-4000:]}
    result = json.loads(part.read_text())
    result.update(rc=proc.returncode, process_seconds=wall)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--label", default="bf16")
    parser.add_argument("--buckets", default=",".join(str(1 << i) for i in range(14)))
    parser.add_argument("--fp8-buckets", default="1,2,4,8")
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--port", type=int, default=29531)
    parser.add_argument("--part", default="")
    args = parser.parse_args()
    if args.child:
        return child(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="deepep21-capture-"))
    caches = {"bf16": work / "bf16", "fp8": work / "fp8"}
    report: dict = {"machine": platform.node(), "deep_ep_version": "2.1 (ElasticBuffer)", "shapes": {}}
    try:
        import deep_ep
        report["deep_ep_package_dir"] = str(Path(deep_ep.__file__).parent)
    except Exception as exc:  # noqa: BLE001
        report["deep_ep_import_error"] = repr(exc)
    for key in ("EP_NCCL_ROOT_DIR", "CUDA_HOME", "PYTHONPATH"):
        report.setdefault("env", {})[key] = os.environ.get(key)
    try:
        report["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    except OSError as exc:
        report["nvcc"] = repr(exc)
    runs = [("bf16", "bf16", args.buckets, False), ("fp8", "fp8", args.fp8_buckets, True),
            ("bf16_reload", "bf16", args.buckets, False)]
    for i, (label, cache, buckets, fp8) in enumerate(runs):
        report["shapes"][label] = spawn(label, caches[cache], buckets, fp8, args.port + i, out)
        cache_dir = caches[cache]
        if label != "bf16_reload" and (cache_dir / "cache").is_dir():
            tar_path = out / f"deepep21_{cache}_cache.tar.gz"
            with tarfile.open(tar_path, "w:gz") as tar:
                tar.add(cache_dir / "cache", arcname="cache")
            report.setdefault("tarballs", {})[cache] = tar_path.stat().st_size
        (out / "capture21.json").write_text(json.dumps(report, indent=2))  # after every run: a timeout keeps the rest
    summary = {k: {kk: vv for kk, vv in v.items() if kk not in ("steps", "all_entries")}
               for k, v in report["shapes"].items()}
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
