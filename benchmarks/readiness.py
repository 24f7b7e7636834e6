"""Readiness: how long until a new worker has every planned DeepEP variant of h200-ep1 loaded.

Each phase runs in its own process (a new worker is literally a new process;
the parent imports neither torch nor deep_ep) and writes its JSON; the parent
merges them into ``<out>/readiness.json`` after every phase.

1. ``cold_live``: ``jitcache.warm.live.live_warmup_cli`` from an empty jitcache
   root A (``--cache-dir``): DeepEP JIT-compiles all 14 buckets (~172 s measured).
   Skipped when ``--cold-live-json`` names the JSON of such a run in this
   session (readiness.json, live_proof.json or a warmup report) and A already
   covers the plan; the number is then taken from that file.
2. ``aot``: ``jitcache.build.pool.warmup_aot`` with ``--jobs`` nvcc processes (16 on the
   H200 host) into an empty root B; the toolchain is the device's own (nvcc,
   the installed DeepEP's headers, ``EP_NCCL_ROOT_DIR``), and, where A holds a
   dispatch entry DeepEP wrote, its recorded flags and compiler text
   (learn-from-live, ``--aot-learn auto``).
3. ``aot_live_pass``: a new process, ``live_warmup_cli`` on B: it must compile
   nothing (the proof that DeepEP finds the AOT entries). It stops at the first
   step that compiles, so a digest mismatch costs ~12 s, not ~3 min.
4. ``warm_live``: a new process, ``live_warmup_cli`` on the populated A: the
   readiness of a worker that starts on a shipped or persistent cache.

For every live phase: the process's wall time (spawn to result, including
torch/NCCL/DeepEP start-up) and the warmup's own seconds, compiled/cached counts.

    python benchmarks/readiness.py --cache-dir ROOT_A --out DIR [--jobs 16] [--cold-live-json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(REPO))
from _common import run_phase as _run_phase, machine_facts, say, write_result  # noqa: E402

PROFILE = "h200-ep1"
INCLUDE_CANDIDATES = ("/tmp/gpu-rig/src/deepinfer_ep-2.5.0/deep_ep/include",
                      str(REPO / ".gpu" / "deps" / "deepinfer_ep-2.5.0.tar.gz"),
                      str(REPO.parent / "shared" / "gpu" / "deepinfer_ep-2.5.0.tar.gz"))


# -- phases (each in its own process) ------------------------------------------------------------


def _coverage(root_path: str) -> dict:
    from jitcache.planning.profiles import load_profile
    from jitcache.store.root import resolve_root
    from jitcache.store.scan import coverage, scan_deep_ep
    from jitcache.planning.variants import plan

    root = resolve_root(root_path)
    entries, _ = scan_deep_ep(root.deep_ep_dir, check_cubins=False)
    cov = coverage(plan(load_profile(PROFILE)), entries)
    return {**cov.to_dict(), "complete": cov.complete}


def phase_live(args: argparse.Namespace) -> dict:
    import torch
    import torch.distributed as dist

    from jitcache.warm.live import COMPILED, _free_port, live_warmup_cli

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    probe = torch.ones(1, device="cuda")
    dist.all_reduce(probe)
    steps: list[dict] = []

    def progress(event) -> None:
        if event.result is None:
            return
        r = event.result
        steps.append({"num_max_tokens_per_rank": r.num_max_tokens_per_rank, "status": r.status,
                      "seconds": round(r.seconds, 3)})
        say(f"  {event.done}/{event.total} nmax={r.num_max_tokens_per_rank} {r.status} {r.seconds:.2f}s")
        if args.stop_on_compile and r.status == COMPILED:
            raise RuntimeError(f"num_max_tokens_per_rank={r.num_max_tokens_per_rank} was compiled: DeepEP did not "
                               "find this variant in the cache (stopped to save the other compiles)")

    result: dict = {"cache_dir": args.cache_dir, "steps": steps}
    t0 = time.perf_counter()
    # precompile=False: these phases measure DeepEP's own path (its JIT, or its loading of entries already there);
    # the live warmup's nvcc pass is measured by benchmarks/cli_live_warmup.py.
    report = live_warmup_cli(PROFILE, cache_dir=args.cache_dir, progress=progress, precompile=False)
    result["call_seconds"] = time.perf_counter() - t0
    data = report.to_dict()
    result["warmup_seconds"] = report.seconds
    result["totals"] = data["totals"]
    result["compiled"] = report.num_compiled
    result["cached"] = report.num_cached
    import deep_ep
    result["deep_ep"] = getattr(deep_ep, "__version__", "?")
    result["gpu"] = torch.cuda.get_device_name(0)
    result["coverage"] = _coverage(args.cache_dir)
    return result


def _toolchain(args: argparse.Namespace, learn_root: str | None):
    from jitcache.errors import JitCacheError
    from jitcache.build.toolchain import learn_from_entry, resolve_toolchain

    tried = []
    toolchain = None
    for include in ([args.deep_ep_include] if args.deep_ep_include else [None, *INCLUDE_CANDIDATES]):
        try:
            toolchain = resolve_toolchain(deep_ep_include=include)
            break
        except JitCacheError as exc:
            tried.append(f"{include or 'installed deep_ep'}: {exc}")
    if toolchain is None:
        raise RuntimeError("no DeepEP 2.5 headers: " + "; ".join(tried))
    learned = None
    if learn_root and args.aot_learn == "auto":
        cache = Path(learn_root) / "deep_ep" / "cache"
        for entry in sorted(cache.glob("dispatch.*")) if cache.is_dir() else []:
            if (entry / "meta.json").is_file() and (entry / ".committed").is_file():
                toolchain = learn_from_entry(toolchain, entry)
                learned = str(entry)
                break
    return toolchain, learned, tried


def phase_aot(args: argparse.Namespace) -> dict:
    from jitcache.warm.aot import warmup_aot
    from jitcache.planning.profiles import load_profile
    from jitcache.store.root import resolve_root
    from jitcache.planning.variants import plan

    toolchain, learned, tried = _toolchain(args, args.learn_root)
    the_plan = plan(load_profile(PROFILE))
    root = resolve_root(args.cache_dir).ensure()
    t0 = time.perf_counter()
    report = warmup_aot(the_plan, toolchain, root, num_workers=args.jobs, distributed=False)
    wall = time.perf_counter() - t0
    data = report.to_dict()
    return {"cache_dir": args.cache_dir, "jobs": args.jobs, "num_variants": len(the_plan), "wall_seconds": wall,
            "totals": data["totals"], "ok": report.ok, "learned_from_entry": learned,
            "toolchain": toolchain.to_dict(), "include_attempts": tried,
            "failed": [r.to_dict() for r in report.failed][:5], "coverage": _coverage(args.cache_dir)}


PHASES = {"live": phase_live, "aot": phase_aot}


def run_phase(args: argparse.Namespace) -> None:
    _run_phase(PHASES, args)
    os._exit(0)  # never destroy_process_group after DeepEP: it aborts ("corrupted comm object")


# -- the parent -----------------------------------------------------------------------------------


def cold_number_from(path: str) -> dict | None:
    """The cold live warmup's seconds from a JSON of this session: readiness.json, live_proof.json or a report."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(data.get("phases"), dict):
        phase = data["phases"].get("cold_live") or data["phases"].get("warmup") or {}
        if phase.get("reused_from"):
            return None
        seconds = phase.get("warmup_seconds") or phase.get("wall_seconds") or (phase.get("report") or {}).get("seconds")
        process = phase.get("process_seconds") or phase.get("phase_wall_seconds")
        if seconds:
            return {"warmup_seconds": seconds, "process_seconds": process, "reused_from": path}
    if "seconds" in data and "results" in data:  # a WarmupReport
        return {"warmup_seconds": data["seconds"], "process_seconds": None, "reused_from": path}
    return None


