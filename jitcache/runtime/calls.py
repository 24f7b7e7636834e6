"""What a dispatch call carries, read without torch: the local token count, vLLM's DP-uniform size, named arguments.

Pure helpers of :class:`jitcache.runtime.dispatcher.BucketedDispatcher` (and
re-exported there).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from jitcache.errors import UsageError

__all__ = ["local_num_tokens", "vllm_dp_num_tokens"]


def local_num_tokens(x: Any) -> int:
    """Rows of ``x``, or of ``x[0]`` for an fp8 ``(x, scales)`` tuple."""
    data = x[0] if isinstance(x, tuple) else x
    try:
        return int(data.shape[0])
    except (AttributeError, IndexError, TypeError):
        raise UsageError(f"cannot tell the token count of x={type(data).__name__}: it has no shape[0]") from None


_VLLM_FORWARD_CONTEXT = "vllm.forward_context"


def vllm_dp_num_tokens() -> int | None:
    """The DP-uniform token count of vLLM's current forward pass, or ``None`` outside one.

    vLLM (``vllm.forward_context``) keeps ``dp_metadata.num_tokens_across_dp_cpu``
    (a CPU tensor, one count per DP rank) for the step being run; its DeepEP V2
    path dispatches ``ceil(max / sp_size)`` per EP rank. ``sp_size`` is read from
    the context or its ``dp_metadata`` when either carries it (vLLM keeps it on
    its prepare/finalize object instead: then 1, and the caller's own
    ``num_max_tokens_per_rank`` bounds the result, see :meth:`BucketedDispatcher.dispatch`).
    Never raises; cheap when vLLM is not loaded (one dict lookup).
    """
    module = sys.modules.get(_VLLM_FORWARD_CONTEXT)
    if module is None:
        return None
    try:
        if not module.is_forward_context_available():
            return None
        context = module.get_forward_context()
        meta = context.dp_metadata
        if meta is None:
            return None
        across = meta.num_tokens_across_dp_cpu
        count = int(across.max()) if hasattr(across, "max") else max(int(v) for v in across)
        sp_size = int(getattr(context, "sp_size", None) or getattr(meta, "sp_size", None) or 1)
        return -(-count // sp_size)
    except Exception:  # noqa: BLE001 - another vLLM's context shape: fall back to the caller's numbers
        return None


def _name_arguments(function: Any, args: tuple, kwargs: dict) -> dict:
    bound = inspect.signature(function).bind_partial(None, *args, **kwargs)  # None stands in for x
    named = dict(bound.arguments)
    named.pop(next(iter(named)))
    extra = named.pop("kwargs", None)
    if isinstance(extra, dict):
        named.update(extra)
    return named
