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
from typing import Any, Callable, Iterable, Sequence

import filelock

from jitcache.warm.collectives import all_gather_bytes, initialized_dist
from jitcache.adapters.deepjit import CompilerOptions, IncludeHasher, cache_key, deep_ep_compiler_options, meta_json, nvcc_command
from jitcache.errors import CacheError, ToolchainError, UsageError
from jitcache.adapters.render25 import RenderedKernel, render_plan, target_facts
from jitcache.store.publish import COMMIT_MARKER, atomic_write_text, make_temp_dir, publish_entry, remove_tree
from jitcache.store.faults import filesystem_error, is_fault, require_writable
from jitcache.store.owners import reclaim_orphans
from jitcache.store.root import CacheRoot
from jitcache.build.toolchain import Toolchain
from jitcache.planning.variants import WarmupPlan

__all__ = ["AotReport", "BuildJob", "VariantResult", "build_jobs", "exchange_entries", "jobs_for_plan",
           "local_world_size", "run_jobs", "warmup_aot"]

log = logging.getLogger("jitcache.aot")

#: A file that gets one line per nvcc run (tests count real compiles with it; unset in production).
COMPILE_LOG_ENV = "JITCACHE_COMPILE_LOG"
#: Seconds to wait for another process's compile of the same entry before giving up.
ENTRY_LOCK_TIMEOUT = float(os.environ.get("JITCACHE_ENTRY_LOCK_TIMEOUT", 1800))


@dataclass(frozen=True)
class BuildJob:
    """One cache entry to produce: everything a worker needs, nothing it must look up."""

    entry: str                      # directory name under cache/: "<name>.<digest>" or "kernel.<name>.<digest>"
    label: str                      # for people: "dispatch nmax=16 (decode)"
    files: tuple[tuple[str, str], ...]  # files to write before compiling: (name, text)
    argv: tuple[str, ...]           # the nvcc command, run from the build dir; "{dir}" is replaced by it
    after: tuple[tuple[str, str], ...] = ()  # files written after a successful compile (meta.json); "{dir}" too
    marker: str | None = COMMIT_MARKER
    outputs: tuple[str, ...] = ("kernel.cubin",)
    num_max_tokens_per_rank: int | None = None
    family: str | None = None
    backend: str = "deep_ep"        # the root's folder the entry goes to: "deep_ep" (cache/<entry>) or "triton" (<entry>)
    tool: str = "nvcc"              # what runs, for messages

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "label": self.label, "family": self.family, "backend": self.backend,
                "num_max_tokens_per_rank": self.num_max_tokens_per_rank}


@dataclass(frozen=True)
class VariantResult:
    entry: str
    label: str
    status: str                     # compiled | cached | deduplicated | received | failed
    seconds: float
    family: str | None = None
    num_max_tokens_per_rank: int | None = None
    log_path: str | None = None
    message: str | None = None
    backend: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class AotReport:
    profile: str
    deep_ep_api: str
    cache_dir: str
    jobs: int
    wall_seconds: float
    results: tuple[VariantResult, ...]
    toolchain: dict = field(default_factory=dict)
    report_path: str | None = None
    rank: int = 0
    world_size: int = 1
    triton_dir: str | None = None

    def count(self, status: str) -> int:
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
            "totals": {s: self.count(s) for s in ("compiled", "cached", "deduplicated", "received", "failed")},
            "ok": self.ok, "report_path": self.report_path, "toolchain": self.toolchain,
            "results": [r.to_dict() for r in self.results],
        }


# -- jobs for DeepEP 2.5 -------------------------------------------------------------------------


