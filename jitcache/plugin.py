"""vLLM general plugin: bucketed DeepEP dispatch in the processes that build a DeepEP buffer, and only there.

Declared in ``pyproject.toml`` as the ``vllm.general_plugins`` entry point
``jitcache = jitcache.plugin:register``. vLLM loads general plugins in every
process it starts (API server, engine core, workers; ``VLLM_PLUGINS``, when
set, must name ``jitcache``), calls ``register()`` without arguments and does
not catch what it raises. So ``register()``:

- does nothing without ``JITCACHE_PROFILE`` (a built-in profile name or a
  profile file);
- never imports DeepEP: it registers a post-import hook (``wrapt``) on
  ``deep_ep`` and ``deep_ep_v25``, and :func:`jitcache.install` runs when the
  process itself imports one of them (vLLM's workers do, when they build the
  all-to-all buffer; the API server and the engine core never do). In a
  process that had imported DeepEP already, the hook runs at once;
- never raises into vLLM, with one exception asked for: with
  ``JITCACHE_STRICT=1`` a ``JITCACHE_PROFILE`` that does not load is an error
  at start. Without it, that is one error line and vLLM runs without jitcache;
- logs one line where it acts (``jitcache: bucketed dispatch installed on
  ...``), through vLLM's own log handlers when vLLM configured them.

``JITCACHE_STRICT=1`` also makes a cold bucket a :class:`ColdVariantError` at
dispatch (the strict refusal); the warm set is agreed over the buffer's group
at its first dispatch, so every rank refuses the same buckets.
"""

from __future__ import annotations

import logging
from typing import Any

from . import settings
from .errors import JitCacheError, UsageError

__all__ = ["register"]

log = logging.getLogger("jitcache.plugin")

_STATE: dict[str, Any] = {}


def _packages() -> tuple[str, ...]:
    """The packages that hold DeepEP's buffer classes (each DeepEP version's adapter names its own)."""
    from .adapters.registry import ADAPTERS

    return tuple(dict.fromkeys(p for a in ADAPTERS for p in a.packages))


def _adopt_vllm_logging() -> None:
    # vLLM's "vllm" logger has its handlers and does not propagate; ours has none, so an INFO line would
    # be dropped. Share vLLM's handlers and level when it configured them and nobody configured ours.
    ours, vllm = logging.getLogger("jitcache"), logging.getLogger("vllm")
    if ours.handlers or not vllm.handlers or logging.getLogger().handlers:
        return
    for handler in vllm.handlers:
        ours.addHandler(handler)
    ours.setLevel(vllm.getEffectiveLevel())
    ours.propagate = False


def register() -> None:
    """vLLM's entry point: arm the install of ``$JITCACHE_PROFILE`` for when this process imports DeepEP.

    Raises only with ``JITCACHE_STRICT=1``, for a profile that does not load.
    """
    name = settings.profile()
    if name is None:
        return
    try:
        strict = settings.strict()
    except UsageError as exc:  # a typo must not take vLLM down: not strict, said once
        log.error("jitcache: %s; running as JITCACHE_STRICT=0", exc)
        strict = False
    try:
        _adopt_vllm_logging()
        from .planning.profiles import load_profile

        profile = load_profile(name)
    except JitCacheError as exc:
        if strict:
            log.error("jitcache: JITCACHE_PROFILE=%s: %s (JITCACHE_STRICT=1: refusing to start)", name, exc)
            raise
        log.error("jitcache: JITCACHE_PROFILE=%s: %s; vLLM runs without jitcache%s", name, exc,
                  f" ({exc.hint})" if exc.hint else "")
        return
    except Exception as exc:  # noqa: BLE001 - a plugin must not take vLLM down
        log.error("jitcache: the plugin failed to load (%s: %s); vLLM runs without jitcache", type(exc).__name__, exc)
        return
    try:
        import wrapt

        _STATE.update(profile=profile, strict=strict)
        if not _STATE.get("armed"):
            _STATE["armed"] = True
            for package in _packages():
                wrapt.register_post_import_hook(_on_deep_ep_import, package)
        log.debug("jitcache: will install %s (strict=%s) when this process imports %s", profile.name, strict,
                  " or ".join(_packages()))
    except Exception as exc:  # noqa: BLE001
        log.error("jitcache: could not arm the plugin (%s: %s); vLLM runs without jitcache", type(exc).__name__, exc)


def _on_deep_ep_import(module: Any) -> None:
    """Post-import hook: patch the buffer classes of the DeepEP package just imported. Never raises."""
    try:
        from .adapters.registry import ADAPTERS
        from .runtime.install import install

        names = [a.buffer_class for a in ADAPTERS]
        classes = [cls for cls in (getattr(module, n, None) for n in names) if isinstance(cls, type)]
        if not classes:
            log.warning("jitcache: %s has no %s: nothing installed", module.__name__, " or ".join(names))
            return
        profile, strict = _STATE["profile"], _STATE["strict"]
        installation = install(profile, strict=strict, classes=classes)
        log.info("jitcache: bucketed dispatch installed on %s (profile %s, %d buckets up to %d, strict=%s)",
                 ", ".join(installation.classes), profile.name, len(installation.policy),
                 installation.policy.max_num_batched_tokens, strict)
    except Exception as exc:  # noqa: BLE001 - raising here would break vLLM's `import deep_ep`
        log.error("jitcache: could not install on %s (%s: %s); DeepEP runs without jitcache",
                  getattr(module, "__name__", module), type(exc).__name__, exc)
