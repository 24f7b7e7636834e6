"""A test double for DeepEP's buffers: the real dispatch/combine signatures, a recorder, and a JIT emulation.

``EPBuffer`` has DeepEP 2.5's signatures and cache layout (``<root>/cache/<name>.<32 hex>/``
with ``kernel.cu`` and a ``.committed`` marker written last); ``ElasticBuffer`` has
DeepEP 2.1's (``<root>/cache/kernel.<name>.<32 hex>/`` with ``kernel.cu`` + ``kernel.cubin``).
The first time a buffer meets a new set of template arguments it "compiles": it writes
a real entry directory into the cache root named by the same environment variables
DeepEP reads, through a temporary directory and a rename, exactly where DeepEP would.
``kernel.cu`` holds the instantiation in DeepEP 2.5's argument order, so code that
scans a cache reads what it would read from a real one. Nothing here needs a GPU;
torch is optional (objects with a ``shape`` work as tensors).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest


class FakeEvent:
    def current_stream_wait(self) -> None:
        pass


class FakeHandle:
    def __init__(self, do_expand, num_experts, expert_alignment, num_max_tokens_per_rank, num_sms, topk_idx):
        self.do_expand = do_expand
        self.num_experts = num_experts
        self.expert_alignment = expert_alignment
        self.num_max_tokens_per_rank = num_max_tokens_per_rank
        self.num_sms = num_sms
        self.topk_idx = topk_idx


class Rows:
    """A stand-in tensor: only a shape."""

    def __init__(self, *shape: int) -> None:
        self.shape = tuple(shape)


def _value_or(value, default):
    return default if value is None else value


class _FakeBuffer:
    NUM_SMS = 132

    def __init__(self, group=None, num_bytes=None, num_max_tokens_per_rank: int = 0, hidden: int = 0,
                 num_topk: int = 0, use_fp8_dispatch: bool = False, **config: Any) -> None:
        self.group = group
        self.num_max_tokens_per_rank = num_max_tokens_per_rank
        self.hidden = hidden
        self.num_topk = num_topk
        self.use_fp8_dispatch = use_fp8_dispatch
        self.config = config
        self.calls: list[dict] = []           # every dispatch, with all its arguments
        self.combine_calls: list[dict] = []
        self.compiles: list[str] = []         # entry names this buffer created
        self.hits: list[str] = []
        self.last_result: Any = None
        self.destroyed = False

    # -- the JIT ----------------------------------------------------------------------------

    def _roots(self) -> list[Path]:
        raise NotImplementedError

    def _entry_dirname(self, name: str, digest: str) -> str:
        raise NotImplementedError

    def _write_entry(self, tmp: Path, source: str) -> None:
        raise NotImplementedError

    def _jit(self, name: str, instantiation: str) -> str:
        source = f"#include <deep_ep/impls/ep/{name}.cuh>\n\nstatic void __instantiate_kernel() {{\n" \
                 f"    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::{instantiation});\n}}\n"
        digest = hashlib.md5(f"{name}\0{source}".encode()).hexdigest()
        dirname = self._entry_dirname(name, digest)
        roots = self._roots()
        for root in roots:  # lookups, the writable root first
            if self._complete(root / "cache" / dirname):
                self.hits.append(dirname)
                return dirname
        root = roots[0]
        tmp = root / "tmp" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        self._write_entry(tmp, source)
        (root / "cache").mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, root / "cache" / dirname)
        except OSError:  # another rank won the rename: its entry is as good as ours
            pass
        self.compiles.append(dirname)
        return dirname

    def _complete(self, entry: Path) -> bool:
        raise NotImplementedError

    # -- DeepEP's API (the parts jitcache uses) ---------------------------------------------

    def _dispatch(self, x, topk_idx, topk_weights, num_experts, num_max_tokens_per_rank, expert_alignment,
                  num_sms, handle, do_cpu_sync, do_expand, arguments: dict) -> Any:
        self.calls.append(arguments)
        if handle is not None:
            assert topk_idx is None, "topk_idx must be None with a cached handle"
            assert do_cpu_sync is None or not do_cpu_sync, "Cannot do CPU sync with cached handle"
            topk_idx = handle.topk_idx
            num_max_tokens_per_rank = _value_or(num_max_tokens_per_rank, handle.num_max_tokens_per_rank)
            num_experts = _value_or(num_experts, handle.num_experts)
            expert_alignment = _value_or(expert_alignment, handle.expert_alignment)
            do_cpu_sync = False
            assert num_max_tokens_per_rank == handle.num_max_tokens_per_rank
        num_max_tokens_per_rank = _value_or(num_max_tokens_per_rank, self.num_max_tokens_per_rank)
        expert_alignment = _value_or(expert_alignment, 1)
        do_cpu_sync = _value_or(do_cpu_sync, True)
        num_sms = num_sms or self.NUM_SMS
        num_topk = topk_idx.shape[1]
        rows = (x[0] if isinstance(x, tuple) else x).shape[0]
        assert rows <= num_max_tokens_per_rank, f"{rows} tokens > num_max_tokens_per_rank={num_max_tokens_per_rank}"
        fp8 = isinstance(x, tuple)
        hidden_bytes = self.hidden * (1 if fp8 else 2)
        sf_packs = self.hidden // 128 if fp8 else 0
        cached = handle is not None
        t = lambda b: "true" if b else "false"  # noqa: E731
        self._jit("dispatch", f"dispatch_impl<true, {t(do_cpu_sync)}, {t(cached)}, {num_sms}, 4, 15, 1, "
                              f"{hidden_bytes}, {sf_packs}, {num_max_tokens_per_rank}, {num_experts}, {num_topk}, "
                              f"{expert_alignment}, 129, 198000000000>")
        self._jit("dispatch_copy_epilogue",
                  f"dispatch_copy_epilogue_impl<{t(do_expand)}, {t(cached)}, false, {num_sms}, 1, 16, 1, 1, "
                  f"{hidden_bytes}, {sf_packs}, {num_max_tokens_per_rank}, {num_experts}, {num_topk}, "
                  f"{expert_alignment}>")
        if handle is None:
            handle = FakeHandle(do_expand, num_experts, expert_alignment, num_max_tokens_per_rank, num_sms, topk_idx)
        recv_topk_idx = None if do_expand else topk_idx
        self.last_result = (x, recv_topk_idx, topk_weights, handle, FakeEvent())
        return self.last_result

    def combine(self, x, handle, topk_weights=None, bias=None, num_sms=0, num_qps=0, previous_event=None,
                async_with_compute_stream=False, allocate_on_comm_stream=False, defer_epilogue=False):
        self.combine_calls.append({"x": x, "handle": handle, "topk_weights": topk_weights})
        h, n = self.hidden, handle.num_max_tokens_per_rank
        t = lambda b: "true" if b else "false"  # noqa: E731
        self._jit("combine", f"combine_impl<true, {t(handle.do_expand)}, true, {handle.num_sms}, 16, 1, {h}, "
                             f"{n}, {handle.num_experts}, {handle.topk_idx.shape[1]}, 129, 198000000000>")
        self._jit("combine_reduce_epilogue",
                  f"combine_reduce_epilogue_impl<{t(handle.do_expand)}, true, {handle.num_sms}, 16, 1, 1, {h}, "
                  f"{n}, {handle.num_experts}, {handle.topk_idx.shape[1]}>")
        return x, topk_weights, FakeEvent()

    def destroy(self) -> None:
        self.destroyed = True


class EPBuffer(_FakeBuffer):
    """DeepEP 2.5's ``deep_ep.EPBuffer`` (DeepJIT cache layout)."""

    def _roots(self) -> list[Path]:
        value = os.environ.get("EP_JIT_CACHE_DIR") or os.environ.get("DJ_JIT_CACHE_DIR")
        if not value:
            return [Path(os.environ["HOME"]) / ".dj"]
        return [Path(p) for p in value.split(":") if p]

    def _entry_dirname(self, name: str, digest: str) -> str:
        return f"{name}.{digest}"

    def _write_entry(self, tmp: Path, source: str) -> None:
        (tmp / "kernel.cu").write_text(source)
        (tmp / "kernel.cubin").write_bytes(b"\x7fELF fake cubin")
        (tmp / "meta.json").write_text("{}")
        (tmp / ".committed").write_text("")  # last, as DeepJIT does

    def _complete(self, entry: Path) -> bool:
        marker = entry / ".committed"
        if marker.is_file():
            os.utime(marker)  # a hit touches the marker
            return True
        return False

    def dispatch(self, x, topk_idx=None, topk_weights=None, cumulative_local_expert_recv_stats=None,
                 num_experts=None, num_max_tokens_per_rank=None, expert_alignment=None, num_sms=0, num_qps=0,
                 previous_event=None, async_with_compute_stream=False, allocate_on_comm_stream=False,
                 handle=None, do_handle_copy=False, do_cpu_sync=None, do_expand=False, do_zero_padding=False,
                 use_tma_aligned_col_major_sf=False, defer_epilogue=False):
        arguments = dict(locals())
        arguments.pop("self")
        return self._dispatch(x, topk_idx, topk_weights, num_experts, num_max_tokens_per_rank, expert_alignment,
                              num_sms, handle, do_cpu_sync, do_expand, arguments)


