"""Multi-GPU proof of issue 7 with real DeepEP 2.5 on one node: EP2 (``h200x2-ep2``) or EP4 (``h200x4-ep4``).

Run on an H200 x2 (EP2): results in ``benchmarks/results/h200x2/``; EP4 (an H200 x4) not run yet.

Launch one process per GPU with torchrun, from the repository root, on the rig
of ``../shared/gpu`` (``source /tmp/gpu-rig/env.sh``)::

    torchrun --nproc-per-node 2 benchmarks/gpu_multi_proof.py --profile h200x2-ep2 \\
        --out /tmp/jitcache-multi/out --work /tmp/jitcache-multi/work --phases live

Each torchrun process is a light *driver* (a gloo group, no CUDA): for every
phase it starts one child process per rank, all at once, with a fresh
``MASTER_PORT``; the child does the GPU work, writes its own part
``<out>/parts/<phase>.rank<R>.json`` (so a rank that hangs or crashes is seen
as such: a watchdog writes the part and exits, or the driver writes one after
killing the child at the phase's budget), and leaves with ``os._exit(0)``
(``destroy_process_group`` after DeepEP aborts). Rank 0's driver then merges
every part under ``<out>/parts`` (this run's and earlier runs') into
``<out>/multi_proof.json``. Phases (``--phases``, in this order):

``live``   ``jitcache warmup`` (``jitcache.warm.live.live_warmup_cli``) on every rank
           from one empty shared jitcache root ``<work>/live``: the ranks first
           precompile the plan with nvcc, split between them, then drive DeepEP
           through every step (which must then compile nothing); per rank the
           wall time and the CPU seconds of the process and of its nvcc
           children (``getrusage``); then the shared cache is scanned: every
           plan variant must have exactly one entry.
``live_plain`` the same with ``precompile=False`` (``--no-precompile``) into
           ``<work>/live_plain``: DeepEP compiles each kernel on every rank (no
           cross-process lock in DeepJIT), the live warmup as it was before.
``lazy``   DeepEP alone, without jitcache: each rank with its OWN empty
           ``EP_JIT_CACHE_DIR`` (``<work>/lazy/rank<R>``), the plan's buckets
           passed straight to ``EPBuffer.dispatch``/``combine`` in the same
           order, so DeepEP compiles each kernel on first use on every rank (what
           ranks do without a shared cache). Same measurements.
``aot``    ``jitcache warmup --aot --distributed`` (the CLI, gloo) on every
           rank into an empty ``<work>/aot``: the ranks split the variants;
           wall, compiles per rank, the union of the compiled entries against
           the plan, no entry compiled twice, and (when ``live`` ran) whether
           the AOT entry names equal DeepEP's own from ``live``.
``trace``  ``--trace-steps`` (2,000) decode steps through
           ``BucketedDispatcher(strict=True)`` on the cache of ``live`` (else
           ``aot``), each rank with its own random token count, the counts
           all-gathered every step (``num_tokens_across_dp``) so that every rank
           picks the same DP-uniform bucket; each step also calls DeepEP
           directly with that bucket: new cache entries, misses, bucket
           agreement across ranks, and equality of the received rows (valid rows
           in source order) and of the combined output. A per-step watchdog turns
           a hang into a part file that says where.

Importable without a GPU: torch and deep_ep are imported inside functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from _common import compare_with_direct  # noqa: E402

PHASES = ("live", "live_plain", "lazy", "aot", "trace")
DEFAULT_BUDGETS = {"live": 300.0, "live_plain": 300.0, "lazy": 300.0, "aot": 180.0, "trace": 240.0}
MERGED = "multi_proof.json"
LAZY_NOTE = ("DeepEP without jitcache: each rank has its own empty EP_JIT_CACHE_DIR, as ranks do without a shared "
             "cache, so each rank compiles every kernel on first use")
LIVE_NOTE = ("jitcache live warmup on one shared empty cache: the ranks precompile the plan with nvcc first, each "
             "compiling its share of the variants (a per-entry file lock makes every entry once per node), then "
             "drive DeepEP through every step, which finds every kernel cached")
LIVE_PLAIN_NOTE = ("jitcache live warmup with --no-precompile on one shared empty cache: DeepJIT has no cross-process "
             "lock, so ranks stepping "
             "through the plan in lockstep may each compile the same kernel at once (the loser of the directory "
             "rename discards its build); the compile CPU of the live warmup is therefore expected to be close to "
             "the lazy baseline's. What the shared cache saves is every later start (and every rank that finds "
             "the entries)")
CPU_NOTE = ("compile CPU = CPU seconds of the rank process's waited-for children (nvcc, cicc, ptxas: DeepJIT runs "
            "nvcc through popen) during the warmup, getrusage(RUSAGE_CHILDREN); process CPU = the rank process's own "
            "(Python, CUDA and NCCL threads), getrusage(RUSAGE_SELF)")


def say(message: str) -> None:
    rank = os.environ.get("RANK", "?")
    print(f"[{time.strftime('%H:%M:%S')} r{rank}] {message}", flush=True)


# -- small pure helpers (tested on CPU) --------------------------------------------------------


def part_path(out: str | Path, phase: str, rank: int) -> Path:
    return Path(out) / "parts" / f"{phase}.rank{rank}.json"


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def cpu_times() -> dict:
    """CPU seconds so far: this process (user+sys) and its waited-for children (user+sys)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": own.ru_utime + own.ru_stime, "children": kids.ru_utime + kids.ru_stime}


