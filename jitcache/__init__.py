"""jitcache: warm, persistent, shippable JIT caches for DeepEP (and Triton).

The core (policy, profiles, plan, cache store) imports without torch, triton,
deep_ep or a GPU; the runtime pieces that need them import them lazily.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .planning.buckets import BucketPolicy
from .errors import (
    BundleError,
    CacheError,
    CacheLockTimeout,
    ColdVariantError,
    CompileError,
    HeaderError,
    JitCacheError,
    ProfileError,
    ToolchainError,
    UsageError,
    WarmupError,
)
# Names resolved on first access: `import jitcache` (and `jitcache --version`) loads no more
# than it uses.
_LAZY = {
    "Profile": "jitcache.planning.profiles",
    "builtin_profile_names": "jitcache.planning.profiles",
    "load_profile": "jitcache.planning.profiles",
    "KernelVariant": "jitcache.planning.variants",
    "WarmupPlan": "jitcache.planning.variants",
    "plan": "jitcache.planning.variants",
    "activate": "jitcache.store.root",
    "CacheRoot": "jitcache.store.root",
    "warmup": "jitcache.warm.live",
    "WarmupReport": "jitcache.warm.live",
    "LiveOptions": "jitcache.warm.live",
    "live_warmup": "jitcache.warm.live",
    "AotOptions": "jitcache.warm.aot_entry",
    "AotReport": "jitcache.build.pool",
    "aot_warmup": "jitcache.warm.aot_entry",
    "BucketedDispatcher": "jitcache.runtime.dispatcher",
    "install": "jitcache.runtime.install",
    "uninstall": "jitcache.runtime.install",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jitcache' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "BucketPolicy",
    "BundleError",
    "CacheError",
    "CacheLockTimeout",
    "ColdVariantError",
    "CompileError",
    "HeaderError",
    "JitCacheError",
    "ProfileError",
    "ToolchainError",
    "UsageError",
    "WarmupError",
    "__version__",
    *_LAZY,
]
