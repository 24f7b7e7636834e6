"""The live warmup's nvcc precompile for DeepEP 2.1 (ElasticBuffer): once per node, split over a real 2-process
gloo group, real nvcc against the tokenspeed-deepep wheel's headers, into the folder ElasticBuffer reads.

DeepEP 2.1 is the test double (``fake_deep_ep.ElasticBuffer``) shipped as a ``deep_ep`` package in tmp_path
with what a real one has beside it: ``include/`` (the wheel's headers), ``find_cuda_home()`` and
``utils/find_pkgs.find_nccl_root()``, which the precompile asks, as DeepEP's ``init_jit`` does, for the paths
that enter 2.1's digest. The double's own JIT names entries by its own digests, so its live pass still
"compiles" (``missed_by_live``); what is checked is which entries nvcc built, where, by whom, and under
which names.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from aot_fixtures import nccl_include, nvcc  # noqa: E402,F401
from jitcache.adapters.deepep21 import jobs_for_plan21  # noqa: E402
from jitcache.build.toolchain import resolve_toolchain  # noqa: E402
from jitcache.planning.profiles import load_profile  # noqa: E402
from jitcache.planning.variants import plan  # noqa: E402
from precompile_ranks import nccl_root, run_two_ranks  # noqa: E402
from test_render21 import wheel  # noqa: E402,F401

TESTS = Path(__file__).parent

#: h200x2-ep2 (decode, num_sms pinned) with a cap of 1: bucket 1 x 4 kernel families + the barrier = 5 jobs.
PROFILE_TOML = (TESTS.parent / "cache_profiles" / "h200x2-ep2.toml").read_text().replace(
    "max_num_batched_tokens = 8192", "max_num_batched_tokens = 1")

_PACKAGE = textwrap.dedent("""
    import os
    import fake_deep_ep

    from .utils.find_pkgs import find_nccl_root  # noqa: F401 - as DeepEP 2.1's __init__ does


    class ElasticBuffer(fake_deep_ep.ElasticBuffer):
        '''The test double, as a deep_ep 2.1 package ships it.'''


    def find_cuda_home():
        return os.environ["TEST_CUDA_HOME"]
""")

_FIND_PKGS = textwrap.dedent("""
    import os


    def find_nccl_root(optional=False):
        return os.environ["TEST_NCCL_ROOT"]
""")


def _deep_ep21_package(base: Path, include: Path) -> Path:
    package = base / "deep_ep"
    (package / "utils").mkdir(parents=True)
    (package / "__init__.py").write_text(_PACKAGE)
    (package / "utils" / "__init__.py").write_text("")
    (package / "utils" / "find_pkgs.py").write_text(_FIND_PKGS)
    (package / "include").symlink_to(include, target_is_directory=True)
    return base


@pytest.mark.nvcc
def test_two_ranks_split_the_21_precompile_into_the_folder_elastic_buffer_reads(tmp_path, wheel, nccl_include,  # noqa: F811
                                                                                nvcc):  # noqa: F811
    site = _deep_ep21_package(tmp_path / "site", wheel / "include")
    nccl = nccl_root(tmp_path, nccl_include)  # what find_nccl_root() reports: its include/ enters the digest
    root = tmp_path / "root"
    env = {"TEST_NCCL_ROOT": str(nccl), "TEST_CUDA_HOME": str(Path(nvcc).resolve().parent.parent)}
    ranks = run_two_ranks(tmp_path, (site, site), "ElasticBuffer", PROFILE_TOML, env, timeout=600)
    pre = [r["report"]["precompile"] for r in ranks]
    for p in pre:
        assert p["status"] == "done", p["reason"]
        assert (p["compiled"], p["failed"], p["world_size"]) == (5, 0, 2)
        assert p["deep_ep_headers_from"].startswith("DeepEP 2.1 headers of the package of deep_ep.ElasticBuffer")

    # The names are DeepEP 2.1's digest over the paths *that process* hands its JIT: the package dir as
    # os.path.abspath spells it (symlinks kept) and find_nccl_root()'s include.
    expected = resolve_toolchain(nvcc=nvcc, deep_ep_include=wheel / "include", nccl_include=nccl_include,
                                 target_nccl_include=str(nccl / "include"),
                                 python_library_root=str(site / "deep_ep"), api="2.1")
    names = {job.entry for job in jobs_for_plan21(plan(load_profile(tmp_path / "profile.toml")), expected)}
    assert set(pre[0]["entries"]) == names and len(names) == 5

    # Compiled once each, split over both ranks, into ElasticBuffer's folder in its layout (no marker, no meta).
    compiles = [line.split() for line in (tmp_path / "compiles.log").read_text().splitlines()]
    assert sorted(entry for _, entry in compiles) == sorted(names)
    assert {int(pid) for pid, _ in compiles} == {r["pid"] for r in ranks}
    cache = root / "deep_ep" / "cache"
    for entry in names:
        assert entry.startswith("kernel.")
        assert sorted(p.name for p in (cache / entry).iterdir()) == ["kernel.cu", "kernel.cubin"]
        assert (cache / entry / "kernel.cubin").read_bytes()[:4] == b"\x7fELF"
