"""Digest truth: the DeepEP that will serve, and the exact entry names it will look up.

A kernel is warm only if the DeepEP that serves finds it under the name *it*
computes. Besides the kernel's source and its headers' contents, that name
holds facts of the serving machine:

- DeepEP 2.5 (DeepJIT): the NCCL include dir (``-I<nccl root>/include`` among
  the flags), the full ``nvcc --version`` text and the GPU arch;
- DeepEP 2.1: the NCCL root *and* ``-I<deep_ep package>/include``, nvcc's
  ``<major>.<minor>`` and the GPU arch.

:class:`ServingDeepEP` holds those facts; :func:`locate_serving` finds them
the way DeepEP does at import (``deep_ep/__init__.py``: the package dir is
``os.path.dirname(os.path.abspath(__file__))``, the NCCL root comes from
``utils/find_pkgs.find_nccl_root``: ``EP_NCCL_ROOT_DIR``, ``NCCL_DIR``, the
package's ``persistent_envs``, then the ``nvidia-nccl-*`` distribution holding
``libnccl.so``), without importing ``deep_ep`` (it needs a GPU driver).
:func:`planned_entries` names every planned variant and the buffer's barrier;
:func:`local_entry_name` names any entry's own ``kernel.cu`` (relocation).
Each asks the serving version's adapter (``serving_names``,
``local_entry_name``, ``serving_meta_json``, the commit rule, the entry
prefix): this module compares no version strings.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import os
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from jitcache.adapters.base import DeepEPAdapter, PlannedEntry, ServingDeepEP
from jitcache.adapters.deepep25 import COMMIT_MARKER, DeepEP25
from jitcache.adapters.deepjit import options_from_meta
from jitcache.adapters.headers import deep_ep_api_of, find_nvcc, nvcc_version
from jitcache.adapters.registry import ADAPTERS, adapter, adapter_for_layout
from jitcache.errors import ToolchainError, UsageError
from jitcache.planning.variants import KernelVariant, WarmupPlan
from jitcache.types import DEEP_EP_VERSIONS

__all__ = ["COMMIT_MARKER", "PlannedEntry", "ServingDeepEP", "api_of_layout", "entry_family", "is_committed", "jit_seconds_per_bucket", "local_entry_name", "locate_serving",
           "planned_entries", "serving_from_meta", "serving_meta_json"]

#: The packages a serving DeepEP is importable as, in the order they are tried.
_PACKAGES = tuple(dict.fromkeys(p for a in ADAPTERS for p in a.packages))


def api_of_layout(layout: str) -> str | None:
    """The DeepEP version whose entries have ``layout`` (``"deepjit"`` -> ``"2.5"``), else None."""
    found = adapter_for_layout(layout)
    return None if found is None else found.version


def _rules(version: str) -> DeepEPAdapter:
    try:
        return adapter(version)
    except UsageError:
        raise UsageError(f"DeepEP {version!r}: jitcache knows the naming rules of "
                         f"{', '.join(DEEP_EP_VERSIONS)}") from None


def entry_family(version: str, dirname: str) -> str | None:
    """The kernel family of a ``cache/`` directory name in this DeepEP's layout, else None (its adapter's parser)."""
    parsed = _rules(version).parse_entry_name(dirname)
    return parsed[0] if parsed else None


def is_committed(version: str, entry: Path) -> bool:
    """Whether this DeepEP would use ``entry`` (its commit rule)."""
    return _rules(version).is_committed(entry)


def jit_seconds_per_bucket(version: str) -> float:
    """What a cold bucket costs this DeepEP on the serving path (H200 measurements)."""
    try:
        return adapter(version).jit_seconds_per_bucket
    except UsageError:
        return DeepEP25.jit_seconds_per_bucket


# -- finding the serving DeepEP ----------------------------------------------------------------


def _persistent_envs(package_dir: Path) -> dict[str, str]:
    """``deep_ep/envs.py``'s ``persistent_envs`` (set at build time, applied at import), read without running it."""
    try:
        tree = ast.parse((package_dir / "envs.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "persistent_envs" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                try:  # `dict()` / `dict(KEY="v")`
                    if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "dict":
                        value = {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
                    else:
                        return {}
                except ValueError:
                    return {}
            return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return {}


def find_nccl_root(package_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """DeepEP's ``find_nccl_root()``: ``EP_NCCL_ROOT_DIR``, ``NCCL_DIR`` (set, even empty), the package's
    persistent environment, else the ``nvidia-nccl`` distribution holding ``libnccl.so`` (earliest on sys.path)."""
    env = dict(os.environ if environ is None else environ)
    if package_dir is not None:
        for key, value in _persistent_envs(package_dir).items():
            env.setdefault(key, value)
    for name in ("EP_NCCL_ROOT_DIR", "NCCL_DIR"):
        if name in env:
            return env[name]
    import sys

    priority = {p: i for i, p in enumerate(sys.path)}
    best, best_priority = None, len(sys.path)
    for dist in importlib.metadata.distributions():
        # The dist-info folder's name first: parsing every distribution's METADATA costs ~0.1 s with a few hundred.
        folder = getattr(getattr(dist, "_path", None), "name", None)
        if folder is not None and "nccl" not in folder.lower():
            continue
        dist_name = (dist.metadata["Name"] or "").lower()
        if "nvidia-nccl" not in dist_name and "nvidia_nccl" not in dist_name:
            continue
        site = str(getattr(dist, "_path", Path(".")).parent)
        rank = priority.get(site, len(sys.path))
        if rank > best_priority:
            continue
        for file in dist.files or []:
            if "libnccl.so" in str(file):
                lib_dir = os.path.dirname(str(file.locate()))
                best = os.path.dirname(lib_dir) if os.path.basename(lib_dir) == "lib" else lib_dir
                best_priority = rank
                break
    return best


def _package_dir(deep_ep_root: str | Path | None) -> tuple[Path, str]:
    if deep_ep_root is not None:
        path = Path(deep_ep_root)
        for candidate in (path, path / "deep_ep"):
            if deep_ep_api_of(candidate / "include"):
                return Path(os.path.abspath(candidate)), "--deep-ep-root"
        raise UsageError(f"--deep-ep-root {deep_ep_root}: no DeepEP package there (expected include/deep_ep/impls/ "
                         "beside __init__.py: the folder `python -c 'import deep_ep; print(deep_ep.__file__)'` names)")
    for package in _PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            if deep_ep_api_of(Path(location) / "include"):
                return Path(os.path.abspath(location)), f"importable {package}"
    raise ToolchainError("no DeepEP package with headers is importable here, so the serving DeepEP's entry names "
                         "cannot be computed", hint="run where the server runs, or pass --deep-ep-root DIR "
                                                    "(its deep_ep package dir) and --nccl-include DIR")


@functools.lru_cache(maxsize=8)
def _nvcc_text(nvcc: str | None) -> tuple[str, str]:
    path = None
    if nvcc is None and os.environ.get("EP_JIT_NVCC_COMPILER"):  # DeepJIT's override (2.5)
        path = Path(os.path.normpath(os.path.abspath(os.environ["EP_JIT_NVCC_COMPILER"])))
    if nvcc is None and path is None:
        for env in ("CUDA_HOME", "CUDA_PATH"):  # DeepEP and DeepJIT look there before PATH
            candidate = Path(os.environ.get(env, "")) / "bin" / "nvcc"
            if os.environ.get(env) and candidate.is_file() and os.access(candidate, os.X_OK):
                path = candidate
                break
    path = path or find_nvcc(nvcc)
    return str(path), nvcc_version(path)


def locate_serving(deep_ep_root: str | Path | None = None, nccl_include: str | Path | None = None, *,
                   nvcc: str | Path | None = None, nvcc_version_output: str | None = None,
                   headers: str | Path | None = None, environ: Mapping[str, str] | None = None,
                   nvcc_path: str | None = None) -> ServingDeepEP:
    """The serving DeepEP: the importable ``deep_ep`` (``deep_ep_v25``), or the package dir given.

    ``nccl_include`` is the NCCL include dir (or root) *as the serving machine
    spells it*; by default DeepEP's own lookup. ``nvcc_version_output``: the
    serving nvcc's ``--version`` text (default: run the local nvcc; ``nvcc_path``
    names the serving one for its ``meta.json``).
    ``headers``: where to read the headers when the package dir is only a
    name here (another machine's path).
    """
    if deep_ep_root is not None and headers is not None:
        package_dir, origin = Path(os.path.abspath(deep_ep_root)), "--deep-ep-root"
        include = Path(headers)
    else:
        package_dir, origin = _package_dir(deep_ep_root)
        include = package_dir / "include"
    version = deep_ep_api_of(include)
    if version is None:
        raise UsageError(f"{include}: no DeepEP headers there")
    if nccl_include is not None:
        text = str(nccl_include).rstrip("/")
        nccl_root = os.path.dirname(text) if os.path.basename(text) == "include" else text
    else:
        found = find_nccl_root(package_dir, environ)
        if found is None:
            raise ToolchainError(f"DeepEP at {package_dir}: no NCCL root (EP_NCCL_ROOT_DIR, NCCL_DIR or an "
                                 "nvidia-nccl package), which its entry names hold",
                                 hint="pass --nccl-include DIR as the serving machine spells it")
        nccl_root = found
    nvcc_path = nvcc_path or (str(nvcc) if nvcc is not None else "")
    if nvcc_version_output is None:
        nvcc_path, nvcc_version_output = _nvcc_text(None if nvcc is None else str(nvcc))
    return ServingDeepEP(version=version, package_dir=str(package_dir), nccl_root=nccl_root,
                         nvcc_version_output=nvcc_version_output, headers=include, origin=origin, nvcc_path=nvcc_path)


def serving_from_meta(meta: Mapping | str | bytes, headers: str | Path, *, origin: str = "meta.json") -> ServingDeepEP:
    """The DeepEP 2.5 that wrote an entry, from its ``meta.json`` (paths and nvcc text as it recorded them):
    DeepJIT's layout is the one that records them (:class:`~jitcache.adapters.deepep25.DeepEP25`)."""
    learned = options_from_meta(meta)
    nccl_include = learned.nccl_include_dir
    if nccl_include is None:
        raise UsageError(f"{origin}: its flags hold no -I<nccl>/include")
    return ServingDeepEP(version=DeepEP25.version, package_dir=learned.python_library_root,
                         nccl_root=os.path.dirname(nccl_include.rstrip("/")),
                         nvcc_version_output=learned.nvcc_version_output, headers=Path(headers), origin=origin,
                         nvcc_path=learned.nvcc_path)


# -- names, by the serving version's adapter -------------------------------------------------------


def planned_entries(the_plan: WarmupPlan, serving: ServingDeepEP, *, with_barrier: bool = True,
                    variants: tuple[KernelVariant, ...] | None = None) -> tuple[PlannedEntry, ...]:
    """Every entry the serving DeepEP will look up for ``the_plan`` (its variants, then the barrier), de-duplicated.

    The GPU facts are the profile's ``[target]`` (fill them from the device first where there is one:
    :func:`jitcache.warm.prepass.with_live_target`). ``variants`` names a subset (the runtime guard's).
    """
    profile = the_plan.profile
    if profile.deep_ep.api not in ("auto", serving.version):
        raise UsageError(f"{profile.source}: [deep_ep] api = {profile.deep_ep.api!r}, but the serving DeepEP is "
                         f"{serving.version} ({serving.package_dir})")
    rules = _rules(serving.version)
    kernels = list(rules.render_plan(the_plan if variants is None else replace(the_plan, variants=tuple(variants))))
    if with_barrier:
        kernels.append(rules.render_barrier(profile, rules.target_facts(profile)))
    seen: dict[str, PlannedEntry] = {}
    for entry in rules.serving_names(kernels, serving, profile.target.arch):
        seen.setdefault(entry.name, entry)
    return tuple(seen.values())


def local_entry_name(serving: ServingDeepEP, family: str, kernel_cu: str, arch: str) -> str | None:
    """The name the serving DeepEP gives an entry whose ``kernel.cu`` is ``kernel_cu``, built for ``arch``.

    ``None`` when that DeepEP would never write this ``kernel.cu`` (2.1: its
    includes' hash line is not the one of the serving headers).
    """
    return _rules(serving.version).local_entry_name(serving, family, kernel_cu, arch)


def serving_meta_json(serving: ServingDeepEP, arch: str) -> str | None:
    """The ``meta.json`` the serving DeepEP 2.5 writes beside an entry (None for a layout without one)."""
    return _rules(serving.version).serving_meta_json(serving, arch)
