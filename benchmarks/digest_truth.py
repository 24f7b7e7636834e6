"""Digest truth on CPU (issue 12): relocating h200-ep1's 57 entries, and coverage by name of a 1,000-entry cache.

- relocation: a cache holding the 57 entries of h200-ep1 (56 variants + the barrier) named for a build
  box's paths, with DeepEP's own cubins from tests/data, re-published under the names the serving
  DeepEP 2.5 (the H200 rig's paths) looks up; wall time of ``jitcache.store.relocate.relocate``
  (render, name, check each source, copy, fsync, rename), in a fresh process state each run
  (``cold``: the header hashes recomputed, ~0.1-0.3 s of pure-Python FNV-1a over DeepEP's
  headers, once per process) and with them memoised (``warm``); the copies are made durable by
  one ``syncfs`` before the renames (``of_which_syncfs_s``: that call alone, which also flushes what
  other processes left dirty on the filesystem);
- coverage by name: ``name_coverage`` of h200-ep1 over a cache of 1,000 entries (its 57, found,
  and 943 others), as a worker computes it at start (``report_unplanned=False``) and as ``inspect``
  does (every other entry's kernel.cu read).

Goals (the issue): relocation well under a second; coverage under 0.2 s. Writes
benchmarks/results/<machine>/digest_truth.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _common import machine_facts, write_result  # noqa: E402

from jitcache.adapters import serving as serving_mod  # noqa: E402
from jitcache.adapters.serving import locate_serving  # noqa: E402
from jitcache.planning.profiles import load_profile  # noqa: E402
from jitcache.planning.variants import plan  # noqa: E402
from jitcache.store.names import name_coverage  # noqa: E402
from jitcache.store.relocate import relocate  # noqa: E402
from jitcache.store.root import CacheRoot  # noqa: E402

REPO = Path(__file__).parents[1]
NVCC_13_0 = ("nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n"
             "Built on Wed_Aug_20_01:58:59_PM_PDT_2025\nCuda compilation tools, release 13.0, V13.0.88\n"
             "Build cuda_13.0.r13.0/compiler.36424714_0\n")


def _headers(explicit: str | None) -> Path:
    from jitcache.build.toolchain import extract_sdist_headers, locate_deep_ep_headers

    if explicit:
        return Path(explicit)
    sdist = REPO.parent / "shared" / "gpu" / "deepinfer_ep-2.5.0.tar.gz"
    if sdist.is_file():
        return extract_sdist_headers(sdist, into=Path(tempfile.gettempdir()) / "jitcache-bench-headers")
    return locate_deep_ep_headers(api="2.5").include_root


def _cold() -> None:
    serving_mod._hasher25.cache_clear()
    serving_mod._hasher21.cache_clear()


def _timed(fn, repeat: int) -> dict:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"min_s": round(min(times), 4), "median_s": round(statistics.median(times), 4), "runs": repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--headers", help="DeepEP 2.5 include root (default: the sdist beside the repo)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine>)")
    args = parser.parse_args()
    from test_relocate import write_shipped  # the tests' own fixture: real cubins, DeepEP's layout

    load_before = list(os.getloadavg())  # 2 cores shared with other work: the figures are noisy
    headers = _headers(args.headers)
    the_plan = plan(load_profile("h200-ep1"))
    build = locate_serving("/build/site-packages/deep_ep", "/build/nccl/include", nvcc_version_output=NVCC_13_0,
                           headers=headers)
    rig = locate_serving("/tmp/gpu-rig/site/deep_ep", "/tmp/gpu-rig/nccl/include", nvcc_version_output=NVCC_13_0,
                         headers=headers, nvcc_path="/usr/local/cuda/bin/nvcc")
    work = Path(tempfile.mkdtemp(prefix="jitcache-digest-bench-"))
    try:
        template = work / "template"
        write_shipped(template / "cache", the_plan, build)
        targets = []
        for i in range(2 * args.repeat):  # copies made before the clock starts
            shutil.copytree(template, work / f"run{i}")
            targets.append(work / f"run{i}")
        published = []

        def one(cold: bool) -> None:
            target = targets.pop()
            if cold:
                _cold()
            result = relocate(CacheRoot.for_deep_ep_dir(target), rig, the_plan)
            published.append(len(result.published))

        import jitcache.store.relocate as relocate_mod

        synced: list[float] = []
        real_syncfs = relocate_mod._syncfs

        def timed_syncfs(path: Path) -> None:
            t0 = time.perf_counter()
            real_syncfs(path)
            synced.append(time.perf_counter() - t0)
        relocate_mod._syncfs = timed_syncfs
        relocation = {"cold": _timed(lambda: one(True), args.repeat), "warm": _timed(lambda: one(False), args.repeat),
                      "of_which_syncfs_s": {"min": round(min(synced), 4), "median": round(statistics.median(synced), 4)}}
        relocate_mod._syncfs = real_syncfs
        assert set(published) == {57}, published
        print(f"relocate 57 entries: cold {relocation['cold']['median_s']} s, warm {relocation['warm']['median_s']} s",
              flush=True)

        big = work / "big" / "cache"
        write_shipped(big, the_plan, rig)     # the 57 the rig's DeepEP finds
        sample = next(big.iterdir())
        for i in range(args.entries - 57):    # and others: another profile's, an old build's
            other = big / f"{sample.name.rsplit('.', 1)[0]}.{i:032x}"
            shutil.copytree(sample, other)
            (other / "kernel.cu").write_text((sample / "kernel.cu").read_text().replace(", 1, 256,", f", {i + 3}, 256,"))
        assert len(list(big.iterdir())) == args.entries

        def cover(report_unplanned: bool, cold: bool) -> None:
            if cold:
                _cold()
            cov = name_coverage(the_plan, rig, [big.parent], report_unplanned=report_unplanned)
            assert cov.complete and len(cov.verdicts) == 57

        coverage = {"worker_start_cold": _timed(lambda: cover(False, True), args.repeat),
                    "worker_start_warm": _timed(lambda: cover(False, False), args.repeat),
                    "inspect_cold": _timed(lambda: cover(True, True), args.repeat)}
        print(f"coverage by name, {args.entries} entries: worker start cold "
              f"{coverage['worker_start_cold']['median_s']} s, warm {coverage['worker_start_warm']['median_s']} s; "
              f"inspect (reads every entry) {coverage['inspect_cold']['median_s']} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_result("digest_truth", {
        "benchmark": "relocation of h200-ep1's 57 entries; coverage by name of a cache", "machine": machine_facts(),
        "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
        "deep_ep": "2.5 (sdist headers)", "goals": {"relocate_57_s": 1.0, "coverage_1000_s": 0.2},
        "relocate_57": relocation, "coverage": {"entries": args.entries, **coverage}}, out_dir=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
