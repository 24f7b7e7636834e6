"""The ahead-of-time compiler: every variant of a plan, in parallel, once per node, in DeepEP's own layout.

For each variant the job is: render DeepEP's exact source (:mod:`jitcache.adapters.render25`),
compute DeepEP's own digest (:mod:`jitcache.adapters.deepjit`), and, unless
``<cache>/<name>.<digest>/`` already exists, run nvcc with DeepEP's flags in a
private build dir, then publish it with one directory rename and the
``.committed`` marker last (:func:`jitcache.store.publish.publish_entry`).

Concurrency:

- ``jobs`` nvcc processes run at once (default: every core, or, split over
  torchrun ranks, the cores divided by the ranks of the node); nvcc is the
  work, so the pool is threads driving subprocesses;
- several warmups on one node (eight ranks, two shells) compile each variant
  exactly once: a per-entry file lock, then a second look for the entry once
  the lock is held (the first holder published it meanwhile);
- under torch.distributed the ranks split the variants, barrier, and, where
  the nodes share no filesystem, ship the entries they built to every rank
  over the process group (:func:`exchange_entries`).

Triton kernels registered with ``jitcache.triton.register`` become jobs of
the same kind (:mod:`jitcache.build.triton_aot`): ``backend="triton"`` puts the
entry under the root's ``triton/`` folder, the command is a Python worker
running ``triton.compile``, and Triton's group file stands in for the marker.

A failing compile does not stop the others: its stderr goes to a file next
to the run's ``report.json``, the report marks it failed, and the CLI exits
non-zero. The library prints nothing.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import subprocess
import tarfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import filelock

from jitcache import settings
from jitcache.adapters.base import BuildJob, Toolchain
from jitcache.errors import CacheError, UsageError
from jitcache.store.faults import filesystem_error, is_fault, require_writable
from jitcache.planning.variants import WarmupPlan
from jitcache.store.publish import atomic_write_text, make_temp_dir, publish_entry, reclaim_orphans, remove_tree
from jitcache.store.root import CacheRoot
from jitcache.types import BUILD_STATUSES, Backend, BuildStatus

__all__ = ["AotReport", "BuildJob", "VariantResult", "backend_dir", "entry_present", "final_path", "publish_job",
           "run_jobs", "write_report"]

log = logging.getLogger("jitcache.aot")

#: A file that gets one line per nvcc run (tests count real compiles with it; unset in production).
COMPILE_LOG_ENV = "JITCACHE_COMPILE_LOG"


@dataclass(frozen=True)
class VariantResult:
    """What the pool did for one job (one cache entry): built it, found it, waited for another builder..."""

    entry: str
    label: str
    status: BuildStatus             # compiled | cached | deduplicated | received | failed
    seconds: float
    family: str | None = None
    num_max_tokens_per_rank: int | None = None
    log_path: str | None = None
    message: str | None = None
    backend: Backend | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class AotReport:
    profile: str
    deep_ep_api: str                # the DeepEP version whose rules named the entries, "n/a" for Triton only
    cache_dir: str
    jobs: int
    wall_seconds: float
    results: tuple[VariantResult, ...]
    toolchain: dict = field(default_factory=dict)
    report_path: str | None = None
    rank: int = 0
    world_size: int = 1
    triton_dir: str | None = None

    def count(self, status: BuildStatus) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> tuple[VariantResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def compile_seconds(self) -> float:
        return sum(r.seconds for r in self.results if r.status == "compiled")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": 1, "profile": self.profile, "deep_ep_api": self.deep_ep_api, "cache_dir": self.cache_dir,
            "triton_dir": self.triton_dir,
            "jobs": self.jobs, "rank": self.rank, "world_size": self.world_size,
            "wall_seconds": round(self.wall_seconds, 3), "compile_seconds": round(self.compile_seconds, 3),
            "num_variants": len(self.results),
            "totals": {s: self.count(s) for s in BUILD_STATUSES},
            "ok": self.ok, "report_path": self.report_path, "toolchain": self.toolchain,
            "results": [r.to_dict() for r in self.results],
        }


# -- running jobs ---------------------------------------------------------------------------------


def backend_dir(root: CacheRoot, job: BuildJob) -> Path:
    if job.backend == "triton":
        if root.triton_dir is None:
            raise UsageError(f"{root.path} is a bare DeepEP cache: it has no triton/ folder for {job.label}")
        return root.triton_dir
    return root.deep_ep_dir


def final_path(root: CacheRoot, job: BuildJob) -> Path:
    # DeepEP entries live in <deep_ep>/cache/, Triton's key directories right under TRITON_CACHE_DIR.
    return backend_dir(root, job) / job.entry if job.backend == "triton" else root.deep_ep_dir / "cache" / job.entry


def entry_present(final: Path, job: BuildJob) -> bool:
    if job.backend == "triton":
        from jitcache.build.triton_worker import triton_entry_present
        return all(triton_entry_present(final, group) for group in job.outputs)
    if job.marker is not None:
        return (final / job.marker).is_file()
    return all((final / name).is_file() for name in ("kernel.cu", *job.outputs))


def publish_job(build: Path, final: Path, job: BuildJob) -> bool:
    if job.backend == "triton":
        from jitcache.build.triton_worker import publish_triton_entry
        return publish_triton_entry(build, final)
    return publish_entry(build, final, marker=job.marker)


def _run_one(job: BuildJob, root: CacheRoot, lock_dir: Path, log_dir: Path,
             on_compile: Callable[[BuildJob], None] | None, lock_timeout: float,
             compile_log: str | None) -> VariantResult:
    start = time.perf_counter()
    folder = backend_dir(root, job)
    final = final_path(root, job)

    def result(status: BuildStatus, **extra: Any) -> VariantResult:
        return VariantResult(entry=job.entry, label=job.label, status=status, seconds=time.perf_counter() - start,
                             family=job.family, num_max_tokens_per_rank=job.num_max_tokens_per_rank,
                             backend=job.backend, **extra)

    if entry_present(final, job):
        return result("cached")
    lock = filelock.FileLock(str(lock_dir / f"{job.entry}.lock"))
    try:
        lock.acquire(timeout=lock_timeout)
    except filelock.Timeout:
        return result("failed", message=f"timed out after {lock_timeout:.0f} s waiting for {lock.lock_file}")
    try:
        # Someone else held the lock and has published the entry meanwhile: nothing to do.
        if entry_present(final, job):
            return result("deduplicated")
        build = make_temp_dir(folder)
        published = False
        try:
            for name, text in job.files:
                (build / name).write_text(text, encoding="utf-8")
            argv = [a.replace("{dir}", str(build)) for a in job.argv]
            if on_compile is not None:
                on_compile(job)
            _note_compile(job, compile_log)
            done = subprocess.run(argv, cwd=build, capture_output=True, text=True)
            missing = [o for o in job.outputs if not (build / o).is_file() or (build / o).stat().st_size == 0]
            if done.returncode != 0 or missing:
                output = f"{done.stdout}{done.stderr}"
                if (fault := _disk_fault(output)) is not None:
                    # nvcc could not write its output: say where, and how much room is left
                    return result("failed", message=str(filesystem_error(
                        OSError(fault, os.strerror(fault)), build, action=f"compile {job.entry} ({job.tool})")))
                log = log_dir / f"{job.entry}.stderr.txt"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(f"$ {' '.join(argv)}\n(exit {done.returncode})\n{output}")
                first = (done.stderr or done.stdout).strip().splitlines()[:1]
                return result("failed", log_path=str(log),
                              message=f"{job.tool} exit {done.returncode}" + (f": {first[0]}" if first else ""))
            for name, text in job.after:
                (build / name).write_text(text.replace("{dir}", str(build)), encoding="utf-8")
            publish_job(build, final, job)
            published = True
        finally:
            if not published:
                remove_tree(build)
        return result("compiled")
    except CacheError as exc:
        return result("failed", message=str(exc))
    except OSError as exc:
        if is_fault(exc):
            return result("failed", message=str(filesystem_error(exc, action=f"build {job.entry}")))
        return result("failed", message=f"{exc.__class__.__name__}: {exc}")
    finally:
        lock.release()


def _disk_fault(output: str) -> int | None:
    """The errno a compiler's output reports when it could not write (full disk, size limit, read-only)."""
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
        if os.strerror(code) in output:
            return code
    return None