def cpu_delta(before: dict, after: dict) -> dict:
    return {"process_cpu_seconds": round(after["self"] - before["self"], 3),
            "compile_cpu_seconds": round(after["children"] - before["children"], 3)}


def trace_sizes(steps: int, seed: int, rank: int, cap: int, dist_kind: str = "loguniform") -> list[int]:
    """This rank's token counts: different on each rank (the seed mixes the rank in), 1..cap.

    ``loguniform`` (default) visits every power-of-two bucket about equally often; ``uniform`` mostly the top ones.
    """
    rng = random.Random(seed * 1_000_003 + rank)
    if dist_kind == "uniform":
        return [rng.randint(1, cap) for _ in range(steps)]
    top = math.log2(cap)
    return [min(cap, max(1, int(2 ** rng.uniform(0, top + 1e-9)))) for _ in range(steps)]


def gather_counts(local_num_tokens: int, stop: bool, group=None, device=None) -> tuple[list[int], bool]:
    """One all_gather of ``[num_tokens, stop]`` per step: the DP token counts, and whether any rank wants to stop.

    Carrying the stop flag in the step's own collective lets every rank leave the
    trace at the same step when one rank failed, instead of hanging in the next
    DeepEP collective.
    """
    import torch
    import torch.distributed as dist

    world = dist.get_world_size(group)
    mine = torch.tensor([int(local_num_tokens), int(bool(stop))], dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    rows = torch.stack(everyone).cpu().tolist()
    return [int(r[0]) for r in rows], any(int(r[1]) for r in rows)


def bucket_digest(buckets: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, buckets)).encode()).hexdigest()[:16]


# -- merge and report (rank 0's driver; also `--merge-only`; tested on CPU with fake parts) ----------


def load_parts(out: str | Path) -> dict[str, dict[int, dict]]:
    parts: dict[str, dict[int, dict]] = {}
    folder = Path(out) / "parts"
    for path in sorted(folder.glob("*.rank*.json")) if folder.is_dir() else []:
        phase, _, rank = path.name[:-len(".json")].rpartition(".rank")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            data = {"ok": False, "error": f"unreadable part {path.name}: {exc}"}
        if rank.isdigit():
            parts.setdefault(phase, {})[int(rank)] = data
    return parts


def _ranks_view(ranks: dict[int, dict], world: int | None) -> tuple[list[int], list[int], list[int]]:
    expected = list(range(world)) if world else sorted(ranks)
    missing = [r for r in expected if r not in ranks]
    failed = [r for r in expected if r in ranks and not ranks[r].get("ok")]
    return expected, missing, failed


def _sum(ranks: dict[int, dict], key: str) -> float | None:
    values = [r.get(key) for r in ranks.values()]
    return round(sum(values), 3) if values and all(isinstance(v, (int, float)) for v in values) else None


def _sum_values(per_rank: dict) -> int | float | None:
    values = list(per_rank.values())
    return sum(values) if values and all(isinstance(v, (int, float)) for v in values) else None


def _max(ranks: dict[int, dict], key: str) -> float | None:
    values = [r.get(key) for r in ranks.values() if isinstance(r.get(key), (int, float))]
    return max(values) if values else None


def summarize_live(ranks: dict[int, dict], world: int | None, *, note: str) -> dict:
    expected, missing, failed = _ranks_view(ranks, world)
    shared = next((r["shared_cache"] for _, r in sorted(ranks.items()) if r.get("shared_cache")), None)
    summary = {
        "note": note, "cpu_note": CPU_NOTE,
        "ranks": len(expected), "ranks_missing": missing, "ranks_failed": failed,
        "every_rank_finished": not missing and not failed,
        "wall_seconds_max": _max(ranks, "wall_seconds"),
        "compile_cpu_seconds_total": _sum(ranks, "compile_cpu_seconds"),
        "process_cpu_seconds_total": _sum(ranks, "process_cpu_seconds"),
        "compile_cpu_seconds_per_rank": {str(k): v.get("compile_cpu_seconds") for k, v in sorted(ranks.items())},
        "ranks_that_ran_nvcc": sorted(k for k, v in ranks.items() if (v.get("compile_cpu_seconds") or 0) > 1.0),
        "entries_per_rank_cache": {str(k): v.get("entries_after") for k, v in sorted(ranks.items())
                                   if v.get("entries_after") is not None},
    }
    reports = {k: v.get("report") for k, v in sorted(ranks.items()) if isinstance(v.get("report"), dict)}
    if reports:
        summary["live_steps_that_compiled_per_rank"] = {str(k): (r.get("totals") or {}).get("compiled")
                                                       for k, r in reports.items()}
    pre = {k: r["precompile"] for k, r in reports.items() if isinstance(r.get("precompile"), dict)}
    if pre:
        summary["precompile_per_rank"] = {str(k): {f: v for f, v in p.items() if f != "entries"}
                                          for k, p in pre.items()}
        # PrecompileResult's counts are the group's (every rank returns the same): rank 0's, not a sum
        first = pre[min(pre)]
        summary["precompile_compiled"] = first.get("compiled")
        summary["precompile_status"] = sorted({p.get("status") for p in pre.values()})
        summary["precompile_missed_by_live"] = first.get("missed_by_live")
    if shared is not None:
        summary["shared_cache"] = shared
        summary["every_variant_exists_once"] = bool(shared.get("every_variant_exactly_once"))
    return summary


