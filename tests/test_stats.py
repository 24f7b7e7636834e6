"""Dispatch statistics: counters, atomic per-process files, aggregation across real processes, `jitcache stats`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from jitcache.cli.app import app
from jitcache.runtime.stats import DispatchStats, StatsSnapshot, aggregate, flush, process_file, zero

TESTS = Path(__file__).parent


def test_snapshot_arithmetic_and_round_trip():
    s = DispatchStats()
    s.record(8, 5, miss=True)
    s.record(8, 7)
    s.record(64, 40)
    s.record_passthrough()
    s.record_refused(128)
    snap = s.snapshot()
    assert dict(snap.calls) == {8: 2, 64: 1} and dict(snap.misses) == {8: 1} and dict(snap.refused) == {128: 1}
    assert (snap.real_rows, snap.padded_rows, snap.passthrough) == (52, 80, 1)
    assert snap.padding_ratio == 80 / 52
    assert StatsSnapshot.from_dict(json.loads(json.dumps(snap.to_dict()))) == snap
    assert snap + snap - snap == snap
    assert (StatsSnapshot() - snap) == StatsSnapshot()


def test_flush_writes_one_file_per_process_and_aggregate_adds_them(tmp_path):
    s = DispatchStats()
    s.record(4, 3)
    path = flush(tmp_path, s.snapshot())
    assert path == process_file(tmp_path) and path.name.endswith(f"-{os.getpid()}.json")
    s.record(4, 4)
    flush(tmp_path, s.snapshot())  # cumulative: replaces, does not add
    other = json.loads(path.read_text())
    other.update(pid=1, process="elsewhere-1-0")
    (tmp_path / "elsewhere-1.json").write_text(json.dumps(other))
    (tmp_path / "broken-2.json").write_text("{not json")
    (tmp_path / ".x.json.9.9.tmp").write_text("{half")  # a writer's temporary file is never read
    total = aggregate(tmp_path)
    assert dict(total.total.calls) == {4: 4} and total.total.real_rows == 14
    assert len(total.processes) == 2
    assert len(total.warnings) == 1 and "broken-2.json" in total.warnings[0]


def test_zero_records_a_baseline_that_later_counts_start_from(tmp_path):
    s = DispatchStats()
    s.record(16, 10)
    flush(tmp_path, s.snapshot())
    before = zero(tmp_path)
    assert before.total.bucketed_calls == 1
    assert aggregate(tmp_path).total.bucketed_calls == 0
    s.record(16, 9)
    flush(tmp_path, s.snapshot())  # the same live process keeps writing cumulative totals
    after = aggregate(tmp_path)
    assert dict(after.total.calls) == {16: 1} and after.total.real_rows == 9


_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from jitcache.runtime.stats import DispatchStats, flush
    directory, n, bucket = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    stats = DispatchStats()
    for i in range(n):
        stats.record(bucket, 1, miss=(i == 0))
        if i % 5 == 0:
            flush(directory, stats.snapshot())
    flush(directory, stats.snapshot())
""")


def test_concurrent_processes_lose_no_counts_and_readers_never_see_half_a_file(tmp_path):
    n, buckets = 300, (1, 2, 4, 8)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(n), str(b)]) for b in buckets]
    reads = 0
    while any(p.poll() is None for p in procs):
        seen = aggregate(tmp_path)  # while four writers replace their files
        assert seen.warnings == ()
        reads += 1
    assert all(p.wait(timeout=120) == 0 for p in procs)
    total = aggregate(tmp_path)
    assert dict(total.total.calls) == {b: n for b in buckets}
    assert dict(total.total.misses) == {b: 1 for b in buckets}
    assert len(total.processes) == 4 and reads >= 1
    assert not list(tmp_path.glob(".*.tmp"))


_SERVING = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import fake_deep_ep as fake
    from jitcache import BucketPolicy
    from jitcache.runtime.dispatcher import BucketedDispatcher
    d = BucketedDispatcher(fake.EPBuffer(hidden=64), BucketPolicy(64), warm=range(1, 65))
    for n in (1, 3, 3, 17):
        d.dispatch(fake.Rows(n, 64), topk_idx=fake.Rows(n, 2), topk_weights=None, num_experts=8)
""")


def test_a_serving_process_flushes_its_counters_by_itself(tmp_path):
    env = {**os.environ, "JITCACHE_STATS_DIR": str(tmp_path / "stats"), "JITCACHE_STATS_INTERVAL": "0.05",
           "EP_JIT_CACHE_DIR": str(tmp_path / "dj")}
    env.pop("JITCACHE_STATS", None)
    subprocess.run([sys.executable, "-c", _SERVING, str(TESTS)], env=env, check=True, timeout=120)
    total = aggregate(tmp_path / "stats")
    assert dict(total.total.calls) == {1: 1, 4: 2, 32: 1}
    assert (total.total.real_rows, total.total.padded_rows) == (24, 41)


def test_stats_command_human_json_and_zero(tmp_path):
    root = tmp_path / "root"
    s = DispatchStats()
    s.record(8, 5, miss=True)
    s.record(8, 8)
    flush(root / "stats", s.snapshot())
    runner = CliRunner()
    result = runner.invoke(app, ["stats", "--cache-dir", str(root), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["bucketed_calls"], data["misses"], data["processes"]) == (2, 1, 1)
    assert data["calls_per_bucket"] == {"8": 2}
    human = runner.invoke(app, ["stats", "--cache-dir", str(root)])
    assert human.exit_code == 0 and "Cold-variant misses" in human.stdout and "Per bucket" in human.stdout
    zeroed = runner.invoke(app, ["stats", "--cache-dir", str(root), "--zero"])
    assert zeroed.exit_code == 0 and "Statistics zeroed" in zeroed.stdout
    again = json.loads(runner.invoke(app, ["stats", "--cache-dir", str(root), "--format", "json"]).stdout)
    assert again["bucketed_calls"] == 0
    empty = runner.invoke(app, ["stats", "--cache-dir", str(tmp_path / "none"), "--format", "json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout)["processes"] == 0
