"""Fetch DeepEP source archives (sdists) through a package index, for their headers.

DeepEP 2.5's headers ship only in the ``deepinfer-ep`` sdist, and ``pip
download`` cannot fetch it on a machine without CUDA (pip prepares the sdist's
metadata, which runs its build). jitcache only needs the archive's bytes, so it
asks the index itself, through the standard Simple Repository API (PEP 503
HTML, PEP 691 JSON), of the index pip is configured with:

- the index: ``--index-url``, else ``$PIP_INDEX_URL``, else pip's configuration
  (``python -m pip config list``: ``index-url`` of ``:env:``, ``download``,
  ``global``), else pip's own default (``pip._internal.models.index.PyPI``);
- the file: the sdist (``.tar.gz``) of the pinned version, else of the highest
  version the index lists; its sha256 comes from the index (JSON ``hashes`` or
  the link's ``#sha256=`` fragment) and is checked before anything is stored;
- the store: ``<cache root>/sources/<file>`` written to an adjacent temporary
  file, fsynced, then renamed, with a ``<file>.json`` sidecar (url, sha256,
  index) written the same way after it. A mismatch or a failed download leaves
  nothing behind.

:func:`jitcache.build.toolchain.resolve_toolchain` looks here by default, so
``jitcache sources fetch`` then ``jitcache warmup --aot`` work on a fresh machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

from jitcache import settings
from jitcache.adapters.headers import (DEFAULT_REQUIREMENT, SourceArchive, _version_key, _version_of, find_sdists,
                                       list_sources, normalize_name, sources_dir)
from jitcache.errors import ToolchainError, UsageError
from jitcache.store.publish import atomic_write_text, fsync_dir

__all__ = ["DEFAULT_REQUIREMENT", "FetchReport", "IndexFile", "SourceArchive", "fetch_sdist", "find_sdists",
           "index_files", "list_sources", "pip_index_url", "sources_dir"]

_JSON = "application/vnd.pypi.simple.v1+json"
_ACCEPT = f"{_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
_CHUNK = 1 << 20


def parse_requirement(requirement: str) -> tuple[str, str | None]:
    """``name`` or ``name==version`` -> ``(normalised name, version or None)``."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*", requirement)
    if match is None:
        raise UsageError(f"{requirement!r}: expected NAME or NAME==VERSION (e.g. {DEFAULT_REQUIREMENT})")
    return normalize_name(match.group(1)), match.group(2)


