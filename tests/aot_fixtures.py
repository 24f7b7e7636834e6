"""Inputs the AOT tests share: DeepEP 2.5 headers (the sdist, fetched from the index), NCCL headers, tiny jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jitcache.adapters.base import BuildJob
from jitcache.errors import ToolchainError

REPO = Path(__file__).resolve().parents[1]
#: DeepEP 2.5 as the package index serves it (tests/data/sdist.pin: requirement and sha256, also read by .ci/run).
#: The sdist is fetched by the project's own `jitcache sources fetch`, pinned by that sha256, into a git-ignored
#: jitcache root inside the clone (a cache: once there, the index is not asked again). The copy on the H200 rig
#: (in the rig's shared/gpu folder) holds the same files repacked (other bytes): the pin is the index's.
SDIST_REQUIREMENT, SDIST_SHA256 = (REPO / "tests" / "data" / "sdist.pin").read_text().split()
SDIST_ROOT = REPO / ".cache" / "jitcache"
#: The NCCL include dir DeepEP used on the H200 rig (enters the 2.5 digest as -I...).
RIG_NCCL_INCLUDE = "/tmp/gpu-rig/nccl/include"
NVCC_13_0 = ("nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n"
             "Built on Wed_Aug_20_01:58:59_PM_PDT_2025\nCuda compilation tools, release 13.0, V13.0.88\n"
             "Build cuda_13.0.r13.0/compiler.36424714_0\n")


def fetch_pinned_sdist(root: Path = SDIST_ROOT) -> Path:
    """``jitcache sources fetch deepinfer-ep==2.5.0 --sha256 PIN --cache-dir root``; the archive's path.

    Without it (no index reachable) the test needing it skips, except under ``CI``, where it fails.
    """
    argv = [sys.executable, "-m", "jitcache.cli", "sources", "fetch", SDIST_REQUIREMENT, "--sha256", SDIST_SHA256,
            "--cache-dir", str(root), "--format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode == 0:
        return Path(json.loads(done.stdout)["path"])
    why = f"DeepEP 2.5 sdist: `jitcache sources fetch {SDIST_REQUIREMENT}` failed (rc {done.returncode}): " \
          f"{done.stderr.strip()}"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def deep_ep25_sdist() -> Path:
    """The deepinfer-ep 2.5.0 sdist, fetched once (sha256-pinned) into the clone's git-ignored ``.cache/``."""
    return fetch_pinned_sdist()


@pytest.fixture(scope="session")
def deep_ep25_include(deep_ep25_sdist, tmp_path_factory) -> Path:
    """DeepEP 2.5's deep_ep/include, extracted from the sdist."""
    from jitcache.build.toolchain import extract_sdist_headers

    return extract_sdist_headers(deep_ep25_sdist, into=tmp_path_factory.mktemp("headers"))


@pytest.fixture(scope="session")
def nccl_include() -> Path:
    from jitcache.build.toolchain import find_nccl_include

    try:
        return find_nccl_include(os.environ.get("JITCACHE_TEST_NCCL_INCLUDE"))
    except ToolchainError:
        pytest.skip("NCCL headers not installed (pip install nvidia-nccl-cu13)")


@pytest.fixture(scope="session")
def nvcc() -> Path:
    path = shutil.which("nvcc")
    if path is None:
        pytest.skip("nvcc not on PATH")
    return Path(path)


TINY_KERNEL = """
extern "C" __global__ void tiny_{n}(float* x) {{ x[threadIdx.x] *= {n}.0f; }}
"""


def tiny_job(nvcc: Path, n: int, *, broken: bool = False) -> BuildJob:
    """A real, one-second nvcc compile in DeepJIT's entry shape."""
    source = TINY_KERNEL.format(n=n) + ("this is not C++;\n" if broken else "")
    return BuildJob(entry=f"tiny.{n:032x}", label=f"tiny {n}", files=(("kernel.cu", source),),
                    argv=(str(nvcc), "{dir}/kernel.cu", "--cubin", "--output-file", "{dir}/kernel.cubin",
                          "--gpu-architecture=sm_90a", "-O0"),
                    after=(("meta.json", '{"command":"{dir}"}'),), num_max_tokens_per_rank=n, family="tiny")
