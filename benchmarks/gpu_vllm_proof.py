"""GPU proof of issue 13 on one H200 with DeepEP 2.1 (ElasticBuffer), driven as vLLM 0.33 drives it (EP1).

Profile ``h200-ep1-vllm``: the rig's DeepSeek-V3 MoE shape with vLLM 0.33's
buffer flags (``allow_hybrid_mode``, ``prefer_overlap_with_compute``,
``allow_multiple_reduction`` all false, as with ``VLLM_DEEPEP_V2_*`` unset).
Each phase runs in its own process; the parent imports neither torch nor
deep_ep and merges what they wrote into ``<out>/vllm_proof.json``:

1. ``live``: the live warmup of item 2, twice from empty caches in the same
   run: ``jitcache warmup -p h200-ep1-vllm --format json`` (with its nvcc
   precompile) and ``--no-precompile`` (DeepEP 2.1 alone). Wall times,
   ``missed_by_live``, and whether each stdout parses with ``json.loads``
   (item 4: DeepEP's prints go to stderr).
2. ``aot``: ``jitcache warmup --aot -p h200-ep1-vllm --format json`` into a
   third empty root (DeepEP 2.1 rules), the cache the trace then serves from.
3. ``trace``: a new process, jitcache enabled only through the plugin:
   ``JITCACHE_PROFILE=h200-ep1-vllm JITCACHE_STRICT=1``, ``plugin.register()``
   before ``import deep_ep``; the buffer built with vLLM's keywords; 2,000
   steps of random sizes 1..8192, each inside a forward-context stand-in
   carrying ``dp_metadata`` (``benchmarks/_vllm_context.py``), dispatched
   exactly as vLLM does (``x=``, ``num_max_tokens_per_rank`` = its power of
   two, ``do_expand=False, do_cpu_sync=False, async_with_compute_stream=False``)
   and again straight to DeepEP with the bucket: new cache entries (expected
   0), misses (0), refusals (0), bit-equality of received rows and combined
   output (``_common.compare_with_direct``).

Usage (on the H200 rig, repository root, DeepEP 2.1 importable:
``source /tmp/gpu-rig/env.sh; export PYTHONPATH=/tmp/gpu-rig/site21:$PYTHONPATH``)::

    python benchmarks/gpu_vllm_proof.py --out "$OUT"

The trace loop (:func:`run_trace`) also runs on CPU with the DeepEP test double
(``tests/test_gpu_vllm_proof_cpu.py``). torch and deep_ep are imported inside the phases.
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
from pathlib import Path
from typing import Any, Callable

PROFILE = "h200-ep1-vllm"
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import _vllm_context  # noqa: E402
from _common import run_phase as _run_phase, say  # noqa: E402

#: vLLM 0.33's ElasticBuffer keywords (all2all.py), with VLLM_DEEPEP_V2_* unset.
VLLM_BUFFER_FLAGS = {"allow_hybrid_mode": False, "prefer_overlap_with_compute": False,
                     "allow_multiple_reduction": False, "explicitly_destroy": True}


def trace_sizes(steps: int, seed: int, cap: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, cap) for _ in range(steps)]


def vllm_pow2(n: int) -> int:
    """vLLM 0.33's ``num_max_tokens_per_rank`` for ``n`` DP-uniform tokens (no clamp)."""
    return 1 << max(n - 1, 0).bit_length()


def vllm_dispatch(buffer: Any, x: Any, topk_idx: Any, topk_weights: Any, num_experts: int, n: int) -> Any:
    """``DeepEPV2PrepareAndFinalize._do_dispatch`` in CUDA-graph (decode) mode, inside a forward context."""
    with _vllm_context.set_forward_context([n]):
        return buffer.dispatch(x=x, topk_idx=topk_idx, topk_weights=topk_weights, num_experts=num_experts,
                               num_max_tokens_per_rank=vllm_pow2(n), do_expand=False, do_cpu_sync=False,
                               async_with_compute_stream=False)


