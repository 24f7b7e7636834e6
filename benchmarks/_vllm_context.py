"""A stand-in for vLLM's ``vllm.forward_context``, shaped as vLLM's, for the GPU proof and the CPU tests.

vLLM keeps the current step's context in a module global, read through
``is_forward_context_available()`` and ``get_forward_context()``; its
``dp_metadata`` (``None`` with one DP rank) holds ``num_tokens_across_dp_cpu``
(a CPU int32 tensor, one count per DP rank) and ``max_tokens_across_dp_cpu``.
That is all jitcache's dispatcher reads. vLLM itself cannot be installed on
the rig or here (it pins its own torch and CUDA), hence the stand-in.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

__all__ = ["DPMetadata", "ForwardContext", "install", "set_forward_context", "uninstall"]


@dataclass
class DPMetadata:
    max_tokens_across_dp_cpu: Any
    num_tokens_across_dp_cpu: Any


@dataclass
class ForwardContext:
    no_compile_layers: dict
    attn_metadata: Any
    slot_mapping: dict
    virtual_engine: int
    dp_metadata: DPMetadata | None = None
    additional_kwargs: dict = field(default_factory=dict)


def _module() -> types.ModuleType:
    module = types.ModuleType("vllm.forward_context")
    module.DPMetadata = DPMetadata
    module.ForwardContext = ForwardContext
    module._forward_context = None

    def get_forward_context() -> ForwardContext:
        assert module._forward_context is not None, "Forward context is not set."
        return module._forward_context

    def is_forward_context_available() -> bool:
        return module._forward_context is not None

    module.get_forward_context = get_forward_context
    module.is_forward_context_available = is_forward_context_available
    return module


def install() -> types.ModuleType:
    """Make ``vllm`` and ``vllm.forward_context`` importable (stand-ins); returns the context module."""
    package = types.ModuleType("vllm")
    package.__path__ = []  # a package, so that `import vllm.forward_context` works
    module = _module()
    package.forward_context = module
    sys.modules["vllm"] = package
    sys.modules["vllm.forward_context"] = module
    return module


def uninstall() -> None:
    for name in ("vllm.forward_context", "vllm"):
        sys.modules.pop(name, None)


@contextmanager
def set_forward_context(num_tokens_across_dp: list[int] | None) -> Iterator[ForwardContext]:
    """vLLM's ``set_forward_context`` for one step; ``None``: no DP metadata (one DP rank)."""
    import torch

    module = sys.modules["vllm.forward_context"]
    meta = None
    if num_tokens_across_dp is not None:
        across = torch.tensor(num_tokens_across_dp, dtype=torch.int32)
        meta = DPMetadata(torch.max(across), across)
    previous = module._forward_context
    module._forward_context = ForwardContext({}, None, {}, 0, meta)
    try:
        yield module._forward_context
    finally:
        module._forward_context = previous
