"""Digest truth, item 1: the names the serving DeepEP will look up, from its own install facts.

Pinned against the entries DeepEP 2.5 wrote on the H200 (tests/data: their
meta.json records the exact nvcc command, package dir and NCCL path), and,
for DeepEP 2.1, against its rules with explicit dirs and the installed wheel.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aot_fixtures import NVCC_13_0, REPO, RIG_NCCL_INCLUDE, deep_ep25_include  # noqa: F401
from jitcache.adapters.serving import (local_entry_name, locate_serving, planned_entries, serving_from_meta,
                                       serving_meta_json)
from jitcache.planning.profiles import load_profile
from jitcache.planning.variants import plan

from test_render21 import wheel  # noqa: F401

DATA = REPO / "tests" / "data"
RIG_PACKAGE = "/tmp/gpu-rig/site/deep_ep"


def _all_modes(name: str):
    profile = load_profile(name)
    return plan(replace(profile, serving=replace(profile.serving, modes=("decode", "prefill", "cached"))))


def _real(sample: str) -> dict[str, Path]:
    return {cu.parent.name: cu.parent for cu in (DATA / sample / "cache").glob("*/kernel.cu")}


@pytest.mark.parametrize("sample,profile", [("deepep25-h200", "h200-ep1"), ("deepep25-h200x2", "h200x2-ep2")])
def test_names_from_the_serving_facts_are_the_ones_deepep_25_wrote(sample, profile, deep_ep25_include):  # noqa: F811
    """The rig's package dir and NCCL dir named explicitly: every real entry is a planned name, same bytes."""
    serving = locate_serving(RIG_PACKAGE, RIG_NCCL_INCLUDE, nvcc_version_output=NVCC_13_0, headers=deep_ep25_include)
    assert serving.version == "2.5" and serving.nccl_include == RIG_NCCL_INCLUDE
    ours = {e.name: e for e in planned_entries(_all_modes(profile), serving)}
    real = _real(sample)
    assert real and set(real) <= set(ours)
    for name, entry in real.items():
        assert ours[name].kernel_cu == (entry / "kernel.cu").read_text()
    if sample == "deepep25-h200":  # the buffer's barrier is planned too (benchmarks/results/h200/inspect_rig.json)
        assert "barrier.6e833446fb8ba2030693b64b92acf947" in ours


@pytest.mark.parametrize("sample", ["deepep25-h200", "deepep25-h200x2"])
def test_each_real_entry_names_itself_from_its_meta_json(sample, deep_ep25_include):  # noqa: F811
    """meta.json -> the serving facts -> the entry's own name, and meta.json itself byte for byte."""
    for name, entry in _real(sample).items():
        meta = (entry / "meta.json").read_text()
        serving = serving_from_meta(meta, deep_ep25_include, origin=str(entry))
        assert serving.package_dir == RIG_PACKAGE
        family = name.rsplit(".", 1)[0]
        assert local_entry_name(serving, family, (entry / "kernel.cu").read_text(), "sm_90a") == name
        build_dir = json.loads(meta)["command"].split()[1].rsplit("/", 1)[0]
        assert serving_meta_json(serving, "sm_90a").replace("{dir}", build_dir) == meta


def test_other_paths_give_other_names(deep_ep25_include):  # noqa: F811
    rig = locate_serving(RIG_PACKAGE, RIG_NCCL_INCLUDE, nvcc_version_output=NVCC_13_0, headers=deep_ep25_include)
    moved = locate_serving("/venv/lib/site-packages/deep_ep", "/venv/nccl/include", nvcc_version_output=NVCC_13_0,
                           headers=deep_ep25_include)
    a = {e.name for e in planned_entries(plan(load_profile("h200-ep1")), rig)}
    b = {e.name for e in planned_entries(plan(load_profile("h200-ep1")), moved)}
    assert len(a) == len(b) == 57 and not a & b   # 2.5: the NCCL path is in every name
    # the package dir is not (2.5 hashes header contents only): same NCCL, other package dir, same names
    elsewhere = replace(moved, nccl_root=rig.nccl_root)
    assert {e.name for e in planned_entries(plan(load_profile("h200-ep1")), elsewhere)} == a


