"""The AOT warmup with a remote store: pull what is there, compile only what is missing, push what was compiled.

The entry names come from the plan's build jobs, i.e. the digests the
serving DeepEP computes (its paths, nvcc and GPU facts enter them): the pull
asks the store for exactly those names, and for a name it does not hold, an
entry with the same ``kernel.cu`` pushed by a node whose DeepEP or NCCL lived
elsewhere, relocated after the pull to the job's name (the serving DeepEP is
the toolchain's target: ``--target-deep-ep-root``, ``--target-nccl-include``,
its nvcc). Pulled entries go through ``import``'s validation and atomic
publish (:func:`jitcache.store.remote.pull`); the compile then finds them
present ("cached") and builds only the rest;
the push writes the rest with create-if-absent, so nodes warming at once
never overwrite each other's objects.

``optional=True`` (``--remote-optional``): a store that cannot be reached or
denies access is recorded in the report and the warmup goes on locally;
otherwise it is a :class:`~jitcache.errors.RemoteError` (before compiling
when the pull fails, after when the push does, with the local cache warm).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from jitcache.adapters.base import BuildJob, Toolchain
from jitcache.adapters.registry import jobs_for_plan
from jitcache.build.pool import AotReport, VariantResult
from jitcache.errors import RemoteError, ToolchainError, UsageError
from jitcache.planning.variants import WarmupPlan
from jitcache.store.model import SCHEMA_VERSION
from jitcache.store.remote import PullReport, PushReport, RemoteEnv, RemoteProgress, RemoteStore, open_remote, pull, \
    push
from jitcache.store.root import CacheRoot
from jitcache.warm.aot import warmup_aot

__all__ = ["LiveRemote", "RemoteWarmupReport", "live_pull", "nvcc_release", "remote_env", "serving_of_toolchain",
           "warmup_aot_remote"]


def nvcc_release(version_output: str) -> str:
    """``13.0.88`` from ``nvcc --version`` (``... release 13.0, V13.0.88``)."""
    match = re.search(r"\bV(\d+\.\d+\.\d+)", version_output) or re.search(r"release (\d+\.\d+)", version_output)
    if not match:
        raise ToolchainError(f"cannot read the nvcc version from: {version_output.strip()[:200]}")
    return match.group(1)


def remote_env(profile: Any, *, toolchain: Toolchain | None = None, nvcc: str | None = None,
               deep_ep_api: str | None = None, sources_dir: Any = None,
               nvcc_version_output: str | None = None) -> RemoteEnv:
    """The store prefix this machine reads and writes: DeepEP API, nvcc version, the profile's arch.

    Without a ``toolchain``: the API is ``deep_ep_api``, else the profile's
    ``[deep_ep] api``, else that of the DeepEP headers found here (installed
    package or fetched sdist); the nvcc is ``nvcc_version_output``'s (the
    serving DeepEP's, already run), else ``nvcc``'s or the one on the PATH.
    """
    from jitcache.build.toolchain import find_nvcc, locate_deep_ep_headers, nvcc_version

    if toolchain is not None:
        return RemoteEnv(toolchain.deep_ep_api, nvcc_release(toolchain.nvcc_version_output), profile.target.arch)
    api = deep_ep_api or (profile.deep_ep.api if profile.deep_ep.api != "auto" else None)
    if api is None:
        try:
            api = locate_deep_ep_headers(api="auto", sources_dir=sources_dir).api
        except ToolchainError as exc:
            raise UsageError(f"{profile.name}: [deep_ep] api is auto and no DeepEP is found here to tell 2.5 from "
                             f"2.1 ({exc.message})", hint="pass --deep-ep-api 2.5 (or 2.1)") from None
    text = nvcc_version_output if nvcc_version_output is not None else nvcc_version(find_nvcc(nvcc))
    return RemoteEnv(api, nvcc_release(text), profile.target.arch)


def serving_of_toolchain(toolchain: Toolchain) -> Any:
    """The DeepEP an AOT warmup compiles for: its target paths as the serving machine spells them, its nvcc."""
    from jitcache.adapters.serving import ServingDeepEP

    nccl = toolchain.target_nccl_include.rstrip("/")
    return ServingDeepEP(version=toolchain.deep_ep_api, package_dir=toolchain.python_library_root,
                         nccl_root=os.path.dirname(nccl) if os.path.basename(nccl) == "include" else nccl,
                         nvcc_version_output=toolchain.nvcc_version_output, headers=toolchain.deep_ep_include,
                         origin="the AOT warmup's target", nvcc_path=str(toolchain.nvcc))


@dataclass(frozen=True)
class RemoteWarmupReport:
    """An AOT warmup with a remote: what came from the store, what was compiled, what went back."""

    remote: str
    env: RemoteEnv
    aot: AotReport
    pull: PullReport | None
    push: PushReport | None
    seconds: float
    remote_errors: tuple[str, ...] = ()   # with optional=True: what went wrong with the store

    @property
    def pulled(self) -> int:
        return len(self.pull.pulled) if self.pull else 0

    @property
    def compiled(self) -> int:
        return self.aot.count("compiled")

    @property
    def pushed(self) -> int:
        return len(self.push.pushed) if self.push else 0

    @property
    def ok(self) -> bool:
        return self.aot.ok

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "remote": self.remote, "env": self.env.to_dict(),
                "pulled": self.pulled, "compiled": self.compiled, "pushed": self.pushed,
                "bytes_received": self.pull.bytes_received if self.pull else 0,
                "bytes_sent": self.push.bytes_sent if self.push else 0,
                "seconds": round(self.seconds, 3), "remote_errors": list(self.remote_errors),
                "pull": self.pull.to_dict() if self.pull else None,
                "push": self.push.to_dict() if self.push else None, "aot": self.aot.to_dict()}


def warmup_aot_remote(the_plan: WarmupPlan, toolchain: Toolchain, root: CacheRoot, *, remote: str | RemoteStore,
                      optional: bool = False, jobs: Sequence[BuildJob] | None = None,
                      extra_jobs: Sequence[BuildJob] = (), num_workers: int | None = None,
                      distributed: bool | None = None, group: Any = None,
                      on_result: Callable[[VariantResult], None] | None = None,
                      on_remote: Callable[[RemoteProgress], None] | None = None,
                      relocate: bool = True, env: RemoteEnv | None = None) -> RemoteWarmupReport:
    """:func:`jitcache.warm.aot.warmup_aot` between a pull and a push (see the module docstring).

    ``env`` (the store prefix) defaults to :func:`remote_env` of the profile
    and toolchain; ``relocate=False`` pulls exact names only.
    """
    start = time.perf_counter()
    env = env or remote_env(the_plan.profile, toolchain=toolchain)
    build = tuple(jobs) if jobs is not None else jobs_for_plan(the_plan, toolchain)
    names = [j.entry for j in build if j.backend == "deep_ep"]
    sources = {j.entry: hashlib.sha256(text.encode()).hexdigest() for j in build if j.backend == "deep_ep"
               for path, text in j.files if path == "kernel.cu"}
    errors: list[str] = []
    store: RemoteStore | None = None
    pulled: PullReport | None = None
    url = remote.url if isinstance(remote, RemoteStore) else str(remote)
    try:
        store = open_remote(remote)
        url = store.url
        pulled = pull(root, store, env, plan=the_plan, names=names, sources=sources, relocate=relocate,
                      serving=serving_of_toolchain(toolchain) if toolchain is not None else None,
                      on_progress=on_remote)
    except RemoteError as exc:
        if not optional:
            raise
        errors.append(exc.message)
        store = None
    aot = warmup_aot(the_plan, toolchain, root, jobs=build, extra_jobs=extra_jobs, num_workers=num_workers,
                     distributed=distributed, group=group, on_result=on_result)
    pushed: PushReport | None = None
    if store is not None and not store.read_only:
        from_store = set(pulled.pulled) | {n for n, _ in pulled.relocated} if pulled else set()
        to_push = [n for n in names if n not in from_store]
        try:
            pushed = push(root, store, env, plan=the_plan, names=to_push, on_progress=on_remote)
        except RemoteError as exc:
            if not optional:
                raise
            errors.append(exc.message)
    return RemoteWarmupReport(url, env, aot, pulled, pushed, time.perf_counter() - start, tuple(errors))


# -- the live warmup (jitcache.warmup(..., remote=...)) ---------------------------------------------


@dataclass
class LiveRemote:
    """A live warmup's dealings with the store: the pull before it, then :meth:`finish` pushes and sums up."""

    url: str
    env: RemoteEnv | None = None
    root: CacheRoot | None = None
    plan: WarmupPlan | None = None
    store: RemoteStore | None = None
    pulled: PullReport | None = None
    optional: bool = False
    errors: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def finish(self, compiled: Sequence[str]) -> dict[str, Any]:
        """Push ``compiled`` (what this warmup's precompile and live steps wrote) and return the summary that
        ``WarmupReport.remote`` holds: pulled, relocated, compiled, pushed, bytes each way, seconds."""
        pushed: PushReport | None = None
        if self.store is not None and not self.store.read_only and self.env and self.root and self.plan:
            known = set(self.pulled.pulled) | set(self.pulled.local) | {n for n, _ in self.pulled.relocated} \
                if self.pulled else set()
            names = sorted(set(compiled) - known)
            if names:
                try:
                    pushed = push(self.root, self.store, self.env, plan=self.plan, names=names)
                except RemoteError as exc:
                    if not self.optional:
                        raise
                    self.errors.append(exc.message)
        return {"remote": self.url, "env": None if self.env is None else self.env.to_dict(),
                "pulled": len(self.pulled.pulled) if self.pulled else 0,
                "relocated": len(self.pulled.relocated) if self.pulled else 0,
                "compiled": len(set(compiled)), "pushed": len(pushed.pushed) if pushed else 0,
                "bytes_received": self.pulled.bytes_received if self.pulled else 0,
                "bytes_sent": pushed.bytes_sent if pushed else 0,
                "seconds": round(time.perf_counter() - self.start, 3), "remote_errors": list(self.errors),
                "pull": self.pulled.to_dict() if self.pulled else None, "push": pushed.to_dict() if pushed else None}


