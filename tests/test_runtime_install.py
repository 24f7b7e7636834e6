"""install()/uninstall() on both DeepEP buffer classes, and the vLLM plugin entry point."""

from __future__ import annotations

import pytest

import fake_deep_ep as fake
import jitcache
from jitcache import BucketPolicy, ColdVariantError, UsageError
from jitcache.runtime import install as deepep
from jitcache import plugin

Rows = fake.Rows
isolated_deep_ep_env = fake.isolated_deep_ep_env  # autouse: see fake_deep_ep




def args(n):
    return {"topk_idx": Rows(n, 4), "topk_weights": Rows(n, 4), "num_experts": 16}


@pytest.mark.parametrize("cls", [fake.EPBuffer, fake.ElasticBuffer])
def test_install_buckets_direct_calls_and_uninstall_restores(cls):
    original = cls.__dict__["dispatch"]
    buf = cls(num_max_tokens_per_rank=64, hidden=256)
    info = jitcache.install(BucketPolicy(64), classes=[cls], warm=range(1, 65))
    assert info.classes == (f"fake_deep_ep.{cls.__qualname__}",) and not info.strict
    result = buf.dispatch(Rows(5, 256), **args(5), num_max_tokens_per_rank=None, do_cpu_sync=False)
    assert result is buf.last_result
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 8
    buf.dispatch(Rows(5, 256), **args(5), num_max_tokens_per_rank=37)  # a raw size
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 64
    jitcache.uninstall()
    assert cls.__dict__["dispatch"] is original
    buf.dispatch(Rows(5, 256), **args(5))
    assert buf.calls[-1]["num_max_tokens_per_rank"] is None
    jitcache.uninstall()  # a second uninstall is a no-op
    assert cls.__dict__["dispatch"] is original and deepep.installed() is None


def test_install_is_idempotent_and_a_second_install_replaces_the_policy():
    buf = fake.EPBuffer(hidden=256)
    jitcache.install(BucketPolicy(64), classes=[fake.EPBuffer], warm=range(1, 65))
    before = deepep.installed_stats().snapshot()  # process-wide counters: cumulative across installs
    patched = fake.EPBuffer.__dict__["dispatch"]
    jitcache.install(BucketPolicy(64, min_bucket=16), classes=[fake.EPBuffer], warm=range(1, 65))
    assert fake.EPBuffer.__dict__["dispatch"] is patched  # not wrapped twice
    buf.dispatch(Rows(3, 256), **args(3))
    assert len(buf.calls) == 1 and buf.calls[-1]["num_max_tokens_per_rank"] == 16
    stats = deepep.installed_stats().snapshot() - before
    assert dict(stats.calls) == {16: 1}  # counted once, not once per layer of wrapping


def test_inherited_dispatch_is_restored_by_removing_the_override():
    class EPBuffer(fake.EPBuffer):  # a subclass that does not define dispatch itself
        pass

    jitcache.install(BucketPolicy(64), classes=[EPBuffer], warm=range(1, 65))
    assert "dispatch" in EPBuffer.__dict__
    buf = EPBuffer(hidden=256)
    buf.dispatch(Rows(2, 256), **args(2))
    assert buf.calls[-1]["num_max_tokens_per_rank"] == 2
    jitcache.uninstall()
    assert "dispatch" not in EPBuffer.__dict__ and EPBuffer.dispatch is fake.EPBuffer.dispatch


def test_both_classes_at_once_with_strict():
    ep, elastic = fake.EPBuffer(hidden=256), fake.ElasticBuffer(hidden=256)
    jitcache.install(BucketPolicy(64), strict=True, classes=[fake.EPBuffer, fake.ElasticBuffer], warm=[1, 2, 4])
    for buf in (ep, elastic):
        buf.dispatch(Rows(3, 256), **args(3))
        with pytest.raises(ColdVariantError):
            buf.dispatch(Rows(5, 256), **args(5))
        assert len(buf.calls) == 1


def test_install_refuses_what_is_not_a_deepep_buffer_and_needs_a_class(monkeypatch):
    class NotABuffer:
        def dispatch(self):
            pass

    with pytest.raises(UsageError, match="NotABuffer is not a DeepEP buffer"):
        jitcache.install(BucketPolicy(64), classes=[fake.EPBuffer, NotABuffer])
    assert "dispatch" in NotABuffer.__dict__ and deepep.installed() is None
    assert fake.EPBuffer.__dict__["dispatch"].__name__ == "dispatch"  # untouched
    monkeypatch.setattr(deepep, "_importable_buffer_classes", lambda: [])
    with pytest.raises(UsageError, match="no DeepEP buffer class to patch"):
        jitcache.install(BucketPolicy(64))


def test_install_accepts_a_profile_by_name():
    info = jitcache.install("h200-ep1", classes=[fake.EPBuffer], warm=())
    assert info.profile == "h200-ep1" and info.policy.max_num_batched_tokens == 8192


def test_plugin_does_nothing_without_a_profile(monkeypatch):
    monkeypatch.setattr(deepep, "_importable_buffer_classes", lambda: [fake.EPBuffer])
    plugin.register()
    assert deepep.installed() is None


# The plugin's install, logging and error paths: tests/test_vllm_plugin.py (in processes of their own).


def test_plugin_entry_point_is_declared():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert names.get("jitcache") == "jitcache.plugin:register"