def summarize_aot(ranks: dict[int, dict], world: int | None) -> dict:
    expected, missing, failed = _ranks_view(ranks, world)
    compiled_by: dict[str, list[int]] = {}
    all_entries: set[str] = set()
    for rank, data in ranks.items():
        for result in (data.get("report") or {}).get("results", []):
            all_entries.add(result["entry"])
            if result.get("status") == "compiled":
                compiled_by.setdefault(result["entry"], []).append(rank)
    twice = sorted(e for e, who in compiled_by.items() if len(who) > 1)
    reports = [d.get("report") or {} for d in ranks.values()]
    num_variants = {r.get("num_variants") for r in reports if r}
    summary = {
        "ranks": len(expected), "ranks_missing": missing, "ranks_failed": failed,
        "every_rank_finished": not missing and not failed,
        "wall_seconds_max": _max(ranks, "wall_seconds"),
        "num_variants": num_variants.pop() if len(num_variants) == 1 else sorted(num_variants),
        "compiled_per_rank": {str(k): sum(1 for res in (v.get("report") or {}).get("results", [])
                                          if res.get("status") == "compiled") for k, v in sorted(ranks.items())},
        "compiled_union": len(compiled_by),
        "compiled_twice": twice,
        "union_equals_plan": bool(all_entries) and set(compiled_by) == all_entries and not twice,
        "cli_process_tree_cpu_seconds_total": _sum(ranks, "cli_process_tree_cpu_seconds"),
    }
    same = [d.get("aot_entries_equal_live_entries") for d in ranks.values()
            if d.get("aot_entries_equal_live_entries") is not None]
    if same:
        summary["aot_entries_equal_live_entries"] = all(same)
    return summary


def summarize_trace(ranks: dict[int, dict], world: int | None) -> dict:
    expected, missing, failed = _ranks_view(ranks, world)
    planned = {d.get("steps_planned") for d in ranks.values()} - {None}
    steps_planned = planned.pop() if len(planned) == 1 else None
    digests = {d.get("bucket_digest") for d in ranks.values()}
    new_entries = sorted({e for d in ranks.values() for e in d.get("new_cache_entries", [])})
    hang = {str(k): v.get("watchdog") for k, v in sorted(ranks.items()) if v.get("watchdog")}
    complete = bool(steps_planned) and not missing and all(d.get("steps") == steps_planned for d in ranks.values())
    summary = {
        "ranks": len(expected), "ranks_missing": missing, "ranks_failed": failed,
        "cache_used": sorted({d.get("cache_used") for d in ranks.values()} - {None}),
        "steps_planned": steps_planned,
        "steps_done_per_rank": {str(k): v.get("steps") for k, v in sorted(ranks.items())},
        "all_steps_done": complete,
        "no_hang": not hang and not missing,
        "watchdog": hang,
        "buckets_agree_across_ranks": len(digests) == 1 and None not in digests and not missing,
        "new_cache_entries": new_entries,
        "misses_total": _sum(ranks, "misses"),
        "refused_total": _sum(ranks, "refused"),
        "errors_total": _sum(ranks, "errors"),
        "recv_equal_total": _sum(ranks, "recv_equal"),
        "combined_equal_total": _sum(ranks, "combined_equal"),
        "bucket_matches_handle_total": _sum(ranks, "handle_bucket_ok"),
    }
    summary["all_identical"] = bool(complete and all(
        d.get("recv_equal") == steps_planned and d.get("combined_equal") == steps_planned for d in ranks.values()))
    summary["passed"] = bool(complete and summary["no_hang"] and summary["buckets_agree_across_ranks"]
                             and not new_entries and summary["misses_total"] == 0 and summary["errors_total"] == 0
                             and summary["all_identical"])
    return summary


