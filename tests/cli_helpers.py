"""Run the real `jitcache` console entry point in a subprocess (exit codes, stdout/stderr apart)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict | None = None, cwd=None, timeout: float = 300) -> Result:
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    full_env.pop("JITCACHE_DEBUG", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "jitcache.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)
