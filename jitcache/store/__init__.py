"""The on-disk cache: root layout, native-format readers, maintenance.

One module per job: :mod:`.root` (where the cache is, its layout, lock and
the exports a worker needs), :mod:`.publish` (atomic publishing),
:mod:`.elf` (cubin checks), :mod:`.kernels` (template decoding),
:mod:`.formats` (readers for DeepJIT, DeepEP 2.1 and Triton entries),
:mod:`.scan` (a whole cache -> a report; plan coverage), :mod:`.verify`,
:mod:`.prune` and :mod:`.bundle` (maintenance, planned then run).
"""

from __future__ import annotations

from .model import CacheEntry, Problem
from .publish import publish_entry
from .root import CacheRoot, activate, env_exports, resolve_root
from .scan import CacheReport, Coverage, coverage, scan, scan_deep_ep, scan_triton

__all__ = [
    "CacheEntry",
    "CacheReport",
    "CacheRoot",
    "Coverage",
    "Problem",
    "activate",
    "coverage",
    "env_exports",
    "publish_entry",
    "resolve_root",
    "scan",
    "scan_deep_ep",
    "scan_triton",
]
