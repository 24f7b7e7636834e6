"""DeepEP 2.1 pinned against caches ElasticBuffer wrote itself on the H200 (tests/data/deepep21-h200*).

The two caches are DeepEP's own output (``benchmarks/gpu_capture_cache21.py``; README beside
them): h200-ep1 in bf16 over the 14 buckets, and fp8 with expert alignment 128 and CPU sync at
1..8 tokens. The nvcc commands DeepEP printed there name the paths that enter 2.1's key:
the deep_ep package at ``/tmp/gpu-rig/site21/deep_ep`` and NCCL at ``/tmp/gpu-rig/nccl``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jitcache.adapters.digest21 import IncludeHasher21, cache_key21, flags21, parse_entry_name21, with_include_hash
from jitcache.adapters.render21 import render_barrier21, render_plan21, target_facts21
from jitcache.planning.profiles import load_profile
from jitcache.planning.variants import plan

from test_render21 import wheel  # noqa: F401

DATA = Path(__file__).parent / "data"
CAPTURES = {"bf16": DATA / "deepep21-h200" / "cache", "fp8": DATA / "deepep21-h200-fp8" / "cache"}
# The serving machine of the capture, as DeepEP printed its nvcc command there.
H200_FLAGS = flags21(arch="sm_90a", nccl_root="/tmp/gpu-rig/nccl",
                     library_include="/tmp/gpu-rig/site21/deep_ep/include")
NVCC = (13, 0)


def _entries(cache: Path) -> dict[str, str]:
    """entry dir name -> its kernel.cu text."""
    return {p.name: (p / "kernel.cu").read_text() for p in sorted(cache.iterdir())}


def test_the_captured_nvcc_command_is_flags21():
    log = (Path(__file__).parents[1] / "benchmarks" / "results" / "h200" / "capture21" / "log_bf16.txt").read_text()
    commands = [line for line in log.splitlines() if line.startswith("Running NVCC command:")]
    assert len(commands) == 57
    for line in commands:
        assert line.endswith("kernel.cubin " + H200_FLAGS), line


@pytest.mark.parametrize("shape", sorted(CAPTURES))
def test_every_entry_name_is_its_own_key(shape):
    entries = _entries(CAPTURES[shape])
    assert len(entries) == {"bf16": 57, "fp8": 17}[shape]
    for dirname, code in entries.items():
        parsed = parse_entry_name21(dirname)
        assert parsed is not None, dirname
        name, digest = parsed
        assert cache_key21(name, code, H200_FLAGS, *NVCC) == digest, dirname


def test_the_key_depends_on_the_serving_paths():
    dirname, code = next(iter(_entries(CAPTURES["bf16"]).items()))
    name, digest = parse_entry_name21(dirname)  # type: ignore[misc]
    elsewhere = flags21(arch="sm_90a", nccl_root="/opt/venv/lib/python3.12/site-packages/nvidia/nccl",
                        library_include="/opt/venv/lib/python3.12/site-packages/deep_ep/include")
    assert cache_key21(name, code, elsewhere, *NVCC) != digest
    assert cache_key21(name, code, H200_FLAGS, 12, 9) != digest


def test_rendered_h200_ep1_plan_is_exactly_what_elasticbuffer_wrote(wheel):  # noqa: F811
    """Source and name of all 57 entries, from the profile alone plus the wheel's headers: digest truth for 2.1."""
    profile = load_profile("h200-ep1")
    kernels = list(render_plan21(plan(profile))) + [render_barrier21(profile, target_facts21(profile))]
    includes = IncludeHasher21(wheel / "include")
    ours: dict[str, str] = {}
    for kernel in kernels:
        code = with_include_hash(kernel.source, includes)
        ours[f"kernel.{kernel.name}.{cache_key21(kernel.name, code, H200_FLAGS, *NVCC)}"] = code
    theirs = _entries(CAPTURES["bf16"])
    assert sorted(ours) == sorted(theirs)
    for dirname, code in theirs.items():
        assert ours[dirname] == code, dirname