def merge(out: str | Path, world: int | None = None, meta: dict | None = None) -> dict:
    """Every phase's parts under ``<out>/parts`` -> one report (``world``: the ranks expected; else those found)."""
    parts = load_parts(out)
    merged: dict = {"benchmark": "gpu_multi_proof", "merged_at": time.time(), **(meta or {}), "phases": {}}
    for phase in PHASES:
        ranks = parts.get(phase)
        if not ranks:
            continue
        worlds = {d.get("world_size") for d in ranks.values()} - {None}
        expected = world or (worlds.pop() if len(worlds) == 1 else None)
        if phase in ("live", "live_plain"):
            summary = summarize_live(ranks, expected, note=LIVE_NOTE if phase == "live" else LIVE_PLAIN_NOTE)
        elif phase == "lazy":
            summary = summarize_live(ranks, expected, note=LAZY_NOTE)
        elif phase == "aot":
            summary = summarize_aot(ranks, expected)
        else:
            summary = summarize_trace(ranks, expected)
        merged["phases"][phase] = {"summary": summary, "ranks": {str(k): v for k, v in sorted(ranks.items())}}
    summaries = {k: v["summary"] for k, v in merged["phases"].items()}
    top: dict = {"phases_present": list(summaries), "phases_absent": [p for p in PHASES if p not in summaries]}
    if "live" in summaries:
        top["live_every_rank_finished"] = summaries["live"]["every_rank_finished"]
        top["live_every_variant_exists_once"] = summaries["live"].get("every_variant_exists_once")
        top["live_wall_seconds"] = summaries["live"]["wall_seconds_max"]
        top["live_compile_cpu_seconds"] = summaries["live"]["compile_cpu_seconds_total"]
        if "precompile_compiled" in summaries["live"]:
            top["live_precompile_compiled"] = summaries["live"]["precompile_compiled"]
        if "live_steps_that_compiled_per_rank" in summaries["live"]:
            top["live_steps_that_compiled"] = _sum_values(summaries["live"]["live_steps_that_compiled_per_rank"])
    if "live_plain" in summaries:
        top["live_plain_every_variant_exists_once"] = summaries["live_plain"].get("every_variant_exists_once")
        top["live_plain_wall_seconds"] = summaries["live_plain"]["wall_seconds_max"]
        top["live_plain_compile_cpu_seconds"] = summaries["live_plain"]["compile_cpu_seconds_total"]
    if "lazy" in summaries:
        top["lazy_every_rank_finished"] = summaries["lazy"]["every_rank_finished"]
        top["lazy_wall_seconds"] = summaries["lazy"]["wall_seconds_max"]
        top["lazy_compile_cpu_seconds"] = summaries["lazy"]["compile_cpu_seconds_total"]
    live_cpu, lazy_cpu = top.get("live_compile_cpu_seconds"), top.get("lazy_compile_cpu_seconds")
    if live_cpu is not None and lazy_cpu:
        top["live_over_lazy_compile_cpu"] = round(live_cpu / lazy_cpu, 3)
    if top.get("live_wall_seconds") and top.get("lazy_wall_seconds"):
        top["lazy_over_live_wall"] = round(top["lazy_wall_seconds"] / top["live_wall_seconds"], 2)
    if "aot" in summaries:
        top["aot_wall_seconds"] = summaries["aot"]["wall_seconds_max"]
        top["aot_union_equals_plan"] = summaries["aot"]["union_equals_plan"]
        top["aot_compiled_per_rank"] = summaries["aot"]["compiled_per_rank"]
        top["aot_cpu_seconds"] = summaries["aot"]["cli_process_tree_cpu_seconds_total"]
        if "aot_entries_equal_live_entries" in summaries["aot"]:
            top["aot_entries_equal_live_entries"] = summaries["aot"]["aot_entries_equal_live_entries"]
    if "trace" in summaries:
        t = summaries["trace"]
        top.update(trace_passed=t["passed"], trace_new_cache_entries=len(t["new_cache_entries"]),
                   trace_misses=t["misses_total"], trace_no_hang=t["no_hang"],
                   trace_buckets_agree=t["buckets_agree_across_ranks"], trace_all_identical=t["all_identical"])
    merged["summary"] = top
    return merged


# -- child processes (one per rank and phase; GPU work) ----------------------------------------------


class Watchdog:
    """Writes this rank's part and exits when the phase budget is spent or no step finished for ``step_timeout``."""

    def __init__(self, path: Path, base: dict, budget_s: float, step_timeout_s: float | None = None) -> None:
        self.path, self.base, self.budget_s, self.step_timeout_s = path, base, budget_s, step_timeout_s
        self.partial: dict = {}
        self.stage = "start"
        self.start = self.last = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def beat(self, stage: str | None = None) -> None:
        self.last = time.monotonic()
        if stage is not None:
            self.stage = stage

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            why = None
            if now - self.start > self.budget_s:
                why = f"phase budget of {self.budget_s:.0f} s spent"
            elif self.step_timeout_s and now - self.last > self.step_timeout_s:
                why = f"no progress for {now - self.last:.0f} s (step timeout {self.step_timeout_s:.0f} s)"
            if why and not self._stop.is_set():
                data = {**self.base, **self.partial, "ok": False, "error": f"watchdog: {why} at {self.stage}",
                        "watchdog": {"reason": why, "stage": self.stage, "seconds": round(now - self.start, 1)}}
                try:
                    write_json(self.path, data)
                finally:
                    say(f"watchdog: {why} at {self.stage}; exiting")
                    os._exit(3)


def _environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "gpus_visible": torch.cuda.device_count(), "host": socket.gethostname(), "cpu_count": os.cpu_count()}
    try:
        import deep_ep
        info["deep_ep"] = getattr(deep_ep, "__version__", "?")
    except Exception as exc:  # noqa: BLE001
        info["deep_ep_error"] = repr(exc)
    for key in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS", "EP_DISABLE_GIN",
                "EP_JIT_CACHE_DIR"):
        info[key] = os.environ.get(key)
    return info


def _sync() -> None:
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.ones(1, device="cuda"))
    torch.cuda.synchronize()


def _inputs(n: int, seed: int, profile):
    import torch

    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    m = profile.model
    idx = torch.rand((n, m.num_experts), generator=g, device="cuda").topk(m.num_topk, dim=1).indices.to(torch.int64)
    weights = torch.rand((n, m.num_topk), generator=g, device="cuda", dtype=torch.float32)
    x = torch.randn((n, m.hidden), generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)
    return x, idx, weights


