"""Issue 14, case 8: build directories whose owner died are reported at once and reclaimed by the next run.

A real AOT run (real nvcc, in a child process) is killed with SIGKILL while
its compiles are in flight; its nvcc children go on and finish into the
build directories nobody owns any more. `jitcache verify` must report them
straight away (not after an hour), and the next run must take them away,
while the build directory of a live process is neither reported nor touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aot_fixtures import nvcc, tiny_job  # noqa: F401 (fixture)
from cli_helpers import run_cli
from jitcache.store.publish import TEMP_PREFIX

pytestmark = pytest.mark.nvcc

TESTS = Path(__file__).resolve().parent

RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from aot_fixtures import tiny_job
    from jitcache.build.pool import run_jobs
    from jitcache.store.root import resolve_root
    jobs = [tiny_job(Path({nvcc!r}), n) for n in {numbers!r}]
    results, _ = run_jobs(jobs, resolve_root({root!r}), num_workers=2)
    print(" ".join(r.status for r in results))
""")

HOLD = textwrap.dedent("""
    import sys, time
    from jitcache.store.publish import make_temp_dir
    from jitcache.store.root import resolve_root
    root = resolve_root({root!r}).ensure()
    print(make_temp_dir(root.deep_ep_dir), flush=True)
    time.sleep(600)
""")


def _ours(tmp: Path) -> list[Path]:
    return sorted(p for p in tmp.iterdir() if p.name.startswith(TEMP_PREFIX)) if tmp.is_dir() else []


def _wait(condition, what: str, deadline: float = 120.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_kill_9_leaves_dirs_that_verify_reports_and_the_next_run_reclaims(tmp_path, nvcc):  # noqa: F811
    root = tmp_path / "root"
    tmp = root / "deep_ep" / "tmp"
    script = RUN.format(tests=str(TESTS), nvcc=str(nvcc), numbers=(1, 2, 3, 4), root=str(root))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        _wait(lambda: any((d / "kernel.cu").is_file() for d in _ours(tmp)), "a build directory")
        os.kill(child.pid, signal.SIGKILL)  # the parent only: its nvcc children go on
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
    orphans = _ours(tmp)
    assert orphans, "the kill left no build directory (the compiles had all finished)"
    # the nvcc children finish into directories nobody owns; wait for them (they may fail to write: fine)
    _wait(lambda: not _nvcc_running_in(tmp), "the orphaned nvcc processes")

    # a live process's build directory, for contrast
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(root))], stdout=subprocess.PIPE,
                              text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.is_dir()
        data = run_cli("verify", "--cache-dir", str(root), "--format", "json").json()
        reported = sorted(p["path"] for p in data["problems"] if p["code"] == "orphan_build")
        assert reported == sorted(map(str, orphans))  # at once, not after an hour; the live one is not there
        assert all("pid" in p["message"] for p in data["problems"] if p["code"] == "orphan_build")

        rerun = subprocess.run([sys.executable, "-c", RUN.format(tests=str(TESTS), nvcc=str(nvcc), numbers=(1,),
                                                                  root=str(root))],
                               capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert _ours(tmp) == [live]  # reclaimed: every dead owner's directory; the live one kept
    finally:
        holder.kill()
        holder.wait()
    assert _ours(tmp) == [live]
    # and once its owner is gone, the live one is an orphan too
    data = run_cli("verify", "--cache-dir", str(root), "--format", "json").json()
    assert [p["path"] for p in data["problems"] if p["code"] == "orphan_build"] == [str(live)]


def _nvcc_running_in(tmp: Path) -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cwd.startswith(str(tmp)) or str(tmp).encode() in cmdline:
            return True
    return False


def test_deepjit_build_dir_of_a_dead_pid_is_reported_at_once(tmp_path):
    """DeepJIT names its build dirs <pid>-<hex>-<hex>-<hex>: a pid not running here is reported (a warning:
    another host sharing the cache may own it, so only the hour-old ones are moved by --repair)."""
    from jitcache.store.root import resolve_root

    root = resolve_root(tmp_path / "root").ensure().path
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    gone = root / "deep_ep" / "tmp" / f"{dead}-0123abcd-4567ef01-89abcdef"
    gone.mkdir()
    alive = root / "deep_ep" / "tmp" / f"{os.getpid()}-0123abcd-4567ef01-89abcdef"
    alive.mkdir()
    data = run_cli("verify", "--cache-dir", str(root), "--format", "json").json()
    assert [p["path"] for p in data["problems"] if p["code"] == "orphan_build"] == [str(gone)]
