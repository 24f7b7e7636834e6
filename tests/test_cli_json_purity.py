"""`jitcache warmup --format json` (the live warmup) keeps stdout pure while DeepEP writes to file descriptor 1.

DeepEP prints from C++ (``printf``) and from Python (``print``) to fd 1; on
the H200 that corrupted the JSON. The child process below runs the real CLI
entry point with the live warmup driving a DeepEP test double (no GPU here)
whose ``dispatch`` writes to fd 1 in the three ways DeepEP can: libc's
buffered ``printf`` through ctypes, a raw ``os.write(1, ...)`` and
``print()``. The parent parses the child's stdout with ``json.loads``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CHILD = textwrap.dedent("""
    import ctypes, os, sys
    sys.path.insert(0, {tests!r})
    import fake_deep_ep as fake
    from jitcache.warm import live as engine
    from jitcache.cli.app import main

    libc = ctypes.CDLL(None)

    class NoisyBuffer(fake.EPBuffer):
        def dispatch(self, x, *args, **kwargs):
            libc.printf(b"Failed to get NVLink connection speed: C printf\\n")   # stays in libc's buffer
            os.write(1, b"raw write to fd 1\\n")
            print("Failed to get NVLink connection speed: python print")
            return super().dispatch(x, *args, **kwargs)

    def live_warmup(options, progress=True):
        libc.printf(b"NCCL host communicator created\\n")                      # at buffer creation
        buffer = NoisyBuffer(num_max_tokens_per_rank=16, hidden=256, num_topk=4)
        try:
            return engine.warmup(buffer, options.profile, options.modes, progress, cache_dir=options.cache_dir,
                                 precompile=False)
        finally:
            libc.printf(b"destroyed\\n")

    engine.live_warmup = live_warmup
    main(sys.argv[1:])
""")

PROFILE = """
[model]
name = "m"
hidden = 256
num_experts = 16
num_topk = 4
[parallel]
ep_size = 1
ranks_per_node = 1
[serving]
max_num_batched_tokens = 16
"""


def run_child(tmp_path, *args):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    profile = tmp_path / "tiny.toml"
    profile.write_text(PROFILE)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "EP_JIT_CACHE_DIR": str(tmp_path / "dj"),
           "JITCACHE_STATS": "0", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, str(script), "warmup", "-p", str(profile), "--cache-dir",
                           str(tmp_path / "root"), *args], capture_output=True, text=True, env=env, timeout=300)


def test_live_warmup_json_stdout_holds_only_the_json(tmp_path):
    proc = run_child(tmp_path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # nothing but the JSON
    assert report["totals"]["steps"] == 5 and report["api"] == "2.5"
    # DeepEP's writes were not lost: they went to stderr, the C ones included.
    for line in ("raw write to fd 1", "python print", "C printf", "NCCL host communicator created", "destroyed"):
        assert line in proc.stderr


def test_without_json_the_same_writes_reach_stdout(tmp_path):
    # The double really writes to fd 1: in the human format nothing is redirected.
    proc = run_child(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "raw write to fd 1" in proc.stdout and "C printf" in proc.stdout
