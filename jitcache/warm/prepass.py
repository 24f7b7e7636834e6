"""The live warmup's first pass: compile the plan's kernels with nvcc, split over the ranks, where DeepEP reads.

DeepEP's JIT compiles in-process, one kernel at a time, and on every rank (it
has no cross-process lock). Before the live warmup dispatches anything,
:func:`precompile` renders the exact sources and digests of the buffer's DeepEP
(2.5 or 2.1) for the plan
and runs nvcc through :func:`jitcache.warm.aot.warmup_aot`: the ranks split the
jobs, per-entry locks make each entry compiled once per node, and the live
pass then finds in its cache the entries DeepEP would have written. Where our
digest disagrees with this DeepEP the live pass compiles as before; the
warmup report counts those steps (``missed_by_live``).

It is a collective, and every rank takes the same decision: each rank first
decides alone whether it can run (a profile, the headers of the
package the buffer class comes from, a toolchain, a writable cache folder),
then the ranks all-gather those decisions and the digests of the jobs they
rendered; all run, or all skip with a reason naming the ranks that could not.
Everything a rank can fail at alone happens before that exchange. The
``[target]`` facts a profile leaves at 0 (SM count, shared memory, clock, QPs)
are read from the GPU and the buffer the warmup runs on, as DeepEP reads them;
at EP>1 so is ``[deep_ep] num_sms = 0`` (``EPBuffer.get_theoretical_num_sms``). After the
compile the ranks all-gather their outcomes, so every rank returns the same
status and the group's counts. Nothing here stops a warmup: a failure is a
status, and the live pass compiles whatever is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from jitcache.adapters.registry import adapter_for_buffer, jobs_for_plan
from jitcache.build.toolchain import Toolchain
from jitcache.errors import JitCacheError
from jitcache.planning.buckets import BucketPolicy
from jitcache.planning.profiles import Profile, load_profile
from jitcache.planning.variants import plan
from jitcache.store.root import CacheRoot, resolve_root
from jitcache.warm.aot import warmup_aot
from jitcache.warm.collectives import all_gather_bytes, initialized_dist

__all__ = ["PrecompileResult", "buffer_headers", "live_target_facts", "precompile", "with_live_num_sms",
           "with_live_target"]

log = logging.getLogger("jitcache.prepass")

DONE = "done"
SKIPPED = "skipped"
FAILED = "failed"
_COUNTS = ("compiled", "cached", "deduplicated", "received", "failed")


@dataclass(frozen=True)
class PrecompileResult:
    """What the nvcc pass before a live warmup did; the same status and counts on every rank.

    Counts are over the group: each planned entry is counted once, by the rank
    whose share it was (``compiled``, ``cached``: already there,
    ``deduplicated``: another process built it meanwhile, ``failed``);
    ``received``: entries shipped over the group to ranks that lacked them (no
    shared filesystem). ``jobs`` is the nvcc processes per rank,
    ``report_path`` this rank's AOT report.
    """

    status: str  # "done" | "skipped" | "failed"
    reason: str = ""
    compiled: int = 0
    cached: int = 0
    deduplicated: int = 0
    received: int = 0
    failed: int = 0
    entries: tuple[str, ...] = ()
    wall_seconds: float = 0.0
    jobs: int | None = None
    world_size: int = 1
    deep_ep_headers_from: str | None = None
    report_path: str | None = None
    # [target] facts the profile left 0, read from the GPU and buffer; "num_sms": DeepEP's own choice at EP>1
    target_from_device: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["entries"] = list(self.entries)
        data["wall_seconds"] = round(self.wall_seconds, 3)
        return data


@dataclass(frozen=True)
class _Local:
    """One rank's own verdict, before the ranks compare theirs."""

    reason: str | None               # None: this rank can run
    the_plan: Any = None
    toolchain: Toolchain | None = None
    jobs: tuple = ()
    root: CacheRoot | None = None
    target_from_device: dict = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        if self.reason is not None:
            return {"ok": False, "reason": self.reason}
        names = json.dumps([j.entry for j in self.jobs]).encode()
        return {"ok": True, "jobs": hashlib.sha256(names).hexdigest()[:16]}


