"""The DeepEP-version adapter interface, and the two values every adapter produces or reads.

One :class:`DeepEPAdapter` per DeepEP release line (:mod:`.deepep25`,
:mod:`.deepep21`), registered in :mod:`.registry`, owns everything that
differs between versions: where DeepEP keeps its JIT cache and which
environment variables move it, how an entry directory is named and when it
counts as committed, which buffer class and packages are that DeepEP, how
its headers are recognised, the exact source of every variant and the
target facts (``num_sms`` rule included) it bakes in, the compiler flags and
the digest, and how to derive buckets from an entry DeepEP wrote
(``--learn-from``). Code outside :mod:`jitcache.adapters` asks an adapter;
it never compares version strings.

:class:`Toolchain` is what a compile needs (local paths, the target's paths,
nvcc's version text); :class:`BuildJob` is one entry to produce, complete:
the build layer runs it without knowing which DeepEP it is for. Pure.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

from jitcache.errors import ToolchainError
from jitcache.types import Backend, DeepEPVersion

if TYPE_CHECKING:
    from jitcache.adapters.deepjit import CompilerOptions, LearnedEntry
    from jitcache.adapters.num_sms import NumSmsRule
    from jitcache.adapters.render25 import RenderedKernel, TargetFacts
    from jitcache.planning.profiles import Profile
    from jitcache.planning.variants import KernelVariant, WarmupPlan

__all__ = ["ORIGINAL_DISPATCH_ATTR", "BuildJob", "DeepEPAdapter", "LearnedKernel", "PlannedEntry", "ServingDeepEP",
           "Toolchain", "headers_stamp",
           "nvcc_major_minor",
           "original_dispatch", "refuse_digest", "release_line"]


def release_line(version_output: str) -> str:
    match = re.search(r"release (\d+)\.(\d+)[^\n]*", version_output)
    return match.group(0) if match else ""


def nvcc_major_minor(version_output: str) -> tuple[int, int]:
    match = re.search(r"release (\d+)\.(\d+)", version_output)
    if not match:
        raise ToolchainError(f"cannot read the nvcc release from: {version_output.strip()[:200]}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Toolchain:
    """Everything a compile of DeepEP kernels needs on this machine, and what the target's digest needs."""

    nvcc: Path
    nvcc_version_output: str
    deep_ep_include: Path          # the include root holding deep_ep/
    deep_ep_api: DeepEPVersion     # which DeepEP those headers are (the adapter that renders and names)
    nccl_include: Path             # local NCCL headers nvcc reads
    target_nccl_include: str       # the -I path as the serving machine spells it (enters the 2.5 digest)
    python_library_root: str       # deep_ep's package dir as the serving machine spells it (meta.json; 2.1 digest)
    learned: LearnedEntry | None = None
    deep_ep_headers_from: str = ""  # HeaderSource.describe(): which DeepEP, from where

    @property
    def nvcc_release(self) -> tuple[int, int]:
        return nvcc_major_minor(self.nvcc_version_output)

    def to_dict(self) -> dict[str, Any]:
        return {"nvcc": str(self.nvcc), "nvcc_release": release_line(self.nvcc_version_output),
                "deep_ep_include": str(self.deep_ep_include), "deep_ep_api": self.deep_ep_api,
                "deep_ep_headers_from": self.deep_ep_headers_from,
                "nccl_include": str(self.nccl_include), "target_nccl_include": self.target_nccl_include,
                "python_library_root": self.python_library_root,
                "learned_from_entry": self.learned is not None}


