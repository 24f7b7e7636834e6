"""Every `--format json` document carries `"schema": 1` (docs/cache.md), and times in it are ISO 8601 strings.

`warmup --aot` (tests/test_triton_aot.py) and `sources fetch` (tests/test_sources.py) are checked where they run.
"""

from __future__ import annotations

import json
import re

import pytest

from cli_helpers import run_cli


@pytest.mark.parametrize("argv", [
    ["buckets", "-n", "6144"],
    ["profiles", "list"],
    ["profiles", "show", "h200-ep1"],
    ["plan", "-p", "h200-ep1"],
    ["stats", "--cache-dir", "{root}"],
    ["sources", "list", "--cache-dir", "{root}"],
    ["env", "--cache-dir", "{root}"],
    ["inspect", "--cache-dir", "{root}"],
    ["verify", "--cache-dir", "{root}"],
], ids=lambda a: "-".join(a[:2]))
def test_every_json_document_has_schema_1(tmp_path, argv):
    root = tmp_path / "root"
    root.mkdir()
    r = run_cli(*[a.format(root=root) for a in argv], "--format", "json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    assert isinstance(data, dict) and next(iter(data)) == "schema" and data["schema"] == 1


def test_sources_fetched_at_is_iso_time(tmp_path):
    import time

    from jitcache.build.sources import list_sources

    sources = tmp_path / "sources"
    sources.mkdir(parents=True)
    (sources / "deepinfer_ep-2.5.0.tar.gz").write_bytes(b"x")
    (sources / "deepinfer_ep-2.5.0.tar.gz.json").write_text(json.dumps(
        {"project": "deepinfer-ep", "version": "2.5.0", "sha256": "0" * 64, "fetched_at": time.time()}))
    (archive,) = list_sources(sources)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", archive.to_dict()["fetched_at"])
    r = run_cli("sources", "list", "--cache-dir", str(tmp_path), "--format", "json")
    assert r.json()["archives"][0]["fetched_at"] == archive.to_dict()["fetched_at"]
