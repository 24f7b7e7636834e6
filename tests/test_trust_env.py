"""Issue 14, case 1: `eval "$(jitcache env ...)"` sets exactly the paths given, in bash and in sh.

The real console script runs in a subprocess with a narrow terminal
(``COLUMNS=80``, where rich used to wrap the line), and its output is
evaluated by real ``bash`` and ``sh`` (dash here), which print the variables
back NUL-separated. Every value must come back byte for byte, or the command
must refuse with ``Error:`` and exit 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

SHELLS = [s for s in ("bash", "sh") if shutil.which(s)]

#: Directory names an attacker or a careless user can give (each under tmp_path).
NASTY = {
    "space": "with space",
    "dollar_paren": "$(touch PWNED)",
    "backticks": "`touch PWNED`",
    "single_quote": "it's",
    "double_quote": 'say "hi"',
    "tab": "a\tb",
    "newline": "line1\nline2",
    "backslash": "back\\slash",
    "glob_and_semicolon": "*;echo hi;&|<>",
    "dash_start": "-n -e",
    "long": "/".join(["x" * 59] * 5),  # 300 characters in five components
    "unicode": "kernels-ünï",
}


def _env_output(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("JITCACHE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "jitcache.cli", "env", *args], capture_output=True, env=env,
                          cwd=cwd, timeout=120)


def _eval_in(shell: str, script_output: bytes, cwd) -> list[bytes]:
    """Run ``eval "$OUT"`` in ``shell`` and print both variables NUL-terminated."""
    program = 'eval "$JITCACHE_ENV_OUT"; printf "%s\\0" "$EP_JIT_CACHE_DIR" "$TRITON_CACHE_DIR"; ' \
              'env | grep -c "^EP_JIT_CACHE_DIR=" >/dev/null && printf "exported\\0"'
    env = {"PATH": os.environ["PATH"], "JITCACHE_ENV_OUT": script_output.decode("utf-8", "surrogateescape")}
    done = subprocess.run([shell, "-c", program], capture_output=True, env=env, cwd=cwd, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split(b"\0")[:-1]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", sorted(NASTY))
def test_env_round_trips_through_eval(tmp_path, shell, name):
    root = tmp_path / NASTY[name]
    read_only = tmp_path / ("ro-" + NASTY[name])
    done = _env_output(["--cache-dir", str(root), "--read-only-root", str(read_only)], tmp_path)
    assert done.returncode == 0, done.stderr
    values = _eval_in(shell, done.stdout, tmp_path)
    assert values[0] == os.fsencode(f"{root}/deep_ep:{read_only}")
    assert values[1] == os.fsencode(f"{root}/triton")
    assert values[2:] == [b"exported"]  # the variable is exported, not just set
    assert not (tmp_path / "PWNED").exists()  # nothing in a path was ever run


def test_env_output_is_only_export_lines(tmp_path):
    done = _env_output(["--cache-dir", str(tmp_path / "/".join(["y" * 99] * 3))], tmp_path)
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2 and all(line.startswith("export ") for line in lines)


def test_env_refuses_a_name_longer_than_the_filesystem_allows(tmp_path):
    done = _env_output(["--cache-dir", str(tmp_path / ("z" * 300))], tmp_path)
    assert done.returncode != 0 and done.stdout == b""
    assert b"Error:" in done.stderr and b"Traceback" not in done.stderr


def test_env_refuses_a_path_it_cannot_write_as_text(tmp_path):
    if sys.platform != "linux":
        pytest.skip("needs a filesystem that takes arbitrary bytes in names")
    bad = os.fsencode(str(tmp_path)) + b"/not-utf8-\xff"
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    done = subprocess.run([os.fsencode(sys.executable), b"-m", b"jitcache.cli", b"env", b"--cache-dir", bad],
                          capture_output=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert b"Error:" in done.stderr and b"Traceback" not in done.stderr and done.stdout == b""
