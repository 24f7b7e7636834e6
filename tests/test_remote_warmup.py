"""`warmup --aot --remote` and `jitcache push | pull`: pull what is there, compile the rest, push what was compiled.

The library path runs real one-second nvcc compiles (tiny DeepJIT-shaped
jobs, counted through JITCACHE_COMPILE_LOG); the CLI path compiles five real
DeepEP 2.5 kernels (h200-ep1 cut to one bucket) on one node and pulls them
on another, against moto's S3 server on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aot_fixtures import nvcc  # noqa: F401 (fixtures)
from cli_helpers import run_cli
from jitcache.build.pool import COMPILE_LOG_ENV, BuildJob
from jitcache.errors import RemoteError
from jitcache.warm.remote_warmup import nvcc_release, warmup_aot_remote
from jitcache.store.remote import RemoteEnv, RemoteStore, entry_key
from jitcache.store.root import resolve_root
from jitcache.build.toolchain import Toolchain
from jitcache.planning.variants import plan
from remote_fixtures import *  # noqa: F401,F403 (fixtures)
from jitcache.store.kernels import TEMPLATE_PARAMS
from store_fixtures import entry_key as digest_of, render_source, test_profile  # noqa: F401

pytestmark = pytest.mark.nvcc
pytest.importorskip("obstore")

ENV = RemoteEnv("2.5", "13.0.88", "sm_90a")


def test_nvcc_release_reads_the_full_version():
    out = "Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0\n"
    assert nvcc_release(out) == "13.0.88"


def tiny_job(nvcc_path: Path, n: int) -> BuildJob:
    """A real one-second nvcc compile of an entry in DeepEP 2.5's shape (a deep_ep:: dispatch instantiation)."""
    names = TEMPLATE_PARAMS["dispatch_impl"]
    source = render_source("dispatch_impl", [n if p == "num_max_tokens_per_rank" else 1 for p in names])
    return BuildJob(entry=f"dispatch.{digest_of(source)}", label=f"dispatch {n}", files=(("kernel.cu", source),),
                    argv=(str(nvcc_path), "{dir}/kernel.cu", "--cubin", "--output-file", "{dir}/kernel.cubin",
                          "--gpu-architecture=sm_90a", "-w", "-O0", "-std=c++17"),
                    after=(("meta.json", '{"command":"{dir}"}'),), num_max_tokens_per_rank=n, family="dispatch")


def _toolchain(nvcc_path: Path) -> Toolchain:
    return Toolchain(nvcc=nvcc_path, nvcc_version_output="release 13.0, V13.0.88", deep_ep_include=Path("/nonexistent"),
                     deep_ep_api="2.5", nccl_include=Path("/nonexistent"), target_nccl_include="/nonexistent",
                     python_library_root="/nonexistent")


def _compiles(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_nodes_pull_what_is_there_and_compile_only_the_rest(tmp_path, nvcc, test_profile, s3_url,  # noqa: F811
                                                            monkeypatch):
    log = tmp_path / "compiles.log"
    monkeypatch.setenv(COMPILE_LOG_ENV, str(log))
    the_plan, toolchain = plan(test_profile), _toolchain(nvcc)
    jobs = [tiny_job(nvcc, n) for n in (1, 2, 3)]

    first = warmup_aot_remote(the_plan, toolchain, resolve_root(tmp_path / "node-a"), remote=s3_url, jobs=jobs,
                              env=ENV, num_workers=2)
    assert (first.pulled, first.compiled, first.pushed) == (0, 3, 3) and _compiles(log) == 3
    assert first.pull.missing == tuple(j.entry for j in jobs)

    second = warmup_aot_remote(the_plan, toolchain, resolve_root(tmp_path / "node-b"), remote=s3_url, jobs=jobs,
                               env=ENV, num_workers=2)
    assert (second.pulled, second.compiled, second.pushed) == (3, 0, 0) and _compiles(log) == 3
    assert second.aot.count("cached") == 3 and second.to_dict()["bytes_received"] > 0

    more = jobs + [tiny_job(nvcc, 4)]
    third = warmup_aot_remote(the_plan, toolchain, resolve_root(tmp_path / "node-c"), remote=s3_url, jobs=more,
                              env=ENV, num_workers=2)
    assert (third.pulled, third.compiled, third.pushed) == (3, 1, 1) and _compiles(log) == 4
    assert RemoteStore(s3_url).get(entry_key(ENV, more[-1].entry)) is not None


def test_an_unreachable_or_denied_store_stops_the_warmup_unless_optional(tmp_path, nvcc, test_profile,  # noqa: F811
                                                                         s3_server, s3_url, monkeypatch):
    log = tmp_path / "compiles.log"
    monkeypatch.setenv(COMPILE_LOG_ENV, str(log))
    the_plan, toolchain, jobs = plan(test_profile), _toolchain(nvcc), [tiny_job(nvcc, 7)]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(RemoteError, match="access denied"):
        warmup_aot_remote(the_plan, toolchain, resolve_root(tmp_path / "a"), remote=s3_url, jobs=jobs, env=ENV)
    assert _compiles(log) == 0  # refused before compiling anything

    done = warmup_aot_remote(the_plan, toolchain, resolve_root(tmp_path / "a"), remote=s3_url, jobs=jobs, env=ENV,
                             optional=True)
    assert done.compiled == 1 and done.pull is None and done.push is None
    assert len(done.remote_errors) == 1 and "access denied" in done.remote_errors[0]

    # Read-only credentials: the pull works, the push is denied: an error after the (kept) local warmup...
    for name, value in s3_server.env(s3_server.ro).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RemoteError, match=r"access denied \(write\)"):
        warmup_aot_remote(the_plan, toolchain, resolve_root(tmp_path / "b"), remote=s3_url, jobs=jobs, env=ENV)
    assert (tmp_path / "b" / "deep_ep" / "cache" / jobs[0].entry / ".committed").is_file()
    # ... and only a warning with optional=True.
    again = warmup_aot_remote(the_plan, toolchain, resolve_root(tmp_path / "c"), remote=s3_url, jobs=jobs, env=ENV,
                              optional=True)
    assert again.compiled == 1 and again.push is None and "access denied" in again.remote_errors[0]