def buffer_headers(buffer: Any) -> tuple[Path, Path]:
    """``(package dir, include dir)`` of the package ``buffer``'s class comes from (``deep_ep/include``).

    Those are the headers this DeepEP compiles against: the top-level module of
    the class's ``__module__``, the folder of its ``__file__``, then ``include/``.
    The include dir may not exist; raises :class:`JitCacheError` when the
    package has no file to start from.
    """
    cls = buffer if isinstance(buffer, type) else type(buffer)
    top = cls.__module__.split(".")[0]
    module = sys.modules.get(top)
    if module is None:
        import importlib

        module = importlib.import_module(top)
    file = getattr(module, "__file__", None)
    if not file:
        raise JitCacheError(f"module {top!r} (of {cls.__module__}.{cls.__qualname__}) has no __file__, so its "
                            "DeepEP headers cannot be found")
    package_dir = Path(os.path.abspath(file)).parent  # as the package spells it: symlinks kept
    return package_dir, package_dir / "include"


#: TargetSpec fields DeepEP reads from the device at run time, and where a live process finds them.
_DEVICE_FACTS = {"num_device_sms": "multi_processor_count", "num_smem_bytes": "shared_memory_per_block_optin",
                 "clock_rate_khz": "clock_rate"}


def live_target_facts(buffer: Any) -> dict[str, int]:
    """What DeepEP will read here: the current CUDA device's SM count, opt-in shared memory per block and
    clock (kHz), and the buffer's ``num_allocated_qps``. Empty without torch or a GPU; unknown values left out."""
    facts: dict[str, int] = {}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        for name, attribute in _DEVICE_FACTS.items():
            facts[name] = getattr(props, attribute, 0)
    facts["num_allocated_qps"] = getattr(buffer, "num_allocated_qps", 0)
    return {k: v for k, v in facts.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}


def with_live_target(profile: Profile, facts: dict[str, int]) -> tuple[Profile, dict[str, int]]:
    """``profile`` with the ``[target]`` values it leaves at 0 (unknown) taken from ``facts``; and those taken.

    Values the profile sets win: they are what the cache is meant for, and a
    mismatch shows up as ``missed_by_live``.
    """
    taken = {k: v for k, v in facts.items() if getattr(profile.target, k) <= 0}
    if not taken:
        return profile, {}
    target = replace(profile.target, **taken)  # type: ignore[arg-type]  # int fields of TargetSpec
    return replace(profile, target=target), taken


def with_live_num_sms(profile: Profile, buffer: Any) -> tuple[Profile, dict[str, int]]:
    """At EP>1, a profile's ``[deep_ep] num_sms = 0`` means "DeepEP's choice": on the GPU host that choice is
    ``buffer.get_theoretical_num_sms(num_experts, num_topk)`` (a bandwidth model of this host), which a build
    machine cannot compute. Returns the profile with it, and ``{"num_sms": value}``; unchanged when the
    profile pins it, at EP1 (the renderer knows: every SM), or when the buffer cannot say."""
    if profile.deep_ep.num_sms or profile.parallel.ep_size <= 1:
        return profile, {}
    ask = getattr(buffer, "get_theoretical_num_sms", None)
    try:
        value = ask(profile.model.num_experts, profile.model.num_topk) if callable(ask) else 0
    except Exception as exc:  # noqa: BLE001 - it runs nvidia-smi; the render then says num_sms is needed
        log.info("precompile: %s.get_theoretical_num_sms failed (%s: %s)", type(buffer).__name__,
                 type(exc).__name__, exc)
        return profile, {}
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return profile, {}
    return replace(profile, deep_ep=replace(profile.deep_ep, num_sms=value)), {"num_sms": value}


