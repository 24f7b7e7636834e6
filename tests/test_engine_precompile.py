"""The live warmup's nvcc precompile: split over a real 2-process gloo group with real nvcc and DeepEP 2.5's
headers, a collective skip when one rank cannot run it, the reasons it gives, the report and its rendering.

DeepEP itself is the test double (``fake_deep_ep``) shipped as a ``deep_ep`` package in tmp_path; its own JIT
emulation names entries by its own digests, so after a precompile its live pass still "compiles" every step:
that is the ``missed_by_live`` case, and what these tests check is where nvcc's entries go and who built them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import fake_deep_ep as fake  # noqa: E402
from aot_fixtures import NVCC_13_0, deep_ep25_include, nccl_include  # noqa: E402,F401
from fake_deep_ep import isolated_deep_ep_env  # noqa: E402,F401 - autouse: HOME, EP_JIT_CACHE_DIR in tmp_path
from jitcache import BucketPolicy  # noqa: E402
from jitcache.warm.live import WarmupReport, warmup  # noqa: E402
from jitcache.planning.profiles import parse_profile  # noqa: E402
from precompile_ranks import nccl_root, run_two_ranks  # noqa: E402

TESTS = Path(__file__).parent

#: The built-in h200x2-ep2 (decode only) with a cap of 2: buckets 1 and 2, x 4 kernel families, + the buffer's
#: barrier = 9 nvcc jobs.
PROFILE_TOML = (TESTS.parent / "cache_profiles" / "h200x2-ep2.toml").read_text().replace(
    "max_num_batched_tokens = 8192", "max_num_batched_tokens = 2")

def _deep_ep_package(base: Path, include: Path | None) -> Path:
    """A folder for sys.path holding ``deep_ep/``: the double's EPBuffer, and ``include/`` when given."""
    package = base / "deep_ep"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import fake_deep_ep\n\n\nclass EPBuffer(fake_deep_ep.EPBuffer):\n"
        "    '''The test double, as a deep_ep package ships it.'''\n")
    if include is not None:
        (package / "include").symlink_to(include, target_is_directory=True)
    return base


def _run_pair(tmp_path: Path, packages: tuple[Path, Path], nccl: Path) -> list[dict]:
    # EP_NCCL_ROOT_DIR/include: DeepEP's own override, which the toolchain reads
    env = {"EP_NCCL_ROOT_DIR": str(nccl_root(tmp_path, nccl))}
    return run_two_ranks(tmp_path, packages, "EPBuffer", PROFILE_TOML, env, timeout=300)


