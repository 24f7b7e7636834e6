"""Triton kernels in the AOT pool: real Triton compiles for GPUTarget("cuda", 90, 32) on a machine with no GPU.

The one test double is the GPU driver: Triton's own ``JITFunction.warmup``
runs against a stand-in driver that reports an H200's target, to prove that
the runtime's lookup lands on the entries the pool wrote and compiles nothing.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

import triton_kernels  # noqa: E402  (registers scale_rows and topk_count)
from cli_helpers import run_cli  # noqa: E402
from jitcache import load_profile, plan  # noqa: E402
from jitcache.build.pool import COMPILE_LOG_ENV, run_jobs  # noqa: E402
from jitcache.warm.aot import warmup_aot  # noqa: E402
from jitcache.errors import UsageError  # noqa: E402
from jitcache.store.root import resolve_root  # noqa: E402
from jitcache.store.scan import scan  # noqa: E402
from jitcache.build.triton_aot import Pointer, gpu_target, jobs_for_triton, register, registered, specialize  # noqa: E402

TESTS = Path(__file__).parent
#: 1 (a constexpr at run time), 2 (a plain i32, like 4 and 8) and 16 (divisible by 16, like 32..8192):
#: every specialisation h200-ep1's buckets produce for these kernels.
BUCKETS = (1, 2, 16)


@pytest.fixture(autouse=True)
def _registry():
    """Every test sees exactly the two good kernels, whatever another test registered."""
    from jitcache.build import triton_aot
    saved = dict(triton_aot._REGISTRY)
    triton_aot._REGISTRY.clear()
    triton_kernels.register_good()
    yield
    triton_aot._REGISTRY.clear()
    triton_aot._REGISTRY.update(saved)


@pytest.fixture(scope="session")
def warmed(tmp_path_factory):
    """One real AOT run of the two kernels x BUCKETS into a fresh root (6 compiles)."""
    from jitcache.build import triton_aot
    triton_aot._REGISTRY.clear()
    triton_kernels.register_good()
    root = resolve_root(tmp_path_factory.mktemp("triton-aot") / "root")
    jobs = jobs_for_triton(registered(), BUCKETS, "sm_90a")
    report = warmup_aot(plan(load_profile("h200-ep1")), None, root, jobs=(), extra_jobs=jobs, num_workers=2)
    return root, jobs, report


def test_import_triton_is_the_real_package_from_inside_jitcache():
    code = ("import jitcache.triton as jt, jitcache.build.triton_aot as ta, triton, triton.language; "
            "print(triton.__file__); print(jt.register is ta.register)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=TESTS.parent).stdout.split()
    assert "site-packages" in out[0] and "jitcache" not in Path(out[0]).parts[-2:]
    assert out[1] == "True"


def test_specialisation_follows_the_runtime_binder():
    kernel = next(k for k in registered() if k.name == "scale_rows")
    target = gpu_target("sm_90a")
    assert (target.backend, target.arch, target.warp_size) == ("cuda", 90, 32)
    (one,), (two,), (sixteen,) = (specialize(kernel, b, target) for b in BUCKETS)
    assert one.signature["num_rows"] == "constexpr" and one.constexprs[(2,)] == 1
    assert two.signature["num_rows"] == "i32" and two.attrs[(2,)] == []
    assert sixteen.signature["num_rows"] == "i32" and sixteen.attrs[(2,)] == [["tt.divisibility", 16]]
    assert sixteen.attrs[(0,)] == [["tt.divisibility", 16]]            # "*bf16": an aligned tensor
    assert len({one.key, two.key, sixteen.key}) == 3
    assert specialize(kernel, 32, target)[0].key == sixteen.key      # same specialisation, same entry
    loose = register(triton_kernels.scale_rows, lambda b: {"x_ptr": Pointer("bf16", aligned=False),
                                                           "out_ptr": "*bf16", "num_rows": "i32", "hidden": 7168,
                                                           "BLOCK": 128}, name="loose")
    (spec,) = specialize(loose, 16, target)
    assert spec.attrs[(0,)] == [] and spec.attrs[(2,)] == [] and spec.key != sixteen.key


@pytest.mark.parametrize("args, words", [
    ({"x_ptr": "*bf16"}, ["scale_rows bucket=4", "num_rows"]),
    ({"x_ptr": "*bf16", "out_ptr": "*bf16", "num_rows": 4, "hidden": 1, "BLOCK": 128, "num_wraps": 4},
     ["scale_rows bucket=4", "num_wraps"]),
    ("not a dict", ["scale_rows bucket=4", "dict"]),
])
def test_bad_arguments_name_the_kernel_bucket_and_value(args, words):
    kernel = register(triton_kernels.scale_rows, lambda b: args)
    with pytest.raises(UsageError) as err:
        specialize(kernel, 4, gpu_target("sm_90a"))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_first_run_compiles_every_entry_in_triton_layout(warmed):
    root, jobs, report = warmed
    assert report.ok, report.failed
    assert report.count("compiled") == len(jobs) == 6
    assert all(r.backend == "triton" for r in report.results)
    data = json.loads(Path(report.report_path).read_text())
    assert data["triton_dir"] == str(root.triton_dir) and data["totals"]["compiled"] == 6
    for job in jobs:
        entry = root.triton_dir / job.entry
        group = json.loads((entry / job.outputs[0]).read_text())["child_paths"]
        assert all(Path(p).parent == entry and Path(p).is_file() for p in group.values())
        assert (entry / f"{job.family}.cubin").read_bytes()[:4] == b"\x7fELF"
    assert not any((root.triton_dir / "tmp").iterdir())  # no build dir left behind


def test_second_run_compiles_nothing(warmed, tmp_path, monkeypatch):
    root, jobs, _ = warmed
    counter = tmp_path / "compiles.log"
    monkeypatch.setenv(COMPILE_LOG_ENV, str(counter))
    again = jobs_for_triton(registered(), BUCKETS, "sm_90a")   # recomputed from scratch: same keys
    assert [j.entry for j in again] == [j.entry for j in jobs]
    results, _ = run_jobs(again, root, num_workers=2)
    assert {r.status for r in results} == {"cached"} and not counter.exists()


class _H200Driver:
    """What Triton's CUDA driver reports on an H200; the only stand-in (there is no GPU here)."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)


