"""The dispatcher's counters as Prometheus metrics: scraped from real prometheus_client HTTP servers on
127.0.0.1 (one process, and multiprocess mode as vLLM runs it), and `jitcache stats --format prometheus`.

Every serving side runs in a process of its own: prometheus_client's default registry and its
multiprocess mode are per process (the mode is chosen when prometheus_client is imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cli_helpers import run_cli  # noqa: E402
from jitcache.runtime.stats import DispatchStats, flush  # noqa: E402

TESTS = Path(__file__).resolve().parent

# A serving process: a dispatcher makes `sizes` decode dispatches on the DeepEP 2.1 double (buckets 1..64,
# 1, 2 and 4 warm) and one prefill dispatch; then `mode` says what it does next.
WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import fake_deep_ep as fake
    from jitcache import BucketPolicy
    from jitcache.runtime import metrics
    from jitcache.runtime.dispatcher import BucketedDispatcher

    mode, sizes = sys.argv[1], [int(n) for n in sys.argv[2].split(",")]
    buf = fake.ElasticBuffer(num_max_tokens_per_rank=64, hidden=64, num_topk=2)
    d = BucketedDispatcher(buf, BucketPolicy(64), warm=[1, 2, 4])
    for n in sizes:
        d.dispatch(fake.Rows(n, 64), topk_idx=fake.Rows(n, 2), topk_weights=fake.Rows(n, 2), num_experts=8)
    d.dispatch(fake.Rows(9, 64), topk_idx=fake.Rows(9, 2), topk_weights=fake.Rows(9, 2), num_experts=8,
               do_expand=True)
    print(metrics.enable(), flush=True)   # already enabled by the dispatcher: reports the mode
    if mode == "serve":                   # one process: serve the default registry
        import prometheus_client
        server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1")
        print(server.server_port, flush=True)
    elif mode == "sync-and-wait":         # multiprocess, still alive: write the counters now
        metrics.sync()
        print("synced", flush=True)
    if mode != "exit":                    # "exit": multiprocess, counters written at exit
        sys.stdin.readline()
""")

# vLLM's API server in multiprocess mode: a MultiProcessCollector over PROMETHEUS_MULTIPROC_DIR.
SERVER = textwrap.dedent("""
    import sys
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    print(server.server_port, flush=True)
    sys.stdin.readline()
""")


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "JITCACHE_METRICS")}
    env.update(JITCACHE_STATS="0", HOME=str(tmp_path / "home"), EP_JIT_CACHE_DIR=str(tmp_path / "dj"), **extra)
    return env


def _start(code, *args, env):
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("jitcache_"):
                samples[(sample.name, sample.labels.get("bucket"))] = sample.value
    return samples


def _finish(*procs):
    for proc in procs:
        proc.stdin.close()
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)


def test_one_process_scraped_over_http(tmp_path):
    worker = _start(WORKER.format(tests=str(TESTS)), "serve", "3,3,1,30", env=_env(tmp_path))
    try:
        assert worker.stdout.readline().strip() == "collector"
        samples = _scrape(int(worker.stdout.readline()))
    finally:
        _finish(worker)
    assert samples[("jitcache_dispatch_calls_total", "4")] == 2
    assert samples[("jitcache_dispatch_calls_total", "1")] == 1
    assert samples[("jitcache_dispatch_calls_total", "32")] == 1
    assert samples[("jitcache_dispatch_misses_total", "32")] == 1 and ("jitcache_dispatch_misses_total", "4") not in samples
    assert samples[("jitcache_dispatch_real_rows_total", "4")] == 6
    assert samples[("jitcache_dispatch_padded_rows_total", "4")] == 8
    assert samples[("jitcache_dispatch_padded_rows_total", "32")] == 32
    assert samples[("jitcache_dispatch_passthrough_total", None)] == 1


