"""Mistakes a newcomer makes, refused before they cost anything: a bare --older-than, a typo'd --cache-dir,
an export into a directory that does not exist, a --max-size that protected entries make unreachable."""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli
from jitcache.errors import UsageError
from jitcache.store.prune import parse_age
from store_fixtures import *  # noqa: F401,F403 (fixtures)

pytestmark = pytest.mark.nvcc


def _tree(root) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


def test_older_than_needs_a_unit(filled_root):
    assert parse_age("90m") == parse_age("90min") == 5400 and parse_age("45s") == 45 and parse_age("12h") == 43200
    with pytest.raises(UsageError, match="a unit is required"):
        parse_age("5")
    before = _tree(filled_root.path)
    r = run_cli("prune", "--cache-dir", str(filled_root.path), "--older-than", "5")
    assert r.code == 2 and r.stdout == ""
    assert r.stderr.startswith("Error: --older-than '5': a unit is required") and "30d, 12h, 90m, 45s" in r.stderr
    assert _tree(filled_root.path) == before


@pytest.mark.parametrize("command", [["inspect"], ["verify"], ["prune", "--max-size", "1G"],
                                     ["export", "-o", "OUT"]])
def test_a_missing_cache_dir_is_an_error_for_commands_that_read(tmp_path, command):
    typo = tmp_path / "cahce"
    argv = [str(tmp_path / "b.tar.zst") if a == "OUT" else a for a in command]
    r = run_cli(*argv, "--cache-dir", str(typo))
    assert r.code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"Error: --cache-dir {typo}: no such directory") and "Hint:" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []          # nothing created, no empty bundle


def test_export_refuses_missing_parent_directories(filled_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("export", "--cache-dir", str(filled_root.path), "-o", "a/b/c.jcb", cwd=tmp_path)
    assert r.code == 2 and "does not exist" in r.stderr and r.stderr.startswith("Error: ")
    assert not (tmp_path / "a").exists()


def test_max_size_unreachable_because_of_kept_entries_says_so(filled_root, test_profile):
    r = run_cli("prune", "--cache-dir", str(filled_root.path), "--max-size", "1K", "--keep-profile",
                test_profile.source, "--format", "json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["max_size_reached"] is False and data["num_protected"] == 16 and data["protected_size"] > 1024
    assert data["size_after"] == data["protected_size"]               # only the Triton entry could go
    assert "Warning: --max-size 1K cannot be reached: 16 entries kept profiles need" in r.stderr
    again = run_cli("prune", "--cache-dir", str(filled_root.path), "--max-size", "10G", "--format", "json")
    assert again.json()["max_size_reached"] is True
