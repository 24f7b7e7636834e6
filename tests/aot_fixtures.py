"""Inputs the AOT tests share: DeepEP 2.5 headers (from the sdist beside the repo), NCCL headers, tiny jobs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jitcache.build.pool import BuildJob
from jitcache.errors import ToolchainError

REPO = Path(__file__).resolve().parents[1]
SDIST = REPO.parent / "shared" / "gpu" / "deepinfer_ep-2.5.0.tar.gz"
#: The NCCL include dir DeepEP used on the H200 rig (enters the 2.5 digest as -I...).
RIG_NCCL_INCLUDE = "/tmp/gpu-rig/nccl/include"
NVCC_13_0 = ("nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n"
             "Built on Wed_Aug_20_01:58:59_PM_PDT_2025\nCuda compilation tools, release 13.0, V13.0.88\n"
             "Build cuda_13.0.r13.0/compiler.36424714_0\n")


@pytest.fixture(scope="session")
def deep_ep25_include(tmp_path_factory) -> Path:
    """DeepEP 2.5's deep_ep/include, extracted from the sdist in ../shared/gpu (CI has it beside the clone)."""
    if not SDIST.is_file():
        pytest.skip(f"DeepEP 2.5 sdist not found at {SDIST}")
    from jitcache.build.toolchain import extract_sdist_headers

    return extract_sdist_headers(SDIST, into=tmp_path_factory.mktemp("headers"))


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
