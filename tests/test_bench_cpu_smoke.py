"""The CPU benchmarks run end to end at tiny sizes and write the JSON the README table is built from.

No timed assertions: only that the scripts run, and that what they write is consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"JITCACHE_STATS": "0", "PATH": "/usr/bin:/bin", "HOME": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_storm_counts_variants_and_padding(tmp_path):
    _run("benchmarks/storm.py", "--steps", "60", "--out", str(tmp_path), "--no-plot")
    data = json.loads((tmp_path / "storm.json").read_text())
    assert data["compile_seconds_label"].startswith("computed")
    for trace in data["traces"].values():
        raw, pow2, half = (trace["policies"][k] for k in ("raw", "pow2", "steps_per_octave=2"))
        assert raw["distinct_num_max_tokens_per_rank"] == trace["distinct_batch_sizes"]
        assert raw["padded_row_overhead"] == 0
        assert pow2["distinct_num_max_tokens_per_rank"] <= 14 and half["distinct_num_max_tokens_per_rank"] <= 26
        assert 0 <= half["padded_row_overhead"] <= pow2["padded_row_overhead"] < 1
        assert pow2["serving_path_compile_seconds_with_warmup"] == 0.0


def test_runtime_overhead_cpu_part_writes_its_json(tmp_path):
    _run("benchmarks/runtime_overhead.py", "--part", "cpu", "--calls", "300", "--repeat", "1", "--out", str(tmp_path))
    data = json.loads((tmp_path / "runtime_overhead_cpu.json").read_text())
    assert data["ok"] is True
    assert set(data["bucket"]) == {"pow2 cap 8192", "steps_per_octave=2 cap 8192"}
    assert "overhead_ns_per_call" in data["dispatch_noop_buffer"]


def test_report_renders_the_table_from_committed_results():
    done = _run("benchmarks/report.py", "--print")
    assert "| Benchmark |" in done.stdout and "Storm" in done.stdout


def test_readme_performance_table_is_generated_from_the_results():
    """No figure in the README is typed by hand: regenerating the table changes nothing."""
    done = subprocess.run([sys.executable, "benchmarks/report.py", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, "README's Performance table is stale: run python benchmarks/report.py"
