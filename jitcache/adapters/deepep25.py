"""The DeepEP 2.5 adapter (``EPBuffer``; PyPI ``deepinfer-ep``, or ``deep_ep_v25``): the DeepJIT layout.

- cache: ``EP_JIT_CACHE_DIR``, else ``DJ_JIT_CACHE_DIR``, else ``$HOME/.dj``; ``A:B:C`` lists
  roots (the first writable); entry ``<root>/cache/<name>.<32 hex>/`` with ``kernel.cu``,
  ``kernel.cubin``, ``meta.json`` and ``.committed``, the marker written last;
- source: :mod:`.render25`; digest: DeepJIT's ``cache_key`` (:mod:`.deepjit`) over the
  compiler options (the NCCL ``-I`` path as the serving machine spells it), nvcc's version
  text and the source with its includes' hashes;
- ``--learn-from``: an entry's ``meta.json`` records the serving machine's flags, paths and
  nvcc text, so the toolchain adopts them (:meth:`DeepEP25.learn_toolchain`) and every
  bucket is rendered; a bare entry can also be re-targeted (:meth:`DeepEP25.derive_jobs`).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable, Sequence

from jitcache.adapters.base import (BuildJob, DeepEPAdapter, LearnedKernel, PlannedEntry, ServingDeepEP, Toolchain,
                                    headers_stamp, refuse_digest, release_line)
from jitcache.adapters.deepjit import (FNV1a, CompilerOptions, IncludeHasher, cache_key, compiler_hash,
                                       deep_ep_compiler_options, entry_name, meta_json, nvcc_command, options_from_meta)
from jitcache.adapters.layouts import DEEPJIT
from jitcache.adapters.learn import substitute_nmax
from jitcache.adapters.render25 import (NUM_SMS_RULE25, RenderedKernel, TargetFacts, render_barrier, render_plan,
                                        target_facts)
from jitcache.errors import ToolchainError

if TYPE_CHECKING:
    from jitcache.planning.profiles import Profile
    from jitcache.planning.variants import WarmupPlan

__all__ = ["COMMIT_MARKER", "DeepEP25"]

#: DeepJIT's marker: an entry exists once this empty file does (written last, after the rename).
COMMIT_MARKER = ".committed"


def _label(kernel: RenderedKernel) -> str:
    variant = kernel.variant
    return kernel.name if variant is None else f"{kernel.name} nmax={variant.num_max_tokens_per_rank} ({variant.mode})"


@functools.lru_cache(maxsize=16)
def _hasher25(headers: str, stamp: float) -> IncludeHasher:
    return IncludeHasher([headers])


class _ServingNames25:
    """DeepJIT's ``cache_key`` for the serving DeepEP, with the part every kernel shares hashed once."""

    def __init__(self, serving: ServingDeepEP, arch: str) -> None:
        self.options = deep_ep_compiler_options(arch, serving.nccl_include)
        self.includes = _hasher25(str(serving.headers), headers_stamp(serving.headers))
        self.prefix = FNV1a().update("").update(compiler_hash(serving.nvcc_version_output))
        self.prefix.update(self.options.flags_string()).update("")

    def name(self, family: str, kernel_cu: str | bytes) -> str:
        return entry_name(family, self.prefix.copy().update(self.includes.hash_source(kernel_cu)).hexdigest())