def test_tritons_own_runtime_finds_the_entries_and_compiles_nothing(warmed):
    """JITFunction.warmup, i.e. JITFunction.run without the launch, as serving calls it at each bucket."""
    from triton import knobs
    from triton.runtime.driver import driver

    root, jobs, _ = warmed
    seen = []
    previous = driver._active  # None here: creating the real default driver needs a GPU
    driver.set_active(_H200Driver())
    try:
        with knobs.cache.scope(), knobs.compilation.scope():
            knobs.cache.dir = str(root.triton_dir)
            knobs.compilation.listener = lambda **kw: seen.append(kw["cache_hit"])
            for bucket in (1, 2, 16, 8192):
                kernel = triton_kernels.scale_rows.warmup(
                    Pointer("bf16"), Pointer("bf16"), bucket, 7168, BLOCK=128, grid=(1,))
                key = base64.b32encode(bytes.fromhex(kernel.hash)).decode().rstrip("=")
                assert key in {j.entry for j in jobs if j.family == "scale_rows"}
    finally:
        driver.set_active(previous)
    # 16 and 8192 bind alike: the second is served from the JITFunction's memory, without triton.compile.
    assert seen == [True] * 3


def test_inspect_sees_the_triton_entries(warmed):
    root, jobs, _ = warmed
    entries = [e for e in scan(root).entries if e.backend == "triton"]
    assert sorted(e.key for e in entries) == sorted(j.entry for j in jobs)
    assert {e.family for e in entries} == {"scale_rows", "topk_count"}
    assert all(e.arch == "sm_90a" and not e.problems for e in entries)
    cli = run_cli("inspect", "--cache-dir", str(root.path), "--format", "json")
    assert cli.code == 0, cli.stderr
    summary = {(s["backend"], s["family"]): s["entries"] for s in cli.json()["summary"]}
    assert summary[("triton", "scale_rows")] == 3 and summary[("triton", "topk_count")] == 3


def test_a_failing_kernel_is_reported_and_the_others_finish(tmp_path):
    triton_kernels.register_broken()
    kernels = [k for k in registered() if k.name in ("broken_kernel", "scale_rows")]
    jobs = jobs_for_triton(kernels, (16,), "sm_90a")
    root = resolve_root(tmp_path / "root")
    report = warmup_aot(plan(load_profile("h200-ep1")), None, root, jobs=(), extra_jobs=jobs, num_workers=2)
    status = {r.family: r.status for r in report.results}
    assert status == {"scale_rows": "compiled", "broken_kernel": "failed"} and not report.ok
    failed = report.failed[0]
    assert "CompilationError" in failed.message and "undefined_name" in failed.message
    log = Path(failed.log_path)
    assert log.parent == Path(report.report_path).parent
    assert "Traceback" in log.read_text() and "undefined_name" in log.read_text()
    assert not (root.triton_dir / failed.entry).exists()
    assert not any((root.triton_dir / "tmp").iterdir())


WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import triton_kernels
    from jitcache.build.pool import run_jobs
    from jitcache.store.root import resolve_root
    from jitcache.build.triton_aot import jobs_for_triton, registered
    results, _ = run_jobs(jobs_for_triton(registered(), {buckets!r}, "sm_90a"), resolve_root({root!r}),
                          num_workers=2)
    print(" ".join(r.status for r in results))
""")


def test_concurrent_processes_compile_each_variant_once(tmp_path):
    counter = tmp_path / "compiles.log"
    env = {**os.environ, COMPILE_LOG_ENV: str(counter)}
    script = WORKER.format(tests=str(TESTS), buckets=(1, 16), root=str(tmp_path / "root"))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    compiled = counter.read_text().splitlines()
    assert len(compiled) == 4 and len({line.split()[1] for line in compiled}) == 4
    statuses = " ".join(o[0] for o in outs).split()
    assert statuses.count("compiled") == 4 and "failed" not in statuses


def test_cli_warmup_triton_only(warmed):
    """h200-ep1's 14 buckets x 2 kernels are 6 distinct entries, all already warm."""
    root, jobs, _ = warmed
    cli = run_cli("warmup", "--aot", "-p", "h200-ep1", "--triton-module", "triton_kernels", "--triton-only",
                  "--cache-dir", str(root.path), "-j", "2", "--format", "json",
                  env={"PYTHONPATH": str(TESTS)})
    assert cli.code == 0, cli.stderr
    data = cli.json()
    assert data["totals"]["cached"] == 6 and data["num_variants"] == 6 and data["schema"] == 1
    assert run_cli("warmup", "-p", "h200-ep1", "--triton-module", "x").code == 2