@dataclass(frozen=True)
class ServingDeepEP:
    """The facts of the serving DeepEP that enter its entry names.

    ``package_dir`` and ``nccl_root`` are spelled as that DeepEP spells them
    (they are hashed as text); ``headers`` is where jitcache reads the headers
    whose *contents* are hashed (``<package_dir>/include`` unless the serving
    package is not on this machine).
    """

    version: str                  # a DeepEPVersion: which adapter names its entries
    package_dir: str
    nccl_root: str
    nvcc_version_output: str
    headers: Path
    origin: str                   # how it was found: "importable deep_ep", "--deep-ep-root", "meta.json of ..."
    nvcc_path: str = ""

    @property
    def nccl_include(self) -> str:
        """``<nccl root>/include``: what DeepEP 2.5 puts in its ``-I`` flag (``std::filesystem::absolute``)."""
        return os.path.join(os.path.abspath(self.nccl_root), "include")

    @property
    def nvcc_release(self) -> str:
        return release_line(self.nvcc_version_output)

    def describe(self) -> str:
        return (f"DeepEP {self.version} at {self.package_dir} (NCCL {self.nccl_include}, "
                f"nvcc {self.nvcc_release or '?'}; {self.origin})")

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "package_dir": self.package_dir, "nccl_root": self.nccl_root,
                "nccl_include": self.nccl_include, "nvcc": self.nvcc_release, "nvcc_path": self.nvcc_path,
                "headers": str(self.headers), "origin": self.origin}


@dataclass(frozen=True)
class PlannedEntry:
    """One entry the serving DeepEP will look up: its directory name and the exact ``kernel.cu`` under it."""

    name: str
    family: str
    kernel_cu: str
    function: str
    variant: KernelVariant | None = None   # None: the buffer's barrier

    @property
    def num_max_tokens_per_rank(self) -> int | None:
        return None if self.variant is None else self.variant.num_max_tokens_per_rank

    @property
    def mode(self) -> str:
        return "buffer" if self.variant is None else self.variant.mode

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "function": self.function, "mode": self.mode,
                "num_max_tokens_per_rank": self.num_max_tokens_per_rank}


def headers_stamp(headers: Path) -> float:
    """The mtime of ``headers/deep_ep``: a changed header tree is hashed again (the adapters' memoised hashers)."""
    try:
        return (headers / "deep_ep").stat().st_mtime
    except OSError:
        return 0.0


@dataclass(frozen=True)
class BuildJob:
    """One cache entry to produce: everything a worker needs, nothing it must look up."""

    entry: str                      # directory name under cache/: "<name>.<digest>" or "kernel.<name>.<digest>"
    label: str                      # for people: "dispatch nmax=16 (decode)"
    files: tuple[tuple[str, str], ...]  # files to write before compiling: (name, text)
    argv: tuple[str, ...]           # the nvcc command, run from the build dir; "{dir}" is replaced by it
    after: tuple[tuple[str, str], ...] = ()  # files written after a successful compile (meta.json); "{dir}" too
    marker: str | None = ".committed"  # written last by the publish; None: the layout has no marker
    outputs: tuple[str, ...] = ("kernel.cubin",)
    num_max_tokens_per_rank: int | None = None
    family: str | None = None
    backend: Backend = "deep_ep"    # the root's folder the entry goes to: "deep_ep" (cache/<entry>) or "triton" (<entry>)
    tool: str = "nvcc"              # what runs, for messages

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "label": self.label, "family": self.family, "backend": self.backend,
                "num_max_tokens_per_rank": self.num_max_tokens_per_rank}


@dataclass(frozen=True)
class LearnedKernel:
    """An entry DeepEP wrote, read for ``--learn-from``."""

    path: Path
    api: DeepEPVersion
    name: str
    digest: str
    source: str         # kernel.cu as DeepEP wrote it


def refuse_digest(known: LearnedKernel, computed: str, why: str) -> ToolchainError:
    return ToolchainError(
        f"{known.path}: recomputed digest {computed} does not match the entry's {known.digest}; {why}",
        hint="learn from an entry written with these headers and this nvcc, or pass the serving machine's paths "
             "(--target-nccl-include); jitcache will not write entries DeepEP would never find")


#: Set on a buffer class by :func:`jitcache.runtime.install` while it is patched: DeepEP's own ``dispatch``.
ORIGINAL_DISPATCH_ATTR = "_jitcache_original_dispatch"


def original_dispatch(buffer: Any) -> Any:
    """``buffer.dispatch`` as DeepEP wrote it, even while :func:`jitcache.install` has patched the class."""
    original = getattr(type(buffer), ORIGINAL_DISPATCH_ATTR, None)
    return buffer.dispatch if original is None else original.__get__(buffer, type(buffer))


