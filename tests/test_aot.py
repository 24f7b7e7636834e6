"""The AOT compiler with real nvcc: a real DeepEP 2.5 kernel, failures, eight concurrent warmups, two gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aot_fixtures import RIG_NCCL_INCLUDE, deep_ep25_include, nccl_include, nvcc, tiny_job  # noqa: F401
from jitcache import load_profile, plan
from jitcache.adapters.registry import jobs_for_plan
from jitcache.build.pool import COMPILE_LOG_ENV, run_jobs
from jitcache.warm.aot import warmup_aot
from jitcache.store.root import resolve_root
from jitcache.build.toolchain import resolve_toolchain

pytestmark = pytest.mark.nvcc


def test_real_deepep25_dispatch_kernel_compiles(tmp_path, deep_ep25_include, nccl_include):  # noqa: F811
    """CI's proof: DeepEP 2.5's dispatch kernel for h200-ep1, rendered by us, built by nvcc, no GPU."""
    toolchain = resolve_toolchain(deep_ep_include=deep_ep25_include, nccl_include=nccl_include,
                                  target_nccl_include=RIG_NCCL_INCLUDE)
    the_plan = plan(load_profile("h200-ep1"))
    jobs = jobs_for_plan(the_plan, toolchain)
    dispatch = [j for j in jobs if j.family == "dispatch" and j.num_max_tokens_per_rank == 16]
    root = resolve_root(tmp_path / "root")
    report = warmup_aot(the_plan, toolchain, root, jobs=dispatch, num_workers=1)
    assert report.ok, report.failed
    entry = root.deep_ep_dir / "cache" / dispatch[0].entry
    assert (entry / ".committed").is_file()
    assert (entry / "kernel.cubin").read_bytes()[:4] == b"\x7fELF"
    meta = json.loads((entry / "meta.json").read_text())
    assert f"-I{RIG_NCCL_INCLUDE}" in meta["compiler_options"]["nvcc_flags"]
    assert "dispatch_impl<true, false, false, 132, 4, 15, 1, 14336, 0, 16," in (entry / "kernel.cu").read_text()
    again = warmup_aot(the_plan, toolchain, root, jobs=dispatch, num_workers=1)
    assert again.count("cached") == 1 and again.count("compiled") == 0
    assert Path(report.report_path).is_file()


def test_a_failing_compile_is_reported_and_the_others_finish(tmp_path, nvcc):  # noqa: F811
    jobs = [tiny_job(nvcc, 1), tiny_job(nvcc, 2, broken=True), tiny_job(nvcc, 3)]
    results, run_dir = run_jobs(jobs, resolve_root(tmp_path), num_workers=2)
    status = {r.label: r.status for r in results}
    assert status == {"tiny 1": "compiled", "tiny 2": "failed", "tiny 3": "compiled"}
    failed = next(r for r in results if r.status == "failed")
    log = Path(failed.log_path)
    assert log.parent == run_dir and "error" in log.read_text()
    assert not (resolve_root(tmp_path).deep_ep_dir / "cache" / jobs[1].entry).exists()
    assert not any((resolve_root(tmp_path).deep_ep_dir / "tmp").iterdir())  # no build dir left behind


WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from aot_fixtures import tiny_job
    from jitcache.build.pool import run_jobs
    from jitcache.store.root import resolve_root
    jobs = [tiny_job(Path({nvcc!r}), n) for n in (1, 2, 3)]
    results, _ = run_jobs(jobs, resolve_root({root!r}), num_workers=3)
    assert all(r.status in ("compiled", "cached", "deduplicated") for r in results), results
""")


def test_eight_processes_compile_each_variant_once(tmp_path, nvcc):  # noqa: F811
    counter = tmp_path / "compiles.log"
    script = WORKER.format(tests=str(Path(__file__).parent), nvcc=str(nvcc), root=str(tmp_path / "root"))
    env = {**os.environ, COMPILE_LOG_ENV: str(counter)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(8)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 8
    compiled = counter.read_text().split("\n")[:-1]
    assert sorted(line.split()[1] for line in compiled) == sorted(f"tiny.{n:032x}" for n in (1, 2, 3))
    for n in (1, 2, 3):
        assert (tmp_path / "root" / "deep_ep" / "cache" / f"tiny.{n:032x}" / ".committed").is_file()


GLOO_WORKER = textwrap.dedent("""
    import sys, os
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    import torch.distributed as dist
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://{rendezvous}", rank=rank, world_size=2)
    from aot_fixtures import tiny_job
    from jitcache.warm.aot import warmup_aot
    from jitcache import load_profile, plan
    from jitcache.store.root import resolve_root
    jobs = [tiny_job(Path({nvcc!r}), n) for n in (1, 2, 3, 4)]
    root = resolve_root(os.path.join({base!r}, f"node{{rank}}"))  # no shared filesystem between the two
    report = warmup_aot(plan(load_profile("h200-ep1")), None, root, jobs=jobs, num_workers=2)
    assert report.ok, report.results
    print("RESULT", rank, report.count("compiled"), report.count("received"))
    # Leave without tearing gloo down: a peer closing its sockets first can abort the other (SIGABRT).
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)
""")


def test_gloo_ranks_split_and_exchange_entries(tmp_path, nvcc):  # noqa: F811
    pytest.importorskip("torch.distributed")
    counter = tmp_path / "compiles.log"
    script = GLOO_WORKER.format(tests=str(Path(__file__).parent), nvcc=str(nvcc), base=str(tmp_path),
                                rendezvous=str(tmp_path / "rendezvous"))
    env = {**os.environ, COMPILE_LOG_ENV: str(counter)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], env=env, stdout=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = sorted(line for out in outs for line in out.splitlines() if line.startswith("RESULT"))
    assert lines == ["RESULT 0 2 2", "RESULT 1 2 2"]
    assert len(counter.read_text().splitlines()) == 4  # each variant compiled once, on one rank
    for rank in (0, 1):
        for n in (1, 2, 3, 4):
            entry = tmp_path / f"node{rank}" / "deep_ep" / "cache" / f"tiny.{n:032x}"
            assert (entry / ".committed").is_file() and (entry / "kernel.cubin").is_file()
