"""GPU proof of issue 4 on one H200 with real DeepEP 2.5 (EP1, profile h200-ep1).

Three phases, each in its own process (so "a new process" is literally true and
one failure does not lose the others); the parent imports neither torch nor
deep_ep and merges what the phases wrote into ``<out>/live_proof.json``:

1. ``warmup``: from an empty cache (a fresh temporary jitcache root, so an empty
   ``EP_JIT_CACHE_DIR``), ``jitcache.warm.live.live_warmup_cli("h200-ep1")``: the
   report, every step's compiled/cached status, and whether the cache now covers
   the whole plan (``jitcache.store.scan.coverage``).
2. ``trace``: a new process, 2,000 decode steps with random batch sizes 1..8192
   through ``BucketedDispatcher(strict=True)`` and, for each step, the same call
   straight to DeepEP with the same ``num_max_tokens_per_rank``: new cache
   entries, misses, and bit-equality (``torch.equal``) of recv_x /
   recv_topk_idx / recv_topk_weights (valid rows, put in source-token order,
   since arrival order across SMs is not part of DeepEP's contract without
   ``deterministic=True``; the raw positional comparison is recorded too) and of
   the combined output.
3. ``raw``: a new process, the same trace's first 20 distinct sizes passed raw
   (no bucketing): compiles and seconds each, and the full trace's cost
   *extrapolated* from them (labelled as such).

Usage (on the H200 rig, repository root, DeepEP 2.5 importable)::

    python benchmarks/gpu_live_proof.py --out "$OUT"

Expected: ~3.2 min warmup + ~0.6 min trace + ~4.2 min raw (capped by --raw-budget-s): ~8 min.
Importable without a GPU: torch and deep_ep are imported inside the phases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PROFILE = "h200-ep1"
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from _common import compare_with_direct, run_phase as _run_phase, say  # noqa: E402


def trace_sizes(steps: int, seed: int, cap: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, cap) for _ in range(steps)]


# -- phases (each runs in its own process) ----------------------------------------------------


def _environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        import deep_ep
        info["deep_ep"] = getattr(deep_ep, "__version__", "?")
        info["deep_ep_module"] = deep_ep.__file__
    except Exception as exc:  # noqa: BLE001
        info["deep_ep_error"] = repr(exc)
    return info


def phase_warmup(args: argparse.Namespace) -> dict:
    from jitcache.store.deepep_cache import committed_entries
    from jitcache.warm.live import live_warmup_cli
    from jitcache.planning.profiles import load_profile
    from jitcache.store.root import resolve_root
    from jitcache.store.scan import coverage, scan_deep_ep
    from jitcache.planning.variants import plan

    root = resolve_root(args.cache_dir)
    result: dict = {"cache_dir": str(root.path)}
    before = committed_entries("2.5", [root.deep_ep_dir])
    result["entries_before"] = len(before)

    def progress(event) -> None:
        if event.result is not None:
            r = event.result
            say(f"warmup {event.done}/{event.total} nmax={r.num_max_tokens_per_rank} {r.status} "
                f"{r.seconds:.1f}s entries={len(r.entries_written)} eta={event.eta or 0:.0f}s")

    t0 = time.perf_counter()
    # precompile=False: the proof of issue 4 is DeepEP compiling every variant itself (run before the nvcc pass existed)
    report = live_warmup_cli(PROFILE, cache_dir=root.path, progress=progress, precompile=False)
    result["wall_seconds"] = time.perf_counter() - t0
    result["report"] = report.to_dict()
    result["environment"] = _environment()
    after = committed_entries("2.5", [root.deep_ep_dir])
    result["entries_after"] = len(after)
    entries, _ = scan_deep_ep(root.deep_ep_dir, check_cubins=True)
    cov = coverage(plan(load_profile(PROFILE)), entries)
    result["plan_coverage"] = cov.to_dict()
    result["every_variant_compiled"] = (report.num_compiled == len(report.results) and cov.complete)
    return result


def _setup(cache_dir: str):
    """Activate the jitcache root, start an EP1 NCCL group, build the buffer as the warmup did."""
    from jitcache.store.root import activate

    root = activate(cache_dir)
    import torch
    import torch.distributed as dist
    from jitcache.warm.live import init_single_rank_group, make_buffer
    from jitcache.planning.profiles import load_profile

    init_single_rank_group(0)
    profile = load_profile(PROFILE)
    buffer = make_buffer(profile, dist.group.WORLD)
    return root, profile, buffer


def _inputs(n: int, step: int, profile):
    import torch

    g = torch.Generator(device="cuda")
    g.manual_seed(10_000 + step)
    m = profile.model
    idx = torch.rand((n, m.num_experts), generator=g, device="cuda").topk(m.num_topk, dim=1).indices.to(torch.int64)
    weights = torch.rand((n, m.num_topk), generator=g, device="cuda", dtype=torch.float32)
    x = torch.randn((n, m.hidden), generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
    return x, idx, weights


def phase_trace(args: argparse.Namespace) -> dict:
    import torch

    from jitcache.runtime.dispatcher import BucketedDispatcher
    from jitcache.store.deepep_cache import committed_entries, warm_buckets_from_cache
    from jitcache.warm.live import load_report

    root, profile, buffer = _setup(args.cache_dir)
    policy = profile.policy
    result: dict = {"steps_planned": args.steps, "environment": _environment()}
    scanned = warm_buckets_from_cache("2.5", [root.deep_ep_dir], profile)
    report = load_report(profile, root.path)
    result["scan_warm_buckets"] = sorted(scanned)
    result["report_warm_buckets"] = sorted(report.warm_buckets())
    warm = None if scanned == report.warm_buckets() else report
    result["dispatcher_warm_source"] = "cache scan" if warm is None else "warmup report (scan disagreed)"
    dispatcher = BucketedDispatcher(buffer, profile, strict=True, warm=warm)
    before = committed_entries("2.5", [root.deep_ep_dir])
    counts = {"steps": 0, "recv_equal": 0, "recv_raw_positional_equal": 0, "combined_equal": 0, "errors": 0}
    first_errors: list[str] = []
    mismatches: list[dict] = []
    t0 = time.perf_counter()
    for step, n in enumerate(trace_sizes(args.steps, args.seed, policy.max_num_batched_tokens)):
        try:
            x, idx, weights = _inputs(n, step, profile)
            kw = {"topk_idx": idx, "topk_weights": weights, "num_experts": profile.model.num_experts,
                  "expert_alignment": profile.deep_ep.expert_alignment, "num_sms": profile.deep_ep.num_sms,
                  "do_expand": False, "do_cpu_sync": False}
            bucketed = dispatcher.dispatch(x, **kw)
            direct = buffer.dispatch(x, num_max_tokens_per_rank=policy.bucket(n), **kw)
            c1 = dispatcher.combine(bucketed[0], bucketed[3], topk_weights=bucketed[2])
            c2 = buffer.combine(direct[0], direct[3], topk_weights=direct[2])
            torch.cuda.synchronize()
            same = compare_with_direct(bucketed, direct, c1, c2)
            recv_ok = same["recv_equal"] and same["valid_rows"] == [n, n]  # EP1: every token arrives
            raw_ok, comb_ok = same["recv_raw_positional_equal"], same["combined_equal"]
            counts["steps"] += 1
            counts["recv_equal"] += recv_ok
            counts["recv_raw_positional_equal"] += raw_ok
            counts["combined_equal"] += comb_ok
            if not (recv_ok and comb_ok) and len(mismatches) < 10:
                mismatches.append({"step": step, "num_tokens": n, "bucket": policy.bucket(n),
                                   "valid_rows": same["valid_rows"], "recv_equal": recv_ok, "combined_equal": comb_ok})
        except Exception as exc:  # noqa: BLE001 - record and go on
            counts["errors"] += 1
            if len(first_errors) < 5:
                first_errors.append(f"step {step} n={n}: {type(exc).__name__}: {exc}")
        if step % 250 == 0:
            say(f"trace step {step}/{args.steps} n={n} bucket={policy.bucket(n)} {counts}")
    result["seconds"] = time.perf_counter() - t0
    after = committed_entries("2.5", [root.deep_ep_dir])
    snap = dispatcher.stats()
    result.update(counts)
    result["new_cache_entries"] = sorted(after - before)
    result["misses"] = snap.total_misses
    result["refused"] = snap.total_refused
    result["calls_per_bucket"] = {str(b): c for b, c in snap.calls}
    result["real_rows"], result["padded_rows"] = snap.real_rows, snap.padded_rows
    result["mismatches"] = mismatches
    result["errors_first"] = first_errors
    result["all_bit_identical"] = (counts["steps"] == args.steps and counts["recv_equal"] == args.steps
                                   and counts["combined_equal"] == args.steps)
    buffer.destroy()
    return result


def phase_raw(args: argparse.Namespace) -> dict:
    import torch

    from jitcache.store.deepep_cache import committed_entries

    root, profile, buffer = _setup(args.cache_dir)
    sizes = trace_sizes(args.steps, args.seed, profile.policy.max_num_batched_tokens)
    distinct = list(dict.fromkeys(sizes))
    result: dict = {"trace_steps": len(sizes), "trace_distinct_sizes": len(distinct), "measured": []}
    deadline = time.perf_counter() + args.raw_budget_s
    for n in distinct[:args.raw_sizes]:
        if time.perf_counter() > deadline:
            result["stopped"] = f"--raw-budget-s={args.raw_budget_s} reached"
            break
        try:
            x, idx, weights = _inputs(n, n, profile)
            before = committed_entries("2.5", [root.deep_ep_dir])
            t0 = time.perf_counter()
            out = buffer.dispatch(x, topk_idx=idx, topk_weights=weights, num_experts=profile.model.num_experts,
                                  num_max_tokens_per_rank=n, expert_alignment=profile.deep_ep.expert_alignment,
                                  num_sms=profile.deep_ep.num_sms, do_expand=False, do_cpu_sync=False)
            buffer.combine(out[0], out[3], topk_weights=out[2])
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            new = sorted(committed_entries("2.5", [root.deep_ep_dir]) - before)
            result["measured"].append({"num_tokens": n, "seconds": seconds, "new_entries": len(new),
                                       "compiled": bool(new)})
            say(f"raw n={n}: {seconds:.1f}s, {len(new)} new entries")
        except Exception as exc:  # noqa: BLE001
            result["measured"].append({"num_tokens": n, "error": f"{type(exc).__name__}: {exc}"})
    ok = [m for m in result["measured"] if "seconds" in m]
    compiled = [m for m in ok if m["compiled"]]
    result["compiles"] = len(compiled)
    result["seconds_total"] = sum(m["seconds"] for m in ok)
    if compiled:
        mean = sum(m["seconds"] for m in compiled) / len(compiled)
        result["extrapolation"] = {
            "label": "EXTRAPOLATION, not measured: mean seconds per newly compiled size in this sample "
                     "x distinct sizes of the full trace",
            "mean_compile_seconds": mean,
            "distinct_sizes_in_trace": len(distinct),
            "estimated_compile_seconds_full_trace": mean * len(distinct),
        }
    buffer.destroy()
    return result


PHASES = {"warmup": phase_warmup, "trace": phase_trace, "raw": phase_raw}


def run_phase(args: argparse.Namespace) -> None:
    _run_phase(PHASES, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for live_proof.json")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--raw-sizes", type=int, default=20)
    parser.add_argument("--raw-budget-s", type=float, default=240.0)
    parser.add_argument("--cache-dir", default=None, help="jitcache root (default: a new empty temporary one)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", help=argparse.SUPPRESS)
    parser.add_argument("--phase-timeout-s", type=float, default=420.0)
    args = parser.parse_args(argv)
    if args.phase:
        run_phase(args)
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="jitcache-live-proof-")
    proof: dict = {"profile": PROFILE, "cache_dir": cache_dir, "steps": args.steps, "seed": args.seed,
                   "started": time.time(), "phases": {}}
    env = {**os.environ, "JITCACHE_STATS": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("EP_JIT_CACHE_DIR", None)  # the phases point DeepEP at the temporary root themselves
    for phase in ("warmup", "trace", "raw"):
        say(f"phase {phase} ...")
        phase_out = out / f"live_proof.{phase}.json"
        t0 = time.perf_counter()
        cmd = [sys.executable, str(HERE), "--phase", phase, "--phase-out", str(phase_out), "--cache-dir", cache_dir,
               "--steps", str(args.steps), "--seed", str(args.seed), "--raw-sizes", str(args.raw_sizes),
               "--raw-budget-s", str(args.raw_budget_s)]
        try:
            code = subprocess.run(cmd, env=env, timeout=args.phase_timeout_s).returncode
            data = json.loads(phase_out.read_text()) if phase_out.exists() else {"ok": False}
            data["exit_code"] = code
        except subprocess.TimeoutExpired:
            data = {"ok": False, "error": f"timed out after {args.phase_timeout_s} s"}
        except Exception as exc:  # noqa: BLE001
            data = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        data["phase_wall_seconds"] = time.perf_counter() - t0
        proof["phases"][phase] = data
        (out / "live_proof.json").write_text(json.dumps(proof, indent=2, default=str))  # after every phase
    trace = proof["phases"].get("trace", {})
    proof["summary"] = {
        "warmup_every_variant_compiled": proof["phases"]["warmup"].get("every_variant_compiled"),
        "warmup_seconds": proof["phases"]["warmup"].get("wall_seconds"),
        "trace_new_cache_entries": len(trace["new_cache_entries"]) if "new_cache_entries" in trace else None,
        "trace_misses": trace.get("misses"),
        "trace_all_bit_identical": trace.get("all_bit_identical"),
        "raw_compiles": proof["phases"]["raw"].get("compiles"),
        "raw_seconds": proof["phases"]["raw"].get("seconds_total"),
        "raw_extrapolation": proof["phases"]["raw"].get("extrapolation"),
    }
    (out / "live_proof.json").write_text(json.dumps(proof, indent=2, default=str))
    say(f"wrote {out / 'live_proof.json'}: {json.dumps(proof['summary'], default=str)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