def test_cli_warmup_remote_then_a_fresh_node_pulls_everything(tmp_path, one_bucket_profile, s3_server, s3_url,
                                                              deep_ep25_sdist):
    SDIST = deep_ep25_sdist
    env = s3_server.env()
    log = tmp_path / "compiles.log"
    common = ["warmup", "--aot", "-p", str(one_bucket_profile), "--deep-ep-include", str(SDIST), "-j", "2",
              "--format", "json"]
    first = run_cli(*common, "--cache-dir", str(tmp_path / "a"), "--remote", s3_url,
                    env={**env, COMPILE_LOG_ENV: str(log)})
    assert first.code == 0, first.stderr
    report = first.json()
    assert report["schema"] == 1 and (report["pulled"], report["compiled"], report["pushed"]) == (0, 5, 5)
    assert report["aot"]["totals"]["compiled"] == 5 and report["bytes_sent"] > 0
    names = sorted(p.name for p in (tmp_path / "a" / "deep_ep" / "cache").iterdir())

    # A fresh node: JITCACHE_REMOTE instead of --remote; human output.
    second = run_cli(*common[:-2], "--cache-dir", str(tmp_path / "b"),
                     env={**env, "JITCACHE_REMOTE": s3_url, COMPILE_LOG_ENV: str(log)})
    assert second.code == 0, second.stderr
    assert "Remote warmup: 5 pulled, 0 compiled, 0 pushed" in second.stdout
    assert len(log.read_text().splitlines()) == 5  # nothing compiled on the second node
    assert sorted(p.name for p in (tmp_path / "b" / "deep_ep" / "cache").iterdir()) == names

    # The store gone: an Error, unless --remote-optional (then the local cache is used).
    dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    down = run_cli(*common, "--cache-dir", str(tmp_path / "b"), "--remote", s3_url, env=dead)
    assert down.code == 1 and "Error:" in down.stderr and "unreachable" in down.stderr and down.stdout == ""
    optional = run_cli(*common, "--cache-dir", str(tmp_path / "b"), "--remote", s3_url, "--remote-optional", env=dead)
    assert optional.code == 0, optional.stderr
    assert "Warning" in optional.stderr and "unreachable" in optional.stderr
    data = optional.json()
    assert data["compiled"] == 0 and data["aot"]["totals"]["cached"] == 5 and len(data["remote_errors"]) == 1

    # push / pull commands on the same store: the index of this profile lists the five entries.
    pulled = run_cli("pull", "-p", str(one_bucket_profile), "--deep-ep-api", "2.5", "--cache-dir",
                     str(tmp_path / "c"), "--remote", s3_url, "--format", "json", env=env)
    assert pulled.code == 0, pulled.stderr
    assert sorted(pulled.json()["pulled"]) == names   # the warmup's push listed all five, the barrier too
    pushed = run_cli("push", "-p", str(one_bucket_profile), "--deep-ep-api", "2.5", "--cache-dir",
                     str(tmp_path / "c"), "--remote", s3_url, env=env)
    assert pushed.code == 0, pushed.stderr
    # `push` sends what the plan's kernels need (the four families and the buffer's barrier): all there already.
    assert "Pushed 0 entries" in pushed.stdout and "5 already in the store" in pushed.stdout


def test_cli_push_pull_errors(tmp_path, s3_server, s3_url):
    no_remote = run_cli("pull", "--cache-dir", str(tmp_path / "x"), "--deep-ep-api", "2.5",
                        env={"JITCACHE_REMOTE": ""})
    assert no_remote.code == 2 and "Error: no remote store" in no_remote.stderr
    bad_api = run_cli("pull", "--deep-ep-api", "3.0", "--remote", s3_url, "--cache-dir", str(tmp_path / "x"))
    assert bad_api.code == 2 and "--deep-ep-api '3.0'" in bad_api.stderr
    denied = run_cli("pull", "--deep-ep-api", "2.5", "--remote", s3_url, "--cache-dir", str(tmp_path / "x"),
                     env={**s3_server.env(), "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"})
    assert denied.code == 1 and "Error:" in denied.stderr and "access denied" in denied.stderr
    read_only = run_cli("push", "--deep-ep-api", "2.5", "--remote", "https://127.0.0.1:9/x", "--cache-dir",
                        str(tmp_path / "x"))
    assert read_only.code == 1 and "read-only" in read_only.stderr
    assert not (tmp_path / "x" / "deep_ep" / "cache").exists() or not any((tmp_path / "x" / "deep_ep" / "cache").iterdir())