def test_multiprocess_mode_adds_up_every_worker_in_the_api_servers_scrape(tmp_path):
    folder = tmp_path / "prom"
    folder.mkdir()
    env = _env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(folder), JITCACHE_METRICS_INTERVAL="3600")
    code = WORKER.format(tests=str(TESTS))
    alive = _start(code, "sync-and-wait", "3,5", env=env)        # counters written by metrics.sync()
    try:
        assert alive.stdout.readline().strip() == "multiprocess"
        assert alive.stdout.readline().strip() == "synced"
        gone = _start(code, "exit", "3,1", env=env)               # counters written at exit
        assert gone.stdout.readline().strip() == "multiprocess"
        gone.stdin.close()
        assert gone.wait(timeout=120) == 0
        server = _start(SERVER, env=env)
        try:
            samples = _scrape(int(server.stdout.readline()))
        finally:
            _finish(server)
    finally:
        _finish(alive)
    assert samples[("jitcache_dispatch_calls_total", "4")] == 2       # one 3 from each worker
    assert samples[("jitcache_dispatch_calls_total", "8")] == 1
    assert samples[("jitcache_dispatch_calls_total", "1")] == 1
    assert samples[("jitcache_dispatch_misses_total", "8")] == 1
    assert samples[("jitcache_dispatch_real_rows_total", "4")] == 6
    assert samples[("jitcache_dispatch_padded_rows_total", "8")] == 8
    assert samples[("jitcache_dispatch_passthrough_total", None)] == 2


def test_metrics_off_with_jitcache_metrics_0(tmp_path):
    worker = _start(WORKER.format(tests=str(TESTS)), "exit", "3", env=_env(tmp_path, JITCACHE_METRICS="0"))
    assert worker.stdout.readline().strip() == "None"
    _finish(worker)


def _stats_root(tmp_path) -> Path:
    root = tmp_path / "root"
    s = DispatchStats()
    for bucket, n, miss in ((4, 3, False), (4, 4, False), (16, 9, True)):
        s.record(bucket, n, miss)
    s.record_refused(32)
    s.record_passthrough()
    flush(root / "stats", s.snapshot())
    return root


def _textfile_samples(text: str) -> dict:
    return {(s.name, s.labels.get("bucket")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_stats_format_prometheus_for_a_textfile_collector(tmp_path):
    root = _stats_root(tmp_path)
    result = run_cli("stats", "--cache-dir", str(root), "--format", "prometheus")
    assert result.code == 0, result.stderr
    samples = _textfile_samples(result.stdout)
    assert samples[("jitcache_dispatch_calls_total", "4")] == 2
    assert samples[("jitcache_dispatch_misses_total", "16")] == 1
    assert samples[("jitcache_dispatch_refused_total", "32")] == 1
    assert samples[("jitcache_dispatch_real_rows_total", "4")] == 7
    assert samples[("jitcache_dispatch_padded_rows_total", "16")] == 16
    assert samples[("jitcache_stats_processes", None)] == 1

    target = tmp_path / "textfile" / "jitcache.prom"
    target.parent.mkdir()
    result = run_cli("stats", "--cache-dir", str(root), "--format", "prometheus", "-o", str(target))
    assert result.code == 0 and result.stdout == "", result.stderr
    assert _textfile_samples(target.read_text()) == samples
    assert sorted(p.name for p in target.parent.iterdir()) == ["jitcache.prom"]  # no temporary file left


def test_stats_prometheus_bad_combinations(tmp_path):
    root = _stats_root(tmp_path)
    result = run_cli("stats", "--cache-dir", str(root), "-o", str(tmp_path / "x.prom"))
    assert result.code == 2 and "Error: --output needs --format prometheus" in result.stderr
    result = run_cli("stats", "--cache-dir", str(root), "--format", "prometheus", "-o",
                     str(tmp_path / "missing" / "x.prom"))
    assert result.code == 2 and "x.prom: cannot write" in result.stderr
