"""Find what an ahead-of-time compile needs, without importing deep_ep (it needs a GPU driver).

- nvcc: ``--nvcc``, else ``nvcc`` on PATH, ``$CUDA_HOME/bin/nvcc``, ``/usr/local/cuda/bin/nvcc``,
  or the ``nvidia-cuda-nvcc`` package's binary;
- DeepEP headers (:func:`locate_deep_ep_headers`): ``--deep-ep-include``, else, for ``api``
  ``"auto"``/``"2.5"``, an installed DeepEP 2.5 ``deep_ep`` package, then a DeepEP 2.5 sdist
  fetched by ``jitcache sources fetch`` (``<cache root>/sources/``, only ``deep_ep/include``
  extracted), then, for ``"auto"``/``"2.1"``, an installed DeepEP 2.1 package (the
  ``tokenspeed-deepep`` wheel); packages are located with ``importlib.util.find_spec``,
  which does not run them. With ``"auto"`` and headers of both versions found, it
  refuses (a :class:`~jitcache.errors.UsageError` asking for ``--deep-ep``) rather than pick one;
- NCCL headers: ``--nccl-include``, else ``$EP_NCCL_ROOT_DIR/include`` / ``$NCCL_DIR/include``
  (DeepEP's own overrides), else the ``nvidia-nccl-cu13`` package.

A missing input is one :class:`~jitcache.errors.ToolchainError` naming what to
install or pass. The NCCL directory *as the serving machine spells it* enters
DeepEP 2.5's digest (as ``-I<dir>``): it defaults to the local one and can be
set apart (``target_nccl_include``) or learned from an existing entry's meta.json.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from jitcache.adapters.base import Toolchain, nvcc_major_minor, release_line
from jitcache.adapters.registry import ADAPTERS, adapter, adapter_for_headers, adapters_for
from jitcache.errors import ToolchainError, ToolchainOptionError, UsageError
from jitcache.types import DeepEPVersion

__all__ = ["HeaderSource", "Toolchain", "deep_ep_api_of", "nvcc_major_minor", "release_line", "find_deep_ep_include", "find_nccl_include", "find_nvcc",
           "learn_from_entry", "locate_deep_ep_headers", "nvcc_version", "resolve_toolchain"]

_INSTALL_HINT = "pip install 'jitcache[aot]'  (tokenspeed-deepep: DeepEP headers; nvidia-nccl-cu13: NCCL headers)"


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

    from jitcache.store.root import default_root_path

    base = into or default_root_path().parent / "jitcache-headers"
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
            from jitcache.build.sources import find_sdists  # noqa: PLC0415 - sources imports the store

            if sources_dir is None:
                from jitcache.store.root import default_root_path  # noqa: PLC0415

                sources_dir = default_root_path() / "sources"
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


def find_nccl_include(explicit: str | Path | None = None) -> Path:
    if explicit:
        path = Path(explicit)
        for candidate in (path, path / "include"):
            if (candidate / "nccl.h").is_file():
                return candidate
        raise ToolchainOptionError(f"--nccl-include {path}: no nccl.h there")
    for env in ("EP_NCCL_ROOT_DIR", "NCCL_DIR"):
        if os.environ.get(env) and (Path(os.environ[env]) / "include" / "nccl.h").is_file():
            return Path(os.environ[env]) / "include"
    for site in _site_dirs():
        candidate = site / "nvidia" / "nccl" / "include"
        if (candidate / "nccl.h").is_file():
            return candidate
    raise ToolchainError("NCCL headers not found (DeepEP's kernels include nccl_device.h)",
                         hint=f"pip install nvidia-nccl-cu13, or pass --nccl-include DIR ({_INSTALL_HINT})")


def resolve_toolchain(*, nvcc: str | Path | None = None, deep_ep_include: str | Path | None = None,
                      nccl_include: str | Path | None = None, target_nccl_include: str | None = None,
                      python_library_root: str | None = None, api: str = "auto",
                      sources_dir: str | Path | None = None) -> Toolchain:
    """Everything a compile needs; ``api`` is the profile's ``[deep_ep] api``, ``sources_dir`` the
    ``<cache root>/sources`` that ``jitcache sources fetch`` fills (default: the default root's)."""
    nvcc_path = find_nvcc(nvcc)
    headers = locate_deep_ep_headers(deep_ep_include, api=api, sources_dir=sources_dir)
    include = headers.include_root
    nccl = find_nccl_include(nccl_include)
    return Toolchain(nvcc=nvcc_path, nvcc_version_output=nvcc_version(nvcc_path), deep_ep_include=include,
                     deep_ep_api=headers.api, nccl_include=nccl, target_nccl_include=target_nccl_include or str(nccl),
                     python_library_root=python_library_root or str(include.parent),
                     deep_ep_headers_from=headers.describe())


def learn_from_entry(toolchain: Toolchain, entry_dir: str | Path) -> Toolchain:
    """Adopt the target facts an existing entry recorded (its DeepEP adapter's rule: for 2.5, meta.json's
    flags, nvcc version text and library root); refuses a layout that records none."""
    learned = adapter(toolchain.deep_ep_api).learn_toolchain(toolchain, Path(entry_dir))
    if learned is None:
        raise ToolchainError(f"{entry_dir}: DeepEP {toolchain.deep_ep_api} entries record no toolchain to learn",
                             hint="derive the buckets from the entry instead (jitcache warmup --aot --learn-from)")
    return learned

