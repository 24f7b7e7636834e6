"""A stand-in for vLLM's ``vllm.forward_context``, shaped as vLLM's: a module-level current context with
``dp_metadata.num_tokens_across_dp_cpu`` (a CPU tensor, one count per DP rank), read through
``is_forward_context_available()`` and ``get_forward_context()``; ``set_forward_context`` sets it for a step.

vLLM itself cannot be installed here (it needs CUDA); the dispatcher only reads these names.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest


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


def _module() -> types.ModuleType:
    module = types.ModuleType("vllm.forward_context")
    module.DPMetadata = DPMetadata
    module.ForwardContext = ForwardContext
    module._forward_context = None

    def get_forward_context():
        assert module._forward_context is not None, "Forward context is not set."
        return module._forward_context

    def is_forward_context_available():
        return module._forward_context is not None

    module.get_forward_context = get_forward_context
    module.is_forward_context_available = is_forward_context_available
    return module


@contextmanager
def set_forward_context(num_tokens_across_dp: list[int] | None):
    """vLLM's ``set_forward_context`` for one step; ``None``: no DP metadata (dp_size 1)."""
    import torch

    module = sys.modules["vllm.forward_context"]
    meta = None
    if num_tokens_across_dp is not None:
        across = torch.tensor(num_tokens_across_dp, dtype=torch.int32)
        meta = DPMetadata(torch.max(across), across)
    previous = module._forward_context
    module._forward_context = ForwardContext({}, None, {}, 0, meta)
    try:
        yield
    finally:
        module._forward_context = previous


@pytest.fixture
def vllm_forward_context(monkeypatch):
    """``vllm`` and ``vllm.forward_context`` importable for the test; removed afterwards."""
    package = types.ModuleType("vllm")
    package.__path__ = []
    module = _module()
    package.forward_context = module
    monkeypatch.setitem(sys.modules, "vllm", package)
    monkeypatch.setitem(sys.modules, "vllm.forward_context", module)
    return set_forward_context