def run_trace(buffer: Any, profile: Any, sizes: list[int], make_inputs: Callable[[int, int], tuple],
              compare: Callable[..., dict], entries: Callable[[], frozenset], sync: Callable[[], None] = lambda: None,
              log_every: int = 250) -> dict:
    """The trace: each step as vLLM dispatches it (through the plugin's patch) and straight to DeepEP."""
    from jitcache.adapters.base import original_dispatch
    from jitcache.runtime.install import installed, installed_stats

    if installed() is None:
        raise RuntimeError("the plugin did not install: is JITCACHE_PROFILE set and deep_ep imported after "
                           "plugin.register()?")
    direct_dispatch = original_dispatch(buffer)
    policy, experts = profile.policy, profile.model.num_experts
    before = entries()
    counts = {"steps": 0, "recv_equal": 0, "combined_equal": 0, "errors": 0, "refused": 0}
    mismatches: list[dict] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    for step, n in enumerate(sizes):
        try:
            x, idx, weights = make_inputs(n, step)
            bucketed = vllm_dispatch(buffer, x, idx, weights, experts, n)
            direct = direct_dispatch(x=x, topk_idx=idx, topk_weights=weights, num_experts=experts,
                                     num_max_tokens_per_rank=policy.bucket(n), do_expand=False, do_cpu_sync=False,
                                     async_with_compute_stream=False)
            c1 = buffer.combine(bucketed[0], bucketed[3], topk_weights=bucketed[2])
            c2 = buffer.combine(direct[0], direct[3], topk_weights=direct[2])
            sync()
            same = compare(bucketed, direct, c1, c2)
            recv_ok = same["recv_equal"] and same["valid_rows"] == [n, n]  # EP1: every token arrives
            counts["steps"] += 1
            counts["recv_equal"] += recv_ok
            counts["combined_equal"] += same["combined_equal"]
            if not (recv_ok and same["combined_equal"]) and len(mismatches) < 10:
                mismatches.append({"step": step, "num_tokens": n, "bucket": policy.bucket(n), **same})
        except Exception as exc:  # noqa: BLE001 - record and go on
            refused = type(exc).__name__ == "ColdVariantError"
            counts["refused" if refused else "errors"] += 1
            if len(errors) < 5:
                errors.append(f"step {step} n={n}: {type(exc).__name__}: {exc}")
        if log_every and step % log_every == 0:
            say(f"trace step {step}/{len(sizes)} n={n} vllm={vllm_pow2(n)} bucket={policy.bucket(n)} {counts}")
    snap = installed_stats().snapshot()
    new = sorted(entries() - before)
    steps = len(sizes)
    return {**counts, "seconds": time.perf_counter() - t0, "new_cache_entries": new, "misses": snap.total_misses,
            "stats_refused": snap.total_refused, "calls_per_bucket": {str(b): c for b, c in snap.calls},
            "real_rows": snap.real_rows, "padded_rows": snap.padded_rows, "mismatches": mismatches,
            "errors_first": errors,
            "passed": (not new and snap.total_misses == 0 and counts["steps"] == steps
                       and counts["recv_equal"] == steps and counts["combined_equal"] == steps)}


# -- phases (each in its own process) ---------------------------------------------------------


def _environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        import deep_ep
        info["deep_ep_module"] = deep_ep.__file__
        info["deep_ep_has_elastic_buffer"] = hasattr(deep_ep, "ElasticBuffer")
    except Exception as exc:  # noqa: BLE001
        info["deep_ep_error"] = repr(exc)
    return info


def _cli(*args: str, env: dict | None = None, timeout: float = 900) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jitcache.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    result: dict = {"argv": list(args), "exit_code": proc.returncode, "wall_seconds": time.perf_counter() - t0,
                    "stderr_tail": proc.stderr[-3000:]}
    try:
        result["json"] = json.loads(proc.stdout)
        result["stdout_is_json"] = True
    except ValueError as exc:
        result["stdout_is_json"] = False
        result["stdout_head"] = proc.stdout[:2000]
        result["json_error"] = str(exc)
    return result


def phase_live(args: argparse.Namespace) -> dict:
    result: dict = {"environment": _environment()}
    for name, extra in (("with_precompile", ()), ("deep_ep_alone", ("--no-precompile",))):
        root = tempfile.mkdtemp(prefix=f"jitcache-vllm-{name}-")
        say(f"live warmup {name} into {root} ...")
        run = _cli("warmup", "-p", PROFILE, "--cache-dir", root, "--format", "json", *extra,
                   env={"EP_JIT_CACHE_DIR": f"{root}/deep_ep"})
        report = run.get("json") or {}
        run["summary"] = {"steps": report.get("totals", {}).get("steps"),
                          "compiled_steps": report.get("totals", {}).get("compiled"),
                          "live_seconds": report.get("seconds"), "precompile": report.get("precompile")}
        run.pop("json", None)
        result[name] = run
    pre = (result["with_precompile"]["summary"].get("precompile") or {})
    result["missed_by_live"] = pre.get("missed_by_live")
    return result


def phase_aot(args: argparse.Namespace) -> dict:
    run = _cli("warmup", "--aot", "-p", PROFILE, "--cache-dir", args.cache_dir, "--jobs", str(args.jobs),
               "--format", "json")
    data = run.pop("json", None) or {}
    run["totals"] = data.get("totals")
    run["deep_ep_api"] = data.get("deep_ep_api")
    return run