class DeepEPAdapter(ABC):
    """What one DeepEP release line does differently. Instances are stateless; see :mod:`.registry`."""

    #: The release line, as a profile's ``[deep_ep] api`` and reports spell it.
    version: ClassVar[DeepEPVersion]
    #: The store's name for this on-disk entry layout (``CacheEntry.format``).
    layout: ClassVar[str]
    #: The buffer class serving constructs, and the importable packages that may hold it.
    buffer_class: ClassVar[str]
    packages: ClassVar[tuple[str, ...]] = ("deep_ep", "deep_ep_v25")
    #: Environment variables naming the cache root, first set wins; the default under ``$HOME``.
    cache_env: ClassVar[tuple[str, ...]]
    default_cache_dir: ClassVar[str]
    #: ``A:B:C`` in the variable: the first root writable, the others read-only lookups.
    multiple_roots: ClassVar[bool] = False
    #: The empty file written last that decides an entry exists (None: existence is the files below).
    commit_marker: ClassVar[str | None] = None
    #: The files an entry must hold to be used (DeepEP aborts on a directory without them).
    entry_files: ClassVar[tuple[str, ...]] = ("kernel.cu", "kernel.cubin")
    #: Compile metadata DeepEP writes beside the cubin (None: this DeepEP writes none).
    meta_file: ClassVar[str | None] = None
    #: A header, relative to the include root, that only this version has.
    header_marker: ClassVar[str]
    #: The sdist ``jitcache sources fetch`` gets this version's headers from (``NAME==VERSION``), or None.
    sdist_requirement: ClassVar[str | None] = None

    @property
    def headers_from_sdist(self) -> bool:
        return self.sdist_requirement is not None

    @property
    def sdist_project(self) -> str | None:
        return None if self.sdist_requirement is None else self.sdist_requirement.partition("==")[0]
    #: How to get this version's headers, for error hints.
    install_hint: ClassVar[str]
    #: The DeepEP to install for a live warmup, for error hints.
    live_install_hint: ClassVar[str] = ""
    #: Whether a live process's digest facts (NCCL path, nvcc text) are found as :func:`.serving.locate_serving`
    #: finds them (2.5: DeepJIT's own lookup); False: the live package's own finders (2.1, :mod:`.live21`).
    live_names_from_serving: ClassVar[bool] = False
    #: What every entry directory name of this layout starts with ("" when names are bare ``<name>.<key>``).
    entry_prefix: ClassVar[str] = ""
    #: What one cold bucket (four kernels) costs this DeepEP's JIT on the serving path (H200 measurements).
    jit_seconds_per_bucket: ClassVar[float]
    #: This DeepEP's ``get_theoretical_num_sms`` (:mod:`.num_sms`).
    num_sms_rule: ClassVar[NumSmsRule]

    _entry_pattern: ClassVar[re.Pattern[str]]

    # -- the cache on disk ---------------------------------------------------------------------

    def cache_roots(self, environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
        """DeepEP's JIT cache roots as this process's environment sets them, the writable one first."""
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or Path.home())
        value = next((env[name] for name in self.cache_env if env.get(name)), "")
        if not value:
            return (home / self.default_cache_dir,)
        if self.multiple_roots:
            return tuple(Path(part) for part in value.split(":") if part)
        return (Path(value),)

    @property
    def entry_pattern(self) -> re.Pattern[str]:
        """A directory name under ``cache/``: groups ``family`` and ``key`` (32 hex digits)."""
        return self._entry_pattern

    @abstractmethod
    def entry_name(self, family: str, digest: str) -> str:
        """The directory DeepEP looks up for kernel ``family`` with ``digest``."""

    def parse_entry_name(self, dirname: str) -> tuple[str, str] | None:
        """``(family, digest)`` of an entry directory name of this layout, else None."""
        match = self._entry_pattern.match(dirname)
        return (match["family"], match["key"]) if match else None

    def is_committed(self, entry: Path) -> bool:
        """Whether DeepEP would use this entry directory (the commit rule)."""
        if self.commit_marker is not None:
            return (entry / self.commit_marker).is_file()
        return all((entry / name).is_file() for name in self.entry_files)

    # -- headers and the buffer ----------------------------------------------------------------

    def has_headers(self, include_root: Path) -> bool:
        """Whether ``include_root`` (the folder holding ``deep_ep/``) holds this version's headers."""
        return (include_root / self.header_marker).is_file()

    def live_toolchain_args(self, buffer: Any, include: Path, package_dir: Path) -> dict[str, Any]:
        """``resolve_toolchain`` keywords for compiling what the live ``buffer`` will look up: its package's
        headers, and the paths that enter its digest as that process spells them."""
        del buffer
        return {"deep_ep_include": include, "python_library_root": str(package_dir), "api": self.version}

    # -- rendering, flags and digest -----------------------------------------------------------

    @abstractmethod
    def target_facts(self, profile: Profile) -> TargetFacts:
        """The per-GPU numbers this DeepEP bakes into its templates (``num_sms`` rule included)."""

    @abstractmethod
    def render_plan(self, the_plan: WarmupPlan) -> tuple[RenderedKernel, ...]:
        """The exact source of every variant of ``the_plan``."""

    @abstractmethod
    def render_barrier(self, profile: Profile, facts: TargetFacts) -> RenderedKernel:
        """The barrier kernel every buffer compiles once."""

    @abstractmethod
    def kernel_entry_names(self, kernels: Sequence[RenderedKernel], toolchain: Toolchain, arch: str, *,
                           options: CompilerOptions | None = None) -> tuple[str, ...]:
        """The entry name this DeepEP computes for each kernel (same order): the digest rule, once.

        :meth:`build_jobs` names its entries with it."""

    @abstractmethod
    def serving_names(self, kernels: Sequence[RenderedKernel], serving: ServingDeepEP,
                      arch: str) -> list[PlannedEntry]:
        """Each kernel as the DeepEP ``serving`` describes will look it up: its entry name and exact ``kernel.cu``."""

    @abstractmethod
    def local_entry_name(self, serving: ServingDeepEP, family: str, kernel_cu: str, arch: str) -> str | None:
        """The name ``serving`` gives an entry whose ``kernel.cu`` is ``kernel_cu`` (relocation); None when that
        DeepEP would never write this ``kernel.cu``."""

    def serving_meta_json(self, serving: ServingDeepEP, arch: str) -> str | None:
        """The compile metadata ``serving`` writes beside an entry (None: this layout has none)."""
        del serving, arch
        return None

    @abstractmethod
    def build_jobs(self, kernels: Iterable[RenderedKernel], toolchain: Toolchain, arch: str, *,
                   options: CompilerOptions | None = None) -> tuple[BuildJob, ...]:
        """One job per distinct entry of ``kernels``: this DeepEP's digest, flags and nvcc command."""

    def jobs_for_plan(self, the_plan: WarmupPlan, toolchain: Toolchain, *, options: CompilerOptions | None = None,
                      with_barrier: bool = True) -> tuple[BuildJob, ...]:
        """One :class:`BuildJob` per variant of ``the_plan`` (and the barrier), named as this DeepEP names them."""
        if toolchain.deep_ep_api != self.version:
            raise ToolchainError(f"the DeepEP headers in {toolchain.deep_ep_include} are DeepEP "
                                 f"{toolchain.deep_ep_api}, not {self.version}", hint=self.install_hint)
        profile = the_plan.profile
        kernels = list(self.render_plan(the_plan))
        if with_barrier:
            kernels.append(self.render_barrier(profile, self.target_facts(profile)))
        return self.build_jobs(kernels, toolchain, profile.target.arch, options=options)

    # -- learning from an entry DeepEP wrote ---------------------------------------------------------

    def learn_toolchain(self, toolchain: Toolchain, entry_dir: Path) -> Toolchain | None:
        """The toolchain with the target facts ``entry_dir`` recorded, or None when this layout records none
        (then the buckets are derived from the entry instead: :meth:`derive_jobs`)."""
        return None

    @abstractmethod
    def derive_jobs(self, known: LearnedKernel, toolchain: Toolchain, header: str, values: Sequence[int],
                    arch: str) -> list[BuildJob]:
        """Jobs for ``values`` of ``num_max_tokens_per_rank``, from ``known`` with only that argument changed;
        refuses (:class:`~jitcache.errors.ToolchainError`) when ``known``'s digest does not recompute."""
