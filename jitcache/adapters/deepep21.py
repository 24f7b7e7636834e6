"""The DeepEP 2.1 adapter (``deep_ep.ElasticBuffer``, what vLLM 0.33 calls; PyPI ``tokenspeed-deepep``).

Build jobs for DeepEP 2.1 entries: rendered source (:mod:`.render21`), its includes' hash, 2.1's
digest and nvcc command (:mod:`.digest21`).

An entry is ``<EP_JIT_CACHE_DIR>/cache/kernel.<name>.<digest>/`` holding
``kernel.cu`` and ``kernel.cubin`` and nothing else DeepEP needs (no marker,
no meta.json: DeepEP 2.1 takes a directory holding both files as built).
The digest hashes the flags *as the serving machine spells them* (its NCCL
root and its ``deep_ep`` package dir); nvcc here reads the local headers, so
the command run and the flags hashed differ only in those two paths.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

from jitcache.adapters.base import (BuildJob, DeepEPAdapter, LearnedKernel, PlannedEntry, ServingDeepEP, Toolchain,
                                    headers_stamp, nvcc_major_minor, refuse_digest)
from jitcache.adapters.digest21 import (HEADER_PREFIX21, IncludeHasher21, cache_key21, entry_name21, flags21,
                                        nvcc_command21, with_include_hash)
from jitcache.adapters.layouts import DEEP_EP_21
from jitcache.adapters.learn import substitute_nmax
from jitcache.adapters.live21 import live_toolchain_args21
from jitcache.adapters.render21 import NUM_SMS_RULE21, render_barrier21, render_plan21, target_facts21
from jitcache.adapters.render25 import RenderedKernel, TargetFacts
from jitcache.errors import ToolchainError

if TYPE_CHECKING:
    from jitcache.adapters.deepjit import CompilerOptions
    from jitcache.planning.profiles import Profile
    from jitcache.planning.variants import WarmupPlan

__all__ = ["DeepEP21", "build_jobs21", "jobs_for_plan21", "target_flags21"]

_INSTALL_HINT = "pip install tokenspeed-deepep, or pass --deep-ep-include with 2.1 headers"


def target_flags21(toolchain: Toolchain, arch: str) -> str:
    """The flags string DeepEP 2.1 hashes on the serving machine."""
    return flags21(arch=arch, nccl_root=str(Path(toolchain.target_nccl_include).parent),
                   library_include=str(Path(toolchain.python_library_root) / "include"))


def _local_flags21(toolchain: Toolchain, arch: str) -> str:
    return flags21(arch=arch, nccl_root=str(Path(toolchain.nccl_include).parent),
                   library_include=str(toolchain.deep_ep_include))


def _named_sources21(kernels: Sequence[RenderedKernel], toolchain: Toolchain,
                     arch: str) -> list[tuple[RenderedKernel, str, str]]:
    """``(kernel, kernel.cu with its includes' hash, entry name)``: DeepEP 2.1's digest rule, once."""
    includes = IncludeHasher21(toolchain.deep_ep_include)
    major, minor = toolchain.nvcc_release
    flags = target_flags21(toolchain, arch)
    named = []
    for kernel in kernels:
        try:
            code = with_include_hash(kernel.source, includes)
        except (OSError, ValueError) as exc:
            raise ToolchainError(f"{kernel.function}: cannot hash its DeepEP includes: {exc}",
                                 hint="the DeepEP 2.1 headers do not match this kernel: check --deep-ep-include") from None
        named.append((kernel, code, entry_name21(kernel.name, cache_key21(kernel.name, code, flags, major, minor))))
    return named


def build_jobs21(kernels: Iterable[RenderedKernel], toolchain: Toolchain, arch: str) -> tuple[BuildJob, ...]:
    """One job per distinct 2.1 entry of ``kernels``."""
    argv = (str(toolchain.nvcc), "{dir}/kernel.cu", "-cubin", "-o", "{dir}/kernel.cubin",
            *shlex.split(_local_flags21(toolchain, arch)))
    jobs: list[BuildJob] = []
    seen: set[str] = set()
    for kernel, code, entry in _named_sources21(list(kernels), toolchain, arch):
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
    return DeepEP21().jobs_for_plan(the_plan, toolchain, with_barrier=with_barrier)


@functools.lru_cache(maxsize=16)
def _hasher21(headers: str, stamp: float) -> IncludeHasher21:
    return IncludeHasher21(headers)


class _ServingNames21:
    """DeepEP 2.1's key for the serving DeepEP: its flags (NCCL root, ``<package dir>/include``) and nvcc release."""

    def __init__(self, serving: ServingDeepEP, arch: str) -> None:
        self.flags = flags21(arch=arch, nccl_root=serving.nccl_root,
                             library_include=os.path.join(serving.package_dir, "include"))
        self.release = nvcc_major_minor(serving.nvcc_version_output)
        self.includes = _hasher21(str(serving.headers), headers_stamp(serving.headers))

    def kernel_cu(self, generated: str) -> str:
        return with_include_hash(generated, self.includes)

    def name(self, family: str, kernel_cu: str) -> str:
        return entry_name21(family, cache_key21(family, kernel_cu, self.flags, *self.release))


class DeepEP21(DeepEPAdapter):
    version = "2.1"
    layout = "deep_ep_2.1"
    buffer_class = "ElasticBuffer"
    cache_env = ("EP_JIT_CACHE_DIR",)
    default_cache_dir = ".deep_ep"
    commit_marker = None  # DeepEP 2.1 takes a directory holding kernel.cu and kernel.cubin as built
    header_marker = "deep_ep/impls/dispatch.cuh"
    install_hint = _INSTALL_HINT
    live_install_hint = "install DeepEP 2.1 (`pip install tokenspeed-deepep`) in this environment"
    entry_prefix = "kernel."
    jit_seconds_per_bucket = 8.2    # H200, EP1, hidden 7168 (DESIGN.md)
    num_sms_rule = NUM_SMS_RULE21
    _entry_pattern: ClassVar[re.Pattern[str]] = DEEP_EP_21.entry_pattern

    def entry_name(self, family: str, digest: str) -> str:
        return entry_name21(family, digest)

    def live_toolchain_args(self, buffer: Any, include: Path, package_dir: Path) -> dict[str, Any]:
        return live_toolchain_args21(buffer, include, package_dir)

    def target_facts(self, profile: Profile) -> TargetFacts:
        return target_facts21(profile)

    def render_plan(self, the_plan: WarmupPlan) -> tuple[RenderedKernel, ...]:
        return render_plan21(the_plan)

    def render_barrier(self, profile: Profile, facts: TargetFacts) -> RenderedKernel:
        return render_barrier21(profile, facts)

    def serving_names(self, kernels: Sequence[RenderedKernel], serving: ServingDeepEP,
                      arch: str) -> list[PlannedEntry]:
        names = _ServingNames21(serving, arch)
        out = []
        for k in kernels:
            code = names.kernel_cu(k.source)
            out.append(PlannedEntry(names.name(k.name, code), k.name, code, k.function, k.variant))
        return out

    def local_entry_name(self, serving: ServingDeepEP, family: str, kernel_cu: str, arch: str) -> str | None:
        names = _ServingNames21(serving, arch)
        first, _, generated = kernel_cu.partition("\n")
        if not first.startswith(HEADER_PREFIX21) or names.kernel_cu(generated) != kernel_cu:
            return None
        return names.name(family, kernel_cu)

    def kernel_entry_names(self, kernels: Sequence[RenderedKernel], toolchain: Toolchain, arch: str, *,
                           options: CompilerOptions | None = None) -> tuple[str, ...]:
        """``kernel.<name>.<hex>`` of ``name$$NVCC<maj>.<min>$$flags$$code``: the serving paths are in the flags."""
        del options
        return tuple(name for _, _, name in _named_sources21(kernels, toolchain, arch))

    def build_jobs(self, kernels: Iterable[RenderedKernel], toolchain: Toolchain, arch: str, *,
                   options: CompilerOptions | None = None) -> tuple[BuildJob, ...]:
        del options  # 2.1's flags are one fixed string (flags21), not DeepJIT's options
        return build_jobs21(kernels, toolchain, arch)

    def derive_jobs(self, known: LearnedKernel, toolchain: Toolchain, header: str, values: Sequence[int],
                    arch: str) -> list[BuildJob]:
        first, _, generated = known.source.partition("\n")
        includes = IncludeHasher21(toolchain.deep_ep_include)
        if with_include_hash(generated, includes) != known.source:
            raise ToolchainError(f"{known.path}/kernel.cu: its includes' hash ({first}) differs from the local "
                                 f"DeepEP headers' ({toolchain.deep_ep_include})",
                                 hint="use the headers of the DeepEP version that wrote the entry (--deep-ep-include)")
        nccl_root = str(Path(toolchain.target_nccl_include).parent)
        library_include = str(Path(toolchain.python_library_root) / "include")
        major, minor = toolchain.nvcc_release
        flags = flags21(arch=arch, nccl_root=nccl_root, library_include=library_include)
        computed = cache_key21(known.name, known.source, flags, major, minor)
        if computed != known.digest:
            raise refuse_digest(known, computed, f"flags tried: {flags!r}")
        local_flags = flags.replace(f"-I{library_include} ", f"-I{toolchain.deep_ep_include} ") + \
            f" -I {toolchain.nccl_include}"
        jobs = []
        for value in values:
            new_generated, _ = substitute_nmax(generated, header, value)
            code = with_include_hash(new_generated, includes)
            digest = cache_key21(known.name, code, flags, major, minor)
            jobs.append(BuildJob(entry=self.entry_name(known.name, digest),
                                 label=f"{known.name} nmax={value} (learned 2.1)", files=(("kernel.cu", code),),
                                 argv=("/bin/sh", "-c", nvcc_command21(toolchain.nvcc, "{dir}", local_flags)),
                                 marker=None, num_max_tokens_per_rank=value, family=known.name))
        return jobs
