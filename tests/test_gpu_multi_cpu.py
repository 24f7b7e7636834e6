"""The N-rank code of benchmarks/gpu_multi_proof.py that runs without a GPU.

- the trace's per-step DP-uniform bucket, on a real 2-process gloo group: each
  rank draws its own token counts, all-gathers them, and both ranks pick the
  same bucket every step (and hand it to DeepEP's double through a strict
  BucketedDispatcher); a stop flag raised by one rank stops both at the same step;
- the merge/report of the per-rank parts, with fake parts (finished, missing,
  failed, hung ranks; an entry compiled twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
BENCH = TESTS.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_multi_proof as proof  # noqa: E402


# -- pure helpers --------------------------------------------------------------------------------


def test_trace_sizes_differ_per_rank_and_cover_every_bucket():
    from jitcache.planning.buckets import BucketPolicy

    policy = BucketPolicy(8192)
    a, b = (proof.trace_sizes(2000, 1234, r, 8192) for r in (0, 1))
    assert a != b and all(1 <= n <= 8192 for n in a + b)
    assert {policy.bucket(n) for n in a} == set(policy.buckets())
    assert proof.trace_sizes(2000, 1234, 0, 8192) == a  # deterministic
    assert all(1 <= n <= 64 for n in proof.trace_sizes(100, 1, 3, 64, "uniform"))


def test_child_env_hosts_its_own_store_on_the_new_port(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("EP_JIT_CACHE_DIR", "/somewhere")
    env = proof._child_env(45678)
    assert env["MASTER_PORT"] == "45678" and env["MASTER_ADDR"] == "127.0.0.1"
    assert "TORCHELASTIC_USE_AGENT_STORE" not in env and "EP_JIT_CACHE_DIR" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(proof.REPO)


# -- the DP-uniform bucket on a real 2-process gloo group --------------------------------------------

_RANK = textwrap.dedent("""
    import json, os, sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import torch.distributed as dist
    import fake_deep_ep as fake
    import gpu_multi_proof as proof
    from jitcache.planning.buckets import BucketPolicy
    from jitcache.runtime.dispatcher import BucketedDispatcher

    store, rank, out = sys.argv[3], int(sys.argv[4]), sys.argv[5]
    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=2, rank=rank)
    policy = BucketPolicy(256)
    buf = fake.EPBuffer(group=dist.group.WORLD, num_max_tokens_per_rank=256, hidden=64, num_topk=2)
    dispatcher = BucketedDispatcher(buf, policy, strict=True, warm=policy.buckets())
    sizes = proof.trace_sizes(120, 7, rank, 256)
    record = {"rank": rank, "sizes": [], "across": [], "buckets": [], "nmax": [], "stopped_at": None}
    for step, n in enumerate(sizes):
        across, stop = proof.gather_counts(n, rank == 1 and step == 100)
        if stop:
            record["stopped_at"] = step
            break
        bucket = policy.for_dp(across)
        dispatcher.dispatch(fake.Rows(n, 64), topk_idx=fake.Rows(n, 2), topk_weights=fake.Rows(n, 2),
                            num_experts=8, num_tokens_across_dp=across, do_cpu_sync=False)
        record["sizes"].append(n)
        record["across"].append(across)
        record["buckets"].append(bucket)
        record["nmax"].append(buf.calls[-1]["num_max_tokens_per_rank"])
    record["misses"] = dispatcher.stats().total_misses
    record["digest"] = proof.bucket_digest(record["buckets"])
    json.dump(record, open(out, "w"))
    # Leave without tearing gloo down: a peer closing its sockets first can abort the other (SIGABRT).
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)
""")


def test_two_gloo_ranks_pick_the_same_dp_uniform_bucket_every_step_and_stop_together(tmp_path):
    pytest.importorskip("torch")
    env = {**os.environ, "JITCACHE_STATS": "0", "EP_JIT_CACHE_DIR": str(tmp_path / "dj")}
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(TESTS), str(BENCH), str(tmp_path / "store"), str(r),
                               str(outs[r])], env=env) for r in (0, 1)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    r0, r1 = (json.loads(o.read_text()) for o in outs)
    # rank 1 raised its stop flag in step 100's gather: that step already returns it, on both ranks
    assert r0["stopped_at"] == r1["stopped_at"] == 100
    assert r0["sizes"] != r1["sizes"]                                   # each rank its own token counts
    assert r0["across"] == r1["across"] == [[a, b] for a, b in zip(r0["sizes"], r1["sizes"])]
    assert r0["buckets"] == r1["buckets"] and r0["digest"] == r1["digest"]
    assert r0["buckets"] == [1 << max(max(a, b) - 1, 0).bit_length() for a, b in r0["across"]]
    assert r0["nmax"] == r0["buckets"] and r1["nmax"] == r1["buckets"]  # what DeepEP was given
    assert r0["misses"] == r1["misses"] == 0


# -- merge / report ------------------------------------------------------------------------------------


def _part(out, phase, rank, **data):
    proof.write_json(proof.part_path(out, phase, rank), {"phase": phase, "rank": rank, "world_size": 2, **data})


def _happy(out):
    shared = {"entries": 57, "variants": 56, "variants_missing": 0, "every_variant_exactly_once": True}
    for r in (0, 1):  # the ranks split the precompile (its counts are the group's); the live steps compile nothing
        report = {"totals": {"compiled": 0}, "precompile": {"status": "done", "compiled": 57, "entries": ["x"]}}
        _part(out, "live", r, ok=True, wall_seconds=20.0 + r, compile_cpu_seconds=190.0 - r,
              process_cpu_seconds=20.0, report=report, **({"shared_cache": shared} if r == 0 else {}))
    _part(out, "live_plain", 0, ok=True, wall_seconds=190.0, compile_cpu_seconds=700.0, process_cpu_seconds=50.0,
          shared_cache=shared)
    _part(out, "live_plain", 1, ok=True, wall_seconds=191.0, compile_cpu_seconds=690.0, process_cpu_seconds=48.0)
    for r in (0, 1):
        _part(out, "lazy", r, ok=True, wall_seconds=185.0 + r, compile_cpu_seconds=700.0, process_cpu_seconds=45.0,
              entries_after=57)
    entries = [f"k{i}" for i in range(5)]
    for r in (0, 1):
        results = [{"entry": e, "status": "compiled" if i % 2 == r else "cached"} for i, e in enumerate(entries)]
        _part(out, "aot", r, ok=True, wall_seconds=20.0, cli_process_tree_cpu_seconds=150.0,
              report={"ok": True, "num_variants": 5, "results": results},
              **({"aot_entries_equal_live_entries": True} if r == 0 else {}))
    for r in (0, 1):
        _part(out, "trace", r, ok=True, steps_planned=2000, steps=2000, recv_equal=2000, combined_equal=2000,
              handle_bucket_ok=2000, errors=0, misses=0, refused=0, new_cache_entries=[], bucket_digest="abc",
              cache_used="live")


def test_merge_of_a_complete_run(tmp_path):
    _happy(tmp_path)
    merged = proof.merge(tmp_path, 2)
    s = merged["summary"]
    assert s["phases_present"] == ["live", "live_plain", "lazy", "aot", "trace"] and s["phases_absent"] == []
    assert s["live_every_rank_finished"] and s["live_every_variant_exists_once"]
    assert s["live_compile_cpu_seconds"] == 379.0 and s["lazy_compile_cpu_seconds"] == 1400.0
    assert s["live_over_lazy_compile_cpu"] == round(379 / 1400, 3) and s["lazy_over_live_wall"] == round(186 / 21, 2)
    assert s["live_precompile_compiled"] == 57 and s["live_steps_that_compiled"] == 0
    assert s["live_plain_compile_cpu_seconds"] == 1390.0 and s["live_plain_every_variant_exists_once"]
    pre = merged["phases"]["live"]["summary"]["precompile_per_rank"]
    assert pre == {"0": {"status": "done", "compiled": 57}, "1": {"status": "done", "compiled": 57}}
    assert s["aot_union_equals_plan"] and s["aot_compiled_per_rank"] == {"0": 3, "1": 2}
    assert s["aot_entries_equal_live_entries"] is True
    assert s["trace_passed"] and s["trace_new_cache_entries"] == 0 and s["trace_misses"] == 0
    assert s["trace_buckets_agree"] and s["trace_all_identical"] and s["trace_no_hang"]
    plain = merged["phases"]["live_plain"]["summary"]
    assert plain["ranks_that_ran_nvcc"] == [0, 1] and "lockstep" in plain["note"]
    assert "precompile" in merged["phases"]["live"]["summary"]["note"]
    assert "its own empty EP_JIT_CACHE_DIR" in merged["phases"]["lazy"]["summary"]["note"]
    assert set(merged["phases"]["trace"]["ranks"]) == {"0", "1"}


def test_merge_shows_missing_failed_hung_and_duplicated_work(tmp_path):
    _happy(tmp_path)
    proof.part_path(tmp_path, "lazy", 1).unlink()                        # a rank that left nothing
    _part(tmp_path, "live", 1, ok=False, error="WarmupError: boom")      # a rank that failed
    _part(tmp_path, "trace", 1, ok=False, steps_planned=2000, steps=731, recv_equal=731, combined_equal=731,
          errors=0, misses=0, new_cache_entries=[], bucket_digest="abc",
          watchdog={"reason": "no progress for 121 s", "stage": "step 731: direct dispatch"})
    aot = json.loads(proof.part_path(tmp_path, "aot", 1).read_text())
    aot["report"]["results"][0]["status"] = "compiled"                   # k0: compiled on both ranks
    proof.write_json(proof.part_path(tmp_path, "aot", 1), aot)
    (tmp_path / "parts" / "trace.rank9.json").write_text("{not json")     # unreadable: reported, not fatal

    merged = proof.merge(tmp_path, 2)
    s, phases = merged["summary"], merged["phases"]
    assert s["live_every_rank_finished"] is False and phases["live"]["summary"]["ranks_failed"] == [1]
    assert s["lazy_every_rank_finished"] is False and phases["lazy"]["summary"]["ranks_missing"] == [1]
    assert phases["aot"]["summary"]["compiled_twice"] == ["k0"] and s["aot_union_equals_plan"] is False
    trace = phases["trace"]["summary"]
    assert s["trace_passed"] is False and s["trace_no_hang"] is False
    assert trace["watchdog"]["1"]["stage"] == "step 731: direct dispatch"
    assert trace["all_steps_done"] is False and trace["steps_done_per_rank"]["1"] == 731
    assert phases["trace"]["ranks"]["9"]["ok"] is False


def test_merge_only_cli_writes_the_report(tmp_path, capsys):
    _happy(tmp_path)
    assert proof.main(["--merge-only", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / proof.MERGED).read_text())
    assert data["summary"]["trace_passed"] is True and data["phases"]["aot"]["summary"]["num_variants"] == 5
    assert json.loads(capsys.readouterr().out)["trace_passed"] is True


# -- the driver under torchrun, and the watchdog (no GPU: the children fail where CUDA starts) -------------

_HANG = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    import gpu_multi_proof as proof
    dog = proof.Watchdog(proof.part_path(sys.argv[2], "trace", 0), {"phase": "trace", "rank": 0}, 60, 0.5)
    dog.partial["steps_reached"] = 17
    dog.beat("step 17: direct dispatch")
    time.sleep(30)  # a hang: the watchdog writes the part and exits 3
""")