def _root_for(deep_ep_dir: Path, cache_dir: str | Path | None) -> CacheRoot:
    # The jitcache root when its deep_ep/ is the folder DeepEP reads (what activate() sets), else a bare DeepEP cache.
    try:
        root = resolve_root(cache_dir)
        if root.deep_ep_dir.resolve() == deep_ep_dir.resolve():
            return root
    except JitCacheError:
        pass
    return CacheRoot.for_deep_ep_dir(deep_ep_dir)


def _prepare(buffer: Any, target: Profile | BucketPolicy | str, modes: Iterable[str] | None,
             cache_dir: str | Path | None, toolchain: Toolchain | None) -> _Local:
    if isinstance(target, BucketPolicy):
        return _Local("a bare BucketPolicy has no model shape or GPU target to render kernels from: "
                      "pass a profile to precompile")
    try:
        version = adapter_for_buffer(buffer)
        profile, filled = with_live_target(load_profile(target), live_target_facts(buffer))
        profile, sms = with_live_num_sms(profile, buffer)
        filled = {**filled, **sms}
        the_plan = plan(profile, modes)
        if toolchain is None:
            from jitcache.build.toolchain import resolve_toolchain

            package_dir, include = buffer_headers(buffer)
            buffer_class = f"{type(buffer).__module__}.{type(buffer).__qualname__}"
            if not include.is_dir():
                return _Local(f"{include}: no such folder, so there are no DeepEP headers beside "
                              f"{buffer_class} to compile against")
            toolchain = resolve_toolchain(**version.live_toolchain_args(buffer, include, package_dir))
            if version.live_names_from_serving:
                # The names DeepEP looks up hold its NCCL path and its nvcc's text, found as it finds them.
                from jitcache.adapters.serving import locate_serving

                serving = locate_serving(package_dir)
                toolchain = replace(toolchain, target_nccl_include=serving.nccl_include,
                                    nvcc_version_output=serving.nvcc_version_output)
            toolchain = replace(toolchain, deep_ep_headers_from=f"DeepEP {toolchain.deep_ep_api} headers of the "
                                                                f"package of {buffer_class} ({package_dir})")
        jobs = jobs_for_plan(the_plan, toolchain)
        root = _root_for(version.cache_roots()[0], cache_dir).ensure()
        (root.meta_dir / "locks").mkdir(parents=True, exist_ok=True)  # what run_jobs needs first
    except (JitCacheError, OSError, ValueError) as exc:
        return _Local(str(exc))
    except Exception as exc:  # noqa: BLE001 - one rank's surprise must not desynchronise the group's collectives
        log.exception("precompile: unexpected error while preparing")
        return _Local(f"unexpected {type(exc).__name__}: {exc}")
    return _Local(None, the_plan, toolchain, jobs, root, filled)


def _gather(record: dict[str, Any], group: Any, world: int) -> list[dict[str, Any]]:
    if world == 1:
        return [record]
    return [json.loads(blob) for blob in all_gather_bytes(json.dumps(record).encode(), group)]


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _group_verdict(records: list[dict[str, Any]]) -> str | None:
    """Why no rank runs (every rank computes the same from the same records), or None."""
    refused = [(rank, r["reason"]) for rank, r in enumerate(records) if not r["ok"]]
    if len(records) == 1:
        return refused[0][1] if refused else None
    if refused:
        reasons = {reason for _, reason in refused}
        if len(refused) == len(records) and len(reasons) == 1:
            return f"{refused[0][1]} (on every rank)"
        if len(reasons) == 1:
            return f"{_ranks([r for r, _ in refused])} cannot precompile, so no rank does: {refused[0][1]}"
        return (f"{_ranks([r for r, _ in refused])} cannot precompile, so no rank does: "
                + "; ".join(f"rank {rank}: {reason}" for rank, reason in refused))
    odd = [rank for rank, r in enumerate(records) if r["jobs"] != records[0]["jobs"]]
    if odd:
        return (f"{_ranks(odd)} rendered other kernel digests than rank 0 (another nvcc or other DeepEP "
                "headers), so the ranks cannot split the jobs and none precompiles")
    return None


