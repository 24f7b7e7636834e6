"""The built wheel: `cli/` installs as `jitcache.cli` (no bare `cli` package), profiles ship as package data,
and an installed jitcache (not this checkout) finds its built-in profiles and runs its console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_installed_profiles(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("jitcache-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"jitcache", wheel.name.split("-py")[0] + ".dist-info"}
    assert "jitcache/cli/app.py" in names and "jitcache/cache_profiles/h200-ep1.toml" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "jitcache = jitcache.cli.app:main" in entry_points and "jitcache.plugin:register" in entry_points

    # Unpacked on its own (no checkout on the path), it finds the shipped profiles.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import jitcache, sys; from jitcache.planning.profiles import builtin_profile_names; "
            "assert jitcache.__file__.startswith(sys.argv[1]), jitcache.__file__; "
            "print(len(builtin_profile_names()))")
    done = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 8