def jobs_for_plan(the_plan: WarmupPlan, toolchain: Toolchain, *, options: CompilerOptions | None = None,
                  with_barrier: bool = True) -> tuple[BuildJob, ...]:
    """One :class:`BuildJob` per variant of ``the_plan``, keyed by the digest of the headers' DeepEP (2.5 or 2.1)."""
    wanted = the_plan.profile.deep_ep.api
    if wanted not in ("auto", toolchain.deep_ep_api):
        raise ToolchainError(
            f"{the_plan.profile.source}: [deep_ep] api = {wanted!r}, but the DeepEP headers found "
            f"({toolchain.deep_ep_include}) are DeepEP {toolchain.deep_ep_api}",
            hint="pass --deep-ep-include with that version's headers, `jitcache sources fetch` (2.5), "
                 "`pip install tokenspeed-deepep` (2.1), or set api = \"auto\"")
    if toolchain.deep_ep_api == "2.1":
        from jitcache.adapters.deepep21 import jobs_for_plan21  # noqa: PLC0415 - aot21 imports this module
        return jobs_for_plan21(the_plan, toolchain, with_barrier=with_barrier)
    profile = the_plan.profile
    kernels = list(render_plan(the_plan))
    if with_barrier:
        from jitcache.adapters.render25 import render_barrier
        kernels.append(render_barrier(profile, target_facts(profile)))
    return build_jobs(kernels, toolchain, profile.target.arch, options=options)


def build_jobs(kernels: Iterable[RenderedKernel], toolchain: Toolchain, arch: str, *,
               options: CompilerOptions | None = None) -> tuple[BuildJob, ...]:
    """Jobs for rendered DeepEP 2.5 sources: digest, nvcc argv and meta.json for each."""
    learned = toolchain.learned
    if options is None:
        options = learned.options if learned is not None else deep_ep_compiler_options(
            arch, toolchain.target_nccl_include)
    includes = IncludeHasher([toolchain.deep_ep_include])
    target_include_dirs = list(learned.include_dirs) if learned and learned.include_dirs else [
        str(Path(toolchain.python_library_root) / "include")]
    nvcc_path = learned.nvcc_path if learned is not None else str(toolchain.nvcc)
    # nvcc reads the local headers; the flags (and so the digest) keep the target's NCCL path.
    local_includes = [str(toolchain.deep_ep_include)]
    if str(toolchain.nccl_include) != toolchain.target_nccl_include:
        local_includes.append(str(toolchain.nccl_include))
    jobs = []
    seen: set[str] = set()
    for kernel in kernels:
        try:
            digest = cache_key(kernel.source, options, toolchain.nvcc_version_output, includes)
        except FileNotFoundError as exc:
            raise ToolchainError(f"{kernel.function}: {exc}",
                                 hint="the DeepEP headers do not match this kernel: check --deep-ep-include") from None
        entry = f"{kernel.name}.{digest}"
        if entry in seen:
            continue
        seen.add(entry)
        argv = nvcc_command(toolchain.nvcc, "{dir}", options, local_includes)
        meta_argv = nvcc_command(nvcc_path, "{dir}", options, target_include_dirs)
        meta = meta_json(meta_argv, python_library_root=toolchain.python_library_root,
                         include_dirs=target_include_dirs, nvcc_path=nvcc_path,
                         nvcc_version_output=toolchain.nvcc_version_output, options=options)
        variant = kernel.variant
        label = kernel.name if variant is None else f"{kernel.name} nmax={variant.num_max_tokens_per_rank} ({variant.mode})"
        jobs.append(BuildJob(entry=entry, label=label, files=(("kernel.cu", kernel.source),), argv=tuple(argv),
                             after=(("meta.json", meta),), marker=COMMIT_MARKER,
                             num_max_tokens_per_rank=None if variant is None else variant.num_max_tokens_per_rank,
                             family=kernel.name))
    return tuple(jobs)


# -- running jobs ---------------------------------------------------------------------------------


def _backend_dir(root: CacheRoot, job: BuildJob) -> Path:
    if job.backend == "triton":
        if root.triton_dir is None:
            raise UsageError(f"{root.path} is a bare DeepEP cache: it has no triton/ folder for {job.label}")
        return root.triton_dir
    return root.deep_ep_dir


def _final_path(root: CacheRoot, job: BuildJob) -> Path:
    # DeepEP entries live in <deep_ep>/cache/, Triton's key directories right under TRITON_CACHE_DIR.
    return _backend_dir(root, job) / job.entry if job.backend == "triton" else root.deep_ep_dir / "cache" / job.entry


def _entry_present(final: Path, job: BuildJob) -> bool:
    if job.backend == "triton":
        from jitcache.build.triton_aot import triton_entry_present
        return all(triton_entry_present(final, group) for group in job.outputs)
    if job.marker is not None:
        return (final / job.marker).is_file()
    return all((final / name).is_file() for name in ("kernel.cu", *job.outputs))


