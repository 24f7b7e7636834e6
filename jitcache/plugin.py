"""vLLM general plugin: ``install()`` the bucket policy in every worker when ``JITCACHE_PROFILE`` is set.

Declared in ``pyproject.toml`` as the ``vllm.general_plugins`` entry point
``jitcache = jitcache.plugin:register``; vLLM calls it in each process it
starts. ``JITCACHE_PROFILE`` names a built-in profile or a profile file;
``JITCACHE_STRICT=1`` makes a cold bucket an error instead of a warning.
"""

from __future__ import annotations

import logging
import os

from .errors import JitCacheError

__all__ = ["register"]

log = logging.getLogger("jitcache.plugin")

_TRUE = ("1", "true", "yes", "on")


def register() -> None:
    """Install the policy of ``$JITCACHE_PROFILE`` on DeepEP's buffer classes; nothing when it is unset.

    A profile that does not load is an error (the user asked for it); a process
    without DeepEP (a worker that does no expert parallelism) only logs it.
    """
    name = os.environ.get("JITCACHE_PROFILE", "").strip()
    if not name:
        return
    from .runtime.dispatcher import _importable_buffer_classes, install
    from .planning.profiles import load_profile

    profile = load_profile(name)
    strict = os.environ.get("JITCACHE_STRICT", "").strip().lower() in _TRUE
    classes = _importable_buffer_classes()
    if not classes:
        log.warning("jitcache: JITCACHE_PROFILE=%s is set but DeepEP is not importable here; nothing installed",
                    name)
        return
    try:
        installation = install(profile, strict=strict, classes=classes)
    except JitCacheError as exc:
        log.error("jitcache: could not install the bucket policy of %s: %s", name, exc)
        raise
    log.info("jitcache: bucketed dispatch installed on %s (profile %s, %d buckets, strict=%s)",
             ", ".join(installation.classes), profile.name, len(installation.policy), strict)
