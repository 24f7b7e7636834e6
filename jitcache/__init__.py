"""jitcache: warm, persistent, shippable JIT caches for DeepEP (and Triton).

The core (policy, profiles, plan, cache store) imports without torch, triton,
deep_ep or a GPU; the runtime pieces that need them import them lazily.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers take this name)

from ._version import __version__

# Names resolved on first access: `import jitcache` (and `jitcache --version`) loads no more
# than it uses, not even the bucket policy or the exception classes (dataclasses, typing).
_LAZY = {
    "BucketPolicy": "jitcache.planning.buckets",
    **dict.fromkeys(("BundleError", "CacheError", "CacheLockTimeout", "ColdVariantError", "CompileError",
                     "HeaderError", "JitCacheError", "ProfileError", "ToolchainError", "UsageError",
                     "WarmupError"), "jitcache.errors"),
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
    from importlib import import_module

    return getattr(import_module(module), name)


__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # the lazy names, for type checkers
    from typing import Any

    from .errors import (BundleError, CacheError, CacheLockTimeout, ColdVariantError, CompileError, HeaderError,
                         JitCacheError, ProfileError, ToolchainError, UsageError, WarmupError)
    from .planning.buckets import BucketPolicy
