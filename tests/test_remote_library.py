"""Issue 17's library entry points: `jitcache.aot_warmup(AotOptions(remote=...))` and `jitcache.warmup(..., remote=)`.

The AOT one compiles five real DeepEP 2.5 kernels (h200-ep1 cut to one
bucket) on a build box and pushes them to a directory store; a node whose
deep_ep and NCCL live elsewhere then pulls them by source, relocates them
to its own names and compiles nothing. The live one runs on DeepEP's test
double (no GPU here) carrying the real 2.5 headers: what it would look up is
pulled and relocated before the warmup, what it built is pushed after.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import fake_deep_ep as fake
import jitcache
from aot_fixtures import deep_ep25_include, deep_ep25_sdist  # noqa: F401
from jitcache.errors import RemoteError, UsageError
from jitcache.planning.profiles import load_profile
from jitcache.store.remote import RemoteStore
from remote_fixtures import *  # noqa: F401,F403 (fixtures)
from test_remote_relocate import h200_ep1, pushed25  # noqa: F401 (fixtures)
from test_runtime_guard import HIDDEN, served25  # noqa: F401 (fixtures)

pytestmark = pytest.mark.nvcc
pytest.importorskip("obstore")

isolated_deep_ep_env = fake.isolated_deep_ep_env  # autouse: DeepEP's cache dir in tmp_path


def test_aot_warmup_with_a_remote_pulls_relocates_and_compiles_only_the_rest(tmp_path, one_bucket_profile,
                                                                           deep_ep25_sdist, monkeypatch):  # noqa: F811
    from jitcache.build.pool import COMPILE_LOG_ENV

    log = tmp_path / "compiles.log"
    monkeypatch.setenv(COMPILE_LOG_ENV, str(log))
    store = str(tmp_path / "nfs")
    common = dict(profile=one_bucket_profile, deep_ep_include=deep_ep25_sdist, jobs=2, remote=store)
    box = jitcache.aot_warmup(jitcache.AotOptions(cache_dir=tmp_path / "box", **common))
    assert (box.pulled, box.compiled, box.pushed) == (0, 5, 5) and box.ok
    assert box.to_dict()["bytes_sent"] > 0 and box.to_dict()["schema"] == 1
    assert len(log.read_text().splitlines()) == 5

    # Another node: its deep_ep and NCCL elsewhere, so none of the pushed names is the one it looks up.
    node = jitcache.aot_warmup(jitcache.AotOptions(cache_dir=tmp_path / "node", target_deep_ep_root="/srv/site/deep_ep",
                                                   target_nccl_include="/srv/nccl/include", **common))
    assert (node.pulled, node.compiled, node.pushed) == (5, 0, 0) and len(log.read_text().splitlines()) == 5
    assert len(node.pull.relocated) == 5 and node.aot.count("cached") == 5
    assert {n for n, _ in node.pull.relocated} == {r.entry for r in node.aot.results}
    data = node.to_dict()
    assert data["bytes_received"] > 0 and data["seconds"] > 0 and data["pull"]["relocated"]


def test_aot_warmup_remote_errors_and_options(tmp_path, one_bucket_profile, deep_ep25_sdist, s3_url,  # noqa: F811
                                              monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    options = jitcache.AotOptions(profile=one_bucket_profile, deep_ep_include=deep_ep25_sdist,
                                  cache_dir=tmp_path / "a", remote=s3_url)
    with pytest.raises(RemoteError, match="unreachable"):
        jitcache.aot_warmup(options)
    assert not (tmp_path / "a" / "deep_ep" / "cache").exists()   # refused before compiling anything
    with pytest.raises(UsageError, match="--remote must not be empty"):
        jitcache.AotOptions(remote=" ")
    with pytest.raises(UsageError, match="--triton-only compiles none"):
        jitcache.AotOptions(remote=s3_url, triton_only=True, triton_modules=("m",))


def test_the_live_warmup_pulls_what_its_deepep_looks_up_and_pushes_what_it_built(served25, pushed25, tmp_path):  # noqa: F811
    pytest.importorskip("torch")
    profile = load_profile("h200-ep1")
    buffer = served25(num_max_tokens_per_rank=8192, hidden=HIDDEN, num_topk=8)
    report = jitcache.warmup(buffer, profile, progress=False, save=False, precompile=False, remote=pushed25.url)
    r = report.remote
    assert r is not None and r["remote_errors"] == [] and r["env"]["deep_ep_api"] == "2.5"
    # DeepEP's own 16 decode entries of the plan, pushed under a build box's names: pulled by source, relocated
    assert r["pulled"] == 16 and r["relocated"] == 16 and r["bytes_received"] > 0
    assert r["pull"]["deep_ep"]["nccl_include"] == "/srv/nccl/include"
    # the test double then "compiled" the rest (fake cubins): push refuses to ship them, nothing is half-pushed
    assert r["compiled"] == report.num_entries_written > 0 and r["pushed"] == 0
    assert r["push"] is not None and len(r["push"]["skipped"]) == r["compiled"]
    assert report.to_dict()["remote"] == r and type(report).from_dict(report.to_dict()).remote == r


def test_the_live_warmup_counts_as_compiled_only_what_it_added(served25, pushed25, tmp_path, monkeypatch):  # noqa: F811
    """A precompile that found the whole plan cached (as on the H200 after a full pull) compiled nothing: the
    remote summary must not count the plan's entries as compiled, nor offer them to the push."""
    pytest.importorskip("torch")
    from jitcache.warm import live_steps, prepass

    planned = tuple(f"dispatch.{i:032x}" for i in range(57))
    monkeypatch.setattr(live_steps._prepass, "precompile", lambda *a, **k: prepass.PrecompileResult(
        prepass.DONE, cached=len(planned), entries=planned))
    profile = load_profile("h200-ep1")
    buffer = served25(num_max_tokens_per_rank=8192, hidden=HIDDEN, num_topk=8)
    report = jitcache.warmup(buffer, profile, progress=False, save=False, precompile=True, remote=pushed25.url)
    r = report.remote
    assert report.precompile is not None and report.precompile["compiled"] == 0
    assert r["compiled"] == report.num_entries_written and r["pulled"] == 16
    offered = [item["entry"] for item in (r["push"] or {}).get("skipped", [])]
    assert len(offered) == r["compiled"] and not set(planned) & set(offered)


def test_the_live_warmup_with_an_unreachable_store(served25, s3_url, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("torch")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    profile = load_profile("h200-ep1")
    buffer = served25(num_max_tokens_per_rank=8192, hidden=HIDDEN, num_topk=8)
    with pytest.raises(RemoteError, match="unreachable"):
        jitcache.warmup(buffer, profile, progress=False, save=False, precompile=False, remote=s3_url)
    assert not (tmp_path / "dj" / "cache").exists() or not any((tmp_path / "dj" / "cache").iterdir())
    report = jitcache.warmup(buffer, profile, progress=False, save=False, precompile=False, remote=s3_url,
                             remote_optional=True)
    assert len(report.remote["remote_errors"]) == 1 and "unreachable" in report.remote["remote_errors"][0]
    assert report.remote["pulled"] == 0 and report.num_entries_written > 0
    assert RemoteStore(s3_url).url.startswith("s3://")
