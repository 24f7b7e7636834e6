"""``jitcache warmup`` under torchrun sets the device, then starts NCCL eagerly, then runs one collective.

The H200 rig's lesson: a lazily initialised NCCL group makes ``EPBuffer.__init__``
segfault. Here torch's CUDA and NCCL entry points are replaced by recorders
(CPU torch), so the test checks the order of calls, not NCCL.
"""

from __future__ import annotations

import sys
import types

import pytest

pytest.importorskip("torch")

import fake_deep_ep as fake  # noqa: E402


class _Stop(Exception):
    pass


def test_live_warmup_under_torchrun_initialises_the_group_eagerly_on_local_rank(tmp_path, monkeypatch):
    import torch
    import torch.distributed as dist

    from jitcache.warm.live import live_warmup_cli

    calls: list = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("JITCACHE_STATS", "0")
    monkeypatch.setitem(sys.modules, "deep_ep", types.SimpleNamespace(EPBuffer=fake.EPBuffer))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)

    def init(backend, **kwargs):
        calls.append(("init", backend, kwargs.get("device_id")))

    def all_reduce(tensor, *a, **k):
        calls.append(("all_reduce",))
        raise _Stop  # far enough: the group exists, eagerly, before any buffer

    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(torch, "ones", lambda *a, **k: None)  # no CUDA tensor on a CPU machine
    with pytest.raises(_Stop):
        live_warmup_cli("h200x2-ep2", cache_dir=tmp_path / "root", progress=False)
    assert calls == [("set_device", 1), ("init", "nccl", torch.device("cuda", 1)), ("all_reduce",)]