class DeepEP25(DeepEPAdapter):
    version = "2.5"
    layout = "deepjit"
    buffer_class = "EPBuffer"
    cache_env = ("EP_JIT_CACHE_DIR", "DJ_JIT_CACHE_DIR")
    default_cache_dir = ".dj"
    multiple_roots = True
    commit_marker = COMMIT_MARKER
    meta_file = "meta.json"
    header_marker = "deep_ep/impls/ep/dispatch.cuh"
    sdist_requirement = "deepinfer-ep==2.5.0"  # DeepEP 2.5's headers ship only in this sdist
    install_hint = "run `jitcache sources fetch` (the deepinfer-ep sdist's headers), or pass --deep-ep-include"
    live_install_hint = "install DeepEP 2.5 (`pip install deepinfer-ep`) in this environment"
    live_names_from_serving = True
    jit_seconds_per_bucket = 12.0   # H200, EP1, hidden 7168 (DESIGN.md)
    num_sms_rule = NUM_SMS_RULE25
    _entry_pattern: ClassVar[re.Pattern[str]] = DEEPJIT.entry_pattern

    def entry_name(self, family: str, digest: str) -> str:
        return entry_name(family, digest)

    def target_facts(self, profile: Profile) -> TargetFacts:
        return target_facts(profile)

    def render_plan(self, the_plan: WarmupPlan) -> tuple[RenderedKernel, ...]:
        return render_plan(the_plan)

    def render_barrier(self, profile: Profile, facts: TargetFacts) -> RenderedKernel:
        return render_barrier(profile, facts)

    def serving_names(self, kernels: Sequence[RenderedKernel], serving: ServingDeepEP,
                      arch: str) -> list[PlannedEntry]:
        names = _ServingNames25(serving, arch)
        return [PlannedEntry(names.name(k.name, k.source), k.name, k.source, k.function, k.variant) for k in kernels]

    def local_entry_name(self, serving: ServingDeepEP, family: str, kernel_cu: str, arch: str) -> str | None:
        return _ServingNames25(serving, arch).name(family, kernel_cu)

    def serving_meta_json(self, serving: ServingDeepEP, arch: str) -> str | None:
        options = deep_ep_compiler_options(arch, serving.nccl_include)
        include_dirs = [os.path.join(serving.package_dir, "include")]
        nvcc_path = serving.nvcc_path or "nvcc"
        command = nvcc_command(nvcc_path, "{dir}", options, include_dirs)
        return meta_json(command, python_library_root=serving.package_dir, include_dirs=include_dirs,
                         nvcc_path=nvcc_path, nvcc_version_output=serving.nvcc_version_output, options=options)

    def _options(self, toolchain: Toolchain, arch: str, options: CompilerOptions | None) -> CompilerOptions:
        if options is not None:
            return options
        learned = toolchain.learned
        return learned.options if learned is not None else deep_ep_compiler_options(arch, toolchain.target_nccl_include)

    def kernel_entry_names(self, kernels: Sequence[RenderedKernel], toolchain: Toolchain, arch: str, *,
                           options: CompilerOptions | None = None) -> tuple[str, ...]:
        """``<name>.<DeepJIT cache_key>``: options (the target's NCCL ``-I``), nvcc's version text, source + includes."""
        options = self._options(toolchain, arch, options)
        includes = IncludeHasher([toolchain.deep_ep_include])
        names = []
        for kernel in kernels:
            try:
                digest = cache_key(kernel.source, options, toolchain.nvcc_version_output, includes)
            except FileNotFoundError as exc:
                raise ToolchainError(f"{kernel.function}: {exc}",
                                     hint="the DeepEP headers do not match this kernel: check --deep-ep-include") from None
            names.append(self.entry_name(kernel.name, digest))
        return tuple(names)

    def build_jobs(self, kernels: Iterable[RenderedKernel], toolchain: Toolchain, arch: str, *,
                   options: CompilerOptions | None = None) -> tuple[BuildJob, ...]:
        """Jobs for rendered DeepEP 2.5 sources: digest, nvcc argv and meta.json for each."""
        learned = toolchain.learned
        options = self._options(toolchain, arch, options)
        kernels = list(kernels)
        names = self.kernel_entry_names(kernels, toolchain, arch, options=options)
        target_include_dirs = list(learned.include_dirs) if learned and learned.include_dirs else [
            str(Path(toolchain.python_library_root) / "include")]
        nvcc_path = learned.nvcc_path if learned is not None else str(toolchain.nvcc)
        # nvcc reads the local headers; the flags (and so the digest) keep the target's NCCL path.
        local_includes = [str(toolchain.deep_ep_include)]
        if str(toolchain.nccl_include) != toolchain.target_nccl_include:
            local_includes.append(str(toolchain.nccl_include))
        jobs = []
        seen: set[str] = set()
        for kernel, entry in zip(kernels, names):
            if entry in seen:
                continue
            seen.add(entry)
            argv = nvcc_command(toolchain.nvcc, "{dir}", options, local_includes)
            meta_argv = nvcc_command(nvcc_path, "{dir}", options, target_include_dirs)
            meta = meta_json(meta_argv, python_library_root=toolchain.python_library_root,
                             include_dirs=target_include_dirs, nvcc_path=nvcc_path,
                             nvcc_version_output=toolchain.nvcc_version_output, options=options)
            variant = kernel.variant
            jobs.append(BuildJob(entry=entry, label=_label(kernel), files=(("kernel.cu", kernel.source),),
                                 argv=tuple(argv), after=(("meta.json", meta),), marker=COMMIT_MARKER,
                                 num_max_tokens_per_rank=None if variant is None else variant.num_max_tokens_per_rank,
                                 family=kernel.name))
        return tuple(jobs)

    def learn_toolchain(self, toolchain: Toolchain, entry_dir: Path) -> Toolchain:
        """Adopt the target facts an existing DeepEP 2.5 entry recorded: its flags' NCCL path, its nvcc's
        version text (which enters the digest) and its library root.

        Refuses when the entry was built by another nvcc release than the local one: the digest would
        match but the cubin would not be the compiler's DeepEP expects.
        """
        meta_path = Path(entry_dir) / "meta.json"
        try:
            learned = options_from_meta(meta_path.read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise ToolchainError(f"{meta_path}: cannot learn the target toolchain: {exc}") from None
        local, theirs = release_line(toolchain.nvcc_version_output), release_line(learned.nvcc_version_output)
        if local != theirs:
            raise ToolchainError(f"{meta_path}: written by nvcc '{theirs}', but the local nvcc ({toolchain.nvcc}) is "
                                 f"'{local}'", hint="use the same CUDA release as the serving machine (--nvcc PATH)")
        return replace(toolchain, nvcc_version_output=learned.nvcc_version_output,
                       target_nccl_include=learned.nccl_include_dir or toolchain.target_nccl_include,
                       python_library_root=learned.python_library_root or toolchain.python_library_root,
                       learned=learned)

    def derive_jobs(self, known: LearnedKernel, toolchain: Toolchain, header: str, values: Sequence[int],
                    arch: str) -> list[BuildJob]:
        meta_path = known.path / "meta.json"
        try:
            learned = options_from_meta(meta_path.read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise ToolchainError(f"{meta_path}: cannot read the entry's flags ({exc})") from None
        includes = IncludeHasher([toolchain.deep_ep_include])
        computed = cache_key(known.source, learned.options, learned.nvcc_version_output, includes)
        if computed != known.digest:
            raise refuse_digest(known, computed, "the headers differ from the ones DeepEP used, or the digest rule "
                                                 "changed")
        local_includes = [str(toolchain.deep_ep_include), str(toolchain.nccl_include)]
        jobs = []
        for value in values:
            source, _ = substitute_nmax(known.source, header, value)
            digest = cache_key(source, learned.options, learned.nvcc_version_output, includes)
            meta = meta_json(nvcc_command(learned.nvcc_path, "{dir}", learned.options, learned.include_dirs),
                             python_library_root=learned.python_library_root, include_dirs=learned.include_dirs,
                             nvcc_path=learned.nvcc_path, nvcc_version_output=learned.nvcc_version_output,
                             options=learned.options, extra_signature=learned.extra_signature,
                             include_prefixes=learned.include_prefixes)
            jobs.append(BuildJob(entry=self.entry_name(known.name, digest), label=f"{known.name} nmax={value} (learned)",
                                 files=(("kernel.cu", source),),
                                 argv=tuple(nvcc_command(toolchain.nvcc, "{dir}", learned.options, local_includes)),
                                 after=(("meta.json", meta),), marker=COMMIT_MARKER, num_max_tokens_per_rank=value,
                                 family=known.name))
        return jobs