def phase_trace(args: argparse.Namespace) -> dict:
    from jitcache.store.root import activate

    root = activate(args.cache_dir)  # EP_JIT_CACHE_DIR before deep_ep is imported
    os.environ.update(JITCACHE_PROFILE=PROFILE, JITCACHE_STRICT="1")
    _vllm_context.install()
    from jitcache import plugin

    plugin.register()  # what vLLM does in the worker, before its all2all manager imports deep_ep
    import deep_ep
    import torch
    import torch.distributed as dist

    from jitcache.planning.profiles import load_profile
    from jitcache.store.deepep_cache import committed_entries
    from jitcache.warm.live import init_single_rank_group
    from _common import compare_with_direct

    init_single_rank_group(0)
    profile = load_profile(PROFILE)
    m = profile.model
    buffer = deep_ep.ElasticBuffer(dist.group.WORLD, num_max_tokens_per_rank=profile.serving.max_num_batched_tokens,
                                   hidden=m.hidden, num_topk=m.num_topk, use_fp8_dispatch=False, **VLLM_BUFFER_FLAGS)
    vllm_num_sms = buffer.get_theoretical_num_sms(m.num_experts, m.num_topk)  # vLLM calls it after building

    def make_inputs(n: int, step: int) -> tuple:
        g = torch.Generator(device="cuda")
        g.manual_seed(10_000 + step)
        idx = torch.rand((n, m.num_experts), generator=g, device="cuda").topk(m.num_topk, dim=1).indices
        weights = torch.rand((n, m.num_topk), generator=g, device="cuda", dtype=torch.float32)
        x = torch.randn((n, m.hidden), generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
        return x, idx.to(torch.int64), weights

    result = run_trace(buffer, profile, trace_sizes(args.steps, args.seed, profile.serving.max_num_batched_tokens),
                       make_inputs, compare_with_direct, lambda: committed_entries("2.1", [root.deep_ep_dir]),
                       torch.cuda.synchronize)
    result.update(environment=_environment(), vllm_num_sms=vllm_num_sms,
                  num_allocated_qps=getattr(buffer, "num_allocated_qps", None))
    buffer.destroy()
    return result


PHASES = {"live": phase_live, "aot": phase_aot, "trace": phase_trace}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for vllm_proof.json")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1313)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--phases", default="live,aot,trace")
    parser.add_argument("--cache-dir", default=None, help="the AOT/trace jitcache root (default: a new empty one)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", help=argparse.SUPPRESS)
    parser.add_argument("--phase-timeout-s", type=float, default=900.0)
    args = parser.parse_args(argv)
    if args.phase:
        _run_phase(PHASES, args)
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="jitcache-vllm-proof-")
    proof: dict = {"profile": PROFILE, "cache_dir": cache_dir, "steps": args.steps, "seed": args.seed,
                   "started": time.time(), "phases": {}}
    env = {**os.environ, "JITCACHE_STATS": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("EP_JIT_CACHE_DIR", None)
    for phase in args.phases.split(","):
        say(f"phase {phase} ...")
        phase_out = out / f"vllm_proof.{phase}.json"
        t0 = time.perf_counter()
        cmd = [sys.executable, str(HERE), "--phase", phase, "--phase-out", str(phase_out), "--cache-dir", cache_dir,
               "--steps", str(args.steps), "--seed", str(args.seed), "--jobs", str(args.jobs)]
        try:
            code = subprocess.run(cmd, env=env, timeout=args.phase_timeout_s).returncode
            data = json.loads(phase_out.read_text()) if phase_out.exists() else {"ok": False}
            data["exit_code"] = code
        except subprocess.TimeoutExpired:
            data = {"ok": False, "error": f"timed out after {args.phase_timeout_s} s"}
        data["phase_wall_seconds"] = time.perf_counter() - t0
        proof["phases"][phase] = data
        (out / "vllm_proof.json").write_text(json.dumps(proof, indent=2, default=str))
    phases = proof["phases"]
    live, trace = phases.get("live", {}), phases.get("trace", {})
    proof["summary"] = {
        "live_missed_by_live": live.get("missed_by_live"),
        "live_with_precompile_seconds": live.get("with_precompile", {}).get("wall_seconds"),
        "live_deep_ep_alone_seconds": live.get("deep_ep_alone", {}).get("wall_seconds"),
        "live_stdout_is_json": [live.get(k, {}).get("stdout_is_json") for k in ("with_precompile", "deep_ep_alone")],
        "aot_totals": phases.get("aot", {}).get("totals"),
        "trace_new_cache_entries": len(trace["new_cache_entries"]) if "new_cache_entries" in trace else None,
        "trace_misses": trace.get("misses"), "trace_refused": trace.get("refused"),
        "trace_passed": trace.get("passed"),
    }
    (out / "vllm_proof.json").write_text(json.dumps(proof, indent=2, default=str))
    say(f"wrote {out / 'vllm_proof.json'}: {json.dumps(proof['summary'], default=str)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
