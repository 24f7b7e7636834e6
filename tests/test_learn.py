"""Learn-from-live against real DeepEP 2.5 entries: derived buckets land on DeepEP's own names; bad digests refused."""

from __future__ import annotations

import shutil

import pytest

from aot_fixtures import REPO, deep_ep25_include, nccl_include  # noqa: F401
from jitcache import load_profile, plan
from jitcache.errors import ToolchainError
from jitcache.adapters.registry import derive_jobs_from_entry
from jitcache.build.toolchain import resolve_toolchain

DATA = REPO / "tests" / "data" / "deepep25-h200" / "cache"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="no real DeepEP 2.5 cache sample")


def _toolchain(include, nccl):
    return resolve_toolchain(deep_ep_include=include, nccl_include=nccl)


def test_derived_buckets_match_deepep_names(deep_ep25_include, nccl_include):  # noqa: F811
    known = DATA / "dispatch.d9da7ca0640fe0dc1291abac0dfdcc53"  # decode, nmax=1
    jobs = derive_jobs_from_entry(plan(load_profile("h200-ep1")), _toolchain(deep_ep25_include, nccl_include), known)
    by_nmax = {j.num_max_tokens_per_rank: j.entry for j in jobs}
    real = {p.name for p in DATA.iterdir() if p.name.startswith("dispatch.")}
    assert by_nmax[1] == known.name
    assert {by_nmax[2], by_nmax[4]} <= real  # DeepEP's own entries for nmax 2 and 4


def test_a_digest_that_does_not_recompute_is_refused(tmp_path, deep_ep25_include, nccl_include):  # noqa: F811
    fake = tmp_path / "dispatch.00000000000000000000000000000000"
    shutil.copytree(DATA / "dispatch.d9da7ca0640fe0dc1291abac0dfdcc53", fake)
    with pytest.raises(ToolchainError, match="does not match"):
        derive_jobs_from_entry(plan(load_profile("h200-ep1")), _toolchain(deep_ep25_include, nccl_include), fake)