def _note_compile(job: BuildJob, path: str | None) -> None:
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {job.entry}\n".encode())
        finally:
            os.close(fd)


def run_jobs(jobs: Sequence[BuildJob], root: CacheRoot, *, num_workers: int | None = None,
             run_id: str | None = None,
             on_result: Callable[[VariantResult], None] | None = None,
             on_compile: Callable[[BuildJob], None] | None = None) -> tuple[tuple[VariantResult, ...], Path]:
    """Build ``jobs`` into ``root`` (DeepEP or Triton folder, by job), ``num_workers`` at a time; results in job order."""
    lock_timeout, compile_log = settings.entry_lock_timeout(), settings.compile_log()  # read once, before any thread
    root.ensure()
    require_writable(root.deep_ep_dir if any(j.backend == "deep_ep" for j in jobs) or root.triton_dir is None
                     else root.triton_dir, action="compile into the cache")
    # Build directories of runs that were killed (their owner is gone): reclaimed before starting.
    reclaim_orphans(root.deep_ep_dir / "tmp")
    if root.triton_dir is not None:
        reclaim_orphans(root.triton_dir / "tmp")
    lock_dir = root.meta_dir / "locks"
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise filesystem_error(exc, lock_dir, action="create the entry lock directory") from None
    run_dir = root.meta_dir / "aot" / (run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    workers = max(1, num_workers or os.cpu_count() or 1)
    results: list[VariantResult | None] = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jitcache-aot") as pool:
        futures = {pool.submit(_run_one, job, root, lock_dir, run_dir, on_compile, lock_timeout, compile_log): i
                   for i, job in enumerate(jobs)}
        for future in as_completed(futures):       # on_result as each finishes: what a progress bar needs
            index = futures[future]
            done = results[index] = future.result()
            if on_result is not None:
                on_result(done)
    return tuple(r for r in results if r is not None), run_dir


def write_report(report: AotReport, run_dir: Path) -> AotReport:
    """Write ``report.json``; on a full or read-only disk, a :class:`CacheError` that still tells what the run
    did (what was published is whole and stays)."""
    from dataclasses import replace

    path = run_dir / "report.json"
    final = replace(report, report_path=str(path))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(final.to_dict(), indent=2) + "\n")
    except OSError as exc:
        done = ", ".join(f"{n} {s}" for s, n in final.to_dict()["totals"].items() if n) or "nothing"
        first = next((r.message for r in report.failed if r.message), None)
        raise filesystem_error(exc, path, action="write the warmup report", partial=(
            f"the run did {len(report.results)} variants: {done} (published entries are whole)"
            + (f"; first failure: {first}" if first else ""))) from None
    return final
