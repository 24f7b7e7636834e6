"""AOT warmup of a whole profile from an empty cache: wall time, per-variant compile times, machine facts.

Writes ``benchmarks/results/<machine>/aot_warmup.json``. Runs anywhere nvcc
runs (no GPU). Inputs: DeepEP 2.5 headers (default: the sdist in
``../shared/gpu/``), NCCL headers (default: the nvidia-nccl-cu13 package or
``$EP_NCCL_ROOT_DIR``).

    python benchmarks/aot_warmup.py [--profile h200-ep1] [--jobs N] [--machine NAME]
        [--deep-ep-include PATH] [--nccl-include DIR] [--target-nccl-include DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_label  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jitcache.warm.aot import warmup_aot  # noqa: E402
from jitcache.planning.profiles import load_profile  # noqa: E402
from jitcache.store.root import resolve_root  # noqa: E402
from jitcache.build.toolchain import release_line, resolve_toolchain  # noqa: E402
from jitcache.planning.variants import plan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="h200-ep1")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--machine", default=os.environ.get("JITCACHE_MACHINE") or machine_label())
    parser.add_argument("--deep-ep-include", default=str(REPO.parent / "shared" / "gpu" / "deepinfer_ep-2.5.0.tar.gz"))
    parser.add_argument("--nccl-include", default=None)
    parser.add_argument("--target-nccl-include", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    profile = load_profile(args.profile)
    the_plan = plan(profile)
    toolchain = resolve_toolchain(deep_ep_include=args.deep_ep_include, nccl_include=args.nccl_include,
                                  target_nccl_include=args.target_nccl_include)
    cache_dir = Path(tempfile.mkdtemp(prefix="jitcache-aot-bench-"))
    try:
        start = time.perf_counter()
        report = warmup_aot(the_plan, toolchain, resolve_root(cache_dir), num_workers=args.jobs)
        wall = time.perf_counter() - start
        again_start = time.perf_counter()
        again = warmup_aot(the_plan, toolchain, resolve_root(cache_dir), num_workers=args.jobs)
        again_wall = time.perf_counter() - again_start
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    per_variant = sorted((r.seconds for r in report.results if r.status == "compiled"))
    result = {
        "benchmark": "aot_warmup",
        "profile": profile.name,
        "machine": args.machine,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "nvcc": release_line(toolchain.nvcc_version_output),
        "deep_ep_api": toolchain.deep_ep_api,
        "jobs": args.jobs,
        "num_variants": len(the_plan),
        "wall_seconds": round(wall, 2),
        "compile_seconds_sum": round(sum(per_variant), 2),
        "compile_seconds_min_median_max": [round(per_variant[0], 2), round(per_variant[len(per_variant) // 2], 2),
                                           round(per_variant[-1], 2)] if per_variant else None,
        "overhead_vs_sum_over_jobs": round(wall - sum(per_variant) / max(1, args.jobs), 2),
        "totals": report.to_dict()["totals"],
        "second_run_wall_seconds": round(again_wall, 3),
        "second_run_totals": again.to_dict()["totals"],
        "per_variant": [{"entry": r.entry, "label": r.label, "status": r.status, "seconds": round(r.seconds, 2)}
                        for r in report.results],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = args.out or REPO / "benchmarks" / "results" / args.machine / "aot_warmup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_variant"}, indent=2))
    return 0 if report.ok else 1


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


if __name__ == "__main__":
    raise SystemExit(main())
