"""``jitcache.install()``: every DeepEP buffer's ``dispatch`` goes through a :class:`BucketedDispatcher`.

:func:`install` patches the importable DeepEP buffer classes (``EPBuffer``,
``ElasticBuffer``, as the registered adapters name them) so that each buffer
instance gets its own :class:`~jitcache.runtime.dispatcher.BucketedDispatcher`
(rebuilt when :func:`install` is called again); DeepEP's own ``dispatch``
stays reachable (:func:`jitcache.adapters.base.original_dispatch`).
:func:`uninstall` restores the classes; :func:`installed` and
:func:`installed_stats` say what is in place. The vLLM plugin calls
:func:`install` (:mod:`jitcache.plugin`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterable

from jitcache.adapters.base import ORIGINAL_DISPATCH_ATTR
from jitcache.adapters.registry import ADAPTERS, buffer_api
from jitcache.errors import UsageError
from jitcache.planning.buckets import BucketPolicy
from jitcache.planning.profiles import Profile
from jitcache.runtime.dispatcher import BucketedDispatcher, _as_policy
from jitcache.runtime.stats import DispatchStats

__all__ = ["Installation", "install", "installed", "installed_stats", "uninstall"]


def _importable_buffer_classes() -> list[type]:
    """The DeepEP buffer classes importable in this process (importing deep_ep is heavy: only on demand)."""
    import importlib

    found: list[type] = []
    packages = dict.fromkeys(p for a in ADAPTERS for p in a.packages)
    for package in packages:
        try:
            module = importlib.import_module(package)
        except Exception:  # noqa: BLE001 - not installed, or built for another torch/CUDA
            continue
        for version in ADAPTERS:
            cls = getattr(module, version.buffer_class, None)
            if isinstance(cls, type) and cls not in found:
                found.append(cls)
    return found


# -- the dispatcher ---------------------------------------------------------------------------


# -- install / uninstall ----------------------------------------------------------------------


@dataclass(frozen=True)
class Installation:
    """What :func:`install` patched, with which policy."""

    classes: tuple[str, ...]
    policy: BucketPolicy
    profile: str | None
    strict: bool


class _Patch:
    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.had_own = "dispatch" in cls.__dict__
        self.original = cls.__dict__.get("dispatch")
        self.inherited = getattr(cls, "dispatch")  # what instances called before the patch


_LOCK = threading.RLock()
_PATCHES: dict[type, _Patch] = {}
_STATE: dict[str, Any] = {}
_INSTANCE_ATTR = "_jitcache_dispatcher"


def _patched_dispatch(self: Any, x: Any, *args: Any, num_tokens_across_dp: Any = None, **kwargs: Any) -> Any:
    generation = _STATE.get("generation")
    cached = self.__dict__.get(_INSTANCE_ATTR) if hasattr(self, "__dict__") else None
    if cached is None or cached[0] != generation:
        dispatcher = BucketedDispatcher(self, _STATE["profile"] or _STATE["policy"], strict=_STATE["strict"],
                                        warm=_STATE["warm"], stats=_STATE["stats"],
                                        relocate=_STATE.get("relocate", True))
        cached = (generation, dispatcher)
        try:
            self.__dict__[_INSTANCE_ATTR] = cached
        except (AttributeError, TypeError):
            pass
    return cached[1].dispatch(x, *args, num_tokens_across_dp=num_tokens_across_dp, **kwargs)


_patched_dispatch.__jitcache_patch__ = True  # type: ignore[attr-defined]


def install(policy: BucketPolicy | Profile | str, strict: bool = False, *, classes: Iterable[type] | None = None,
            warm: Any = None, relocate: bool = True) -> Installation:
    """Patch DeepEP's buffer classes so that every ``dispatch`` goes through a :class:`BucketedDispatcher`.

    One line in a worker gives a framework that calls DeepEP directly (with
    ``num_max_tokens_per_rank=None`` or a raw size in decode mode) the
    bucketing and the miss guard. Idempotent: installing again replaces the
    policy without wrapping twice. :func:`uninstall` restores the classes.
    ``classes`` defaults to every ``EPBuffer``/``ElasticBuffer`` importable from
    ``deep_ep`` and ``deep_ep_v25``. With a profile, each buffer's guard judges
    warm buckets by the entry names its DeepEP looks up, and first (``relocate``,
    on by default) re-publishes entries built for other install paths under those
    names (:mod:`jitcache.store.relocate`).
    """
    bucket_policy, profile = _as_policy(policy)
    targets = list(classes) if classes is not None else _importable_buffer_classes()
    if not targets:
        raise UsageError("no DeepEP buffer class to patch: neither deep_ep nor deep_ep_v25 is importable",
                         hint="install DeepEP (deepinfer-ep 2.5 or DeepEP 2.1) in this environment")
    for cls in targets:
        buffer_api(cls)  # refuse anything that is not a DeepEP buffer before patching anything
    with _LOCK:
        _STATE.update(policy=bucket_policy, profile=profile, strict=bool(strict), warm=warm, relocate=bool(relocate),
                      generation=_STATE.get("generation", 0) + 1,
                      stats=_STATE.get("stats") or DispatchStats())
        for cls in targets:
            if cls in _PATCHES:
                continue
            _PATCHES[cls] = _Patch(cls)
            setattr(cls, ORIGINAL_DISPATCH_ATTR, _PATCHES[cls].inherited)
            setattr(cls, "dispatch", _patched_dispatch)
        return installed()  # type: ignore[return-value]


def uninstall() -> None:
    """Undo :func:`install` on every class it patched (a no-op when nothing is installed)."""
    with _LOCK:
        for cls, patch in list(_PATCHES.items()):
            if patch.had_own:
                setattr(cls, "dispatch", patch.original)
            elif "dispatch" in cls.__dict__:
                delattr(cls, "dispatch")
            if ORIGINAL_DISPATCH_ATTR in cls.__dict__:
                delattr(cls, ORIGINAL_DISPATCH_ATTR)
            del _PATCHES[cls]
        for key in ("policy", "profile", "strict", "warm", "relocate"):
            _STATE.pop(key, None)
        # The generation keeps counting so that dispatchers cached on instances are rebuilt.
        _STATE["generation"] = _STATE.get("generation", 0) + 1


def installed() -> Installation | None:
    """The current installation, or ``None``."""
    with _LOCK:
        if not _PATCHES or "policy" not in _STATE:
            return None
        profile = _STATE["profile"]
        return Installation(classes=tuple(f"{c.__module__}.{c.__qualname__}" for c in _PATCHES),
                            policy=_STATE["policy"], profile=profile.name if profile else None,
                            strict=_STATE["strict"])


def installed_stats() -> DispatchStats | None:
    """The counters shared by every buffer :func:`install` patched."""
    return _STATE.get("stats")