def pip_index_url(explicit: str | None = None, *, environ: dict[str, str] | None = None,
                  run: Callable[..., Any] = subprocess.run) -> str:
    """The Simple API base URL pip would use (see the module docstring for the order)."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    if env.get("PIP_INDEX_URL"):
        return env["PIP_INDEX_URL"].split()[0]
    try:
        done = run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
                   env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        listed = done.stdout if done.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    found: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".index-url"):
            found[key.rsplit(".", 1)[0]] = value.strip().strip("'\"").split()[0] if value.strip() else ""
    for section in (":env:", "download", "global"):
        if found.get(section):
            return found[section]
    from pip._internal.models.index import PyPI  # noqa: PLC0415 - pip's own default, no host written here

    return PyPI.simple_url


@dataclass(frozen=True)
class IndexFile:
    """One file a project page lists."""

    filename: str
    url: str
    sha256: str | None
    version: str | None

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def _request(url: str, accept: str | None = None):
    headers = {"User-Agent": "jitcache (simple-api client)"}
    if accept:
        headers["Accept"] = accept
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                  timeout=settings.index_timeout())


def index_files(name: str, index_url: str) -> tuple[IndexFile, ...]:
    """The files of project ``name`` on the index (PEP 691 JSON, or PEP 503 HTML)."""
    project = normalize_name(name)
    page = urllib.parse.urljoin(index_url.rstrip("/") + "/", f"{project}/")
    try:
        with _request(page, _ACCEPT) as response:
            content_type = response.headers.get("Content-Type", "")
            body = response.read()
            base = response.geturl()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ToolchainError(f"{project}: no such project on the index {index_url} (HTTP 404 for {page})",
                                 hint="check the name, or pass --index-url (default: pip's configured index)") from None
        raise ToolchainError(f"{page}: the index answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ToolchainError(f"{page}: cannot reach the index ({getattr(exc, 'reason', exc)})",
                             hint="check the network, or pass --index-url") from None
    files = []
    if _JSON in content_type or body.lstrip().startswith(b"{"):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ToolchainError(f"{page}: the index sent invalid JSON ({exc})") from None
        for item in data.get("files", []):
            filename = item.get("filename", "")
            files.append(IndexFile(filename, urllib.parse.urljoin(base, item.get("url", "")),
                                   (item.get("hashes") or {}).get("sha256"), _version_of(filename, project)))
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", errors="replace"))
        for href, text in parser.links:
            url, _, fragment = urllib.parse.urljoin(base, href).partition("#")
            filename = text or urllib.parse.unquote(url.rsplit("/", 1)[-1])
            sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            files.append(IndexFile(filename, url, sha, _version_of(filename, project)))
    return tuple(files)


@dataclass(frozen=True)
class FetchReport:
    """What ``jitcache sources fetch`` did."""

    requirement: str
    index_url: str
    filename: str
    path: str
    url: str
    sha256: str
    size: int
    status: str        # fetched | present
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pinned_present(directory: Path, name: str, version: str | None, sha256: str) -> Path | None:
    """An archive of ``name`` (``version``) already in ``directory`` whose bytes hash to ``sha256``."""
    for archive in list_sources(directory):
        path = Path(archive.path)
        if (_version_of(archive.filename, name) == version or version is None) and _sha256_file(path) == sha256:
            return path
    return None


def fetch_sdist(requirement: str = DEFAULT_REQUIREMENT, *, root_path: str | Path,
                index_url: str | None = None, sha256: str | None = None) -> FetchReport:
    """Download ``requirement``'s sdist into ``<root_path>/sources/``, sha256 checked; see the module docstring.

    ``sha256`` pins the archive: the index must list a file with that hash (else nothing is downloaded), and an
    archive already stored with that hash is used without asking the index at all (a cache: offline reruns).
    """
    start = time.perf_counter()
    name, version = parse_requirement(requirement)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise UsageError(f"--sha256 {sha256!r}: expected 64 hex digits")
        present = _pinned_present(sources_dir(root_path), name, version, sha256)
        if present is not None:
            return FetchReport(requirement=requirement, index_url="", filename=present.name, path=str(present),
                               url="", sha256=sha256, size=present.stat().st_size, status="present",
                               seconds=time.perf_counter() - start)
    index = pip_index_url(index_url)
    sdists = [f for f in index_files(name, index) if f.is_sdist and f.version]
    if version is not None:
        sdists = [f for f in sdists if f.version == version]
    if not sdists:
        raise ToolchainError(f"{requirement}: the index {index} lists no sdist (.tar.gz) "
                             + (f"of version {version}" if version else "for it"),
                             hint="check the version (the index page lists what exists), or pass --index-url")
    if sha256 is not None:
        pinned = [f for f in sdists if (f.sha256 or "").lower() == sha256]
        if not pinned:
            raise ToolchainError(f"{requirement}: the index {index} lists no sdist with the pinned sha256 {sha256} "
                                 "(it lists " + (", ".join(f"{f.filename} sha256 {f.sha256}" for f in sdists)) + ")",
                                 hint="the index serves other bytes than the pin: check the pin or the index")
        sdists = pinned
    chosen = max(sdists, key=lambda f: _version_key(f.version or ""))
    if not chosen.sha256 or not re.fullmatch(r"[0-9a-f]{64}", chosen.sha256):
        raise ToolchainError(f"{chosen.url}: the index gives no sha256 for it; jitcache does not store unverified "
                             "archives", hint="use an index that publishes hashes (PEP 503 #sha256= or PEP 691 hashes)")
    directory = sources_dir(root_path)
    final = directory / chosen.filename
    meta = {"requirement": requirement, "project": name, "version": chosen.version, "filename": chosen.filename,
            "url": chosen.url, "sha256": chosen.sha256, "index_url": index}

    def report(status: str) -> FetchReport:
        return FetchReport(requirement=requirement, index_url=index, filename=chosen.filename, path=str(final),
                           url=chosen.url, sha256=chosen.sha256 or "", size=final.stat().st_size, status=status,
                           seconds=time.perf_counter() - start)

    if final.is_file() and _sha256_file(final) == chosen.sha256:
        return report("present")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{chosen.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with _request(chosen.url) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                raise ToolchainError(f"{chosen.url}: download failed ({getattr(exc, 'reason', exc)})") from None
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != chosen.sha256:
            raise ToolchainError(f"{chosen.url}: sha256 {digest.hexdigest()} does not match the index's "
                                 f"{chosen.sha256}; nothing was stored",
                                 hint="retry; if it persists the index or a proxy is serving other bytes")
        os.replace(tmp, final)
        fsync_dir(directory)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_text(directory / f"{chosen.filename}.json", json.dumps({**meta, "fetched_at": time.time()},
                                                                        indent=2) + "\n")
    return report("fetched")
