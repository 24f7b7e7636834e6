"""What jitcache adds to every dispatch: ``BucketPolicy.bucket`` and ``BucketedDispatcher.dispatch``.

CPU part (``--part cpu``, runs anywhere, CI runs it with tiny counts):

- ``BucketPolicy.bucket`` per call (pow2, and steps_per_octave=2), goal < 1 us;
- ``BucketedDispatcher.dispatch`` over a no-op buffer (a class named ``EPBuffer``
  with DeepEP 2.5's ``dispatch`` signature that returns at once) against calling
  that buffer's ``dispatch`` directly with the same ``num_max_tokens_per_rank``:
  the per-call difference is jitcache's whole Python cost (bucket, warm check,
  stats counters, argument rewrite).

GPU part (``--part gpu``, the H200 rig, real DeepEP 2.5, EP1, profile h200-ep1):
``BucketedDispatcher(strict=True).dispatch`` + combine against
``buffer.dispatch(num_max_tokens_per_rank=bucket(n))`` + combine, in interleaved
blocks of ``--gpu-calls`` calls, synchronised per block; per-call difference
in microseconds, and as a share of the MoE decode step measured by
``decode_moe_step.py`` (``--step-json``) when given.

    python benchmarks/runtime_overhead.py --part cpu [--calls 200000] [--out DIR]
    python benchmarks/runtime_overhead.py --part gpu --cache-dir ROOT [--step-json decode_moe_step.json] --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import timeit
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, machine_facts, machine_label, say, write_result  # noqa: E402

os.environ.setdefault("JITCACHE_STATS", "0")  # no stats files from a benchmark

from jitcache.planning.buckets import BucketPolicy  # noqa: E402

PROFILE = "h200-ep1"
SIZES = (1, 4, 16, 64, 256, 1024)


# -- CPU ------------------------------------------------------------------------------------------


class Shape:
    def __init__(self, rows: int) -> None:
        self.shape = (rows, 7168)


class EPBuffer:
    """A no-op stand-in with DeepEP 2.5's ``dispatch`` signature (recognised by class name)."""

    _RESULT = (None, None, None, None, None)

    def dispatch(self, x, topk_idx=None, topk_weights=None, cumulative_local_expert_recv_stats=None,
                 num_experts=None, num_max_tokens_per_rank=None, expert_alignment=None, num_sms=0, num_qps=0,
                 previous_event=None, async_with_compute_stream=False, allocate_on_comm_stream=False,
                 handle=None, do_handle_copy=False, do_cpu_sync=None, do_expand=False, do_zero_padding=False,
                 use_tma_aligned_col_major_sf=False, defer_epilogue=False):
        return self._RESULT

    def combine(self, x, handle, topk_weights=None, **kwargs):
        return None, None, None


def _best_per_call(stmt: str, env: dict, calls: int, repeat: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=1, repeat=repeat)) / calls