def _publish(build: Path, final: Path, job: BuildJob) -> bool:
    if job.backend == "triton":
        from jitcache.build.triton_aot import publish_triton_entry
        return publish_triton_entry(build, final)
    return publish_entry(build, final, marker=job.marker)


def _run_one(job: BuildJob, root: CacheRoot, lock_dir: Path, log_dir: Path,
             on_compile: Callable[[BuildJob], None] | None) -> VariantResult:
    start = time.perf_counter()
    backend_dir = _backend_dir(root, job)
    final = _final_path(root, job)

    def result(status: str, **extra: Any) -> VariantResult:
        return VariantResult(entry=job.entry, label=job.label, status=status, seconds=time.perf_counter() - start,
                             family=job.family, num_max_tokens_per_rank=job.num_max_tokens_per_rank,
                             backend=job.backend, **extra)

    if _entry_present(final, job):
        return result("cached")
    lock = filelock.FileLock(str(lock_dir / f"{job.entry}.lock"))
    try:
        lock.acquire(timeout=ENTRY_LOCK_TIMEOUT)
    except filelock.Timeout:
        return result("failed", message=f"timed out after {ENTRY_LOCK_TIMEOUT:.0f} s waiting for {lock.lock_file}")
    try:
        # Someone else held the lock and has published the entry meanwhile: nothing to do.
        if _entry_present(final, job):
            return result("deduplicated")
        build = make_temp_dir(backend_dir)
        try:
            for name, text in job.files:
                (build / name).write_text(text, encoding="utf-8")
            argv = [a.replace("{dir}", str(build)) for a in job.argv]
            if on_compile is not None:
                on_compile(job)
            _note_compile(job)
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
            _publish(build, final, job)
            build = None
        finally:
            if build is not None:
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


def _note_compile(job: BuildJob) -> None:
    path = os.environ.get(COMPILE_LOG_ENV)
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
        futures = {pool.submit(_run_one, job, root, lock_dir, run_dir, on_compile): i
                   for i, job in enumerate(jobs)}
        for future in as_completed(futures):       # on_result as each finishes: what a progress bar needs
            index = futures[future]
            results[index] = future.result()
            if on_result is not None:
                on_result(results[index])
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


# -- torch.distributed -------------------------------------------------------------------------------