class ElasticBuffer(_FakeBuffer):
    """DeepEP 2.1's ``deep_ep.ElasticBuffer`` (``kernel.<name>.<hex>`` entries, no marker)."""

    def _roots(self) -> list[Path]:
        value = os.environ.get("EP_JIT_CACHE_DIR")
        return [Path(value) if value else Path(os.environ["HOME"]) / ".deep_ep"]

    def _entry_dirname(self, name: str, digest: str) -> str:
        return f"kernel.{name}.{digest}"

    def _write_entry(self, tmp: Path, source: str) -> None:
        (tmp / "kernel.cu").write_text("// Includes' hash value: 0\n" + source)
        (tmp / "kernel.cubin").write_bytes(b"\x7fELF fake cubin")

    def _complete(self, entry: Path) -> bool:
        return (entry / "kernel.cu").is_file() and (entry / "kernel.cubin").is_file()

    def dispatch(self, x, topk_idx=None, topk_weights=None, cumulative_local_expert_recv_stats=None,
                 num_experts=None, num_max_tokens_per_rank=None, expert_alignment=None, num_sms=0, num_qps=0,
                 previous_event=None, previous_event_before_epilogue=None, async_with_compute_stream=False,
                 allocate_on_comm_stream=False, handle=None, do_handle_copy=True, do_cpu_sync=None,
                 do_expand=False, do_zero_padding=False, use_tma_aligned_col_major_sf=False):
        arguments = dict(locals())
        arguments.pop("self")
        return self._dispatch(x, topk_idx, topk_weights, num_experts, num_max_tokens_per_rank, expert_alignment,
                              num_sms, handle, do_cpu_sync, do_expand, arguments)


@pytest.fixture(autouse=True)
def isolated_deep_ep_env(tmp_path, monkeypatch):
    """Every runtime test: DeepEP's cache dir and HOME in tmp_path, no stats files, no plugin settings,
    and nothing left installed afterwards. Test modules import this name to make it active there."""
    monkeypatch.setenv("JITCACHE_STATS", "0")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EP_JIT_CACHE_DIR", str(tmp_path / "dj"))
    for name in ("DJ_JIT_CACHE_DIR", "JITCACHE_PROFILE", "JITCACHE_STRICT"):
        monkeypatch.delenv(name, raising=False)
    yield
    from jitcache.runtime import install as deepep

    deepep.uninstall()