def _shared_cache_facts(root, profile) -> dict:
    """Rank 0 after the live warmup: entries in the shared cache, and how many each plan variant has."""
    from jitcache.store.deepep_cache import committed_entries
    from jitcache.store.scan import coverage, scan_deep_ep
    from jitcache.planning.variants import plan

    entries, _ = scan_deep_ep(root.deep_ep_dir, check_cubins=True)
    cov = coverage(plan(profile), entries)
    per_variant = [len(paths) for _, paths in cov.present]
    tmp = root.deep_ep_dir / "tmp"
    return {"entries": len(committed_entries("2.5", [root.deep_ep_dir])),
            "coverage": cov.to_dict(),
            "variants": cov.num_variants,
            "variants_with_one_entry": sum(1 for n in per_variant if n == 1),
            "variants_with_several_entries": sum(1 for n in per_variant if n > 1),
            "variants_missing": len(cov.missing),
            "every_variant_exactly_once": not cov.missing and all(n == 1 for n in per_variant),
            "tmp_leftovers": len(list(tmp.iterdir())) if tmp.is_dir() else 0}


def child_live(args: argparse.Namespace, dog: Watchdog) -> dict:
    from jitcache.store.root import activate

    precompile = args.child == "live"  # live_plain: --no-precompile, DeepEP compiles on every rank
    root = activate(Path(args.work) / args.child)  # before deep_ep is imported (it reads EP_JIT_CACHE_DIR once)
    from jitcache.warm.live import init_torchrun_group, live_warmup_cli
    from jitcache.planning.profiles import load_profile

    dog.beat("init NCCL")
    init_torchrun_group()
    profile = load_profile(args.profile)

    def progress(event) -> None:
        if event.result is not None:
            dog.partial["steps_done"] = event.done
            say(f"live {event.done}/{event.total} nmax={event.result.num_max_tokens_per_rank} {event.result.status} "
                f"{event.result.seconds:.1f}s")

    dog.beat("live warmup")
    before = cpu_times()
    t0 = time.perf_counter()
    report = live_warmup_cli(profile, cache_dir=root.path, progress=progress, precompile=precompile,
                             jobs=args.aot_jobs or None)
    wall = time.perf_counter() - t0
    result = {"wall_seconds": round(wall, 3), **cpu_delta(before, cpu_times()), "cache_dir": str(root.path),
              "report": report.to_dict(), "compiled_steps": report.num_compiled,
              "entries_seen_written": report.num_entries_written, "environment": _environment()}
    dog.beat("barrier")
    _sync()
    import torch.distributed as dist
    if dist.get_rank() == 0:
        result["shared_cache"] = _shared_cache_facts(root, profile)
    return result


def child_lazy(args: argparse.Namespace, dog: Watchdog) -> dict:
    # The driver pointed EP_JIT_CACHE_DIR at this rank's own empty folder before this process started.
    from jitcache.store.deepep_cache import committed_entries
    from jitcache.warm.live import init_torchrun_group, make_buffer
    from jitcache.planning.profiles import load_profile
    from jitcache.planning.variants import plan

    import torch
    import torch.distributed as dist

    own = Path(os.environ["EP_JIT_CACHE_DIR"])
    dog.beat("init NCCL")
    init_torchrun_group()
    rank = dist.get_rank()
    profile = load_profile(args.profile)
    buffer = make_buffer(profile, dist.group.WORLD)  # EPBuffer(...) with the profile's capacity, dims, QPs, timeout
    buckets = [b for mode, b in plan(profile).steps() if mode == "decode"]
    steps = []
    before = cpu_times()
    t0 = time.perf_counter()
    for i, bucket in enumerate(buckets):
        dog.beat(f"lazy bucket {bucket}")
        x, idx, weights = _inputs(bucket, 7919 * rank + bucket, profile)
        had = committed_entries("2.5", [own])
        s0 = time.perf_counter()
        out = buffer.dispatch(x, topk_idx=idx, topk_weights=weights, num_experts=profile.model.num_experts,
                              num_max_tokens_per_rank=bucket, expert_alignment=profile.deep_ep.expert_alignment,
                              num_sms=profile.deep_ep.num_sms, do_expand=False, do_cpu_sync=False)
        buffer.combine(out[0], out[3], topk_weights=out[2])
        torch.cuda.synchronize()
        new = sorted(committed_entries("2.5", [own]) - had)
        steps.append({"num_max_tokens_per_rank": bucket, "seconds": round(time.perf_counter() - s0, 3),
                      "entries_written": len(new)})
        dog.partial["steps_done"] = i + 1
        if rank == 0:
            say(f"lazy {i + 1}/{len(buckets)} nmax={bucket}: {steps[-1]['seconds']:.1f}s, {len(new)} new entries")
    wall = time.perf_counter() - t0
    result = {"wall_seconds": round(wall, 3), **cpu_delta(before, cpu_times()), "cache_dir": str(own),
              "num_sms_passed": profile.deep_ep.num_sms, "steps": steps,
              "entries_after": len(committed_entries("2.5", [own])), "environment": _environment()}
    dog.beat("barrier")
    _sync()
    buffer.destroy()
    return result


