"""`jitcache sources`: the Simple API client against a real HTTP index on 127.0.0.1 serving a real tarball."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from cli_helpers import run_cli
from jitcache.errors import ToolchainError, UsageError
from jitcache.build.sources import fetch_sdist, find_sdists, list_sources, parse_requirement, pip_index_url, sources_dir
from jitcache.build.toolchain import locate_deep_ep_headers

HEADER = "#pragma once\n// DeepEP 2.5 dispatch (test stand-in)\n"


def make_sdist(version: str = "2.5.0") -> bytes:
    """A small deepinfer-ep sdist with DeepEP 2.5's header layout and some files the extractor must skip."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        prefix = f"deepinfer_ep-{version}"
        for name, text in ((f"{prefix}/deep_ep/include/deep_ep/impls/ep/dispatch.cuh", HEADER),
                           (f"{prefix}/deep_ep/include/deep_ep/common/compiled.cuh", "#pragma once\n"),
                           (f"{prefix}/setup.py", "raise SystemExit('needs CUDA')\n"),
                           (f"{prefix}/csrc/kernels/ep/dispatch.hpp", "// host code\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Index:
    """A PEP 503/691 index: project pages by name, files under /files/; counts downloads."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.pages: dict[str, list[dict]] = {}
        self.downloads = 0
        self.json = True

    def add(self, project: str, filename: str, data: bytes, sha256: str | None = None) -> None:
        self.files[filename] = data
        self.pages.setdefault(project, []).append(
            {"filename": filename, "url": f"../../files/{filename}",
             "hashes": {"sha256": sha256 or hashlib.sha256(data).hexdigest()}})


@pytest.fixture
def index():
    state = Index()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if parts[0] == "simple" and len(parts) == 2 and parts[1] in state.pages:
                files = state.pages[parts[1]]
                if state.json and "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", ""):
                    body = json.dumps({"meta": {"api-version": "1.0"}, "name": parts[1], "files": files}).encode()
                    kind = "application/vnd.pypi.simple.v1+json"
                else:
                    links = "".join(f'<a href="{f["url"]}#sha256={f["hashes"]["sha256"]}">{f["filename"]}</a><br/>'
                                    for f in files)
                    body = f"<!DOCTYPE html><html><body>{links}</body></html>".encode()
                    kind = "text/html"
            elif parts[0] == "files" and len(parts) == 2 and parts[1] in state.files:
                state.downloads += 1
                body, kind = state.files[parts[1]], "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("use_json", [True, False], ids=["pep691-json", "pep503-html"])
def test_fetch_verifies_and_stores_atomically(tmp_path, index, use_json):
    index.json = use_json
    data = make_sdist()
    index.add("deepinfer-ep", "deepinfer_ep-2.4.0.tar.gz", make_sdist("2.4.0"))
    index.add("deepinfer-ep", "deepinfer_ep-2.5.0.tar.gz", data)
    index.add("deepinfer-ep", "deepinfer_ep-2.5.0-cp311-cp311-linux_x86_64.whl", b"not an sdist")
    report = fetch_sdist("Deepinfer_EP==2.5.0", root_path=tmp_path, index_url=index.url)
    stored = sources_dir(tmp_path) / "deepinfer_ep-2.5.0.tar.gz"
    assert report.status == "fetched" and Path(report.path) == stored and stored.read_bytes() == data
    assert report.sha256 == hashlib.sha256(data).hexdigest() and report.size == len(data)
    assert sorted(p.name for p in stored.parent.iterdir()) == ["deepinfer_ep-2.5.0.tar.gz",
                                                               "deepinfer_ep-2.5.0.tar.gz.json"]  # no .part left
    (archive,) = list_sources(stored.parent)
    assert (archive.version, archive.sha256, archive.project) == ("2.5.0", report.sha256, "deepinfer-ep")
    # fetching again checks the stored bytes and downloads nothing
    assert fetch_sdist("deepinfer-ep==2.5.0", root_path=tmp_path, index_url=index.url).status == "present"
    assert index.downloads == 1


def test_unpinned_takes_the_highest_version(tmp_path, index):
    for version in ("2.4.0", "2.10.0", "2.5.0"):
        index.add("deepinfer-ep", f"deepinfer_ep-{version}.tar.gz", make_sdist(version))
    assert fetch_sdist("deepinfer-ep", root_path=tmp_path, index_url=index.url).filename == "deepinfer_ep-2.10.0.tar.gz"


def test_sha256_mismatch_stores_nothing(tmp_path, index):
    index.add("deepinfer-ep", "deepinfer_ep-2.5.0.tar.gz", make_sdist(), sha256="0" * 64)
    with pytest.raises(ToolchainError, match=r"sha256 [0-9a-f]{64} does not match the index's 0{64}; nothing was stored"):
        fetch_sdist("deepinfer-ep==2.5.0", root_path=tmp_path, index_url=index.url)
    assert list(sources_dir(tmp_path).iterdir()) == []


def test_sha256_pin_refuses_other_bytes_and_caches_offline(tmp_path, index):
    """A pin the index does not serve downloads nothing; once stored, the pinned archive needs no index."""
    data = make_sdist()
    pin = hashlib.sha256(data).hexdigest()
    index.add("deepinfer-ep", "deepinfer_ep-2.5.0.tar.gz", data)
    with pytest.raises(ToolchainError, match=r"lists no sdist with the pinned sha256 f{64}"):
        fetch_sdist("deepinfer-ep==2.5.0", root_path=tmp_path, index_url=index.url, sha256="f" * 64)
    assert index.downloads == 0 and not sources_dir(tmp_path).exists()
    with pytest.raises(UsageError, match="expected 64 hex digits"):
        fetch_sdist("deepinfer-ep==2.5.0", root_path=tmp_path, index_url=index.url, sha256="abc")
    assert fetch_sdist("deepinfer-ep==2.5.0", root_path=tmp_path, index_url=index.url, sha256=pin).status == "fetched"
    # the index gone: the pinned archive is found by its bytes, the index never asked
    again = run_cli("sources", "fetch", "deepinfer-ep==2.5.0", "--sha256", pin.upper(), "--cache-dir", str(tmp_path),
                    "--index-url", "http://127.0.0.1:9/simple/", "--format", "json")
    assert again.code == 0, again.stderr
    assert again.json()["status"] == "present" and again.json()["sha256"] == pin and index.downloads == 1
    assert again.json()["schema"] == 1


def test_missing_package_and_missing_version(tmp_path, index):
    with pytest.raises(ToolchainError, match=r"deepinfer-ep: no such project on the index .*HTTP 404"):
        fetch_sdist("deepinfer-ep==2.5.0", root_path=tmp_path, index_url=index.url)
    index.add("deepinfer-ep", "deepinfer_ep-2.4.0.tar.gz", make_sdist("2.4.0"))
    with pytest.raises(ToolchainError, match="lists no sdist .* of version 2.5.0"):
        fetch_sdist("deepinfer-ep==2.5.0", root_path=tmp_path, index_url=index.url)
    with pytest.raises(UsageError, match="NAME==VERSION"):
        parse_requirement("deepinfer-ep>=2.5")
    assert not sources_dir(tmp_path).exists()


def test_index_url_order(monkeypatch):
    class Done:
        returncode, stdout = 0, "global.index-url='http://127.0.0.1:9/g/'\n:env:.index-url='http://127.0.0.1:9/e/'\n"

    run = lambda *a, **k: Done()  # noqa: E731 - pip's own output, without running pip
    assert pip_index_url("http://x/") == "http://x/"
    assert pip_index_url(environ={"PIP_INDEX_URL": "http://127.0.0.1:9/env/"}, run=run) == "http://127.0.0.1:9/env/"
    assert pip_index_url(environ={}, run=run) == "http://127.0.0.1:9/e/"
    Done.stdout = "global.index-url='http://127.0.0.1:9/g/'\n"
    assert pip_index_url(environ={}, run=run) == "http://127.0.0.1:9/g/"
    Done.stdout = ""
    from pip._internal.models.index import PyPI
    assert pip_index_url(environ={}, run=run) == PyPI.simple_url


def test_fetched_sdist_is_where_the_toolchain_finds_2_5_headers(tmp_path, index):
    index.add("deepinfer-ep", "deepinfer_ep-2.5.0.tar.gz", make_sdist())
    fetch_sdist(root_path=tmp_path, index_url=index.url)
    directory = sources_dir(tmp_path)
    assert find_sdists(directory) == (directory / "deepinfer_ep-2.5.0.tar.gz",)
    found = locate_deep_ep_headers(api="2.5", sources_dir=directory)
    assert (found.api, found.origin) == ("2.5", "sources")
    try:
        locate_deep_ep_headers(api="2.1")
    except ToolchainError:
        assert locate_deep_ep_headers(api="auto", sources_dir=directory) == found     # the only version found
    else:                                                                            # both: asks, picks none
        with pytest.raises(UsageError, match="headers of two DeepEP versions found") as info:
            locate_deep_ep_headers(api="auto", sources_dir=directory)
        assert "--deep-ep 2.5 or --deep-ep 2.1" in info.value.hint
    assert (found.include_root / "deep_ep/impls/ep/dispatch.cuh").read_text() == HEADER
    assert not (found.include_root / "setup.py").exists() and found.include_root.is_relative_to(directory)
    assert "fetched sdist" in found.describe()
    # api 2.1 skips the sdist (and finds the 2.1 wheel if installed); an empty sources dir with api 2.5 says
    # both ways out
    with pytest.raises(ToolchainError) as info:
        locate_deep_ep_headers(api="2.5", sources_dir=tmp_path / "empty")
    assert "jitcache sources fetch" in info.value.hint and "tokenspeed-deepep" in info.value.hint


def test_cli_fetch_then_list(tmp_path, index):
    index.add("deepinfer-ep", "deepinfer_ep-2.5.0.tar.gz", make_sdist())
    env = {"PIP_INDEX_URL": index.url}
    fetched = run_cli("sources", "fetch", "--cache-dir", str(tmp_path), "--format", "json", env=env)
    assert fetched.code == 0, fetched.stderr
    assert fetched.json()["status"] == "fetched" and fetched.json()["index_url"] == index.url
    listed = run_cli("sources", "list", "--cache-dir", str(tmp_path), env=env)
    assert listed.code == 0 and "deepinfer_ep-2.5.0.tar.gz" in listed.stdout and "2.5.0" in listed.stdout
    missing = run_cli("sources", "fetch", "nothing-here==1.0", "--cache-dir", str(tmp_path), env=env)
    assert missing.code == 1 and "Error: nothing-here: no such project on the index" in missing.stderr


@pytest.mark.nvcc
def test_fresh_machine_fetch_then_warmup_aot(tmp_path, index, deep_ep25_sdist):
    """The README's path: `sources fetch` from the index, then `warmup --aot --deep-ep 2.5` finds its headers.

    The index serves the real deepinfer-ep 2.5.0 sdist (the pinned one, see aot_fixtures); the profile is
    h200-ep1 cut to one bucket so that the test compiles five real kernels (four families + the buffer's barrier).
    With DeepEP 2.1's headers installed too (the `aot` extra), a plain `warmup --aot` asks which DeepEP serves.
    Not a terminal: one progress line per finished kernel on stderr, and a report table within 80 columns.
    """
    SDIST = deep_ep25_sdist
    index.add("deepinfer-ep", SDIST.name, SDIST.read_bytes())
    profile = tmp_path / "one-bucket.toml"
    text = (Path(__file__).resolve().parents[1] / "cache_profiles" / "h200-ep1.toml").read_text()
    profile.write_text(text.replace("max_num_batched_tokens = 8192", "max_num_batched_tokens = 1"))
    env = {"PIP_INDEX_URL": index.url, "JITCACHE_HOME": str(tmp_path / "home"), "COLUMNS": "80"}
    assert run_cli("sources", "fetch", env=env).code == 0
    cache = tmp_path / "home" / "deep_ep" / "cache"
    try:
        locate_deep_ep_headers(api="2.1")
        both = True
    except ToolchainError:
        both = False
    if both:
        ask = run_cli("warmup", "--aot", "-p", str(profile), "-j", "2", env=env)
        assert ask.code == 2 and ask.stderr.startswith("Error: headers of two DeepEP versions found: DeepEP 2.5")
        assert "--deep-ep 2.5 or --deep-ep 2.1" in ask.stderr and not cache.exists()

    warm = run_cli("warmup", "--aot", "--deep-ep", "2.5", "-p", str(profile), "-j", "2", env=env)
    assert warm.code == 0, warm.stderr
    err = warm.stderr.splitlines()
    assert err[0].startswith("one-bucket: 5 kernels (4 variants + the buffer's barrier), DeepEP 2.5 rules")
    assert err[1] == f"DeepEP 2.5 headers from fetched sdist {tmp_path / 'home' / 'sources' / SDIST.name}"
    progress = err[2:]
    assert [line.split("]")[0] for line in progress] == [f"[{i}/5" for i in range(1, 6)], warm.stderr
    assert all(" compiled " in line for line in progress) and any("barrier" in line for line in progress)
    assert all(len(line) <= 80 for line in warm.stdout.splitlines()), warm.stdout
    assert "5 kernels in " in warm.stdout and "5 compiled" in warm.stdout and "(2.5 rules and digest)" in warm.stdout
    assert "one-bucket: AOT warmup, DeepEP 2.5" in warm.stdout
    names = sorted(p.name for p in cache.iterdir())
    assert all(name.split(".")[1][:8] in warm.stdout for name in names)       # the table's digest column

    again = run_cli("warmup", "--aot", "--deep-ep", "2.5", "-p", str(profile), "-j", "2", "--format", "json",
                    env=env)
    assert again.code == 0, again.stderr
    report = again.json()
    assert report["deep_ep_api"] == "2.5" and report["totals"]["cached"] == 5 and report["num_variants"] == 5
    assert sorted(r["entry"] for r in report["results"]) == names              # full names in the JSON
    assert sorted(p.split(".")[0] for p in names) == [
        "barrier", "combine", "combine_reduce_epilogue", "dispatch", "dispatch_copy_epilogue"]
    assert all((cache / p / ".committed").is_file() and (cache / p / "meta.json").is_file() for p in names)
    # inspect says which DeepEP its coverage is about
    seen = run_cli("inspect", "-p", str(profile), env=env)
    assert "(DeepEP 2.5: 5)" in seen.stdout and "Profile one-bucket, DeepEP 2.5: all 5 kernels" in seen.stdout
