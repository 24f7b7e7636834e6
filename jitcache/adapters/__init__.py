"""How DeepEP names and builds a kernel: one adapter per DeepEP version, registered in :mod:`.registry`.

- :mod:`.base`: the :class:`DeepEPAdapter` interface, :class:`Toolchain`, :class:`BuildJob`;
- :mod:`.deepep25` (``EPBuffer``, DeepJIT layout) with :mod:`.render25` and :mod:`.deepjit`;
- :mod:`.deepep21` (``ElasticBuffer``, what vLLM calls) with :mod:`.render21` and :mod:`.digest21`;
- :mod:`.learn`: the version-free half of ``--learn-from`` (swap one template argument).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jitcache.adapters.base import BuildJob, DeepEPAdapter, LearnedKernel, Toolchain, original_dispatch
    from jitcache.adapters.registry import (ADAPTERS, adapter, adapter_for_buffer, adapter_for_headers,
                                            adapter_for_layout, adapters_for, buffer_api, derive_jobs_from_entry,
                                            find_entries, jobs_for_plan, parse_entry_name)

__all__ = ["ADAPTERS", "BuildJob", "DeepEPAdapter", "LearnedKernel", "Toolchain", "adapter", "adapter_for_buffer",
           "adapter_for_headers", "adapter_for_layout", "adapters_for", "buffer_api", "derive_jobs_from_entry",
           "find_entries", "jobs_for_plan", "original_dispatch", "parse_entry_name"]

_FROM_BASE = frozenset({"BuildJob", "DeepEPAdapter", "LearnedKernel", "Toolchain", "original_dispatch"})


def __getattr__(name: str) -> Any:
    """The names above, imported on first use: importing a submodule (:mod:`.layouts`, what a scan reads)
    loads no adapter."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{'base' if name in _FROM_BASE else 'registry'}"), name)
    globals()[name] = value
    return value
