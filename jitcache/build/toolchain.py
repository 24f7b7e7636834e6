"""Find what an ahead-of-time compile needs, without importing deep_ep (it needs a GPU driver).

nvcc and the DeepEP headers are found by :mod:`jitcache.adapters.headers` (re-exported here):

- nvcc: ``--nvcc``, else ``nvcc`` on PATH, ``$CUDA_HOME/bin/nvcc``, ``/usr/local/cuda/bin/nvcc``,
  or the ``nvidia-cuda-nvcc`` package's binary;
- DeepEP headers (:func:`locate_deep_ep_headers`): ``--deep-ep-include``, else, for ``api``
  ``"auto"``/``"2.5"``, an installed DeepEP 2.5 ``deep_ep`` package, then a DeepEP 2.5 sdist
  fetched by ``jitcache sources fetch`` (``<cache root>/sources/``, only ``deep_ep/include``
  extracted), then, for ``"auto"``/``"2.1"``, an installed DeepEP 2.1 package (the
  ``tokenspeed-deepep`` wheel); packages are located with ``importlib.util.find_spec``,
  which does not run them. With ``"auto"`` and headers of both versions found, it
  refuses (a :class:`~jitcache.errors.UsageError` asking for ``--deep-ep``) rather than pick one;
- NCCL headers: ``--nccl-include``, else ``$EP_NCCL_ROOT_DIR/include`` / ``$NCCL_DIR/include``
  (DeepEP's own overrides), else the ``nvidia-nccl-cu13`` package.

A missing input is one :class:`~jitcache.errors.ToolchainError` naming what to
install or pass. The NCCL directory *as the serving machine spells it* enters
DeepEP 2.5's digest (as ``-I<dir>``): it defaults to the local one and can be
set apart (``target_nccl_include``) or learned from an existing entry's meta.json.
"""

from __future__ import annotations

import os
from pathlib import Path

from jitcache.adapters.base import Toolchain, nvcc_major_minor, release_line
from jitcache.adapters.headers import (HeaderSource, _site_dirs, deep_ep_api_of, extract_sdist_headers,
                                       find_deep_ep_include, find_nvcc, locate_deep_ep_headers, nvcc_version)
from jitcache.adapters.registry import adapter
from jitcache.errors import ToolchainError, ToolchainOptionError

__all__ = ["HeaderSource", "Toolchain", "deep_ep_api_of", "extract_sdist_headers", "find_deep_ep_include",
           "find_nccl_include", "find_nvcc", "learn_from_entry", "locate_deep_ep_headers", "nvcc_major_minor",
           "nvcc_version", "release_line", "resolve_toolchain"]

_INSTALL_HINT = "pip install 'jitcache[aot]'  (tokenspeed-deepep: DeepEP headers; nvidia-nccl-cu13: NCCL headers)"


def find_nccl_include(explicit: str | Path | None = None) -> Path:
    if explicit:
        path = Path(explicit)
        for candidate in (path, path / "include"):
            if (candidate / "nccl.h").is_file():
                return candidate
        raise ToolchainOptionError(f"--nccl-include {path}: no nccl.h there")
    for env in ("EP_NCCL_ROOT_DIR", "NCCL_DIR"):
        if os.environ.get(env) and (Path(os.environ[env]) / "include" / "nccl.h").is_file():
            return Path(os.environ[env]) / "include"
    for site in _site_dirs():
        candidate = site / "nvidia" / "nccl" / "include"
        if (candidate / "nccl.h").is_file():
            return candidate
    raise ToolchainError("NCCL headers not found (DeepEP's kernels include nccl_device.h)",
                         hint=f"pip install nvidia-nccl-cu13, or pass --nccl-include DIR ({_INSTALL_HINT})")


def resolve_toolchain(*, nvcc: str | Path | None = None, deep_ep_include: str | Path | None = None,
                      nccl_include: str | Path | None = None, target_nccl_include: str | None = None,
                      python_library_root: str | None = None, api: str = "auto",
                      sources_dir: str | Path | None = None) -> Toolchain:
    """Everything a compile needs; ``api`` is the profile's ``[deep_ep] api``, ``sources_dir`` the
    ``<cache root>/sources`` that ``jitcache sources fetch`` fills (default: the default root's)."""
    nvcc_path = find_nvcc(nvcc)
    headers = locate_deep_ep_headers(deep_ep_include, api=api, sources_dir=sources_dir)
    include = headers.include_root
    nccl = find_nccl_include(nccl_include)
    return Toolchain(nvcc=nvcc_path, nvcc_version_output=nvcc_version(nvcc_path), deep_ep_include=include,
                     deep_ep_api=headers.api, nccl_include=nccl, target_nccl_include=target_nccl_include or str(nccl),
                     python_library_root=python_library_root or str(include.parent),
                     deep_ep_headers_from=headers.describe())


def learn_from_entry(toolchain: Toolchain, entry_dir: str | Path) -> Toolchain:
    """Adopt the target facts an existing entry recorded (its DeepEP adapter's rule: for 2.5, meta.json's
    flags, nvcc version text and library root); refuses a layout that records none."""
    learned = adapter(toolchain.deep_ep_api).learn_toolchain(toolchain, Path(entry_dir))
    if learned is None:
        raise ToolchainError(f"{entry_dir}: DeepEP {toolchain.deep_ep_api} entries record no toolchain to learn",
                             hint="derive the buckets from the entry instead (jitcache warmup --aot --learn-from)")
    return learned