def cpu_part(calls: int, repeat: int) -> dict:
    from jitcache.runtime.dispatcher import BucketedDispatcher

    rng = random.Random(0)
    sizes = [rng.randint(0, 8192) for _ in range(calls)]
    result: dict = {"calls": calls, "repeat": repeat, "goal_ns_per_bucket_call": 1000, "bucket": {}}
    empty = _best_per_call("for n in sizes: pass", {"sizes": sizes}, calls, repeat)
    for label, policy in (("pow2 cap 8192", BucketPolicy(8192)),
                          ("steps_per_octave=2 cap 8192", BucketPolicy(8192, steps_per_octave=2))):
        per_call = _best_per_call("for n in sizes: bucket(n)", {"sizes": sizes, "bucket": policy.bucket}, calls,
                                  repeat) - empty
        result["bucket"][label] = {"ns_per_call": round(per_call * 1e9, 1), "num_buckets": len(policy)}
        say(f"BucketPolicy.bucket {label}: {per_call * 1e9:.1f} ns/call")

    policy = BucketPolicy(8192)
    buffer = EPBuffer()
    dispatcher = BucketedDispatcher(buffer, policy, strict=True, warm=policy.buckets())
    xs = [Shape(max(n, 1)) for n in sizes]
    kw = {"topk_idx": None, "topk_weights": None, "num_experts": 256, "expert_alignment": 1, "num_sms": 0,
          "do_expand": False, "do_cpu_sync": False}
    direct_env = {"xs": xs, "d": buffer.dispatch, "b": policy.bucket, "kw": kw}
    wrapped_env = {"xs": xs, "d": dispatcher.dispatch, "kw": kw}
    direct = _best_per_call("for x in xs: d(x, num_max_tokens_per_rank=b(x.shape[0]), **kw)", direct_env, calls,
                            repeat)
    direct_raw = _best_per_call("for x in xs: d(x, num_max_tokens_per_rank=x.shape[0], **kw)", direct_env, calls,
                                repeat)
    wrapped = _best_per_call("for x in xs: d(x, **kw)", wrapped_env, calls, repeat)
    result["dispatch_noop_buffer"] = {
        "direct_ns_per_call": round(direct_raw * 1e9, 1),
        "direct_with_caller_bucketing_ns_per_call": round(direct * 1e9, 1),
        "bucketed_dispatcher_ns_per_call": round(wrapped * 1e9, 1),
        "overhead_ns_per_call": round((wrapped - direct_raw) * 1e9, 1),
        "what": "BucketedDispatcher(strict=True, all buckets warm).dispatch(x, **kw) vs buffer.dispatch(x, "
                "num_max_tokens_per_rank=n, **kw) on a no-op EPBuffer; the difference is jitcache's Python cost",
    }
    say(f"dispatch on a no-op buffer: direct {direct_raw * 1e9:.0f} ns, dispatcher {wrapped * 1e9:.0f} ns, "
        f"overhead {(wrapped - direct_raw) * 1e9:.0f} ns/call")
    return result


# -- GPU ------------------------------------------------------------------------------------------


