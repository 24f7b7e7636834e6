"""The live warmup's steps: run every (mode, bucket) of the plan through DeepEP itself so that it compiles or loads each kernel.

``warmup(buffer, profile)`` issues, on every rank and in the plan's order, one
dispatch + combine per step with synthetic routing, and decides for each step
whether DeepEP compiled something or found it cached by listing DeepEP's cache
directory before and after (never by timing). Before the first dispatch the
ranks compare a hash of what they are about to run: a rank with another
profile, plan or policy would issue a different collective sequence and hang
the group, so that is an error naming the ranks instead.

Then, before the first dispatch, :func:`jitcache.warm.prepass.precompile` compiles
the plan's kernels with nvcc, split over the ranks, into the folder DeepEP
reads (with a profile, for DeepEP 2.5 and 2.1; every rank runs it or none does), so
that the live pass mostly finds its kernels instead of compiling each one on
every rank. The report records what it did (``precompile``), and how many
live steps still compiled something after it (``missed_by_live``).

Only ``cli/`` prints: progress goes to a callback (the CLI draws the bar).
``torch`` is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from jitcache._version import __version__
from jitcache.adapters.base import original_dispatch
from jitcache.adapters.registry import buffer_api
from jitcache.build.toolchain import Toolchain
from jitcache.errors import UsageError, WarmupError
from jitcache.planning.buckets import BucketPolicy
from jitcache.planning.profiles import MODES, Profile, load_profile
from jitcache.planning.variants import plan
from jitcache.store.deepep_cache import committed_entries, jit_cache_roots
from jitcache.warm import prepass as _prepass
from jitcache.warm.collectives import all_gather_bytes, initialized_dist
from jitcache.warm.prepass import PrecompileResult

from jitcache.warm.live_report import (CACHED, COMPILED, PRECOMPILE, StepResult, WarmupProgress, WarmupReport,
                                      report_path)

__all__ = ["check_group_agreement", "synthetic_inputs", "warmup"]

log = logging.getLogger("jitcache.engine")


@dataclass(frozen=True)
class _Spec:
    profile: Profile | None
    policy: BucketPolicy
    steps: tuple[tuple[str, int], ...]
    plan_fingerprint: str
    hidden: int
    num_experts: int
    num_topk: int
    fp8: bool
    expert_alignment: int
    num_sms: int


def _build_spec(target: Profile | BucketPolicy | str, modes: Iterable[str] | None,
                dims: dict[str, Any]) -> _Spec:
    if isinstance(target, BucketPolicy):
        missing = [k for k in ("hidden", "num_experts", "num_topk") if dims.get(k) is None]
        if missing:
            raise UsageError(f"warmup with a bare BucketPolicy needs {', '.join(missing)} "
                             "(or pass a profile, which has them)")
        if modes is not None and tuple(modes) != ("decode",):
            raise UsageError(f"a bare BucketPolicy warms the decode mode only, got modes={list(modes)}")
        steps = tuple(("decode", b) for b in target.buckets())
        fp8 = dims.get("dispatch_dtype", "bf16") == "fp8"
        blob = json.dumps({"steps": steps, **{k: dims.get(k) for k in sorted(dims)}}, sort_keys=True, default=str)
        return _Spec(None, target, steps, hashlib.sha256(blob.encode()).hexdigest()[:16],
                     dims["hidden"], dims["num_experts"], dims["num_topk"], fp8,
                     dims.get("expert_alignment") or 1, dims.get("num_sms") or 0)
    profile = load_profile(target)
    try:
        the_plan = plan(profile, modes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    m = the_plan.profile.model
    return _Spec(the_plan.profile, the_plan.profile.policy, the_plan.steps(), the_plan.fingerprint(),
                 m.hidden, m.num_experts, m.num_topk, m.dispatch_dtype == "fp8",
                 profile.deep_ep.expert_alignment, profile.deep_ep.num_sms)


def _agreement_record(spec: _Spec, api: str, precompile: bool = False) -> dict[str, Any]:
    record = {
        "profile": spec.profile.name if spec.profile else None,
        "profile_fingerprint": spec.profile.fingerprint() if spec.profile else None,
        "plan_fingerprint": spec.plan_fingerprint,
        "policy": spec.policy.to_dict(),
        "steps": [list(s) for s in spec.steps],
        "api": api,
        "jitcache": __version__,
        "precompile": precompile,  # the nvcc pass has collectives of its own: all ranks run it or none
    }
    record["hash"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


def check_group_agreement(record: dict[str, Any], group: Any = None) -> tuple[int, int]:
    """All-gather ``record`` over ``group``; raise :class:`WarmupError` naming the ranks that differ.

    Returns ``(rank, world_size)``; ``(0, 1)`` outside torch.distributed.
    """
    dist = initialized_dist()
    if dist is None:
        return 0, 1
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if world == 1:
        return rank, world
    gathered = [json.loads(blob) for blob in all_gather_bytes(json.dumps(record).encode(), group)]
    reference = gathered[0]
    odd = [r for r, rec in enumerate(gathered) if rec["hash"] != reference["hash"]]
    if odd:
        first = gathered[odd[0]]
        differing = [key for key in ("profile", "profile_fingerprint", "plan_fingerprint", "policy", "steps",
                                     "api", "jitcache", "precompile") if first.get(key) != reference.get(key)]
        ranks = ", ".join(map(str, odd))
        raise WarmupError(
            f"warmup plan differs across ranks: rank{'s' if len(odd) > 1 else ''} {ranks} "
            f"(hash {first['hash']}, profile {first['profile']!r}) disagree with rank 0 "
            f"(hash {reference['hash']}, profile {reference['profile']!r}) on {', '.join(differing)}; "
            "no dispatch was issued",
            hint="start every rank with the same profile, --modes, --precompile/--no-precompile and jitcache version")
    return rank, world


# -- synthetic inputs -------------------------------------------------------------------------


def synthetic_inputs(spec: _Spec, num_tokens: int, *, seed: int, device: Any) -> dict[str, Any]:
    """Deterministic routing for one step: ``num_tokens`` tokens, ``num_topk`` distinct experts each.

    ``x`` is bf16, or an ``(fp8, float32 scales [n, hidden / 128])`` tuple when the profile dispatches fp8.
    """
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    scores = torch.rand((num_tokens, spec.num_experts), generator=generator, device=device)
    topk_idx = scores.topk(spec.num_topk, dim=1).indices.to(torch.int64)  # distinct experts per token
    topk_weights = torch.rand((num_tokens, spec.num_topk), generator=generator, device=device,
                              dtype=torch.float32)
    x: Any = torch.randn((num_tokens, spec.hidden), generator=generator, device=device,
                    dtype=torch.float32).to(torch.bfloat16)
    if spec.fp8:
        scales = torch.ones((num_tokens, spec.hidden // 128), device=device, dtype=torch.float32)
        x = (x.to(torch.float8_e4m3fn), scales)
    return {"x": x, "topk_idx": topk_idx, "topk_weights": topk_weights}


def _step_seed(seed: int, rank: int, mode: str, bucket: int) -> int:
    return (seed * 1_000_003 + rank * 7919 + bucket * 31 + MODES.index(mode)) % (2 ** 63)


def _run_step(buffer: Any, dispatch: Callable, spec: _Spec, mode: str, bucket: int, inputs: dict) -> None:
    import torch

    x, topk_idx, topk_weights = inputs["x"], inputs["topk_idx"], inputs["topk_weights"]
    common = {"num_experts": spec.num_experts, "expert_alignment": spec.expert_alignment, "num_sms": spec.num_sms}
    if mode == "prefill":
        # Prefill keeps DeepEP's default (None -> the buffer's capacity), as serving does.
        result = dispatch(x, topk_idx=topk_idx, topk_weights=topk_weights, num_max_tokens_per_rank=None,
                          do_expand=True, do_cpu_sync=True, **common)
    else:
        result = dispatch(x, topk_idx=topk_idx, topk_weights=topk_weights, num_max_tokens_per_rank=bucket,
                          do_expand=False, do_cpu_sync=False, **common)
        if mode == "cached":
            result = dispatch(x, topk_weights=topk_weights, handle=result[3], do_expand=False,
                              do_cpu_sync=False, **common)
    recv_x, _, recv_topk_weights, handle, _ = result
    if isinstance(recv_x, tuple):  # fp8: combine takes bf16
        recv_x = recv_x[0].to(torch.bfloat16)
    buffer.combine(recv_x, handle, topk_weights=recv_topk_weights)
    if getattr(recv_x, "is_cuda", False):
        torch.cuda.synchronize()


def _emit(progress: Any, event: WarmupProgress) -> None:
    if callable(progress):
        progress(event)
    elif progress:
        if event.mode == PRECOMPILE:
            log.info("warmup: compiling the plan's %d steps' kernels with nvcc first", event.total)
        elif event.result is None:
            log.info("warmup %d/%d: %s num_max_tokens_per_rank=%d", event.done + 1, event.total, event.mode,
                     event.num_max_tokens_per_rank)
        else:
            log.info("warmup %d/%d: %s num_max_tokens_per_rank=%d %s in %.2f s", event.done, event.total,
                     event.mode, event.num_max_tokens_per_rank, event.result.status, event.result.seconds)


def warmup(buffer: Any, profile_or_policy: Profile | BucketPolicy | str, modes: Iterable[str] | None = None,
           progress: bool | Callable[[WarmupProgress], None] = True, *, group: Any = None,
           cache_dir: str | Path | None = None, save: bool = True, seed: int = 0,
           hidden: int | None = None, num_experts: int | None = None, num_topk: int | None = None,
           dispatch_dtype: str = "bf16", device: Any = None, precompile: bool = True, jobs: int | None = None,
           toolchain: Toolchain | None = None, relocate: bool = True, remote: str | None = None,
           remote_optional: bool = False) -> WarmupReport:
    """Compile (or load) every kernel the plan names, through ``buffer`` itself; collective over ``group``.

    Every rank must call it with the same profile, modes and ``precompile``
    (checked before any dispatch). ``progress``: a callable receiving
    :class:`WarmupProgress` on rank 0, ``True`` to log progress, ``False`` for
    silence. The report is saved on rank 0 in the cache root's ``meta/``
    (``save=False`` to skip); ``hidden``, ``num_experts``, ``num_topk`` and
    ``dispatch_dtype`` are needed only with a bare :class:`BucketPolicy`.

    ``precompile`` (default on) first compiles the plan with nvcc, split over
    the ranks (:func:`jitcache.warm.prepass.precompile`; ``jobs`` nvcc processes per
    rank, ``toolchain`` to override the one found from the buffer's package);
    when it cannot run, DeepEP compiles in the live pass as before.

    ``relocate`` (default on) first re-publishes entries built for other
    install paths (a shipped cache) under the names this buffer's DeepEP
    looks up (:func:`jitcache.store.relocate.relocate_for_plan`), so neither
    the precompile nor DeepEP rebuilds them; ``report.relocated`` lists them.

    ``remote`` (a store URL, :mod:`jitcache.store.remote`): first pull what
    the store has of the names this DeepEP looks up (entries pushed for other
    install paths by their source, relocated), so the precompile and DeepEP
    build only the rest; afterwards rank 0 pushes what was built.
    ``report.remote`` says pulled, relocated, compiled, pushed, bytes and
    seconds. A store that cannot be reached or denies access is a
    :class:`~jitcache.errors.RemoteError` before anything is compiled, unless
    ``remote_optional`` (then a warning in ``report.remote`` and a local warmup).
    """
    import torch

    api = buffer_api(buffer)
    spec = _build_spec(profile_or_policy, modes, {
        "hidden": hidden, "num_experts": num_experts, "num_topk": num_topk, "dispatch_dtype": dispatch_dtype})
    group = group if group is not None else getattr(buffer, "group", None)
    rank, world = check_group_agreement(_agreement_record(spec, api, precompile), group)
    prepass: PrecompileResult | None = None
    notify = progress if rank == 0 else False
    remote_state = None
    if remote is not None and spec.profile is not None:
        from jitcache.warm.remote_warmup import live_pull

        remote_state = live_pull(buffer, spec.profile, modes, jit_cache_roots(api)[0], remote,
                                 optional=remote_optional, relocate=relocate)
    relocated = _relocate_shipped(buffer, spec.profile, modes, jit_cache_roots(api)) \
        if relocate and spec.profile is not None else ()
    # What this warmup adds to the cache (for the remote push and its "compiled" count): the precompile's new
    # entries, not the plan's (most are usually cached, pulled or relocated), then the live steps'.
    before_precompile = committed_entries(api, jit_cache_roots(api)) if remote_state is not None else frozenset()
    if precompile:  # the parameter: the function is _prepass.precompile here
        _emit(notify, WarmupProgress(0, len(spec.steps), PRECOMPILE, 0, 0.0, None))
        prepass = _prepass.precompile(buffer, spec.profile or spec.policy, modes, group=group, cache_dir=cache_dir,
                                      jobs=jobs, toolchain=toolchain)
    precompiled = committed_entries(api, jit_cache_roots(api)) - before_precompile \
        if remote_state is not None and prepass is not None else frozenset()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    roots = jit_cache_roots(api)
    dispatch = original_dispatch(buffer)  # an install()ed guard must not refuse the warmup itself

    results: list[StepResult] = []
    start = time.perf_counter()
    total = len(spec.steps)
    for index, (mode, bucket) in enumerate(spec.steps):
        elapsed = time.perf_counter() - start
        eta = elapsed / index * (total - index) if index else None
        _emit(notify, WarmupProgress(index, total, mode, bucket, elapsed, eta))
        num_tokens = bucket if mode != "prefill" else spec.policy.max_num_batched_tokens
        inputs = synthetic_inputs(spec, num_tokens, seed=_step_seed(seed, rank, mode, bucket), device=device)
        before = committed_entries(api, roots)
        t0 = time.perf_counter()
        try:
            _run_step(buffer, dispatch, spec, mode, bucket, inputs)
        except Exception as exc:
            raise WarmupError(f"warmup step {mode} num_max_tokens_per_rank={bucket} failed on rank {rank}: "
                              f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - t0
        written = tuple(sorted(committed_entries(api, roots) - before))
        result = StepResult(mode, bucket, COMPILED if written else CACHED, seconds, written, num_tokens)
        results.append(result)
        elapsed = time.perf_counter() - start
        remaining = total - index - 1
        _emit(notify, WarmupProgress(index + 1, total, mode, bucket, elapsed,
                                     elapsed / (index + 1) * remaining if remaining else 0.0, result))

    remote_summary = None
    if remote_state is not None:
        built = {e for r in results for e in r.entries_written} | set(precompiled)
        remote_summary = remote_state.finish(sorted(built) if rank == 0 else ())
    report = WarmupReport(
        remote=remote_summary,
        precompile=None if prepass is None else _precompile_record(prepass, results),
        profile=spec.profile.name if spec.profile else None,
        profile_fingerprint=spec.profile.fingerprint() if spec.profile else None,
        plan_fingerprint=spec.plan_fingerprint, api=api, policy=spec.policy.to_dict(),
        modes=tuple(dict.fromkeys(m for m, _ in spec.steps)), rank=rank, world_size=world,
        cache_dirs=tuple(str(r) for r in roots), results=tuple(results), seconds=time.perf_counter() - start,
        relocated=relocated)
    if save and rank == 0:
        from jitcache.store.root import resolve_root

        root = resolve_root(cache_dir)
        report.save(report_path(root.meta_dir, spec.profile, spec.plan_fingerprint))
    return report


def _relocate_shipped(buffer: Any, profile: Profile, modes: Iterable[str] | None, roots: Sequence[Path]) -> tuple[str, ...]:
    """Relocate what the plan needs into the writable root; every rank may run it (each publish is atomic)."""
    from jitcache.adapters.serving import locate_serving
    from jitcache.errors import JitCacheError
    from jitcache.planning.variants import plan
    from jitcache.store.relocate import relocate_for_plan
    from jitcache.warm.prepass import buffer_headers, live_target_facts, with_live_num_sms, with_live_target

    try:
        profile, _ = with_live_target(profile, live_target_facts(buffer))
        profile, _ = with_live_num_sms(profile, buffer)
        serving = locate_serving(buffer_headers(buffer)[0])
        result = relocate_for_plan(roots[0], serving, plan(profile, modes), roots=roots)
    except (JitCacheError, OSError, ValueError) as exc:
        log.info("warmup: no relocation (%s)", exc)
        return ()
    return tuple(name for name, _ in result.published)


def _precompile_record(prepass: PrecompileResult, results: Sequence[StepResult]) -> dict[str, Any]:
    # missed_by_live: live steps that still compiled after a complete precompile (None: it did not complete).
    missed = None
    if prepass.status == "done":
        compiled = [r for r in results if r.status == COMPILED]
        missed = len(compiled)
        if compiled:
            log.warning("%d of %d live warmup steps still compiled after the nvcc precompile (first: %s "
                        "num_max_tokens_per_rank=%d): jitcache's rendered digests disagree with this DeepEP's",
                        missed, len(results), compiled[0].mode, compiled[0].num_max_tokens_per_rank)
    return {**prepass.to_dict(), "missed_by_live": missed}


# -- the CLI's entry point --------------------------------------------------------------------