def child_trace(args: argparse.Namespace, dog: Watchdog) -> dict:
    work = Path(args.work)
    choice = args.trace_cache
    if choice == "auto":
        choice = "live" if (work / "live" / "deep_ep" / "cache").is_dir() else "aot"
    from jitcache.store.root import activate

    root = activate(work / choice)  # before deep_ep is imported
    from jitcache.runtime.dispatcher import BucketedDispatcher
    from jitcache.store.deepep_cache import committed_entries, warm_buckets_from_cache
    from jitcache.warm.live import init_torchrun_group, load_report, make_buffer
    from jitcache.errors import JitCacheError
    from jitcache.planning.profiles import load_profile

    import torch
    import torch.distributed as dist

    dog.beat("init NCCL")
    init_torchrun_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device())
    profile = load_profile(args.profile)
    policy = profile.policy
    buffer = make_buffer(profile, dist.group.WORLD)
    result: dict = {"cache_used": choice, "cache_dir": str(root.path), "steps_planned": args.trace_steps,
                    "num_sms_profile": profile.deep_ep.num_sms, "trace_distribution": args.trace_dist}
    try:
        result["num_sms_deep_ep_would_choose"] = buffer.get_theoretical_num_sms(profile.model.num_experts,
                                                                                profile.model.num_topk)
    except Exception as exc:  # noqa: BLE001 - informative only (it runs nvidia-smi)
        result["num_sms_deep_ep_would_choose"] = f"{type(exc).__name__}: {exc}"
    scanned = warm_buckets_from_cache("2.5", [root.deep_ep_dir], profile)
    result["scan_warm_buckets"] = sorted(scanned)
    warm = None
    try:
        report = load_report(profile, root.path)
        result["report_warm_buckets"] = sorted(report.warm_buckets())
        if report.warm_buckets() != scanned:
            warm = report
    except JitCacheError:
        result["report_warm_buckets"] = None  # an AOT-filled root has no live warmup report
    result["dispatcher_warm_source"] = "cache scan" if warm is None else "warmup report (scan disagreed)"
    dispatcher = BucketedDispatcher(buffer, profile, strict=True, warm=warm)
    before = committed_entries("2.5", [root.deep_ep_dir])
    sizes = trace_sizes(args.trace_steps, args.seed, rank, policy.max_num_batched_tokens, args.trace_dist)
    counts = {"steps": 0, "recv_equal": 0, "recv_raw_positional_equal": 0, "combined_equal": 0,
              "handle_bucket_ok": 0, "errors": 0}
    buckets: list[int] = []
    first_errors: list[str] = []
    mismatches: list[dict] = []
    failed = False
    stopped_at = None
    common = {"num_experts": profile.model.num_experts, "expert_alignment": profile.deep_ep.expert_alignment,
              "do_expand": False, "do_cpu_sync": False}
    dog.beat("trace start")
    t0 = time.perf_counter()
    for step, n in enumerate(sizes):
        dog.beat(f"step {step}: all_gather of the token counts")
        across, stop = gather_counts(n, failed, device=device)
        if stop:
            stopped_at = step
            break
        bucket = policy.for_dp(across)
        buckets.append(bucket)
        try:
            x, idx, weights = _inputs(n, args.seed * 1_000_003 + step * 64 + rank, profile)
            kw = {"topk_idx": idx, "topk_weights": weights, **common}
            dog.beat(f"step {step}: dispatcher.dispatch (bucket {bucket}, counts {across})")
            a = dispatcher.dispatch(x, num_tokens_across_dp=across, **kw)  # num_sms left to the dispatcher
            dog.beat(f"step {step}: direct dispatch")
            b = buffer.dispatch(x, num_max_tokens_per_rank=bucket, num_sms=profile.deep_ep.num_sms, **kw)
            dog.beat(f"step {step}: combine")
            ca = dispatcher.combine(a[0], a[3], topk_weights=a[2])
            cb = buffer.combine(b[0], b[3], topk_weights=b[2])
            torch.cuda.synchronize()
            same = compare_with_direct(a, b, ca, cb)
            recv_ok, raw_ok, comb_ok = same["recv_equal"], same["recv_raw_positional_equal"], same["combined_equal"]
            counts["steps"] += 1
            counts["recv_equal"] += recv_ok
            counts["recv_raw_positional_equal"] += raw_ok
            counts["combined_equal"] += comb_ok
            counts["handle_bucket_ok"] += int(a[3].num_max_tokens_per_rank == bucket)
            if not (recv_ok and comb_ok) and len(mismatches) < 10:
                diff = None
                if ca[0] is not None and cb[0] is not None and ca[0].shape == cb[0].shape:
                    diff = float((ca[0].float() - cb[0].float()).abs().max().item()) if ca[0].numel() else 0.0
                mismatches.append({"step": step, "num_tokens": n, "across_dp": across, "bucket": bucket,
                                   "valid_rows": same["valid_rows"], "recv_equal": recv_ok, "combined_equal": comb_ok,
                                   "combined_max_abs_diff": diff})
        except Exception as exc:  # noqa: BLE001 - recorded; every rank stops at the next step's all_gather
            counts["errors"] += 1
            failed = True
            if len(first_errors) < 5:
                first_errors.append(f"step {step} n={n} bucket={bucket}: {type(exc).__name__}: {exc}")
        dog.partial.update(counts, steps_reached=step + 1)
        if rank == 0 and step % 250 == 0:
            say(f"trace step {step}/{args.trace_steps} counts={across} bucket={bucket} {counts}")
    seconds = time.perf_counter() - t0
    dog.beat("barrier")
    _sync()
    after = committed_entries("2.5", [root.deep_ep_dir])
    snap = dispatcher.stats()
    result.update(counts)
    result.update(
        seconds=round(seconds, 3), stopped_at=stopped_at, world_size=world,
        new_cache_entries=sorted(after - before), misses=snap.total_misses, refused=snap.total_refused,
        calls_per_bucket={str(k): v for k, v in snap.calls}, real_rows=snap.real_rows, padded_rows=snap.padded_rows,
        local_sizes_min_max=[min(sizes), max(sizes)], bucket_digest=bucket_digest(buckets),
        buckets_first=buckets[:20], mismatches=mismatches, errors_first=first_errors,
        environment=_environment())
    buffer.destroy()
    return result