def test_watchdog_turns_a_hang_into_a_part_that_says_where(tmp_path):
    done = subprocess.run([sys.executable, "-c", _HANG, str(BENCH), str(tmp_path)], timeout=30)
    assert done.returncode == 3
    part = json.loads(proof.part_path(tmp_path, "trace", 0).read_text())
    assert part["ok"] is False and part["steps_reached"] == 17
    assert part["watchdog"]["stage"] == "step 17: direct dispatch" and "no progress" in part["watchdog"]["reason"]


def test_drivers_under_torchrun_run_every_rank_and_merge_what_each_wrote(tmp_path):
    pytest.importorskip("torch")
    out, work = tmp_path / "out", tmp_path / "work"
    stale = proof.part_path(out, "live", 5)
    proof.write_json(stale, {"ok": True})  # a part of an earlier run of this phase: removed before it starts
    env = {**os.environ, "JITCACHE_STATS": "0", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(proof._free_port()), str(BENCH / "gpu_multi_proof.py"), "--profile", "h200x2-ep2", "--out", str(out),
         "--work", str(work), "--phases", "trace,live", "--budget", "live=60", "--budget", "trace=60"],
        env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not stale.exists()
    merged = json.loads((out / proof.MERGED).read_text())
    assert merged["summary"]["phases_present"] == ["live", "trace"] and merged["world_size"] == 2
    for phase in ("live", "trace"):
        ranks = merged["phases"][phase]["ranks"]
        assert set(ranks) == {"0", "1"}
        for rank, part in ranks.items():
            # no GPU here: each rank's child failed where CUDA starts, said so, and exited cleanly
            assert part["ok"] is False and part["rank"] == int(rank) and part["world_size"] == 2
            assert part["exit_code"] == 0 and part["driver_timed_out"] is False and part["stage"] == "init NCCL"
        assert merged["phases"][phase]["summary"]["ranks_failed"] == [0, 1]
    assert merged["summary"]["trace_passed"] is False


