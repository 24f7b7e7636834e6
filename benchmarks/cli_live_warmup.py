"""`jitcache warmup --profile PROFILE` as a user runs it (the live warmup, on one GPU), from an empty cache and again.

Each run is the CLI in a new process (``python -m jitcache.cli warmup --format json``):
its wall time from spawn to exit, the CPU seconds of the process tree
(``getrusage(RUSAGE_CHILDREN)`` around it: the CLI, nvcc and DeepEP's own JIT), and
the CLI's JSON report (the precompile's counts, every live step's compiled/cached
status). ``--no-precompile`` adds a third run into another empty cache: DeepEP
compiling every kernel itself, the live warmup as it was before the nvcc pass.

Needs a GPU and DeepEP (on the rig: ``source /tmp/gpu-rig/env.sh`` and the
``jitcache/cli`` / ``jitcache/cache_profiles`` links of ``run_gpu_multi.sh``)::

    python benchmarks/cli_live_warmup.py --profile h200-ep1 --out DIR [--no-precompile-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from _common import say  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(profile: str, cache_dir: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "jitcache.cli", "warmup", "--profile", profile, "--cache-dir", str(cache_dir),
           "--format", "json", *extra]
    env = {**os.environ, "JITCACHE_STATS": "0"}
    env.pop("EP_JIT_CACHE_DIR", None)  # the CLI points DeepEP at --cache-dir itself
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=560)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    result: dict = {"command": cmd, "exit_code": done.returncode, "wall_seconds": round(wall, 3),
                    "process_tree_cpu_seconds": round(cpu, 3), "stderr_tail": done.stderr[-3000:]}
    try:
        report = json.loads(done.stdout)
    except ValueError:
        result["stdout_tail"] = done.stdout[-3000:]
        return result
    totals = report.get("totals", {})
    pre = report.get("precompile") or {}
    result.update(report=report, live_steps=totals.get("steps"), live_steps_compiled=totals.get("compiled"),
                  live_seconds=totals.get("seconds"), precompile_status=pre.get("status"),
                  precompile_compiled=pre.get("compiled"), precompile_seconds=pre.get("wall_seconds"),
                  precompile_reason=pre.get("reason") or None)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="h200-ep1")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-precompile-baseline", action="store_true",
                        help="also run `warmup --no-precompile` into an empty cache (~3.5 min on an H200)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data: dict = {"benchmark": "cli_live_warmup", "profile": args.profile, "cpu_count": os.cpu_count(), "runs": {}}
    try:
        import torch
        data["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        import deep_ep
        data["deep_ep"] = getattr(deep_ep, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - recorded: the CLI runs say what failed
        data["environment_error"] = f"{type(exc).__name__}: {exc}"
    root = Path(tempfile.mkdtemp(prefix="jitcache-cli-warmup-"))
    runs = [("cold", root / "a", ()), ("warm", root / "a", ())]
    if args.no_precompile_baseline:
        runs.append(("cold_no_precompile", root / "b", ("--no-precompile",)))
    for name, cache, extra in runs:
        say(f"{name}: jitcache warmup --profile {args.profile} {' '.join(extra)} into {cache}")
        data["runs"][name] = run_cli(args.profile, cache, *extra)
        r = data["runs"][name]
        say(f"{name}: exit {r['exit_code']}, {r['wall_seconds']:.1f} s wall, precompile {r.get('precompile_status')} "
            f"({r.get('precompile_compiled')} compiled), live steps compiled {r.get('live_steps_compiled')}")
        (out / "cli_live_warmup.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    runs_ok = all(r["exit_code"] == 0 for r in data["runs"].values())
    cold, warm = data["runs"]["cold"], data["runs"]["warm"]
    data["summary"] = {
        "ok": runs_ok,
        "cold_wall_seconds": cold["wall_seconds"], "cold_precompile_compiled": cold.get("precompile_compiled"),
        "cold_live_steps_compiled": cold.get("live_steps_compiled"),
        "cold_process_tree_cpu_seconds": cold["process_tree_cpu_seconds"],
        "warm_wall_seconds": warm["wall_seconds"], "warm_live_steps_compiled": warm.get("live_steps_compiled"),
    }
    base = data["runs"].get("cold_no_precompile")
    if base:
        data["summary"].update(no_precompile_wall_seconds=base["wall_seconds"],
                               no_precompile_live_steps_compiled=base.get("live_steps_compiled"),
                               no_precompile_process_tree_cpu_seconds=base["process_tree_cpu_seconds"])
    (out / "cli_live_warmup.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    say(f"summary: {json.dumps(data['summary'])}")
    return 0 if runs_ok else 1


if __name__ == "__main__":
    sys.exit(main())
