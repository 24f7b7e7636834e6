"""Eight `jitcache warmup --aot` processes warming one cache at once: each variant compiled exactly once.

Starts N real `jitcache warmup --aot` processes (default 8) on the same empty
cache root at the same moment, counts the nvcc compiles they actually ran
(every compile appends a line to ``$JITCACHE_COMPILE_LOG``; no mock of the
compiler), and checks the cache holds each planned entry once, committed.
Writes ``benchmarks/results/<machine>/aot_concurrent.json``.

    python benchmarks/aot_concurrent.py [--processes 8] [--profile h200-ep1] [--deep-ep-include PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SDIST = REPO.parent / "shared" / "gpu" / "deepinfer_ep-2.5.0.tar.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--profile", default="h200-ep1")
    parser.add_argument("--jobs-per-process", type=int, default=1)
    parser.add_argument("--deep-ep-include", default=str(SDIST) if SDIST.is_file() else None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jitcache-aot-concurrent-"))
    root, log = work / "root", work / "compiles.log"
    cmd = [sys.executable, "-m", "jitcache.cli", "warmup", "--aot", "-p", args.profile, "--cache-dir", str(root),
           "--jobs", str(args.jobs_per_process), "--format", "json"]
    if args.deep_ep_include:
        cmd += ["--deep-ep-include", args.deep_ep_include]
    env = {**os.environ, "JITCACHE_COMPILE_LOG": str(log)}
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(args.processes)]
    outputs = [p.communicate() for p in procs]
    wall = time.perf_counter() - start

    reports = []
    for proc, (stdout, stderr) in zip(procs, outputs):
        try:
            reports.append(json.loads(stdout))
        except ValueError:
            reports.append({"error": stderr[-2000:]})
    compiles = Counter(line.split()[1] for line in log.read_text().splitlines()) if log.exists() else Counter()
    cache = root / "deep_ep" / "cache"
    entries = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
    committed = [e for e in entries if (cache / e / ".committed").is_file()]
    planned = {r["entry"] for rep in reports if "results" in rep for r in rep["results"]}
    result = {
        "benchmark": "aot_concurrent",
        "profile": args.profile,
        "machine": machine_facts(),
        "processes": args.processes,
        "jobs_per_process": args.jobs_per_process,
        "wall_seconds": round(wall, 2),
        "exit_codes": [p.returncode for p in procs],
        "planned_entries": len(planned),
        "compiles_counted": sum(compiles.values()),
        "entries_compiled_more_than_once": sorted(e for e, n in compiles.items() if n > 1),
        "entries_in_cache": len(entries),
        "entries_committed": len(committed),
        "every_variant_compiled_once": (sum(compiles.values()) == len(planned) == len(committed)
                                        and all(n == 1 for n in compiles.values())),
        "per_process_totals": [rep.get("totals", rep.get("error")) for rep in reports],
    }
    path = write_result("aot_concurrent", result, out_dir=args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "per_process_totals"}, indent=2))
    print(f"wrote {path}")
    return 0 if result["every_variant_compiled_once"] and not any(result["exit_codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