@pytest.mark.nvcc
def test_two_ranks_split_the_nvcc_precompile_into_the_cache_deep_ep_reads(tmp_path, deep_ep25_include,  # noqa: F811
                                                                          nccl_include):  # noqa: F811
    package = _deep_ep_package(tmp_path / "site", deep_ep25_include)
    ranks = _run_pair(tmp_path, (package, package), nccl_include)
    pre = [r["report"]["precompile"] for r in ranks]
    entries = pre[0]["entries"]
    assert len(entries) == 9

    # Every entry compiled exactly once across the two ranks, and each rank compiled its share.
    compiles = [line.split() for line in (tmp_path / "compiles.log").read_text().splitlines()]
    assert sorted(entry for _, entry in compiles) == sorted(entries)
    assert {int(pid) for pid, _ in compiles} == {r["pid"] for r in ranks}

    # ... into the folder DeepEP reads (EP_JIT_CACHE_DIR, the jitcache root's deep_ep/), committed.
    cache = tmp_path / "root" / "deep_ep" / "cache"
    for entry in entries:
        assert (cache / entry / ".committed").is_file(), entry
        assert (cache / entry / "kernel.cubin").read_bytes()[:4] == b"\x7fELF"

    # Every rank took the same decision and reports the group's counts.
    for p in pre:
        assert p["status"] == "done" and p["reason"] == ""
        assert (p["compiled"], p["failed"], p["cached"], p["world_size"]) == (9, 0, 0, 2)
        assert p["jobs"] == max(1, (os.cpu_count() or 1) // 2)  # the cores shared by LOCAL_WORLD_SIZE=2
        assert p["deep_ep_headers_from"].startswith("DeepEP 2.5 headers of the package of deep_ep.EPBuffer")
        assert Path(p["report_path"]).is_file()
        assert p["missed_by_live"] in (0, 1, 2)
    # The double names its entries by its own digests, so each of the 2 steps wrote new entries: seen by the rank
    # that wrote them at least (the other may find them already there, the ranks do not step in lockstep here).
    assert sum(p["missed_by_live"] for p in pre) >= 2
    own = ("report_path", "missed_by_live")  # this rank's AOT report, this rank's live steps
    assert [{k: v for k, v in p.items() if k not in own} for p in pre] == [{k: v for k, v in pre[0].items()
                                                                           if k not in own}] * 2
    assert [[s["mode"], s["num_max_tokens_per_rank"]] for s in ranks[1]["report"]["results"]] == \
           [["decode", 1], ["decode", 2]]
    saved = json.loads((tmp_path / "root" / "meta" / "warmup-profile.json").read_text())
    assert saved["precompile"]["status"] == "done"


def test_a_rank_that_cannot_precompile_makes_every_rank_skip_naming_it(tmp_path, deep_ep25_include,  # noqa: F811
                                                                       nccl_include):  # noqa: F811
    with_headers = _deep_ep_package(tmp_path / "site0", deep_ep25_include)
    without = _deep_ep_package(tmp_path / "site1", None)  # rank 1's deep_ep ships no include/
    ranks = _run_pair(tmp_path, (with_headers, without), nccl_include)
    missing = str(without / "deep_ep" / "include")
    for rank in ranks:
        pre = rank["report"]["precompile"]
        assert pre["status"] == "skipped" and pre["entries"] == [] and pre["missed_by_live"] is None
        assert pre["reason"].startswith("rank 1 cannot precompile, so no rank does: ") and missing in pre["reason"]
        assert len(rank["report"]["results"]) == 2  # the live pass ran all the same
    assert not (tmp_path / "compiles.log").exists()


def _profile():
    return parse_profile({
        "model": {"name": "m", "hidden": 256, "num_experts": 16, "num_topk": 4},
        "parallel": {"ep_size": 1, "ranks_per_node": 1},
        "serving": {"max_num_batched_tokens": 4, "modes": ["decode"]},
        "target": {"arch": "sm_90a", "num_device_sms": 132, "num_smem_bytes": 232448, "clock_rate_khz": 1980000,
                   "num_allocated_qps": 129, "gpu_timeout_secs": 100},
    }, source="small.toml", name="small")


def test_skip_reasons_of_the_test_double_both_versions_and_a_bare_policy(tmp_path):
    def run(cls=fake.EPBuffer, target=None, **kwargs):
        buf = cls(num_max_tokens_per_rank=4, hidden=256, num_topk=4)
        return warmup(buf, target or _profile(), progress=False, save=False, **kwargs).precompile

    # fake_deep_ep is a module in tests/, with no include/ beside it: no headers to compile against.
    pre = run()
    assert pre["status"] == "skipped" and pre["missed_by_live"] is None
    assert pre["reason"].startswith(f"{TESTS / 'include'}: no such folder") and "fake_deep_ep.EPBuffer" in pre["reason"]
    # DeepEP 2.1 precompiles too (tests/test_engine_precompile21.py); the double has no headers beside it either.
    assert run(fake.ElasticBuffer)["reason"].startswith(f"{TESTS / 'include'}: no such folder")
    bare = run(target=BucketPolicy(4), hidden=256, num_experts=16, num_topk=4)
    assert bare["status"] == "skipped" and "bare BucketPolicy" in bare["reason"]
    assert run(precompile=False) is None
    assert not (tmp_path / "dj" / ".jitcache").exists()  # a skip writes nothing


def test_failed_compiles_are_a_status_and_the_live_pass_still_runs(tmp_path, deep_ep25_include,  # noqa: F811
                                                                  nccl_include):  # noqa: F811
    """One process, no group; the toolchain= override runs a compiler that always fails."""
    from jitcache.build.toolchain import Toolchain

    broken = Toolchain(nvcc=Path("/bin/false"), nvcc_version_output=NVCC_13_0, deep_ep_include=deep_ep25_include,
                       deep_ep_api="2.5", nccl_include=nccl_include, target_nccl_include=str(nccl_include),
                       python_library_root=str(deep_ep25_include.parent), deep_ep_headers_from="a broken nvcc")
    report = warmup(fake.EPBuffer(num_max_tokens_per_rank=4, hidden=256, num_topk=4), _profile(), progress=False,
                    save=False, toolchain=broken, jobs=2)
    pre = report.precompile
    assert pre["status"] == "failed", pre["reason"]
    assert (pre["failed"], pre["compiled"], pre["jobs"], pre["world_size"]) == (13, 0, 2, 1)
    assert pre["reason"].startswith("13 of 13 kernels failed to compile (first: dispatch nmax=1 (decode): nvcc exit 1)")
    assert pre["missed_by_live"] is None and report.num_compiled == 3  # the live pass compiled them (the double)
    # Written where DeepEP reads: EP_JIT_CACHE_DIR, a bare DeepEP cache here (jitcache's files hidden in .jitcache/).
    assert Path(pre["report_path"]).parent.parent.parent == tmp_path / "dj" / ".jitcache"


def test_a_report_from_before_the_precompile_still_loads(tmp_path):
    report = warmup(fake.EPBuffer(num_max_tokens_per_rank=4, hidden=256, num_topk=4), _profile(), progress=False,
                    save=False)
    old = report.to_dict()
    del old["precompile"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = WarmupReport.load(tmp_path / "old.json")
    assert loaded.precompile is None and loaded.results == report.results
    assert WarmupReport.load(report.save(tmp_path / "new.json")) == report


def test_the_report_renders_one_precompile_line(capsys):
    from jitcache.cli.live_view import render_precompile
    from jitcache.cli.output import Output

    done = {"status": "done", "reason": "", "compiled": 56, "cached": 0, "deduplicated": 0, "received": 0,
            "failed": 0, "wall_seconds": 16.2, "jobs": 8, "world_size": 2, "missed_by_live": 0}
    render_precompile(Output(), done, 14)
    render_precompile(Output(), {**done, "status": "skipped", "reason": "nvcc not found [PATH]"}, 14)
    render_precompile(Output(), {**done, "compiled": 55, "failed": 1, "status": "failed", "reason": "1 of 56 ...",
                                 "missed_by_live": None}, 14)
    render_precompile(Output(), {**done, "missed_by_live": 3, "world_size": 1}, 14)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "Precompiled 56 kernels with nvcc in 16.2 s (8 jobs on each of 2 ranks); the live pass found them all",
        "Precompile skipped: nvcc not found [PATH]",
        "Precompiled 55 kernels with nvcc in 16.2 s (8 jobs on each of 2 ranks), 1 failed",
        "Precompiled 56 kernels with nvcc in 16.2 s (8 jobs)",
    ]
    assert "precompile failed: 1 of 56" in captured.err and "3 of 14 live steps still compiled" in captured.err


def test_no_precompile_with_aot_is_a_usage_error():
    from cli_helpers import run_cli

    result = run_cli("warmup", "--aot", "--no-precompile")
    assert result.code == 2 and "--no-precompile applies to the live warmup" in result.stderr


def test_target_facts_the_profile_leaves_unknown_come_from_the_gpu_and_buffer_it_runs_on(deep_ep25_include,  # noqa: F811
                                                                                         nccl_include):  # noqa: F811
    """A profile without [target] facts renders, on the GPU host, exactly the kernels of one that has them.

    The facts are what torch reports for an H200 (recorded on the rig: benchmarks/results/h200/
    gpu_capture_cache.json) and EPBuffer.num_allocated_qps; values the profile sets win.
    """
    from dataclasses import replace
    from types import SimpleNamespace

    from jitcache.adapters.registry import jobs_for_plan
    from jitcache.warm.prepass import live_target_facts, with_live_target
    from jitcache.planning.profiles import TargetSpec
    from jitcache.build.toolchain import Toolchain
    from jitcache.planning.variants import plan

    toolchain = Toolchain(nvcc=Path("/bin/false"), nvcc_version_output=NVCC_13_0, deep_ep_include=deep_ep25_include,
                          deep_ep_api="2.5", nccl_include=nccl_include, target_nccl_include=str(nccl_include),
                          python_library_root=str(deep_ep25_include.parent))
    full = _profile()
    bare = replace(full, target=TargetSpec(arch="sm_90a"))
    h200 = SimpleNamespace(multi_processor_count=132, shared_memory_per_block_optin=232448, clock_rate=1980000)

    class FakeCuda:
        @staticmethod
        def is_available():
            return True

        @staticmethod
        def current_device():
            return 0

        @staticmethod
        def get_device_properties(index):
            assert index == 0
            return h200

    torch_like = SimpleNamespace(cuda=FakeCuda)
    buffer = SimpleNamespace(num_allocated_qps=129)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch", torch_like)
        facts = live_target_facts(buffer)
    assert facts == {"num_device_sms": 132, "num_smem_bytes": 232448, "clock_rate_khz": 1980000,
                     "num_allocated_qps": 129}
    filled, taken = with_live_target(bare, facts)
    assert taken == facts and filled.target == full.target
    names = lambda p: [j.entry for j in jobs_for_plan(plan(p), toolchain)]  # noqa: E731
    assert names(filled) == names(full)
    # what the profile sets is kept; nothing to fill, nothing taken
    assert with_live_target(full, {**facts, "num_device_sms": 78}) == (full, {})
    # no GPU: nothing from the device; a buffer without the attribute (or 0): nothing from it either
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False)))
        assert live_target_facts(SimpleNamespace(num_allocated_qps=0)) == {}
        assert live_target_facts(buffer) == {"num_allocated_qps": 129}


