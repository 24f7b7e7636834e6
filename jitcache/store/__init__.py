"""The on-disk cache: root layout, native-format readers, maintenance.

One module per job: :mod:`.root` (where the cache is, its layout, lock and
the exports a worker needs), :mod:`.publish` (atomic publishing),
:mod:`.elf` (cubin checks), :mod:`.kernels` (template decoding),
:mod:`.formats` (readers for DeepJIT, DeepEP 2.1 and Triton entries),
:mod:`.scan` (a whole cache -> a report; plan coverage), :mod:`.verify`,
:mod:`.prune` and :mod:`.bundle` (maintenance, planned then run).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Resolved on first access, so that importing one module of the package (``.model``,
# ``.root``) does not load every other one (start-up of the CLI). The scan function is
# ``jitcache.store.scan.scan``: ``jitcache.store.scan`` is its module (a lazy name cannot
# shadow a submodule reliably).
_LAZY = {
    "CacheEntry": ".model",
    "Problem": ".model",
    "publish_entry": ".publish",
    "CacheRoot": ".root",
    "activate": ".root",
    "env_exports": ".root",
    "resolve_root": ".root",
    "CacheReport": ".scan",
    "Coverage": ".scan",
    "coverage": ".scan",
    "scan_deep_ep": ".scan",
    "scan_triton": ".scan",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jitcache.store' has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)


__all__ = sorted(_LAZY)
