"""One MoE layer's decode step on one H200, DeepEP 2.5 EP1: unbounded vs jitcache-bucketed receive buffer.

Step = ``EPBuffer.dispatch`` (``do_expand=False, do_cpu_sync=False``: decode)
-> a grouped-expert Triton kernel over the received rows -> ``EPBuffer.combine``,
for 1, 4, 16, 64, 256 and 1024 tokens, with

- ``unbounded``: ``num_max_tokens_per_rank=None``, i.e. the buffer's capacity
  (8192): ``recv_x`` is 8192 x 7168 whatever the batch;
- ``bucketed``: ``BucketPolicy(8192).bucket(n)`` (jitcache's policy; here = n).

The expert computation (``_grouped_expert.py``) is a real grouped GEMM whose
work follows the (row, local expert) pairs in ``recv_topk_idx``: per pair
``w * (silu(x W1_gate) * (x W1_up)) W2`` with DeepSeek-V3's expert shape,
W1: 7168 -> 2 x 2048 (gate, up), SiLU-and-multiply, W2: 2048 -> 7168, bf16,
256 experts with random weights (22.5 GiB), summed per row with the routing
weights, then combined. Its launch grid and routing prep are sized from
``recv_x.shape[0]`` (the host does not know the real count without a CPU
sync); tiles with no pairs exit at once. Two ways of treating rows past
DeepEP's received count (never written: ``torch::empty``), both measured:

- ``valid``: the layer reads DeepEP's count on the GPU
  (``handle.psum_num_recv_tokens_per_scaleup_rank[-1]``) and drops those rows;
- ``as_received``: the layer trusts the received shape, as a framework that
  treats ``recv_x.shape[0]`` as its token count does (vLLM before PR 46404:
  "the experts processed ~R * 8192 rows"); slots naming no local expert
  (``-1`` or out of range) are skipped, the rest of the uninitialised rows is
  computed. ``pairs_computed`` in the JSON says how much that was.

Per case: step time (CUDA events around dispatch -> experts -> combine, median
of ``--iters`` after ``--warmup``; phases too), received rows, valid rows,
pairs computed, peak memory (``torch.cuda.max_memory_allocated`` reset per
case, absolute and above the weights). Every DeepEP variant the cases need
(6 buckets + the capacity) is loaded or compiled BEFORE any timing (~12 s each
when cold), into the jitcache root ``--cache-dir`` (``EP_JIT_CACHE_DIR`` =
``<root>/deep_ep``), shared with ``readiness.py`` / ``runtime_overhead.py``.

How this differs from vLLM's 100.7 ms -> 16.4 ms (DeepSeek-V4-Flash, GB200 x4,
dp=4 EP, whole decode step): one GPU (EP1, so R = 1 and dispatch/combine are
local copies), one MoE layer (not a model's tens of layers plus attention),
DeepSeek-V3's MoE shape, random weights and uniformly random top-8 routing.

    python benchmarks/decode_moe_step.py --cache-dir ROOT --out DIR   # ~1-3 min (~1.5 min more if cold)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import machine_facts, say, write_result  # noqa: E402

os.environ.setdefault("JITCACHE_STATS", "0")

PROFILE = "h200-ep1"
SIZES = (1, 4, 16, 64, 256, 1024)
CAPACITY = 8192
HIDDEN, INTER, NUM_EXPERTS, NUM_TOPK = 7168, 2048, 256, 8
MODES = ("valid", "as_received")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data: dict = {
            "benchmark": "decode_moe_step", "profile": PROFILE, "machine": machine_facts(), "ok": False,
            "setting": {"ep_size": 1, "capacity_max_num_batched_tokens": CAPACITY, "hidden": HIDDEN,
                        "moe_intermediate": INTER, "num_experts": NUM_EXPERTS, "num_topk": NUM_TOPK,
                        "dtype": "bf16", "routing": "uniformly random distinct top-8 per token, weights U(0,1)",
                        "unbounded": "num_max_tokens_per_rank=None (buffer capacity 8192)",
                        "bucketed": "num_max_tokens_per_rank=BucketPolicy(8192).bucket(n)",
                        "modes": {"valid": "rows past DeepEP's received count (read on the GPU) are dropped",
                                  "as_received": "every row of recv_x is taken as received; slots naming no "
                                                 "local expert are skipped"},
                        "differs_from_vllm": "vLLM 100.7 -> 16.4 ms: DeepSeek-V4-Flash, GB200 x4, dp=4 EP, whole "
                                             "decode step. Here: one H200, EP1 (R=1), one MoE layer, DeepSeek-V3 "
                                             "MoE shape, random weights and routing"},
            "iters": args.iters, "warmup": args.warmup, "variants": [], "cases": [], "errors": []}
        self.out_dir = Path(args.out) if args.out else None

    def save(self) -> Path:
        return write_result("decode_moe_step", self.data, machine="h200", out_dir=self.out_dir)

    def error(self, where: str, exc: BaseException) -> None:
        self.data["errors"].append({"where": where, "error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc()})
        say(f"{where}: {type(exc).__name__}: {exc}")
        self.save()


def setup(bench: Bench):
    from jitcache.store.root import activate

    root = activate(bench.args.cache_dir)  # before deep_ep is imported: it reads EP_JIT_CACHE_DIR once
    import torch
    import torch.distributed as dist

    from jitcache.warm.live import _free_port, make_buffer
    from jitcache.planning.profiles import load_profile

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    probe = torch.ones(1, device="cuda")
    dist.all_reduce(probe)
    torch.cuda.synchronize()
    import deep_ep

    group = dist.group.WORLD
    try:  # the profile's buffer: the same kernels as `jitcache warmup --profile h200-ep1`, so entries are shared
        buffer = make_buffer(load_profile(PROFILE), group)
        how = "jitcache.warm.live.make_buffer(h200-ep1)"
    except Exception:  # noqa: BLE001
        buffer = deep_ep.EPBuffer(group, num_max_tokens_per_rank=CAPACITY, hidden=HIDDEN, num_topk=NUM_TOPK)
        how = "deep_ep.EPBuffer(group, num_max_tokens_per_rank=8192, hidden=7168, num_topk=8)"
    bench.data["environment"] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                                 "gpu": torch.cuda.get_device_name(0),
                                 "deep_ep": getattr(deep_ep, "__version__", "?"), "buffer": how,
                                 "cache_dir": str(root.path), "EP_JIT_CACHE_DIR": os.environ.get("EP_JIT_CACHE_DIR")}
    try:
        import triton
        bench.data["environment"]["triton"] = triton.__version__
    except ImportError:
        pass
    return root, torch, deep_ep, buffer


def make_inputs(torch, deep_ep, n: int, seed: int):
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    idx = torch.rand((n, NUM_EXPERTS), generator=g, device="cuda").topk(NUM_TOPK, dim=1).indices
    weights = torch.rand((n, NUM_TOPK), generator=g, device="cuda", dtype=torch.float32)
    x = torch.randn((n, HIDDEN), generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
    return x, idx.to(deep_ep.topk_idx_t), weights


def dispatch(buffer, x, idx, weights, nmax):
    return buffer.dispatch(x, topk_idx=idx, topk_weights=weights, num_experts=NUM_EXPERTS,
                           num_max_tokens_per_rank=nmax, expert_alignment=1, num_sms=0,
                           do_expand=False, do_cpu_sync=False)


def warm_variants(bench: Bench, root, torch, deep_ep, buffer) -> None:
    """Load or compile every DeepEP variant the cases use, before any timing."""
    from jitcache.planning.buckets import BucketPolicy
    from jitcache.store.deepep_cache import committed_entries

    policy = BucketPolicy(CAPACITY)
    values = [None] + sorted({policy.bucket(n) for n in bench.args.sizes})
    for nmax in values:
        n = 4 if nmax is None else nmax
        try:
            before = committed_entries("2.5", [root.deep_ep_dir])
            x, idx, w = make_inputs(torch, deep_ep, n, 1)
            t0 = time.perf_counter()
            out = dispatch(buffer, x, idx, w, nmax)
            buffer.combine(out[0], out[3], topk_weights=out[2])
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            new = sorted(committed_entries("2.5", [root.deep_ep_dir]) - before)
            bench.data["variants"].append({"num_max_tokens_per_rank": nmax, "seconds": round(seconds, 3),
                                           "new_entries": len(new), "recv_rows": int(out[0].shape[0])})
            say(f"variant nmax={nmax}: {'compiled' if new else 'cached'} in {seconds:.1f} s, "
                f"recv_x {tuple(out[0].shape)}")
        except Exception as exc:  # noqa: BLE001
            bench.error(f"warm nmax={nmax}", exc)
    bench.save()


def make_weights(torch):
    w1 = torch.empty((NUM_EXPERTS, HIDDEN, 2 * INTER), dtype=torch.bfloat16, device="cuda")
    w2 = torch.empty((NUM_EXPERTS, INTER, HIDDEN), dtype=torch.bfloat16, device="cuda")
    g = torch.Generator(device="cuda")
    g.manual_seed(7)
    for e in range(NUM_EXPERTS):  # per expert: no 22 GiB float32 temporary
        w1[e].normal_(0.0, HIDDEN ** -0.5, generator=g)
        w2[e].normal_(0.0, INTER ** -0.5, generator=g)
    torch.cuda.synchronize()
    return w1, w2


def kernel_check(bench: Bench, torch, deep_ep, buffer, w1, w2) -> None:
    """The bf16 Triton path against a float32 torch reference on real DeepEP output (n=4, bucketed)."""
    import _grouped_expert as ge

    try:
        x, idx, w = make_inputs(torch, deep_ep, 4, 3)
        recv_x, recv_idx, recv_w, handle, _ = dispatch(buffer, x, idx, w, 4)
        valid = handle.psum_num_recv_tokens_per_scaleup_rank[-1]
        got = ge.grouped_expert_mlp(recv_x, recv_idx, recv_w, w1, w2, valid).float()
        ref = ge.reference_mlp(recv_x, recv_idx, recv_w, w1, w2, int(valid.item()))
        err = (got - ref).abs().max().item()
        scale = ref.abs().max().item()
        bench.data["kernel_check"] = {"num_tokens": 4, "max_abs_err": err, "max_abs_ref": scale,
                                      "ok": bool(err <= 0.02 * scale + 1e-2)}
        say(f"kernel check: max |err| {err:.4g} vs max |ref| {scale:.4g}")
    except Exception as exc:  # noqa: BLE001
        bench.error("kernel_check", exc)


def run_case(bench: Bench, torch, deep_ep, buffer, w1, w2, n: int, setting: str, mode: str) -> dict:
    import _grouped_expert as ge
    from jitcache.planning.buckets import BucketPolicy

    nmax = None if setting == "unbounded" else BucketPolicy(CAPACITY).bucket(n)
    x, idx, w = make_inputs(torch, deep_ep, n, 100 + n)
    events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    last: dict = {}

    def step() -> None:
        events[0].record()
        recv_x, recv_idx, recv_w, handle, _ = dispatch(buffer, x, idx, w, nmax)
        events[1].record()
        valid = handle.psum_num_recv_tokens_per_scaleup_rank[-1] if mode == "valid" else None
        y = ge.grouped_expert_mlp(recv_x, recv_idx, recv_w, w1, w2, valid)
        events[2].record()
        buffer.combine(y, handle, topk_weights=recv_w)
        events[3].record()
        last.update(recv_x=recv_x, recv_idx=recv_idx, handle=handle, valid=valid)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    for _ in range(bench.args.warmup):
        step()
    torch.cuda.synchronize()
    times = {"step": [], "dispatch": [], "experts": [], "combine": []}
    for _ in range(bench.args.iters):
        step()
        events[3].synchronize()
        times["step"].append(events[0].elapsed_time(events[3]))
        times["dispatch"].append(events[0].elapsed_time(events[1]))
        times["experts"].append(events[1].elapsed_time(events[2]))
        times["combine"].append(events[2].elapsed_time(events[3]))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    handle = last["handle"]
    valid_rows = int(handle.psum_num_recv_tokens_per_scaleup_rank[-1].item())
    pairs = ge.count_pairs(last["recv_idx"], NUM_EXPERTS, last["valid"])
    case = {"num_tokens": n, "setting": setting, "mode": mode, "num_max_tokens_per_rank": nmax,
            "step_ms_median": round(statistics.median(times["step"]), 4),
            "step_ms_min": round(min(times["step"]), 4), "step_ms_max": round(max(times["step"]), 4),
            "dispatch_ms_median": round(statistics.median(times["dispatch"]), 4),
            "experts_ms_median": round(statistics.median(times["experts"]), 4),
            "combine_ms_median": round(statistics.median(times["combine"]), 4),
            "recv_rows": int(last["recv_x"].shape[0]), "valid_rows": valid_rows, "pairs_computed": pairs,
            "real_pairs": n * NUM_TOPK, "peak_memory_bytes": peak, "peak_memory_above_weights_bytes": peak - baseline}
    say(f"n={n:5d} {setting:9s} {mode:11s} step {case['step_ms_median']:8.3f} ms (experts "
        f"{case['experts_ms_median']:.3f}) recv_rows {case['recv_rows']} pairs {pairs} "
        f"peak+{(peak - baseline) / 2**30:.2f} GiB")
    return case


def summarize(bench: Bench) -> None:
    by = {(c["num_tokens"], c["setting"], c["mode"]): c for c in bench.data["cases"] if "step_ms_median" in c}
    rows = []
    for n in bench.args.sizes:
        for mode in MODES:
            u, b = by.get((n, "unbounded", mode)), by.get((n, "bucketed", mode))
            if u and b:
                rows.append({"num_tokens": n, "mode": mode, "unbounded_ms": u["step_ms_median"],
                             "bucketed_ms": b["step_ms_median"],
                             "speedup": round(u["step_ms_median"] / b["step_ms_median"], 2),
                             "unbounded_peak_above_weights_bytes": u["peak_memory_above_weights_bytes"],
                             "bucketed_peak_above_weights_bytes": b["peak_memory_above_weights_bytes"],
                             "unbounded_recv_rows": u["recv_rows"], "bucketed_recv_rows": b["recv_rows"]})
    bench.data["summary"] = rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="jitcache root (default: a new temporary one: all cold)")
    parser.add_argument("--out", default=None, help="directory for decode_moe_step.json (default: results/h200/)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split(",")), default=SIZES)
    parser.add_argument("--modes", type=lambda s: tuple(s.split(",")), default=MODES)
    args = parser.parse_args(argv)
    if args.cache_dir is None:
        args.cache_dir = tempfile.mkdtemp(prefix="jitcache-decode-step-")
    bench = Bench(args)
    t0 = time.perf_counter()
    try:
        root, torch, deep_ep, buffer = setup(bench)
        warm_variants(bench, root, torch, deep_ep, buffer)
        w1, w2 = make_weights(torch)
        bench.data["weights_bytes"] = w1.numel() * 2 + w2.numel() * 2
        kernel_check(bench, torch, deep_ep, buffer, w1, w2)
        bench.data["kernel"] = __import__("_grouped_expert").KERNEL_DESCRIPTION
        for n in args.sizes:
            for setting in ("bucketed", "unbounded"):
                for mode in args.modes:
                    try:
                        bench.data["cases"].append(run_case(bench, torch, deep_ep, buffer, w1, w2, n, setting, mode))
                    except Exception as exc:  # noqa: BLE001
                        bench.data["cases"].append({"num_tokens": n, "setting": setting, "mode": mode,
                                                    "error": f"{type(exc).__name__}: {exc}"})
                        bench.error(f"case n={n} {setting} {mode}", exc)
                    bench.save()
        summarize(bench)
        bench.data["ok"] = not bench.data["errors"]
    except BaseException as exc:  # noqa: BLE001 - the JSON is written whatever happens
        bench.error("setup", exc)
    bench.data["wall_seconds"] = round(time.perf_counter() - t0, 1)
    path = bench.save()
    for row in bench.data.get("summary", []):
        say(f"n={row['num_tokens']:5d} {row['mode']:11s} unbounded {row['unbounded_ms']:.3f} ms vs bucketed "
            f"{row['bucketed_ms']:.3f} ms: {row['speedup']}x")
    say(f"wrote {path}")
    os._exit(0 if bench.data["ok"] else 1)  # destroy_process_group aborts on DeepEP's communicator


if __name__ == "__main__":
    main()