def test_at_ep2_num_sms_zero_is_deep_eps_own_choice_asked_of_the_buffer(deep_ep25_include, nccl_include):  # noqa: F811
    """[deep_ep] num_sms = 0 at EP>1: the buffer's get_theoretical_num_sms (28 on the H200 x2, recorded in
    benchmarks/results/h200x2/parts/trace.rank0.json) gives the kernels of the profile that pins 28."""
    from dataclasses import replace
    from types import SimpleNamespace

    from jitcache.adapters.registry import jobs_for_plan
    from jitcache.warm.prepass import with_live_num_sms
    from jitcache.planning.profiles import load_profile
    from jitcache.build.toolchain import Toolchain
    from jitcache.planning.variants import plan

    toolchain = Toolchain(nvcc=Path("/bin/false"), nvcc_version_output=NVCC_13_0, deep_ep_include=deep_ep25_include,
                          deep_ep_api="2.5", nccl_include=nccl_include, target_nccl_include=str(nccl_include),
                          python_library_root=str(deep_ep25_include.parent))
    pinned = load_profile("h200x2-ep2")
    unpinned = replace(pinned, deep_ep=replace(pinned.deep_ep, num_sms=0))
    asked = []

    def theoretical(num_experts, num_topk):
        asked.append((num_experts, num_topk))
        return 28

    buffer = SimpleNamespace(get_theoretical_num_sms=theoretical)
    filled, taken = with_live_num_sms(unpinned, buffer)
    assert taken == {"num_sms": 28} and asked == [(256, 8)] and filled.deep_ep == pinned.deep_ep
    names = lambda p: [j.entry for j in jobs_for_plan(plan(p), toolchain)]  # noqa: E731
    assert names(filled) == names(pinned)
    # a pinned value, EP1, a buffer that cannot say or fails: nothing asked or taken
    assert with_live_num_sms(pinned, buffer) == (pinned, {})
    assert with_live_num_sms(load_profile("h200-ep1"), buffer) == (load_profile("h200-ep1"), {})
    assert with_live_num_sms(unpinned, SimpleNamespace()) == (unpinned, {})

    def broken(num_experts, num_topk):
        raise RuntimeError("nvidia-smi: not found")

    assert with_live_num_sms(unpinned, SimpleNamespace(get_theoretical_num_sms=broken)) == (unpinned, {})
    assert len(asked) == 1
