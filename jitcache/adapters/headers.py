"""This machine's DeepEP headers and nvcc, found without importing deep_ep (it needs a GPU driver).

- nvcc (:func:`find_nvcc`): ``--nvcc``, else ``nvcc`` on PATH, ``$CUDA_HOME/bin/nvcc``,
  ``/usr/local/cuda/bin/nvcc``, or the ``nvidia-cuda-nvcc`` package's binary; :func:`nvcc_version`
  is its ``--version`` text, which enters DeepEP's entry names;
- DeepEP headers (:func:`locate_deep_ep_headers`): ``--deep-ep-include``, else, per adapter
  the profile's ``api`` allows (in the registry's order), an installed ``deep_ep`` package of
  that version, then (for a version whose headers ship in an sdist) an sdist fetched by
  ``jitcache sources fetch`` (``<cache root>/sources/``, only ``deep_ep/include`` extracted);
  packages are located with ``importlib.util.find_spec``, which does not run them. With
  ``"auto"`` and headers of two versions found, it refuses (a :class:`~jitcache.errors.UsageError`
  asking for ``--deep-ep``) rather than pick one;
- the fetched sdists themselves (:func:`list_sources`, :func:`find_sdists`); fetching them is
  :mod:`jitcache.build.sources`.

Header discovery is the adapters' (each recognises its own headers); the build
toolchain (:mod:`jitcache.build.toolchain`), the store's bundle fingerprints and
the serving DeepEP's names (:mod:`.serving`) all ask here.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitcache import settings
from jitcache.adapters.registry import ADAPTERS, adapter_for_headers, adapters_for
from jitcache.errors import ToolchainError, ToolchainOptionError, UsageError
from jitcache.types import DeepEPVersion

__all__ = ["DEFAULT_REQUIREMENT", "HeaderSource", "SourceArchive", "deep_ep_api_of", "extract_sdist_headers",
           "find_deep_ep_include", "find_nvcc", "find_sdists", "list_sources", "locate_deep_ep_headers",
           "normalize_name", "nvcc_version", "sources_dir"]

#: What ``jitcache sources fetch`` fetches without an argument: the DeepEP whose rules jitcache carries.
DEFAULT_REQUIREMENT = next(a.sdist_requirement for a in ADAPTERS if a.sdist_requirement)


def sources_dir(root_path: str | Path) -> Path:
    """Where fetched archives live under a jitcache root."""
    return Path(root_path) / "sources"


def normalize_name(name: str) -> str:
    """PEP 503 normalisation: ``Deepinfer_EP`` -> ``deepinfer-ep``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_of(filename: str, name: str) -> str | None:
    stem = re.sub(r"\.(tar\.gz|zip|whl|tar\.bz2)$", "", filename)
    if filename.endswith(".whl"):
        parts = stem.split("-")
        return parts[1] if len(parts) > 1 else None
    prefix = re.sub(r"[-_.]+", "[-_.]", re.escape(name).replace(r"\-", "-"))
    match = re.match(rf"(?i){prefix}-(.+)$", stem)
    return match.group(1) if match else None