def _fake_site(tmp_path: Path, headers: Path, envs: str | None = None) -> Path:
    site = tmp_path / "site"
    package = site / "deep_ep"
    shutil.copytree(headers, package / "include")
    (package / "__init__.py").write_text("raise ImportError('needs a GPU')\n")
    if envs is not None:
        (package / "envs.py").write_text(envs)
    return site


@pytest.fixture
def clean_import(monkeypatch):
    for name in ("EP_NCCL_ROOT_DIR", "NCCL_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in [m for m in sys.modules if m == "deep_ep" or m.startswith("deep_ep.")]:
        monkeypatch.delitem(sys.modules, name)
    yield monkeypatch
    importlib.invalidate_caches()


def test_the_importable_deep_ep_is_found_as_deepep_finds_itself(tmp_path, deep_ep25_include, clean_import):  # noqa: F811
    site = _fake_site(tmp_path, deep_ep25_include, "# Pre-installed environment variables\n"
                                                   "persistent_envs = {'EP_NCCL_ROOT_DIR': '/opt/nccl'}\n")
    clean_import.syspath_prepend(str(site))
    importlib.invalidate_caches()
    serving = locate_serving(nvcc_version_output=NVCC_13_0)
    assert serving.origin == "importable deep_ep" and serving.package_dir == str(site / "deep_ep")
    assert serving.nccl_root == "/opt/nccl" and serving.version == "2.5"  # the package's persistent env
    explicit = locate_serving(site / "deep_ep", "/opt/nccl/include", nvcc_version_output=NVCC_13_0)
    the_plan = plan(load_profile("h200-ep1"))
    assert planned_entries(the_plan, serving) == planned_entries(the_plan, explicit)
    clean_import.setenv("EP_NCCL_ROOT_DIR", "/env/nccl")  # the environment wins over the persistent env
    assert locate_serving(nvcc_version_output=NVCC_13_0).nccl_include == "/env/nccl/include"


def test_deepep_21_names_with_explicit_dirs_follow_its_key_rule(wheel):  # noqa: F811
    """2.1: both the package dir and the NCCL root are in the name; the names are the AOT's for those paths."""
    from jitcache.adapters.deepep21 import jobs_for_plan21
    from jitcache.adapters.digest21 import IncludeHasher21, cache_key21, flags21, with_include_hash
    from jitcache.build.toolchain import Toolchain

    the_plan = plan(load_profile("h200-ep1"))
    serving = locate_serving("/srv/venv/site-packages/deep_ep", "/srv/nccl/include", nvcc_version_output=NVCC_13_0,
                             headers=wheel / "include")
    assert serving.version == "2.1"
    entries = planned_entries(the_plan, serving)
    assert len(entries) == 57 and entries[-1].family == "barrier"
    flags = flags21(arch="sm_90a", nccl_root="/srv/nccl", library_include="/srv/venv/site-packages/deep_ep/include")
    assert " -I /srv/nccl/include" in flags
    first = entries[0]
    assert first.kernel_cu.startswith("// Includes' hash value: ")
    assert first.kernel_cu == with_include_hash(first.kernel_cu.partition("\n")[2], IncludeHasher21(wheel / "include"))
    assert first.name == f"kernel.{first.family}.{cache_key21(first.family, first.kernel_cu, flags, 13, 0)}"
    toolchain = Toolchain(nvcc=Path("nvcc"), nvcc_version_output=NVCC_13_0, deep_ep_include=wheel / "include",
                          deep_ep_api="2.1", nccl_include=Path("/local/nccl/include"),
                          target_nccl_include="/srv/nccl/include", python_library_root="/srv/venv/site-packages/deep_ep")
    assert [e.name for e in entries] == [j.entry for j in jobs_for_plan21(the_plan, toolchain)]
    moved = locate_serving("/other/deep_ep", "/srv/nccl/include", nvcc_version_output=NVCC_13_0,
                           headers=wheel / "include")
    assert not {e.name for e in entries} & {e.name for e in planned_entries(the_plan, moved)}
    assert local_entry_name(serving, first.family, first.kernel_cu, "sm_90a") == first.name
    assert local_entry_name(serving, first.family, first.kernel_cu.replace("hash value: ", "hash value: 0"),
                            "sm_90a") is None   # another header set: that DeepEP never writes this kernel.cu


def test_the_installed_deepep_21_and_its_nccl_package(wheel, clean_import):  # noqa: F811
    serving = locate_serving(nvcc_version_output=NVCC_13_0)
    assert serving.version == "2.1" and serving.package_dir == os.path.abspath(wheel)
    assert serving.nccl_root.endswith(os.path.join("nvidia", "nccl"))   # the nvidia-nccl-cu13 wheel's root


def test_a_profile_for_the_other_version_is_refused(wheel):  # noqa: F811
    from jitcache.errors import UsageError

    profile = load_profile("h200-ep1")
    serving = locate_serving("/srv/deep_ep", "/srv/nccl/include", nvcc_version_output=NVCC_13_0,
                             headers=wheel / "include")
    with pytest.raises(UsageError, match=r"api = '2.5'.*serving DeepEP is 2.1"):
        planned_entries(plan(replace(profile, deep_ep=replace(profile.deep_ep, api="2.5"))), serving)
    with pytest.raises(UsageError, match="--deep-ep-root /nowhere: no DeepEP package"):
        locate_serving("/nowhere", "/n/include", nvcc_version_output=NVCC_13_0)


RIG21_PACKAGE = "/tmp/gpu-rig/site21/deep_ep"


def _rig21(wheel):
    return locate_serving(RIG21_PACKAGE, "/tmp/gpu-rig/nccl/include", nvcc_version_output=NVCC_13_0,
                          headers=wheel / "include")


def test_names_for_the_rig_are_the_ones_elasticbuffer_wrote(wheel):  # noqa: F811
    """DeepEP 2.1 pinned like 2.5 (tests/data/deepep21-h200): all 57 entries, barrier included, names and bytes."""
    serving = _rig21(wheel)
    assert serving.version == "2.1"
    ours = {e.name: e for e in planned_entries(plan(load_profile("h200-ep1")), serving)}
    real = _real("deepep21-h200")
    assert len(real) == 57 and set(real) == set(ours)
    for name, entry in real.items():
        assert ours[name].kernel_cu == (entry / "kernel.cu").read_text()
        assert local_entry_name(serving, name.split(".")[1], (entry / "kernel.cu").read_text(), "sm_90a") == name


def test_the_fp8_call_of_deepeps_own_test_suite_is_named_too(wheel):  # noqa: F811
    """tests/data/deepep21-h200-fp8: fp8, expert alignment 128, CPU sync, as the runtime guard renders that call."""
    from jitcache.runtime.guard import NameGuard

    class Buffer:  # the guard reads only these from an ElasticBuffer
        allow_multiple_reduction = True

    guard = NameGuard(Buffer(), load_profile("h200-ep1"), (DATA / "deepep21-h200-fp8",), serving=_rig21(wheel))
    signature = guard.signature(("x", "sf"), 128, True, 0, 256)
    profile = guard.profile_for(signature)
    the_plan = plan(profile, ["decode"])
    variants = tuple(replace(v, params=tuple((k, True if k == "do_cpu_sync" else x) for k, x in v.params))
                     for v in the_plan)
    ours = {e.name for e in planned_entries(replace(the_plan, variants=variants), guard.serving)}
    real = set(_real("deepep21-h200-fp8"))
    assert len(real) == 17
    assert real <= ours
    # the guard, on the cache ElasticBuffer wrote: that call is warm at the buckets it ran, the profile's call is not
    assert guard.warm_buckets(signature) == {1, 2, 4, 8}
    assert guard.warm_buckets(guard.profile_signature()) == set()
    assert guard.warm_buckets(guard.signature(("x", "sf"), 128, False, 0, 256)) == set()   # no CPU sync: others