def _step_times(step_json: str | None) -> dict[int, float]:
    if not step_json:
        return {}
    try:
        data = json.loads(Path(step_json).read_text())
        out = {}
        for case in data.get("cases", []):
            if case.get("setting") == "bucketed" and case.get("mode") == "valid" and "step_ms_median" in case:
                out[int(case["num_tokens"])] = case["step_ms_median"]
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def gpu_part(args: argparse.Namespace) -> dict:
    from jitcache.store.root import activate

    root = activate(args.cache_dir)
    import torch
    import torch.distributed as dist

    from jitcache.runtime.dispatcher import BucketedDispatcher
    from jitcache.warm.live import _free_port, make_buffer
    from jitcache.planning.profiles import load_profile

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    probe = torch.ones(1, device="cuda")
    dist.all_reduce(probe)
    import deep_ep

    profile = load_profile(PROFILE)
    m = profile.model
    buffer = make_buffer(profile, dist.group.WORLD)
    policy = profile.policy
    result: dict = {"cache_dir": str(root.path), "deep_ep": getattr(deep_ep, "__version__", "?"),
                    "gpu": torch.cuda.get_device_name(0), "calls_per_block": args.gpu_calls,
                    "blocks": args.gpu_blocks, "cases": []}
    dispatcher = BucketedDispatcher(buffer, profile, strict=True, warm=None)  # warm set from a cache scan
    result["warm_buckets_from_scan"] = sorted(dispatcher.warm_buckets)
    steps = _step_times(args.step_json)
    for n in SIZES:
        case: dict = {"num_tokens": n, "bucket": policy.bucket(n)}
        try:
            g = torch.Generator(device="cuda")
            g.manual_seed(n)
            idx = torch.rand((n, m.num_experts), generator=g, device="cuda").topk(m.num_topk, dim=1).indices
            idx = idx.to(deep_ep.topk_idx_t)
            weights = torch.rand((n, m.num_topk), generator=g, device="cuda")
            x = torch.randn((n, m.hidden), generator=g, device="cuda").to(torch.bfloat16)
            kw = {"topk_idx": idx, "topk_weights": weights, "num_experts": m.num_experts, "expert_alignment": 1,
                  "num_sms": 0, "do_expand": False, "do_cpu_sync": False}
            bucket = policy.bucket(n)

            def direct():
                out = buffer.dispatch(x, num_max_tokens_per_rank=bucket, **kw)
                buffer.combine(out[0], out[3], topk_weights=out[2])

            def wrapped():
                out = dispatcher.dispatch(x, **kw)
                dispatcher.combine(out[0], out[3], topk_weights=out[2])

            for fn in (direct, wrapped):  # load the variant (cached) and warm the allocator
                for _ in range(5):
                    fn()
            torch.cuda.synchronize()
            blocks = {"direct": [], "dispatcher": []}
            for _ in range(args.gpu_blocks):
                for name, fn in (("direct", direct), ("dispatcher", wrapped)):
                    t0 = time.perf_counter()
                    for _ in range(args.gpu_calls):
                        fn()
                    torch.cuda.synchronize()
                    blocks[name].append((time.perf_counter() - t0) / args.gpu_calls)
            d_us = statistics.median(blocks["direct"]) * 1e6
            w_us = statistics.median(blocks["dispatcher"]) * 1e6
            case.update({"direct_us_per_call": round(d_us, 2), "dispatcher_us_per_call": round(w_us, 2),
                         "overhead_us_per_call": round(w_us - d_us, 2),
                         "what": "dispatch + combine per call, host wall clock over a block, synchronised per block"})
            step = steps.get(n)
            if step:
                case["moe_step_ms"] = step
                case["overhead_share_of_step"] = round((w_us - d_us) / (step * 1000.0), 5)
            say(f"n={n}: direct {d_us:.1f} us, dispatcher {w_us:.1f} us, overhead {w_us - d_us:+.1f} us"
                + (f" = {100 * case['overhead_share_of_step']:.2f}% of a {step:.3f} ms MoE step" if step else ""))
        except Exception as exc:  # noqa: BLE001 - record and go on
            case["error"] = f"{type(exc).__name__}: {exc}"
            case["traceback"] = traceback.format_exc()
            say(f"n={n}: {case['error']}")
        result["cases"].append(case)
    snap = dispatcher.stats()
    result["dispatcher_misses"] = snap.total_misses
    result["dispatcher_refused"] = snap.total_refused
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--calls", type=int, default=200_000, help="CPU: calls per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="CPU: timing runs (best is kept)")
    parser.add_argument("--gpu-calls", type=int, default=200)
    parser.add_argument("--gpu-blocks", type=int, default=7)
    parser.add_argument("--cache-dir", default=None, help="GPU: the jitcache root holding the warmed variants")
    parser.add_argument("--step-json", default=None, help="GPU: decode_moe_step.json, for the share of the step")
    parser.add_argument("--out", type=Path, default=None, help="directory (default: benchmarks/results/<machine>/)")
    args = parser.parse_args(argv)

    name = f"runtime_overhead_{args.part}"
    data: dict = {"benchmark": name, "profile": PROFILE, "machine": machine_facts(), "ok": False}
    folder = args.out or RESULTS / machine_label()
    try:
        if args.part == "cpu":
            data.update(cpu_part(args.calls, args.repeat))
        else:
            data.update(gpu_part(args))
        data["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - the JSON is written whatever happens
        data["error"] = f"{type(exc).__name__}: {exc}"
        data["traceback"] = traceback.format_exc()
        say(f"failed: {data['error']}")
    path = write_result(name, data, out_dir=folder)
    say(f"wrote {path}")
    if args.part == "gpu":
        os._exit(0 if data["ok"] else 1)  # destroy_process_group aborts on DeepEP's communicator
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
