"""Recompile storm: how many DeepEP kernel variants a serving trace asks for, with and without bucketing.

Two random traces of per-step batch sizes (``--steps``, default 2,000):

- ``uniform``: uniform 1..cap;
- ``decode_heavy``: 90% decode steps, log-uniform 1..256 (skewed small), 10%
  prefill-sized steps, uniform 1024..cap.

Three ways of choosing ``num_max_tokens_per_rank`` per step:

- ``raw``: the batch size itself (no bucketing, what vLLM did before PR 46404);
- ``pow2``: ``BucketPolicy(cap)``;
- ``steps_per_octave=2``: ``BucketPolicy(cap, steps_per_octave=2)``.

For each: distinct values the trace asks for (each one a DeepEP JIT compile of
four kernels), the compile seconds they cost, and the padded-row overhead
``sum(value - n) / sum(n)``. Compile seconds are COMPUTED, not measured here:
distinct values x the mean per-variant compile time measured on the H200
(``benchmarks/results/h200/gpu_capture_cache.json``, decode steps). Without a
warmup they are paid on the serving path as the values first appear; with
``jitcache warmup`` every bucket of the policy is compiled before serving
(``warmup_compile_seconds_computed``) and the serving path compiles nothing.

Writes ``<out>/storm.json`` and ``<out>/storm.png`` (the plot needs matplotlib:
``pip install -e '.[bench]'``; without it the JSON is still written).

    python benchmarks/storm.py [--steps 2000] [--seed 0] [--cap 8192] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, machine_facts, machine_label, write_result  # noqa: E402

from jitcache.planning.buckets import BucketPolicy  # noqa: E402

CAPTURE = RESULTS / "h200" / "gpu_capture_cache.json"
FALLBACK_SECONDS = 12.25  # DESIGN.md: 14 pow2 buckets in 171.5 s on the H200; used only if the JSON is missing


def per_variant_compile_seconds(path: Path = CAPTURE) -> dict:
    """Mean seconds of a decode step that compiled a new ``num_max_tokens_per_rank`` (4 kernels) on the H200."""
    try:
        data = json.loads(path.read_text())
        steps = [s for s in data["steps"] if s["label"].startswith("decode nmax=") and len(s["new_entries"]) >= 4]
        seconds = [s["seconds"] for s in steps]
        return {"seconds": sum(seconds) / len(seconds), "samples": seconds,
                "source": str(path.relative_to(HERE.parent)), "machine": "h200",
                "deep_ep": data.get("device", {}).get("deep_ep", "2.5.0"),
                "what": "first dispatch+combine of a new num_max_tokens_per_rank (dispatch, dispatch_copy_epilogue, "
                        "combine, combine_reduce_epilogue), EP1, hidden 7168, top-8, 256 experts"}
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return {"seconds": FALLBACK_SECONDS, "samples": [], "source": "DESIGN.md (171.5 s / 14 buckets)",
                "machine": "h200", "deep_ep": "2.5.0"}


def trace_uniform(rng: random.Random, steps: int, cap: int) -> list[int]:
    return [rng.randint(1, cap) for _ in range(steps)]


def trace_decode_heavy(rng: random.Random, steps: int, cap: int) -> list[int]:
    decode_max = min(256, cap)
    prefill_min = min(1024, cap)
    sizes = []
    for _ in range(steps):
        if rng.random() < 0.9:
            sizes.append(min(decode_max, int(math.exp(rng.random() * math.log(decode_max + 1)))) or 1)
        else:
            sizes.append(rng.randint(prefill_min, cap))
    return sizes


TRACES = {
    "uniform": ("uniform 1..cap", trace_uniform),
    "decode_heavy": ("90% decode log-uniform 1..256, 10% prefill uniform 1024..cap", trace_decode_heavy),
}


def policies(cap: int) -> dict:
    return {"raw": None, "pow2": BucketPolicy(cap), "steps_per_octave=2": BucketPolicy(cap, steps_per_octave=2)}


def evaluate(sizes: list[int], policy: BucketPolicy | None, seconds: float) -> dict:
    choose = (lambda n: n) if policy is None else policy.bucket
    values = [choose(n) for n in sizes]
    seen: set[int] = set()
    first_seen_steps = []
    for step, value in enumerate(values):
        if value not in seen:
            seen.add(value)
            first_seen_steps.append(step)
    padded = sum(v - n for v, n in zip(values, sizes))
    result = {
        "distinct_num_max_tokens_per_rank": len(seen),
        "serving_path_compile_seconds_computed_no_warmup": round(len(seen) * seconds, 1),
        "padded_rows": padded,
        "real_rows": sum(sizes),
        "padded_row_overhead": round(padded / sum(sizes), 4),
        "first_seen_steps": first_seen_steps,
    }
    if policy is None:
        result["possible_values"] = max(sizes)
        result["warmup_compile_seconds_computed"] = None
        result["serving_path_compile_seconds_with_warmup"] = None
    else:
        result["possible_values"] = len(policy)
        result["buckets"] = list(policy.buckets())
        result["warmup_compile_seconds_computed"] = round(len(policy) * seconds, 1)
        result["serving_path_compile_seconds_with_warmup"] = 0.0
        result["max_padding_ratio"] = round(policy.max_padding_ratio, 4)
    return result


def plot(data: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    seconds = data["per_variant_compile_seconds"]["seconds"]
    fig, axes = plt.subplots(1, len(data["traces"]), figsize=(6 * len(data["traces"]), 4.2), squeeze=False)
    for ax, (name, trace) in zip(axes[0], data["traces"].items()):
        steps = trace["steps"]
        for label, result in trace["policies"].items():
            xs, ys = [0], [0.0]
            for i, step in enumerate(result["first_seen_steps"], 1):
                xs += [step, step]
                ys += [ys[-1], i * seconds]
            xs.append(steps)
            ys.append(ys[-1])
            ax.plot(xs, ys, label=f"{label}: {result['distinct_num_max_tokens_per_rank']} variants, "
                                  f"padding {100 * result['padded_row_overhead']:.0f}%")
        ax.set_title(f"{name}: {trace['description']}", fontsize=9)
        ax.set_xlabel("serving step")
        ax.set_ylabel("DeepEP JIT seconds on the serving path (computed)")
        ax.set_yscale("symlog", linthresh=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Recompile storm without a warmup: {data['per_variant_compile_seconds']['seconds']:.1f} s per "
                 f"new num_max_tokens_per_rank (measured on H200, DeepEP 2.5), cap {data['cap']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=int, default=8192, help="max_num_batched_tokens (profile h200-ep1: 8192)")
    parser.add_argument("--out", type=Path, default=None, help="directory (default: benchmarks/results/<machine>/)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    compile_time = per_variant_compile_seconds()
    seconds = compile_time["seconds"]
    data: dict = {"benchmark": "storm", "profile": "h200-ep1", "cap": args.cap, "steps": args.steps,
                  "seed": args.seed, "machine": machine_facts(), "deep_ep": compile_time["deep_ep"],
                  "compile_seconds_label": "computed: distinct values x measured per-variant compile time",
                  "per_variant_compile_seconds": compile_time, "traces": {}}
    for index, (name, (description, make)) in enumerate(TRACES.items()):
        sizes = make(random.Random(args.seed * 1000 + index), args.steps, args.cap)
        trace = {"description": description, "steps": len(sizes), "distinct_batch_sizes": len(set(sizes)),
                 "mean_batch_size": round(sum(sizes) / len(sizes), 1), "policies": {}}
        for label, policy in policies(args.cap).items():
            trace["policies"][label] = evaluate(sizes, policy, seconds)
        data["traces"][name] = trace
        for label, r in trace["policies"].items():
            print(f"{name:13s} {label:19s} {r['distinct_num_max_tokens_per_rank']:5d} variants  "
                  f"{r['serving_path_compile_seconds_computed_no_warmup']:8.1f} s JIT (computed)  "
                  f"padding {100 * r['padded_row_overhead']:5.1f}%", flush=True)
    folder = args.out or RESULTS / machine_label()
    folder.mkdir(parents=True, exist_ok=True)
    if not args.no_plot:
        problem = plot(data, folder / "storm.png")
        data["plot"] = problem or "storm.png"
    path = write_result("storm", data, out_dir=folder)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
