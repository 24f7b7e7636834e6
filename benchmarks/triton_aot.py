"""Triton kernels through the AOT pool: a few MoE-style kernels x every bucket of a profile, no GPU.

Compiles three small kernels (defined below, registered with
``jitcache.triton.register``) for the profile's target into an empty cache,
then runs the same warmup again (everything must be cached). Writes
``benchmarks/results/<machine>/triton_aot.json``: planning time (Triton's
own binder + cache key per bucket), wall time of the cold and warm runs,
per-entry compile seconds, which buckets share an entry.

    python benchmarks/triton_aot.py [--profile h200-ep1] [--jobs N] [--machine NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import triton
import triton.language as tl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jitcache.triton as jt  # noqa: E402
from jitcache.warm.aot import warmup_aot  # noqa: E402
from jitcache.planning.profiles import load_profile  # noqa: E402
from jitcache.store.root import resolve_root  # noqa: E402
from jitcache.build.triton_aot import jobs_for_triton  # noqa: E402
from jitcache.planning.variants import plan  # noqa: E402

HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOPK = 7168, 2048, 256, 8


@triton.jit
def expert_histogram(topk_ids_ptr, counts_ptr, num_tokens, NUM_TOPK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_tokens * NUM_TOPK
    experts = tl.load(topk_ids_ptr + offs, mask=mask, other=0)
    tl.atomic_add(counts_ptr + experts, 1, mask=mask)


@triton.jit
def silu_and_mul(x_ptr, out_ptr, num_rows, d, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (row < num_rows) & (col < d)
    gate = tl.load(x_ptr + row * 2 * d + col, mask=mask).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * d + d + col, mask=mask).to(tl.float32)
    tl.store(out_ptr + row * d + col, (gate * tl.sigmoid(gate) * up).to(tl.bfloat16), mask=mask)


@triton.jit
def weighted_combine(y_ptr, w_ptr, out_ptr, num_tokens, hidden, NUM_TOPK: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (token < num_tokens) & (col < hidden)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(NUM_TOPK):
        w = tl.load(w_ptr + token * NUM_TOPK + k)
        acc += w * tl.load(y_ptr + (token * NUM_TOPK + k) * hidden + col, mask=mask).to(tl.float32)
    tl.store(out_ptr + token * hidden + col, acc.to(tl.bfloat16), mask=mask)


def register_kernels() -> None:
    jt.register(expert_histogram, lambda n: {"topk_ids_ptr": "*i32", "counts_ptr": "*i32", "num_tokens": n,
                                             "NUM_TOPK": TOPK, "BLOCK": 1024}, num_warps=4)
    # Rows are the bucket times top-k (expanded layout), decode-sized buckets use fewer warps.
    jt.register(silu_and_mul, lambda n: {"x_ptr": "*bf16", "out_ptr": "*bf16", "num_rows": n * TOPK,
                                         "d": INTERMEDIATE, "BLOCK": 1024, "num_warps": 4 if n < 64 else 8})
    jt.register(weighted_combine, lambda n: {"y_ptr": "*bf16", "w_ptr": "*fp32", "out_ptr": "*bf16",
                                             "num_tokens": n, "hidden": HIDDEN, "NUM_TOPK": TOPK, "BLOCK": 512})


def main() -> int:
    from _common import machine_facts, write_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="h200-ep1")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--machine", default=None, help="results folder name (default: this machine's label)")
    args = parser.parse_args()

    register_kernels()
    the_plan = plan(load_profile(args.profile))
    buckets = sorted({nmax for _, nmax in the_plan.steps()})
    start = time.perf_counter()
    jobs = jobs_for_triton(jt.registered(), buckets, the_plan.profile.target.arch)
    planning = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="jitcache-triton-bench-") as tmp:
        root = resolve_root(Path(tmp) / "root")
        cold = warmup_aot(the_plan, None, root, jobs=(), extra_jobs=jobs, num_workers=args.jobs)
        warm = warmup_aot(the_plan, None, root, jobs=(), extra_jobs=jobs, num_workers=args.jobs)
    data = {
        "benchmark": "triton_aot",
        "profile": args.profile, "arch": the_plan.profile.target.arch, "buckets": buckets,
        "triton_version": triton.__version__, "jobs": args.jobs, "machine": machine_facts(),
        "kernels": [k.name for k in jt.registered()],
        "kernel_bucket_pairs": len(jt.registered()) * len(buckets), "entries": len(jobs),
        "planning_seconds": round(planning, 3),
        "cold": {"wall_seconds": round(cold.wall_seconds, 3), "compile_seconds": round(cold.compile_seconds, 3),
                 "totals": cold.to_dict()["totals"]},
        "warm": {"wall_seconds": round(warm.wall_seconds, 3), "totals": warm.to_dict()["totals"]},
        "per_entry": [{"kernel": r.family, "label": r.label, "status": r.status, "seconds": round(r.seconds, 3)}
                      for r in cold.results],
        "note": "each entry is compiled by its own Python worker process (import of triton + the kernel's "
                "module + triton.compile); 'seconds' includes that start-up",
    }
    path = write_result("triton_aot", data, machine=args.machine)
    sys.stderr.write(f"{len(jobs)} entries ({data['kernel_bucket_pairs']} kernel x bucket pairs): cold "
                     f"{cold.wall_seconds:.1f} s, warm {warm.wall_seconds:.2f} s, planning {planning:.1f} s -> {path}\n")
    return 0 if cold.ok and warm.count("cached") == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