def live_pull(buffer: Any, profile: Any, modes: Any, deep_ep_dir: Any, remote: str | RemoteStore, *,
              optional: bool = False, relocate: bool = True) -> LiveRemote:
    """Before a live warmup: pull what the buffer's DeepEP looks up for ``profile`` into ``deep_ep_dir``.

    The names are those this DeepEP computes (its package, NCCL root, nvcc,
    the GPU's facts read from the buffer, as the live relocation does);
    entries pushed for other install paths are pulled by source and
    relocated. A store that cannot be reached or denies access, or a DeepEP
    whose names cannot be computed, is a :class:`RemoteError` unless
    ``optional`` (then it is recorded and the warmup goes on locally).
    """
    from jitcache.adapters.serving import locate_serving
    from jitcache.errors import JitCacheError
    from jitcache.planning.variants import plan
    from jitcache.warm.prepass import buffer_headers, live_target_facts, with_live_num_sms, with_live_target

    state = LiveRemote(remote.url if isinstance(remote, RemoteStore) else str(remote), optional=optional)
    try:
        try:
            live, _ = with_live_target(profile, live_target_facts(buffer))
            live, _ = with_live_num_sms(live, buffer)
            serving = locate_serving(buffer_headers(buffer)[0])
            state.plan = plan(live, modes)
        except RemoteError:
            raise
        except (JitCacheError, OSError, ValueError) as exc:
            raise RemoteError(f"{state.url}: cannot name the entries this DeepEP looks up, so nothing can be "
                              f"pulled ({exc})", url=state.url) from None
        state.env = RemoteEnv(serving.version, nvcc_release(serving.nvcc_version_output), live.target.arch)
        state.root = CacheRoot.for_deep_ep_dir(deep_ep_dir)
        state.store = open_remote(remote)
        state.url = state.store.url
        state.pulled = pull(state.root, state.store, state.env, plan=state.plan, serving=serving, relocate=relocate)
    except RemoteError as exc:
        if not optional:
            raise
        state.errors.append(exc.message)
        state.store = None
    return state

