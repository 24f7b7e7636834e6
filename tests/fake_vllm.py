"""vLLM's forward context for the tests: the stand-in of ``benchmarks/_vllm_context.py`` (shared with the
GPU proof), installed as ``vllm.forward_context`` for one test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _vllm_context  # noqa: E402

set_forward_context = _vllm_context.set_forward_context


@pytest.fixture
def vllm_forward_context(monkeypatch):
    """``vllm`` and ``vllm.forward_context`` importable for the test (removed afterwards); yields
    ``set_forward_context(num_tokens_across_dp)``."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # restored (removed) by monkeypatch at the end
    monkeypatch.setitem(sys.modules, "vllm.forward_context", None)
    _vllm_context.install()
    return set_forward_context