def local_world_size() -> int:
    """The ranks on this node: torchrun's ``LOCAL_WORLD_SIZE``, 1 when unset or not a positive integer."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _pack(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
    return buffer.getvalue()


def _unpack_and_publish(blob: bytes, root: CacheRoot, job: BuildJob) -> bool:
    build = make_temp_dir(_backend_dir(root, job))
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            for member in tar.getmembers():
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    continue  # entries are flat; the marker is written by publish_entry, last
                data = tar.extractfile(member)
                (build / member.name).write_bytes(data.read() if data else b"")
        published = _publish(build, _final_path(root, job), job)
        build = None
        return published
    finally:
        if build is not None:
            remove_tree(build)


def exchange_entries(jobs: Sequence[BuildJob], root: CacheRoot, group: Any = None) -> tuple[str, ...]:
    """Make every rank's cache hold every job's entry, over the process group; returns what this rank received.

    A collective: every rank of ``group`` calls it with the same jobs. When the
    filesystem is shared nothing is missing anywhere and nothing is sent. An
    entry that cannot be read or written is logged and left out (not raised):
    the peers are in, or about to enter, the same collectives.
    """
    if initialized_dist() is None:
        return ()
    missing = [j.entry for j in jobs if not _entry_present(_final_path(root, j), j)]
    wanted = [json.loads(b) for b in all_gather_bytes(json.dumps(missing).encode(), group)]
    wanted_anywhere = {e for rank_missing in wanted for e in rank_missing}
    if not wanted_anywhere:
        return ()
    offer = {}
    for job in jobs:
        final = _final_path(root, job)
        if job.entry in wanted_anywhere and job.entry not in missing and _entry_present(final, job):
            try:
                offer[job.entry] = _pack(final)
            except (OSError, tarfile.TarError) as exc:
                log.warning("%s: cannot pack the entry to send it to other ranks (%s)", final, exc)
    offers = [pickle.loads(b) for b in all_gather_bytes(pickle.dumps(offer), group)]
    by_entry = {j.entry: j for j in jobs}
    received = []
    for entry in missing:
        blob = next((o[entry] for o in offers if entry in o), None)
        if blob is None:
            continue
        try:
            _unpack_and_publish(blob, root, by_entry[entry])
        except (OSError, CacheError, tarfile.TarError) as exc:
            log.warning("%s: cannot publish the entry received from another rank (%s)", entry, exc)
            continue
        received.append(entry)
    return tuple(received)


# -- the whole warmup -----------------------------------------------------------------------------------


def warmup_aot(the_plan: WarmupPlan, toolchain: Toolchain | None, root: CacheRoot, *, jobs: Sequence[BuildJob] | None = None,
               extra_jobs: Sequence[BuildJob] = (), num_workers: int | None = None, distributed: bool | None = None, group: Any = None,
               on_result: Callable[[VariantResult], None] | None = None) -> AotReport:
    """Compile every variant of ``the_plan`` into ``root`` (see the module docstring); returns the report.

    ``distributed=None`` splits the work over torch.distributed ranks when a
    process group is initialised; ``False`` makes every rank build everything
    (locks still make that once per node). Split over ranks, ``num_workers=None``
    means the cores divided by torchrun's ``LOCAL_WORLD_SIZE`` (the ranks of
    this node); the report's ``jobs`` is the number used. ``extra_jobs``
    (Triton's, from :func:`jitcache.build.triton_aot.jobs_for_triton`) run in the
    same pool; with ``toolchain=None`` and no ``jobs`` they are the whole run.
    Under torch.distributed an exception while compiling fails this rank's
    jobs instead of leaving the barrier that its peers wait in.
    """
    start = time.perf_counter()
    if jobs is not None:
        deep_ep_jobs = tuple(jobs)
    else:
        deep_ep_jobs = jobs_for_plan(the_plan, toolchain) if toolchain is not None else ()
    all_jobs = deep_ep_jobs + tuple(extra_jobs)
    dist = initialized_dist() if distributed in (None, True) else None
    if distributed and dist is None:
        raise UsageError("--distributed needs an initialised torch.distributed process group")
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if dist else (0, 1)
    mine = all_jobs[rank::world]
    if num_workers is None and dist is not None:
        # Every rank of the node starts a pool: share the cores rather than oversubscribe them N-fold.
        num_workers = max(1, (os.cpu_count() or 1) // local_world_size())
    workers = max(1, num_workers or os.cpu_count() or 1)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        results, run_dir = run_jobs(mine, root, num_workers=workers, run_id=run_id, on_result=on_result)
    except Exception as exc:
        if dist is None:
            raise
        # A rank leaving here would skip the barrier below while its peers wait in it: fail its jobs instead.
        log.warning("rank %d: the AOT compile raised %s: %s", rank, type(exc).__name__, exc)
        run_dir = root.meta_dir / "aot" / run_id
        results = tuple(VariantResult(entry=j.entry, label=j.label, status="failed", seconds=0.0, family=j.family,
                                      num_max_tokens_per_rank=j.num_max_tokens_per_rank, backend=j.backend,
                                      message=f"{type(exc).__name__}: {exc}") for j in mine)
    received: tuple[str, ...] = ()
    if dist is not None:
        dist.barrier(group=group)
        received = exchange_entries(all_jobs, root, group)
        dist.barrier(group=group)
        others = [j for j in all_jobs if j not in mine]
        results = results + tuple(
            VariantResult(entry=j.entry, label=j.label, status="received" if j.entry in received else "cached",
                          seconds=0.0, family=j.family, num_max_tokens_per_rank=j.num_max_tokens_per_rank,
                          backend=j.backend)
            for j in others)
    report = AotReport(profile=the_plan.profile.name, deep_ep_api=toolchain.deep_ep_api if toolchain else "n/a",
                       cache_dir=str(root.deep_ep_dir), jobs=workers,
                       wall_seconds=time.perf_counter() - start, results=results,
                       toolchain=toolchain.to_dict() if toolchain else {},
                       rank=rank, world_size=world,
                       triton_dir=None if root.triton_dir is None else str(root.triton_dir))
    return write_report(report, run_dir)

