"""Build jobs for DeepEP 2.1 entries: rendered source, its includes' hash, 2.1's digest and nvcc command.

An entry is ``<EP_JIT_CACHE_DIR>/cache/kernel.<name>.<digest>/`` holding
``kernel.cu`` and ``kernel.cubin`` and nothing else DeepEP needs (no marker,
no meta.json: DeepEP 2.1 takes a directory holding both files as built).
The digest hashes the flags *as the serving machine spells them* (its NCCL
root and its ``deep_ep`` package dir); nvcc here reads the local headers, so
the command run and the flags hashed differ only in those two paths.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Iterable

from jitcache.build.pool import BuildJob
from jitcache.adapters.digest21 import IncludeHasher21, cache_key21, entry_name21, flags21, with_include_hash
from jitcache.errors import ToolchainError
from jitcache.adapters.render25 import RenderedKernel
from jitcache.adapters.render21 import render_barrier21, render_plan21, target_facts21
from jitcache.build.toolchain import Toolchain
from jitcache.planning.variants import WarmupPlan

__all__ = ["build_jobs21", "jobs_for_plan21", "target_flags21"]


def target_flags21(toolchain: Toolchain, arch: str) -> str:
    """The flags string DeepEP 2.1 hashes on the serving machine."""
    return flags21(arch=arch, nccl_root=str(Path(toolchain.target_nccl_include).parent),
                   library_include=str(Path(toolchain.python_library_root) / "include"))


def _local_flags21(toolchain: Toolchain, arch: str) -> str:
    return flags21(arch=arch, nccl_root=str(Path(toolchain.nccl_include).parent),
                   library_include=str(toolchain.deep_ep_include))


def build_jobs21(kernels: Iterable[RenderedKernel], toolchain: Toolchain, arch: str) -> tuple[BuildJob, ...]:
    """One job per distinct 2.1 entry of ``kernels``."""
    includes = IncludeHasher21(toolchain.deep_ep_include)
    major, minor = toolchain.nvcc_release
    flags = target_flags21(toolchain, arch)
    argv = (str(toolchain.nvcc), "{dir}/kernel.cu", "-cubin", "-o", "{dir}/kernel.cubin",
            *shlex.split(_local_flags21(toolchain, arch)))
    jobs: list[BuildJob] = []
    seen: set[str] = set()
    for kernel in kernels:
        try:
            code = with_include_hash(kernel.source, includes)
        except (OSError, ValueError) as exc:
            raise ToolchainError(f"{kernel.function}: cannot hash its DeepEP includes: {exc}",
                                 hint="the DeepEP 2.1 headers do not match this kernel: check --deep-ep-include") from None
        entry = entry_name21(kernel.name, cache_key21(kernel.name, code, flags, major, minor))
        if entry in seen:
            continue
        seen.add(entry)
        variant = kernel.variant
        label = kernel.name if variant is None else f"{kernel.name} nmax={variant.num_max_tokens_per_rank} ({variant.mode})"
        jobs.append(BuildJob(entry=entry, label=label, files=(("kernel.cu", code),), argv=argv, marker=None,
                             num_max_tokens_per_rank=None if variant is None else variant.num_max_tokens_per_rank,
                             family=kernel.name))
    return tuple(jobs)


def jobs_for_plan21(the_plan: WarmupPlan, toolchain: Toolchain, *, with_barrier: bool = True) -> tuple[BuildJob, ...]:
    """One :class:`BuildJob` per variant of ``the_plan``, keyed by DeepEP 2.1's own digest."""
    if toolchain.deep_ep_api != "2.1":
        raise ToolchainError(f"the DeepEP headers in {toolchain.deep_ep_include} are DeepEP {toolchain.deep_ep_api}, "
                             "not 2.1", hint="pip install tokenspeed-deepep, or pass --deep-ep-include with 2.1 headers")
    profile = the_plan.profile
    kernels = list(render_plan21(the_plan))
    if with_barrier:
        kernels.append(render_barrier21(profile, target_facts21(profile)))
    return build_jobs21(kernels, toolchain, profile.target.arch)
