"""Digest truth through the remote store: pulled entries end under the names the serving DeepEP computes.

A build box (its own deep_ep and NCCL paths) pushes DeepEP's own H200 entries
(tests/data, real cubins) under the names *it* computes; a serving node
whose DeepEP lives elsewhere pulls, finds the objects by their kernel's
source (the index lists each kernel.cu's sha256), and relocates them: the
names it ends with are exactly those DeepEP wrote on the H200 rig. DeepEP 2.5
and 2.1 (ElasticBuffer's own 57 entries), the library, `jitcache pull` and
`warmup --aot --remote`'s library path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aot_fixtures import NVCC_13_0, REPO, RIG_NCCL_INCLUDE, deep_ep25_include  # noqa: F401
from jitcache.adapters.serving import local_entry_name, locate_serving, planned_entries
from jitcache.planning.profiles import load_profile
from jitcache.planning.variants import plan
from jitcache.store.names import name_coverage
from jitcache.store.remote import RemoteEnv, RemoteStore, pull, push
from jitcache.store.root import resolve_root
from remote_fixtures import *  # noqa: F401,F403 (fixtures)
from test_cli_cache import run
from test_cli_names import _ship_real_entries, setup  # noqa: F401 (fixture)
from test_relocate import RIG_PACKAGE, rig, tree

pytestmark = pytest.mark.nvcc
pytest.importorskip("obstore")

DATA25 = REPO / "tests" / "data" / "deepep25-h200" / "cache"
DATA21 = REPO / "tests" / "data" / "deepep21-h200" / "cache"
ENV25 = RemoteEnv("2.5", "13.0.88", "sm_90a")
ENV21 = RemoteEnv("2.1", "13.0.88", "sm_90a")


def _names(root) -> set[str]:
    cache = root.deep_ep_dir / "cache"
    return {p.name for p in cache.iterdir()} if cache.is_dir() else set()


@pytest.fixture
def h200_ep1():
    return plan(load_profile("h200-ep1"))


@pytest.fixture
def pushed25(tmp_path, deep_ep25_include, h200_ep1):  # noqa: F811
    """A directory remote holding DeepEP 2.5's 22 H200 entries under a build box's names, with h200-ep1's index."""
    box = resolve_root(tmp_path / "build-box").ensure()
    assert _ship_real_entries(box.deep_ep_dir / "cache", deep_ep25_include) == 22
    store = RemoteStore(str(tmp_path / "nfs"))
    report = push(box, store, ENV25, plan=h200_ep1, names=_names(box))
    assert len(report.pushed) == 22 and report.index_entries == 22 and not report.skipped
    assert not _names(box) & {p.name for p in DATA25.iterdir()}   # none under the rig's own names
    return store


def test_a_pull_ends_under_the_names_the_serving_deepep_computes(pushed25, tmp_path, deep_ep25_include,  # noqa: F811
                                                                 h200_ep1):
    serving = rig(deep_ep25_include)
    planned = {e.name for e in planned_entries(h200_ep1, serving)}
    node = resolve_root(tmp_path / "node")
    got = pull(node, pushed25, ENV25, plan=h200_ep1, serving=serving)
    # Exactly DeepEP's own decode entries of the plan (buckets 1, 2, 4, 8192), found by source, relocated to the
    # names DeepEP wrote on the rig; the 6 entries of other shapes are not even downloaded.
    own = {p.name for p in DATA25.iterdir()} & planned
    assert len(own) == 16 and {n for n, _ in got.relocated} == own and not got.not_relocated
    assert len(got.pulled) == 16 and got.refused == () and set(got.missing) == planned - own
    assert got.requested == 57 and got.to_dict()["deep_ep"]["package_dir"] == RIG_PACKAGE
    assert set(got.to_dict()["timings"]) == {"index", "names", "download", "verify_publish", "relocate"}
    cov = name_coverage(h200_ep1, serving, [node.deep_ep_dir])
    assert len(cov.found) == 16 and not cov.relocatable
    for name in own:   # kernel.cu and cubin are DeepEP's own, byte for byte
        assert (node.deep_ep_dir / "cache" / name / "kernel.cu").read_bytes() == (DATA25 / name / "kernel.cu").read_bytes()
        assert (node.deep_ep_dir / "cache" / name / "kernel.cubin").read_bytes() == \
            (DATA25 / name / "kernel.cubin").read_bytes()
        meta = json.loads((node.deep_ep_dir / "cache" / name / "meta.json").read_text())
        assert meta["config"]["python_library_root"] == RIG_PACKAGE and f"-I{RIG_NCCL_INCLUDE}" in meta["command"]

    again = pull(node, pushed25, ENV25, plan=h200_ep1, serving=serving)
    assert again.pulled == () and again.relocated == () and len(again.local) == 16 and again.bytes_received == 0


def test_without_relocation_the_pulled_entries_stay_relocatable_not_found(pushed25, tmp_path,  # noqa: F811
                                                                          deep_ep25_include, h200_ep1):
    serving = rig(deep_ep25_include)
    node = resolve_root(tmp_path / "node")
    got = pull(node, pushed25, ENV25, plan=h200_ep1, serving=serving, relocate=False)
    assert len(got.pulled) == 16 and got.relocated == ()
    cov = name_coverage(h200_ep1, serving, [node.deep_ep_dir])
    assert not cov.found and len(cov.relocatable) == 16
    # the next pull (relocating) downloads nothing: it relocates what is already here
    done = pull(node, pushed25, ENV25, plan=h200_ep1, serving=serving)
    assert done.pulled == () and done.bytes_received == 0 and len(done.relocated) == 16
    assert len(name_coverage(h200_ep1, serving, [node.deep_ep_dir]).found) == 16