def _outcome(local: _Local, group: Any, num_workers: int | None) -> dict[str, Any]:
    assert local.the_plan is not None and local.root is not None, "only a prepared rank compiles"
    try:
        report = warmup_aot(local.the_plan, local.toolchain, local.root, jobs=local.jobs, distributed=None,
                            group=group, num_workers=num_workers)
    except Exception as exc:  # noqa: BLE001 - the live pass compiles what is missing; the warmup goes on
        log.exception("precompile: the nvcc pass failed")
        return {"error": f"{type(exc).__name__}: {exc}", **{k: 0 for k in _COUNTS}}
    # The report lists this rank's share first, then the others' jobs as received or cached.
    share = report.results[:len(local.jobs[report.rank::report.world_size])]
    first = next((r for r in share if r.status == "failed"), None)
    return {"error": None, "jobs": report.jobs, "report_path": report.report_path,
            "first_failure": f"{first.label}: {first.message}" if first else None,
            **{k: sum(r.status == k for r in share) for k in _COUNTS if k != "received"},
            "received": report.count("received")}


def _group_status(outcomes: list[dict[str, Any]], counts: dict[str, int], num_jobs: int) -> tuple[str, str]:
    def on(rank: int) -> str:
        return f" on rank {rank}" if len(outcomes) > 1 else ""

    errors = [(rank, o["error"]) for rank, o in enumerate(outcomes) if o["error"]]
    if errors:
        return FAILED, f"the nvcc pass raised{on(errors[0][0])}: {errors[0][1]}"
    if counts["failed"]:
        rank, first = next((rank, o["first_failure"]) for rank, o in enumerate(outcomes) if o.get("first_failure"))
        return FAILED, (f"{counts['failed']} of {num_jobs} kernels failed to compile (first{on(rank)}: {first}); "
                        "the live pass compiles them through DeepEP")
    return DONE, ""


def precompile(buffer: Any, profile_or_policy: Profile | BucketPolicy | str, modes: Iterable[str] | None = None,
               *, group: Any = None, cache_dir: str | Path | None = None, jobs: int | None = None,
               toolchain: Toolchain | None = None) -> PrecompileResult:
    """Compile the plan's DeepEP kernels (2.5 or 2.1, the buffer's) with nvcc into DeepEP's cache folder;
    collective over ``group``.

    Every rank of ``group`` must call it (as :func:`jitcache.warm.live.warmup`
    does, after the ranks agreed on the plan). The entries go to
    the adapter's ``cache_roots()[0]``, the writable folder of ``EP_JIT_CACHE_DIR``
    (the jitcache root of ``cache_dir`` when its ``deep_ep/`` is that folder).
    The headers are those of the package ``buffer``'s class comes from;
    ``toolchain`` overrides the whole toolchain. ``jobs``: nvcc processes per
    rank (default: the cores divided by torchrun's ``LOCAL_WORLD_SIZE``).
    Never raises for a missing toolchain or a failed compile: see the status.
    """
    start = time.perf_counter()
    dist = initialized_dist()
    world = dist.get_world_size(group) if dist else 1
    local = _prepare(buffer, profile_or_policy, modes, cache_dir, toolchain)
    verdict = _group_verdict(_gather(local.record(), group, world))
    if verdict is not None:
        log.info("precompile skipped: %s", verdict)
        return PrecompileResult(SKIPPED, verdict, wall_seconds=time.perf_counter() - start, world_size=world)

    mine = _outcome(local, group, jobs)
    mine["wall_seconds"] = time.perf_counter() - start
    outcomes = _gather(mine, group, world)
    counts = {k: sum(o[k] for o in outcomes) for k in _COUNTS}
    status, reason = _group_status(outcomes, counts, len(local.jobs))
    return PrecompileResult(status, reason, **counts, entries=tuple(j.entry for j in local.jobs),
                            wall_seconds=max(o["wall_seconds"] for o in outcomes), jobs=mine.get("jobs"),
                            world_size=world,
                            deep_ep_headers_from=(local.toolchain.deep_ep_headers_from if local.toolchain else "") or None,
                            report_path=mine.get("report_path"), target_from_device=dict(local.target_from_device))
