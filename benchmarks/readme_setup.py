"""The README's set-up as a new user runs it: a fresh clone, a new venv, the first command exactly as printed.

    python benchmarks/readme_setup.py [--repo .] [--tests] [-o results/cpu-x86_64-2core/readme_setup.json]

Clones the repository's HEAD into a temporary directory with nothing beside it, takes the two ```bash blocks
of the README's "Set-up" section, runs the first (install + `jitcache warmup --aot` on its defaults) with bash
in the clone and records its exit status, wall time, the last lines it printed and what the cache holds after;
with ``--tests`` the second (the test command) too. Nothing is assumed installed but git, python3 and nvcc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_commands(readme: str) -> list[str]:
    start = readme.index("## Set-up")
    end = readme.find("\n## ", start + 1)
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", readme[start:end], re.S)]


def run(command: str, cwd: Path, env: dict[str, str]) -> dict:
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
    return {"command": command, "rc": done.returncode, "seconds": round(time.monotonic() - started, 1),
            "stdout_tail": done.stdout.splitlines()[-25:], "stderr_tail": done.stderr.splitlines()[-25:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--tests", action="store_true", help="also run the second command (the test suite)")
    parser.add_argument("-o", "--output", type=Path,
                        default=REPO / "benchmarks" / "results" / "cpu-x86_64-2core" / "readme_setup.json")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="jitcache-readme-") as tmp:
        clone, home = Path(tmp) / "jitcache", Path(tmp) / "home"
        subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
        home.mkdir()
        # A new user's environment: their own HOME (so the default cache root starts empty), no project variables.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JITCACHE_", "VIRTUAL_ENV", "PYTHON"))}
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
        commands = setup_commands((clone / "README.md").read_text())
        steps = [run(commands[0], clone, env)]
        if args.tests and steps[0]["rc"] == 0:
            steps.append(run(commands[1], clone, env))
        inspect = subprocess.run([str(clone / ".venv" / "bin" / "jitcache"), "inspect", "--format", "json"],
                                 cwd=clone, env=env, capture_output=True, text=True)
        cache = json.loads(inspect.stdout) if inspect.returncode == 0 else {"rc": inspect.returncode,
                                                                             "stderr": inspect.stderr}
    result = {
        "schema": 1, "benchmark": "readme_setup", "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_avg_at_end": os.getloadavg()},
        "steps": steps,
        "cache_after": {"entries": len(cache.get("entries", [])), "summary": cache.get("summary"),
                        "root": cache.get("root")} if "entries" in cache else cache,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for step in steps:
        print(f"rc={step['rc']} {step['seconds']} s: {step['command']}")
    return 0 if all(step["rc"] == 0 for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
