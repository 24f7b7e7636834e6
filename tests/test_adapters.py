"""The DeepEP-version adapters: one per version, registered once, owning names, roots, commit rule, buffers."""

from __future__ import annotations

from pathlib import Path

import pytest

import fake_deep_ep as fake
from aot_fixtures import RIG_NCCL_INCLUDE, deep_ep25_include, nccl_include  # noqa: F401
from jitcache import load_profile, plan
from jitcache.adapters import (ADAPTERS, DeepEPAdapter, adapter, adapter_for_buffer, adapter_for_headers,
                               adapter_for_layout, adapters_for, jobs_for_plan, parse_entry_name)
from jitcache.adapters.deepep21 import DeepEP21
from jitcache.adapters.deepep25 import DeepEP25
from jitcache.errors import ToolchainError, UsageError
from jitcache.store.model import BACKENDS
from jitcache.types import DEEP_EP_VERSIONS

REPO = Path(__file__).resolve().parents[1]
REAL_25 = REPO / "tests" / "data" / "deepep25-h200" / "cache"
DIGEST = "0123456789abcdef0123456789abcdef"
isolated_deep_ep_env = fake.isolated_deep_ep_env  # autouse


def test_one_adapter_per_version_registered_in_one_place():
    assert tuple(a.version for a in ADAPTERS) == DEEP_EP_VERSIONS == ("2.5", "2.1")
    assert isinstance(adapter("2.5"), DeepEP25) and isinstance(adapter("2.1"), DeepEP21)
    assert adapters_for("auto") == ADAPTERS and adapters_for("2.1") == (adapter("2.1"),)
    assert BACKENDS["deep_ep"] == ("deepjit", "deep_ep_2.1")
    assert adapter_for_layout("deepjit") is adapter("2.5") and adapter_for_layout("triton") is None
    with pytest.raises(UsageError, match="'3.0' has no jitcache adapter; known: 2.5, 2.1"):
        adapter("3.0")


@pytest.mark.parametrize("version, name", [("2.5", f"dispatch.{DIGEST}"), ("2.1", f"kernel.dispatch.{DIGEST}")])
def test_entry_names_round_trip_and_belong_to_exactly_one_version(version, name):
    a = adapter(version)
    assert a.entry_name("dispatch", DIGEST) == name
    assert a.parse_entry_name(name) == ("dispatch", DIGEST)
    assert parse_entry_name(name) == (a, "dispatch", DIGEST)
    assert [b.version for b in ADAPTERS if b.parse_entry_name(name)] == [version]


def test_names_that_are_no_entry():
    for name in ("dispatch", f"dispatch.{DIGEST[:-1]}", f"kernel.{DIGEST}x", f"a.b.{DIGEST}", f"dispatch.{DIGEST.upper()}"):
        assert parse_entry_name(name) is None, name


@pytest.mark.skipif(not REAL_25.is_dir(), reason="no real DeepEP 2.5 cache sample in tests/data")
def test_every_entry_deep_ep_25_wrote_parses_as_25_and_is_committed():
    entries = sorted(p for p in REAL_25.iterdir() if p.is_dir())
    assert entries
    for entry in entries:
        parsed = parse_entry_name(entry.name)
        assert parsed is not None and parsed[0].version == "2.5", entry.name
        assert parsed[0].is_committed(entry)


def test_cache_roots_and_the_commit_rule_are_each_versions_own(tmp_path):
    env = {"HOME": str(tmp_path)}
    assert adapter("2.5").cache_roots(env) == (tmp_path / ".dj",)
    assert adapter("2.1").cache_roots(env) == (tmp_path / ".deep_ep",)
    env = {"HOME": str(tmp_path), "DJ_JIT_CACHE_DIR": "/a:/b"}
    assert adapter("2.5").cache_roots(env) == (Path("/a"), Path("/b"))
    assert adapter("2.1").cache_roots(env) == (tmp_path / ".deep_ep",)  # 2.1 reads only EP_JIT_CACHE_DIR
    env["EP_JIT_CACHE_DIR"] = "/ep"
    assert adapter("2.5").cache_roots(env) == adapter("2.1").cache_roots(env) == (Path("/ep"),)

    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "kernel.cu").write_text("x")
    (entry / "kernel.cubin").write_bytes(b"\x7fELF")
    assert adapter("2.1").is_committed(entry) and not adapter("2.5").is_committed(entry)
    (entry / ".committed").touch()
    assert adapter("2.5").is_committed(entry)


