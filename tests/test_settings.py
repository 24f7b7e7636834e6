"""Every JITCACHE_* variable is read through jitcache.settings, when needed, and a bad value names itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import run_cli
from jitcache import settings
from jitcache.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def test_every_variable_the_code_reads_is_a_setting_and_in_the_docs_table():
    named = {s.name for s in settings.SETTINGS}
    used = set()
    for path in [*(REPO / "jitcache").rglob("*.py"), *(REPO / "cli").rglob("*.py")]:
        used |= set(re.findall(r"JITCACHE_[A-Z_]+", path.read_text()))
    assert used <= named, f"read but not in jitcache.settings.SETTINGS: {sorted(used - named)}"
    table = (REPO / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `(JITCACHE_[A-Z_]+)` \|", table, flags=re.M))
    assert rows == named


def test_only_the_settings_module_reads_jitcache_variables_from_the_environment():
    reads = re.compile(r"""environ(?:\.get)?\(?\[?["']JITCACHE_""")
    offenders = [str(p.relative_to(REPO)) for p in [*(REPO / "jitcache").rglob("*.py"), *(REPO / "cli").rglob("*.py")]
                 if p.name != "settings.py" and reads.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("name, value, read", [
    ("JITCACHE_ENTRY_LOCK_TIMEOUT", "abc", settings.entry_lock_timeout),
    ("JITCACHE_ENTRY_LOCK_TIMEOUT", "-1", settings.entry_lock_timeout),
    ("JITCACHE_INDEX_TIMEOUT", "0", settings.index_timeout),
    ("JITCACHE_LOCK_TIMEOUT", "nan", lambda: settings.lock_timeout(600.0)),
    ("JITCACHE_IMPORT_MAX_BYTES", "1e9", lambda: settings.import_max_bytes(1)),
    ("JITCACHE_STATS_INTERVAL", "soon", lambda: settings.stats_interval(60.0)),
    ("JITCACHE_STATS", "maybe", settings.stats_enabled),
    ("JITCACHE_STRICT", "2", settings.strict),
    ("JITCACHE_REMOTE", "ftp://store/jitcache", settings.remote),
])
def test_a_bad_value_is_a_usage_error_naming_the_variable_and_the_value(monkeypatch, name, value, read):
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as caught:
        read()
    assert f"{name}={value!r}" in str(caught.value)
    assert caught.value.exit_code == 2 and isinstance(caught.value, ValueError)


def test_values_are_read_at_each_call(monkeypatch):
    monkeypatch.delenv("JITCACHE_ENTRY_LOCK_TIMEOUT", raising=False)
    assert settings.entry_lock_timeout() == 1800.0
    monkeypatch.setenv("JITCACHE_ENTRY_LOCK_TIMEOUT", "2.5")
    assert settings.entry_lock_timeout() == 2.5
    monkeypatch.setenv("JITCACHE_STATS", "Off")
    assert settings.stats_enabled() is False
    monkeypatch.setenv("JITCACHE_STRICT", "yes")
    assert settings.strict() is True
    for url in ("s3://bucket/prefix", "gs://bucket", "https://cache.example/j", "/mnt/nfs/jitcache"):
        monkeypatch.setenv("JITCACHE_REMOTE", url)
        assert settings.remote() == url


def test_no_module_reads_a_variable_at_import():
    code = "import pkgutil, importlib, jitcache; [importlib.import_module(m.name) for m in " \
           "pkgutil.walk_packages(jitcache.__path__, 'jitcache.') if '.cli' not in m.name]; print('ok')"
    env = {"JITCACHE_ENTRY_LOCK_TIMEOUT": "abc", "JITCACHE_INDEX_TIMEOUT": "abc", "JITCACHE_LOCK_TIMEOUT": "abc",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_cli_says_which_variable_is_wrong_instead_of_a_traceback(tmp_path):
    done = run_cli("warmup", "--aot", "--cache-dir", str(tmp_path / "root"),
                   env={"JITCACHE_ENTRY_LOCK_TIMEOUT": "abc"})
    assert done.code == 2
    assert "Error: JITCACHE_ENTRY_LOCK_TIMEOUT='abc': not a number of seconds" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "root").exists()  # nothing was created


def test_a_bad_remote_url_in_the_environment_names_the_variable(tmp_path):
    done = run_cli("pull", "-p", "h200-ep1", "--cache-dir", str(tmp_path / "root"),
                   env={"JITCACHE_REMOTE": "ftp://store/jitcache"})
    assert done.code == 2, done.stderr
    assert done.stderr.startswith("Error: JITCACHE_REMOTE='ftp://store/jitcache': not a store URL")
    assert not (tmp_path / "root").exists()