CHILDREN = {"live": child_live, "live_plain": child_live, "lazy": child_lazy, "trace": child_trace}


def run_child(args: argparse.Namespace) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    path = part_path(args.out, args.child, rank)
    base = {"phase": args.child, "rank": rank, "world_size": world, "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "profile": args.profile, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    step_timeout = args.step_timeout_s if args.child == "trace" else None
    dog = Watchdog(path, base, args.budget_s, step_timeout)
    try:
        data = {**base, "ok": True, **CHILDREN[args.child](args, dog)}
    except BaseException as exc:  # noqa: BLE001 - the part must say what happened
        data = {**base, **dog.partial, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                "stage": dog.stage, "traceback": traceback.format_exc()}
    dog.stop()
    data["finished"] = time.time()
    write_json(path, data)
    say(f"{args.child} done: ok={data['ok']}" + (f" ({data.get('error')})" if not data["ok"] else ""))
    sys.stdout.flush()
    os._exit(0)  # never destroy_process_group after DeepEP: it aborts ("corrupted comm object")


# -- the driver (one per torchrun rank; no CUDA) -------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _broadcast_int(value: int) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return int(t.item())


def _child_env(port: int) -> dict:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "JITCACHE_STATS": "0",
           "PYTHONUNBUFFERED": "1"}
    # torchrun's workers join the agent's store as clients; our children host their own on the new port.
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    env.pop("EP_JIT_CACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _learn_entry(work: Path) -> Path | None:
    for folder in (work / "live" / "deep_ep" / "cache", work / "lazy" / "rank0" / "cache"):
        for entry in sorted(folder.glob("dispatch.*")) if folder.is_dir() else []:
            if (entry / "meta.json").is_file() and (entry / ".committed").is_file():
                return entry
    return None


def _prepare(phase: str, work: Path, out: Path, world: int) -> None:
    """Rank 0: empty caches for the phase, and no stale parts of it."""
    targets = {"live": [work / "live"], "live_plain": [work / "live_plain"], "lazy": [work / "lazy"],
               "aot": [work / "aot"], "trace": []}[phase]
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    if phase == "lazy":
        for r in range(world):
            (work / "lazy" / f"rank{r}").mkdir(parents=True, exist_ok=True)
    for stale in (out / "parts").glob(f"{phase}.rank*.json") if (out / "parts").is_dir() else []:
        stale.unlink()


def _run_aot(args: argparse.Namespace, env: dict, rank: int, world: int, budget: float) -> dict:
    work, out = Path(args.work), Path(args.out)
    jobs = args.aot_jobs or max(1, (os.cpu_count() or 1) // world)
    cmd = [sys.executable, "-m", "jitcache.cli", "warmup", "--aot", "--distributed", "--profile", args.profile,
           "--cache-dir", str(work / "aot"), "--jobs", str(jobs), "--format", "json"]
    learn = _learn_entry(work) if args.aot_learn == "auto" else None
    if learn is not None:
        cmd += ["--learn-from", str(learn)]
    if args.deep_ep_include:
        cmd += ["--deep-ep-include", args.deep_ep_include]
    data: dict = {"phase": "aot", "rank": rank, "world_size": world, "profile": args.profile, "jobs": jobs,
                  "command": cmd, "learned_from_entry": str(learn) if learn else None, "started": time.time()}
    log = out / "parts" / f"aot.rank{rank}.stderr.txt"
    before = cpu_times()
    t0 = time.perf_counter()
    try:
        with open(log, "w") as err:
            done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=budget,
                                  cwd=str(REPO))
        data["exit_code"] = done.returncode
        try:
            data["report"] = json.loads(done.stdout)
        except ValueError:
            data["stdout_tail"] = done.stdout[-2000:]
        data["ok"] = done.returncode == 0 and bool((data.get("report") or {}).get("ok"))
        if not data["ok"]:
            data["error"] = f"jitcache warmup --aot exited {done.returncode} (stderr: {log})"
    except subprocess.TimeoutExpired:
        data.update(ok=False, error=f"timed out after {budget:.0f} s", timed_out=True)
    data["wall_seconds"] = round(time.perf_counter() - t0, 3)
    data["cli_process_tree_cpu_seconds"] = round(cpu_times()["children"] - before["children"], 3)
    live_cache = work / "live" / "deep_ep" / "cache"
    aot_cache = work / "aot" / "deep_ep" / "cache"
    if rank == 0 and data.get("ok") and live_cache.is_dir():
        names = lambda d: {p.name for p in d.iterdir() if (p / ".committed").is_file()}  # noqa: E731
        live_names, aot_names = names(live_cache), names(aot_cache)
        data["aot_entries_equal_live_entries"] = live_names == aot_names
        data["aot_only_entries"] = sorted(aot_names - live_names)[:10]
        data["live_only_entries"] = sorted(live_names - aot_names)[:10]
    return data


def run_driver(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    out, work = Path(args.out), Path(args.work)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo")  # the drivers' own group: coordination only, CPU
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phase(s) {unknown}; choose from {','.join(PHASES)}")
    budgets = {**DEFAULT_BUDGETS, **{p: float(s) for p, s in (kv.split("=") for kv in args.budget if kv)}}
    meta = {"profile": args.profile, "world_size": world, "work": str(work), "argv": sys.argv[1:]}
    for phase in (p for p in PHASES if p in phases):
        budget = budgets[phase]
        if rank == 0:
            _prepare(phase, work, out, world)
            say(f"phase {phase} (budget {budget:.0f} s) ...")
        dist.barrier()
        port = _broadcast_int(_free_port() if rank == 0 else 0)
        env = _child_env(port)
        t0 = time.perf_counter()
        path = part_path(out, phase, rank)
        if phase == "aot":
            write_json(path, _run_aot(args, env, rank, world, budget + 30))
        else:
            if phase == "lazy":
                env["EP_JIT_CACHE_DIR"] = str(work / "lazy" / f"rank{rank}")
            cmd = [sys.executable, str(HERE), "--child", phase, "--profile", args.profile, "--out", str(out),
                   "--work", str(work), "--budget-s", str(budget), "--step-timeout-s", str(args.step_timeout_s),
                   "--trace-steps", str(args.trace_steps), "--trace-cache", args.trace_cache,
                   "--trace-dist", args.trace_dist, "--seed", str(args.seed)]
            try:
                code = subprocess.run(cmd, env=env, timeout=budget + 30, cwd=str(REPO)).returncode
                timed_out = False
            except subprocess.TimeoutExpired:
                code, timed_out = None, True
            data = json.loads(path.read_text()) if path.is_file() else None
            if data is None:
                data = {"phase": phase, "rank": rank, "world_size": world, "ok": False,
                        "error": (f"killed after {budget + 30:.0f} s" if timed_out else f"exited {code}")
                        + " without writing its part (crash, or a hang its watchdog did not catch)"}
            data.update(exit_code=code, driver_timed_out=timed_out,
                        driver_wall_seconds=round(time.perf_counter() - t0, 3))
            write_json(path, data)
        dist.barrier()
        if rank == 0:
            merged = merge(out, world, meta)
            write_json(out / MERGED, merged)
            say(f"phase {phase}: {json.dumps(merged['phases'].get(phase, {}).get('summary', {}), default=str)[:1500]}")
    if rank == 0:
        say(f"wrote {out / MERGED}: {json.dumps(merge(out, world, meta)['summary'], default=str)}")
    dist.barrier()
    # No gloo teardown: a peer closing its sockets first can abort this process (seen as SIGABRT in CI).
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="h200x2-ep2")
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results/h200x2"),
                        help="where parts/ and multi_proof.json go")
    parser.add_argument("--work", default="/tmp/jitcache-multi/work",
                        help="the caches: live/, live_plain/, lazy/rank<R>/, aot/ (kept between torchrun calls)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated, run in the order "
                        + ",".join(PHASES))
    parser.add_argument("--budget", action="append", default=[],
                        help="PHASE=SECONDS (repeatable); defaults: "
                        + ", ".join(f"{k}={v:.0f}" for k, v in DEFAULT_BUDGETS.items()))
    parser.add_argument("--trace-steps", type=int, default=2000)
    parser.add_argument("--trace-cache", choices=("auto", "live", "aot"), default="auto",
                        help="the cache the trace runs on (auto: live's if it exists, else aot's)")
    parser.add_argument("--trace-dist", choices=("loguniform", "uniform"), default="loguniform")
    parser.add_argument("--step-timeout-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--aot-jobs", type=int, default=0,
                        help="nvcc jobs per rank, for aot and live's precompile (default: cores / ranks)")
    parser.add_argument("--aot-learn", choices=("auto", "never"), default="auto",
                        help="auto: --learn-from an entry DeepEP wrote in live/ or lazy/ when there is one")
    parser.add_argument("--deep-ep-include", default=None)
    parser.add_argument("--merge-only", action="store_true", help="merge <out>/parts into multi_proof.json and stop")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    if args.merge_only:
        merged = merge(args.out, None, {"profile": args.profile})
        write_json(Path(args.out) / MERGED, merged)
        print(json.dumps(merged["summary"], indent=2, default=str))
        return 0
    return run_driver(args)


if __name__ == "__main__":
    sys.exit(main())
