"""The README's set-up is two copyable commands, its test command is what `.ci/run` runs (CPU torch named
explicitly), and `.ci/run` needs nothing beside the clone: it sets CI itself and refuses to run without nvcc."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_setup_is_two_one_line_commands_and_ci_runs_the_same_install():
    blocks = re.findall(r"```bash\n(.*?)```", _section("Set-up"), re.S)
    assert len(blocks) == 2 and all(b.count("\n") == 1 for b in blocks), blocks
    install_tests = blocks[1].strip()
    assert "'torch==2.13.0+cpu' --extra-index-url https://download.pytorch.org/whl/cpu" in install_tests
    ci = (REPO / ".ci" / "run").read_text()
    pip_line = install_tests.split(" && ")[0]
    # CI's machines hold the CPU wheel on disk and reach no other index (.ci/run says why it leaves the URL out)
    assert pip_line.replace(".venv/bin/pip install", ".venv/bin/pip install -q").replace(
        " --extra-index-url https://download.pytorch.org/whl/cpu", "") in ci
    assert "export CI=true" in ci and "command -v nvcc" in ci and "../" not in ci
    assert 'sources fetch "$requirement" --sha256 "$sha256"' in ci


def test_ci_run_refuses_without_nvcc(tmp_path):
    """Run a copy of .ci/run (it would recreate .venv where it lies) with a PATH that has no nvcc."""
    checkout, bin_dir = tmp_path / "checkout", tmp_path / "bin"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", checkout / ".ci" / "run")
    bin_dir.mkdir()
    for tool in ("dirname", "python3"):                  # what the script may reach before its nvcc check
        os.symlink(shutil.which(tool), bin_dir / tool)
    done = subprocess.run([shutil.which("bash"), str(checkout / ".ci" / "run")], capture_output=True, text=True,
                          timeout=60, env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Error: nvcc is not on PATH") and "Hint:" in done.stderr
    assert sorted(p.name for p in checkout.iterdir()) == [".ci"]     # nothing created: no venv