def test_buffers_are_recognised_by_class_name_through_the_mro():
    class Served(fake.ElasticBuffer):
        pass

    assert adapter_for_buffer(fake.EPBuffer).version == "2.5"
    assert adapter_for_buffer(Served).version == "2.1"
    with pytest.raises(UsageError, match="is not a DeepEP buffer .expected EPBuffer or ElasticBuffer"):
        adapter_for_buffer(object())


def test_headers_are_recognised_by_their_adapter(tmp_path, deep_ep25_include):  # noqa: F811
    assert adapter_for_headers(deep_ep25_include) is adapter("2.5")
    fake21 = tmp_path / "inc"
    (fake21 / "deep_ep" / "impls").mkdir(parents=True)
    (fake21 / "deep_ep" / "impls" / "dispatch.cuh").write_text("")
    assert adapter_for_headers(fake21) is adapter("2.1")
    assert adapter_for_headers(tmp_path) is None


def test_the_registry_and_the_adapter_build_the_same_jobs_and_refuse_the_wrong_headers(deep_ep25_include,  # noqa: F811
                                                                                         nccl_include):  # noqa: F811
    from jitcache.build.toolchain import resolve_toolchain

    toolchain = resolve_toolchain(deep_ep_include=deep_ep25_include, nccl_include=nccl_include,
                                  target_nccl_include=RIG_NCCL_INCLUDE)
    the_plan = plan(load_profile("h200-ep1"), ["decode"])
    jobs = jobs_for_plan(the_plan, toolchain)
    assert jobs == adapter("2.5").jobs_for_plan(the_plan, toolchain)
    assert all(parse_entry_name(j.entry)[0] is adapter("2.5") for j in jobs)
    with pytest.raises(ToolchainError, match="are DeepEP 2.5, not 2.1"):
        adapter("2.1").jobs_for_plan(the_plan, toolchain)


def test_an_adapter_is_the_whole_interface():
    # What a third version must provide: the abstract methods, nothing else (the rest has defaults).
    assert DeepEPAdapter.__abstractmethods__ == {"entry_name", "target_facts", "render_plan", "render_barrier",
                                                 "kernel_entry_names", "build_jobs", "derive_jobs",
                                                 "serving_names", "local_entry_name"}
    # ... and the facts each version states (no defaults: a new version must say them).
    for name in ("version", "layout", "buffer_class", "cache_env", "default_cache_dir", "header_marker",
                 "install_hint", "jit_seconds_per_bucket", "num_sms_rule"):
        assert all(hasattr(a, name) for a in ADAPTERS), name


def test_the_aot_entry_point_takes_one_frozen_options_object(tmp_path):
    import dataclasses

    from jitcache import AotOptions, ProfileError, aot_warmup

    options = AotOptions(profile="no-such-profile", cache_dir=tmp_path / "root")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.jobs = 4  # type: ignore[misc]
    with pytest.raises(ProfileError):
        aot_warmup(options)
    assert not (tmp_path / "root").exists()
    with pytest.raises(UsageError, match="--triton-only needs at least one --triton-module"):
        AotOptions(triton_only=True)
    with pytest.raises(UsageError, match="--jobs 0"):
        AotOptions(jobs=0)


def test_layout_rules_are_the_adapters():
    """jitcache.adapters.layouts (what a scan reads without importing an adapter) says what each adapter says,
    in the registry's order."""
    from jitcache.adapters import layouts

    assert [r.layout for r in layouts.LAYOUTS] == [a.layout for a in ADAPTERS]
    for rules, a in zip(layouts.LAYOUTS, ADAPTERS):
        assert (rules.entry_pattern, rules.meta_file, rules.commit_marker) == \
            (a.entry_pattern, a.meta_file, a.commit_marker)
    for name in ("dispatch.0123456789abcdef0123456789abcdef", "kernel.combine.0123456789abcdef0123456789abcdef",
                 "kernel.0123456789abcdef0123456789abcdef", "dispatch.0123", "x", ""):
        parsed, theirs = layouts.parse_entry_name(name), parse_entry_name(name)
        assert (parsed is None) == (theirs is None), name
        if parsed is not None and theirs is not None:
            assert (parsed[0].layout, parsed[1], parsed[2]) == (theirs[0].layout, theirs[1], theirs[2])