# -- the bit-equality check both GPU proofs use (benchmarks/_common.compare_with_direct), on CPU tensors ----------


def _dispatched(rows, keys, valid, pad_rows=2):
    """A DeepEP 2.5 dispatch result: ``rows`` (x, topk_idx, topk_weights per row) in arrival order, then padding."""
    import torch
    from types import SimpleNamespace

    x = torch.stack([r[0] for r in rows] + [torch.full_like(rows[0][0], 7.0)] * pad_rows)
    idx = torch.stack([r[1] for r in rows] + [torch.full_like(rows[0][1], -1)] * pad_rows)
    w = torch.stack([r[2] for r in rows] + [torch.zeros_like(rows[0][2])] * pad_rows)
    metadata = torch.tensor([[k, 0] for k in keys] + [[0, 0]] * pad_rows, dtype=torch.int32)
    handle = SimpleNamespace(psum_num_recv_tokens_per_scaleup_rank=torch.tensor([valid]), recv_src_metadata=metadata)
    return x, idx, w, handle, None


def test_compare_with_direct_ignores_arrival_order_and_padding_but_not_a_changed_row():
    torch = pytest.importorskip("torch")
    from _common import compare_with_direct

    g = torch.Generator().manual_seed(0)

    def row():
        return (torch.randn(8, generator=g).to(torch.bfloat16), torch.randint(0, 16, (2,), generator=g),
                torch.rand(2, generator=g))

    rows = [row() for _ in range(4)]
    keys = [0, 1, 1, 2]  # key 1 twice: tokens of the same index from two source ranks
    combined = (torch.ones(3, 8), torch.ones(3, 2))
    bucketed = _dispatched(rows, keys, 4)
    arrival = [3, 2, 0, 1]  # another arrival order, and other padding
    direct = _dispatched([rows[i] for i in arrival], [keys[i] for i in arrival], 4, pad_rows=5)
    same = compare_with_direct(bucketed, direct, combined, (combined[0].clone(), combined[1].clone()))
    assert same == {"recv_equal": True, "recv_raw_positional_equal": False, "combined_equal": True,
                    "valid_rows": [4, 4]}

    changed = [rows[i] for i in arrival]
    changed[1] = (changed[1][0] + 1, changed[1][1], changed[1][2])
    other = compare_with_direct(bucketed, _dispatched(changed, [keys[i] for i in arrival], 4), combined,
                                (combined[0] + 1, combined[1]))
    assert other["recv_equal"] is False and other["combined_equal"] is False
    assert compare_with_direct(bucketed, _dispatched(rows[:3], keys[:3], 3), combined, combined)["recv_equal"] is False