def test_without_a_serving_deepep_a_pull_takes_what_the_index_lists(pushed25, tmp_path, h200_ep1):
    node = resolve_root(tmp_path / "node")
    got = pull(node, pushed25, ENV25, plan=h200_ep1)
    assert len(got.pulled) == 22 and got.relocated == () and got.to_dict()["deep_ep"] is None


def test_deepep21_entries_pulled_end_under_the_names_elasticbuffer_wrote(tmp_path, h200_ep1):
    """ElasticBuffer's own 57 H200 entries, pushed under a build box's names, pulled for the rig's paths."""
    from test_render21 import _wheel

    wheel = _wheel()
    if wheel is None:
        pytest.skip("tokenspeed-deepep (DeepEP 2.1) is not installed")
    build = locate_serving("/build/venv/site-packages/deep_ep", "/build/nccl/include", nvcc_version_output=NVCC_13_0,
                           headers=wheel / "include")
    rig21 = locate_serving("/tmp/gpu-rig/site21/deep_ep", "/tmp/gpu-rig/nccl/include", nvcc_version_output=NVCC_13_0,
                           headers=wheel / "include")
    box = resolve_root(tmp_path / "build-box").ensure()
    for entry in DATA21.iterdir():
        name = local_entry_name(build, entry.name.split(".")[1], (entry / "kernel.cu").read_text(), "sm_90a")
        shutil.copytree(entry, box.deep_ep_dir / "cache" / name)
    store = RemoteStore(str(tmp_path / "nfs"))
    assert len(push(box, store, ENV21, plan=h200_ep1, names=_names(box)).pushed) == 57

    node = resolve_root(tmp_path / "node")
    got = pull(node, store, ENV21, plan=h200_ep1, serving=rig21)
    own = {p.name for p in DATA21.iterdir()}
    assert {n for n, _ in got.relocated} == own and got.missing == () and len(got.pulled) == 57
    for name in own:   # 2.1: kernel.cu and kernel.cubin, no marker, ElasticBuffer's bytes
        assert tree(node.deep_ep_dir / "cache" / name) == tree(DATA21 / name)
    assert name_coverage(h200_ep1, rig21, [node.deep_ep_dir]).complete


def test_cli_pull_relocates_by_default_with_imports_flags(capsys, setup, pushed25, tmp_path):  # noqa: F811
    _, serving = setup     # --deep-ep-root <a package dir with the 2.5 headers> --nccl-include /srv/nccl/include
    target = tmp_path / "serving-root"
    code, out, err = run(capsys, "pull", "-p", "h200-ep1", "--remote", pushed25.url, "--cache-dir", str(target),
                         *serving)
    assert code == 0, err
    assert "Pulled 16 entries" in out and "41 not in the store" in out
    assert "Relocated 16 entries to the names DeepEP 2.5 at" in out and "(NCCL /srv/nccl/include)" in out
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(target), "--profile", "h200-ep1", *serving,
                       "--format", "json")
    assert json.loads(out)["coverage_by_name"]["num_found"] == 16

    plain = tmp_path / "plain-root"
    code, out, err = run(capsys, "pull", "-p", "h200-ep1", "--remote", pushed25.url, "--cache-dir", str(plain),
                         "--no-relocate", "--deep-ep-api", "2.5", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["schema"] == 1 and len(data["pulled"]) == 22 and data["relocated"] == []   # all the index lists
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(plain), "--profile", "h200-ep1", *serving,
                       "--format", "json")
    cov = json.loads(out)["coverage_by_name"]
    assert cov["num_found"] == 0 and cov["num_relocatable"] == 16

    # a serving DeepEP named explicitly but not there: an error, nothing pulled
    code, _, err = run(capsys, "pull", "-p", "h200-ep1", "--remote", pushed25.url, "--cache-dir",
                       str(tmp_path / "none"), "--deep-ep-root", str(tmp_path / "nope"))
    assert code == 2 and "Error: --deep-ep-root" in err and not (tmp_path / "none" / "deep_ep" / "cache").exists()


def test_the_aot_warmup_pulls_by_source_and_compiles_nothing_relocated(pushed25, tmp_path, deep_ep25_include,  # noqa: F811
                                                                       h200_ep1, monkeypatch):
    """`warmup --aot --remote` for the rig's paths: its jobs' names are DeepEP's own; the store holds them under
    the build box's names only; they are pulled, relocated to the jobs' names, and nothing is compiled."""
    from jitcache.adapters.registry import jobs_for_plan
    from jitcache.build.pool import COMPILE_LOG_ENV
    from jitcache.warm.remote_warmup import warmup_aot_remote
    from jitcache.build.toolchain import Toolchain, find_nvcc

    log = tmp_path / "compiles.log"
    monkeypatch.setenv(COMPILE_LOG_ENV, str(log))
    toolchain = Toolchain(nvcc=find_nvcc(None), nvcc_version_output=NVCC_13_0, deep_ep_include=deep_ep25_include,
                          deep_ep_api="2.5", nccl_include=Path(RIG_NCCL_INCLUDE), target_nccl_include=RIG_NCCL_INCLUDE,
                          python_library_root=RIG_PACKAGE)
    own = {p.name for p in DATA25.iterdir()}
    jobs = [j for j in jobs_for_plan(h200_ep1, toolchain) if j.entry in own]
    assert len(jobs) == 16
    report = warmup_aot_remote(h200_ep1, toolchain, resolve_root(tmp_path / "node"), remote=pushed25, jobs=jobs,
                               env=ENV25, num_workers=2)
    assert (report.pulled, report.compiled, report.pushed) == (16, 0, 0) and not log.exists()
    assert report.aot.count("cached") == 16 and {n for n, _ in report.pull.relocated} == {j.entry for j in jobs}
    assert report.to_dict()["pull"]["relocated"][0]["from"] not in own
