"""`warmup --aot` progress as a user sees it: a rich bar on a terminal (a real pty), one line per kernel in a log.

Both runs are the real CLI over the Triton kernels of tests/triton_kernels.py, compiled for real by
test_triton_aot's session fixture (6 entries), so every kernel reports in well under a second.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from cli_helpers import run_cli  # noqa: E402
from test_triton_aot import _registry, warmed  # noqa: E402,F401  (the fixtures)

TESTS = Path(__file__).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _args(root: Path) -> list[str]:
    return ["warmup", "--aot", "-p", "h200-ep1", "--triton-module", "triton_kernels", "--triton-only",
            "--cache-dir", str(root), "-j", "2"]


def _run_on_a_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdin/stdout/stderr on one pseudo-terminal, as in an interactive shell."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    for name in ("NO_COLOR", "JITCACHE_DEBUG", "CI", "GITHUB_ACTIONS"):  # rich turns animation off under CI
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "jitcache.cli", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError("the CLI wrote nothing for the whole timeout")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_gets_a_progress_bar_with_count_and_eta(warmed):  # noqa: F811
    root, _, _ = warmed
    code, text = _run_on_a_terminal(_args(root.path))
    assert code == 0, text
    plain = ANSI.sub("", text)
    assert "\x1b[" in text                       # drawn for a terminal, not printed as a log
    assert "nvcc" in plain and "ETA" in plain    # the bar's columns
    assert "6/6" in plain                        # ... that reached the end
    assert not re.search(r"^\[\s*\d+/6\] ", plain, re.M)  # no log lines on a terminal
    assert "6 kernels in" in plain               # then the report


def test_a_log_gets_one_line_per_finished_kernel(warmed):  # noqa: F811
    root, _, _ = warmed
    cli = run_cli(*_args(root.path), env={"PYTHONPATH": str(TESTS)})
    assert cli.code == 0, cli.stderr
    lines = [line for line in cli.stderr.splitlines() if re.match(r"\[\d/6\] ", line)]
    assert [line[:5] for line in lines] == [f"[{i}/6]" for i in range(1, 7)]
    assert all(re.fullmatch(r"\[\d/6\] cached triton:\w+ bucket=\d+ \d+\.\d s", line) for line in lines), lines
    assert "\x1b[" not in cli.stderr