def spawn(args: argparse.Namespace, phase: str, name: str, cache_dir: str, out: Path, extra: list[str],
          timeout: float) -> dict:
    phase_out = out / f"readiness.{name}.json"
    cmd = [sys.executable, str(HERE), "--phase", phase, "--phase-out", str(phase_out), "--cache-dir", cache_dir,
           "--jobs", str(args.jobs), "--aot-learn", args.aot_learn, *extra]
    if args.deep_ep_include:
        cmd += ["--deep-ep-include", args.deep_ep_include]
    env = {**os.environ, "JITCACHE_STATS": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("EP_JIT_CACHE_DIR", None)  # each phase points DeepEP at its own root
    say(f"phase {name} ({phase}) on {cache_dir} ...")
    t0 = time.perf_counter()
    try:
        code = subprocess.run(cmd, env=env, timeout=timeout).returncode
        data = json.loads(phase_out.read_text()) if phase_out.exists() else {"ok": False, "error": "no phase JSON"}
        data["exit_code"] = code
    except subprocess.TimeoutExpired:
        data = {"ok": False, "error": f"timed out after {timeout} s"}
    except Exception as exc:  # noqa: BLE001
        data = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    data["process_seconds"] = round(time.perf_counter() - t0, 2)
    say(f"phase {name}: ok={data.get('ok')} process {data['process_seconds']} s"
        + (f", warmup {data['warmup_seconds']:.2f} s, compiled {data.get('compiled')}" if "warmup_seconds" in data
           else "") + (f", error {data['error']}" if data.get("error") else ""))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="jitcache root A for the live warmups (default: new temp)")
    parser.add_argument("--aot-cache-dir", default=None, help="jitcache root B for the AOT warmup (default: new temp)")
    parser.add_argument("--out", default=None, help="directory for readiness.json (default: results/h200/)")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--cold-live-json", default=None)
    parser.add_argument("--aot-learn", choices=("auto", "never"), default="auto")
    parser.add_argument("--deep-ep-include", default=None)
    parser.add_argument("--skip-aot", action="store_true")
    parser.add_argument("--phase-timeout-s", type=float, default=300.0)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", help=argparse.SUPPRESS)
    parser.add_argument("--learn-root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stop-on-compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        run_phase(args)
        return 0

    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / "h200"
    out.mkdir(parents=True, exist_ok=True)
    root_a = args.cache_dir or tempfile.mkdtemp(prefix="jitcache-ready-a-")
    root_b = args.aot_cache_dir or tempfile.mkdtemp(prefix="jitcache-ready-b-")
    data: dict = {"benchmark": "readiness", "profile": PROFILE, "machine": machine_facts(), "root_a": root_a,
                  "root_b": root_b, "jobs": args.jobs, "phases": {}}

    def save() -> None:
        write_result("readiness", data, out_dir=out)

    try:
        reused = cold_number_from(args.cold_live_json) if args.cold_live_json else None
        covered = False
        if reused:
            try:
                covered = bool(_coverage(root_a).get("complete"))
            except Exception:  # noqa: BLE001
                covered = False
        if reused and covered:
            data["phases"]["cold_live"] = reused
            say(f"cold live warmup: reusing {reused['warmup_seconds']:.1f} s from {args.cold_live_json}")
        else:
            if args.cold_live_json:
                data["cold_live_json_not_used"] = ("unreadable" if not reused else
                                                   f"{root_a} does not cover the plan: ran the cold warmup")
            data["phases"]["cold_live"] = spawn(args, "live", "cold_live", root_a, out, [], args.phase_timeout_s)
        save()
        if not args.skip_aot:
            data["phases"]["aot"] = spawn(args, "aot", "aot", root_b, out, ["--learn-root", root_a],
                                          args.phase_timeout_s)
            save()
            if data["phases"]["aot"].get("ok"):
                data["phases"]["aot_live_pass"] = spawn(args, "live", "aot_live_pass", root_b, out,
                                                        ["--stop-on-compile"], args.phase_timeout_s)
            else:
                data["phases"]["aot_live_pass"] = {"ok": False, "error": "skipped: the AOT phase failed"}
            save()
        data["phases"]["warm_live"] = spawn(args, "live", "warm_live", root_a, out, ["--stop-on-compile"],
                                            args.phase_timeout_s)
    except BaseException as exc:  # noqa: BLE001
        data["error"] = f"{type(exc).__name__}: {exc}"
        data["traceback"] = traceback.format_exc()
    p = data["phases"]
    cold, aot, aot_pass, warm = (p.get(k, {}) for k in ("cold_live", "aot", "aot_live_pass", "warm_live"))
    data["summary"] = {
        "cold_live_warmup_seconds": cold.get("warmup_seconds"),
        "cold_live_process_seconds": cold.get("process_seconds"),
        "cold_live_reused_from": cold.get("reused_from"),
        "aot_wall_seconds": aot.get("wall_seconds"),
        "aot_process_seconds": aot.get("process_seconds"),
        "aot_jobs": args.jobs,
        "aot_learned_from_live_entry": bool(aot.get("learned_from_entry")),
        "aot_live_pass_compiled": aot_pass.get("compiled"),
        "aot_live_pass_process_seconds": aot_pass.get("process_seconds"),
        "warm_live_warmup_seconds": warm.get("warmup_seconds"),
        "warm_live_process_seconds": warm.get("process_seconds"),
        "warm_live_compiled": warm.get("compiled"),
        "deep_ep": warm.get("deep_ep") or cold.get("deep_ep"),
        "gpu": warm.get("gpu") or cold.get("gpu"),
    }
    save()
    say("summary: " + json.dumps(data["summary"]))
    return 0 if all(v.get("ok", True) for v in p.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