def _version_key(version: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


def _site_dirs() -> list[Path]:
    return [Path(p) for p in sys.path if p and Path(p).is_dir()]


def find_nvcc(explicit: str | Path | None = None) -> Path:
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToolchainOptionError(f"--nvcc {path}: not an executable file")
        return path
    candidates: list[Path] = []
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(Path(on_path))
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]) / "bin" / "nvcc")
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for site in _site_dirs():
        candidates += [site / "nvidia" / "cuda_nvcc" / "bin" / "nvcc", site / "nvidia" / "cu13" / "bin" / "nvcc"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ToolchainError("nvcc not found (not on PATH, not in $CUDA_HOME/bin or /usr/local/cuda/bin)",
                         hint="install the CUDA toolkit (nvcc >= 12.9) or pass --nvcc PATH")


def nvcc_version(nvcc: Path) -> str:
    """The full output of ``nvcc --version`` (stdout then stderr, as DeepJIT's popen with 2>&1 reads it)."""
    try:
        done = subprocess.run(f"{nvcc} --version 2>&1", shell=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"{nvcc} --version failed: {exc}") from None
    if done.returncode != 0 or "release" not in done.stdout:
        raise ToolchainError(f"{nvcc} --version failed (exit {done.returncode}): {done.stdout.strip()[:300]}")
    return done.stdout


def deep_ep_api_of(include_root: Path) -> DeepEPVersion | None:
    """The DeepEP version of the headers under ``include_root/deep_ep`` (its adapter recognises them), else None."""
    found = adapter_for_headers(include_root)
    return None if found is None else found.version


def extract_sdist_headers(tarball: Path, into: Path | None = None) -> Path:
    """Unpack only ``*/deep_ep/include/`` of a DeepEP sdist (e.g. deepinfer_ep-2.5.0.tar.gz); returns the include root.

    The result is cached by the tarball's name and size under ``into`` (default:
    ``$JITCACHE_HOME``-style ``~/.cache/jitcache/headers``) and published by one rename.
    """
    import hashlib
    import tarfile
    import tempfile

    base = into or settings.default_root().parent / "jitcache-headers"
    stamp = hashlib.sha256(f"{tarball.name}:{tarball.stat().st_size}".encode()).hexdigest()[:12]
    target = base / f"{tarball.name.split('.tar')[0]}-{stamp}"
    if deep_ep_api_of(target):
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".extract-"))
    try:
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if "deep_ep" in parts and parts[parts.index("deep_ep") + 1:parts.index("deep_ep") + 2] == ["include"]:
                    rel = parts[parts.index("deep_ep") + 2:]
                    if not rel or ".." in rel or not member.isfile():
                        continue
                    out = tmp.joinpath(*rel)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    out.write_bytes(source.read() if source else b"")
        if not deep_ep_api_of(tmp):
            raise ToolchainError(f"{tarball}: no deep_ep/include/ with DeepEP headers in this archive")
        try:
            os.rename(tmp, target)
        except OSError:
            if not deep_ep_api_of(target):
                raise
    except (OSError, tarfile.TarError) as exc:
        raise ToolchainError(f"{tarball}: cannot extract DeepEP headers ({exc})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _normalise_include(path: Path) -> Path:
    """Accept the include root (holding ``deep_ep/``), the package dir (holding ``include/``), ``deep_ep/``
    itself, or a DeepEP sdist tarball."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return extract_sdist_headers(path)
    for candidate in (path, path / "include", path.parent if path.name == "deep_ep" else path):
        if deep_ep_api_of(candidate):
            return candidate
    raise ToolchainOptionError(f"--deep-ep-include {path}: no DeepEP headers there "
                               f"(expected {' or '.join(f'{a.header_marker} for {a.version}' for a in ADAPTERS)})")


@dataclass(frozen=True)
class HeaderSource:
    """Which DeepEP headers a compile uses, and where they came from."""

    include_root: Path     # the directory holding deep_ep/
    api: DeepEPVersion     # which DeepEP (its adapter renders and names the kernels)
    origin: str            # "--deep-ep-include" | "package" | "sources"
    location: Path         # what was found: the option's value, the package dir, or the sdist

    def describe(self) -> str:
        what = {"--deep-ep-include": "--deep-ep-include", "package": "installed package",
                "sources": "fetched sdist"}[self.origin]
        return f"DeepEP {self.api} headers from {what} {self.location}"


_NO_HEADERS_HINT = ("run `jitcache sources fetch` (DeepEP 2.5: the deepinfer-ep sdist's headers), or "
                    "`pip install tokenspeed-deepep` (DeepEP 2.1), or pass --deep-ep-include DIR|SDIST.tar.gz")


def _installed_packages() -> list[Path]:
    try:
        spec = importlib.util.find_spec("deep_ep")
    except (ImportError, ValueError):
        spec = None
    return [Path(loc) for loc in ((spec.submodule_search_locations or []) if spec else [])]


def locate_deep_ep_headers(explicit: str | Path | None = None, *, api: str = "auto",
                           sources_dir: str | Path | None = None) -> HeaderSource:
    """The DeepEP headers to compile against (order in the module docstring).

    ``api`` is the profile's ``[deep_ep] api``; an explicit path of the other
    version is refused here rather than rendered with the wrong rules.
    """
    if explicit:
        include = _normalise_include(Path(explicit))
        found = deep_ep_api_of(include)
        assert found is not None
        if api not in ("auto", found):
            raise ToolchainOptionError(f"--deep-ep-include {explicit}: DeepEP {found} headers, but the profile "
                                       f"asks for api {api!r}", hint=_NO_HEADERS_HINT)
        return HeaderSource(include, found, "--deep-ep-include", Path(explicit))
    packages = [(Path(loc) / "include", Path(loc), deep_ep_api_of(Path(loc) / "include"))
                for loc in _installed_packages()]
    wanted_versions = adapters_for(api)
    hits: list[HeaderSource] = []
    for version in wanted_versions:
        here = next((HeaderSource(inc, version.version, "package", loc) for inc, loc, v in packages
                     if v == version.version), None)
        if here is None and version.headers_from_sdist:
            if sources_dir is None:
                sources_dir = settings.default_root() / "sources"
            for sdist in find_sdists(sources_dir, version.sdist_project or "")[:1]:
                include = extract_sdist_headers(sdist, into=Path(sources_dir) / "headers")
                here = HeaderSource(include, version.version, "sources", sdist)
        if here is not None:
            hits.append(here)
    if len(hits) > 1:
        # Either would compile a full set into the same cache, under other names: the user decides which DeepEP
        # serves, jitcache does not switch silently.
        raise UsageError(f"headers of two DeepEP versions found: {'; '.join(f.describe() for f in hits)}",
                         hint="say which DeepEP will serve: "
                              f"{' or '.join('--deep-ep ' + f.api for f in hits)} (or [deep_ep] api in the profile)")
    if hits:
        return hits[0]
    wanted = "DeepEP headers" if api == "auto" else f"DeepEP {api} headers"
    looked = [f"installed deep_ep packages ({', '.join(str(loc) for _, loc, _ in packages) or 'none'})"]
    if any(v.headers_from_sdist for v in wanted_versions):
        looked.append(f"fetched sdists in {sources_dir}")
    raise ToolchainError(f"{wanted} not found: looked in {' and '.join(looked)}", hint=_NO_HEADERS_HINT)


def find_deep_ep_include(explicit: str | Path | None = None) -> Path:
    """The include root of :func:`locate_deep_ep_headers` (any version)."""
    return locate_deep_ep_headers(explicit).include_root


@dataclass(frozen=True)
class SourceArchive:
    """One archive under ``<root>/sources/``."""

    filename: str
    path: str
    size: int
    project: str | None
    version: str | None
    sha256: str | None
    url: str | None
    fetched_at: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``fetched_at`` as an ISO 8601 UTC string, like every time in jitcache's JSON."""
        when = None if self.fetched_at is None else \
            _dt.datetime.fromtimestamp(self.fetched_at, tz=_dt.timezone.utc).isoformat(timespec="seconds")
        return {**self.__dict__, "fetched_at": when}


def list_sources(directory: str | Path) -> tuple[SourceArchive, ...]:
    """Every archive in ``directory`` (a root's ``sources/``), by name; the sidecar's facts where it has one."""
    directory = Path(directory)
    found = []
    for path in sorted(directory.glob("*.tar.gz")) if directory.is_dir() else []:
        try:
            meta = json.loads((directory / f"{path.name}.json").read_text())
        except (OSError, ValueError):
            meta = {}
        found.append(SourceArchive(filename=path.name, path=str(path), size=path.stat().st_size,
                                   project=meta.get("project"), version=meta.get("version"),
                                   sha256=meta.get("sha256"), url=meta.get("url"), fetched_at=meta.get("fetched_at")))
    return tuple(found)


def find_sdists(directory: str | Path, project: str = DEFAULT_REQUIREMENT.partition("==")[0]) -> tuple[Path, ...]:
    """Archives of ``project`` in ``directory``, highest version first."""
    name = normalize_name(project)
    candidates = [(a.version or _version_of(a.filename, name), Path(a.path)) for a in list_sources(directory)
                  if normalize_name(a.project or a.filename.split("-")[0]) == name]
    ranked = sorted(((v, p) for v, p in candidates if v), key=lambda vp: _version_key(vp[0]), reverse=True)
    return tuple(p for _, p in ranked)
