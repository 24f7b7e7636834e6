"""Bundle fingerprints that describe the contents: per backend a bundle holds, what decides its entries hit.

Written by export (``manifest.json``'s ``fingerprint``)::

    {"backends": {
        "deep_ep": {"2.5": {"layout": "deepjit", "entries": 57, "nvcc": ["13.0.88"], "archs": ["sm_90a"],
                            "package": "deepinfer-ep 2.5.0", "headers": "<sha256 of its include/deep_ep tree>"}},
        "triton": {"entries": 3, "version": "triton 3.6.0", "archs": ["sm_90"]}},    # only with Triton entries
     "archs": ["sm_90a"]}                                                            # every cubin's, read from ELF

nvcc comes from each entry's own record where its layout has one (DeepEP
2.5's ``meta.json``), else from the exporting machine; archs are read from
the cubins. Import compares only what matters for the entries inside: a
bundle without Triton entries says nothing about Triton, a bundle of DeepEP
2.5 entries nothing about an installed DeepEP 2.1. A fact unknown on either
side is not a mismatch. The flat fingerprint of older bundles
(``nvcc``/``deep_ep``/``triton``/``archs``) is still read, its Triton and
DeepEP fields only when the manifest lists entries of that backend.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from jitcache.adapters.serving import api_of_layout
from jitcache.adapters.headers import deep_ep_api_of, locate_deep_ep_headers

from .model import CacheEntry

__all__ = ["contents_fingerprint", "deep_ep_facts", "fingerprint_mismatches", "headers_digest", "local_nvcc"]

_RELEASE = re.compile(r"release (\d+\.\d+), V([\d.]+)")


@functools.lru_cache(maxsize=1)
def local_nvcc() -> str | None:
    """``13.0.88`` of the nvcc on PATH, else None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _RELEASE.search(out)
    return match.group(2) if match else None


def headers_digest(include_root: Path) -> str:
    """sha256 over every file of ``include_root/deep_ep`` (relative path and contents, sorted)."""
    digest = hashlib.sha256()
    base = include_root / "deep_ep"
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


#: Distributions known to ship a ``deep_ep`` / ``deep_ep_v25`` package: asked first, one lookup each, because
#: ``packages_distributions()`` reads the metadata of every installed distribution (~0.5 s with a few hundred).
_KNOWN_DISTRIBUTIONS = ("tokenspeed-deepep", "deepinfer-ep", "sgl-deep-ep-v25", "deep-ep", "deep_ep")


def _owner(package: str) -> str | None:
    """``"<distribution> <version>"`` of the installed distribution providing ``package``, else None."""
    for name in _KNOWN_DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        tops = (dist.read_text("top_level.txt") or "").split()
        if package in tops or any(str(f).split("/", 1)[0] == package for f in (dist.files or ()) if not tops):
            return f"{dist.metadata['Name']} {dist.version}"
    try:
        owners = importlib.metadata.packages_distributions()
    except Exception:  # noqa: BLE001 - a broken distribution must not break an import
        owners = {}
    for dist_name in owners.get(package, ()):
        try:
            return f"{dist_name} {importlib.metadata.version(dist_name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _installed(api: str) -> tuple[str | None, Path | None]:
    """``(distribution and version, include root)`` of an importable DeepEP package of ``api``."""
    for package in ("deep_ep", "deep_ep_v25"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            include = Path(location) / "include"
            if deep_ep_api_of(include) != api:
                continue
            return _owner(package), include
    return None, None


@functools.lru_cache(maxsize=4)
def deep_ep_facts(api: str) -> tuple[str | None, str | None]:
    """``(package, headers digest)`` of this machine's DeepEP ``api``: an installed package, else (2.5) the
    headers of a fetched sdist (``jitcache sources fetch``). ``(None, None)`` when there is none."""
    package, include = _installed(api)
    if include is None:
        try:
            found = locate_deep_ep_headers(api=api)
        except Exception:  # noqa: BLE001 - no headers here: the fact is unknown, not a mismatch
            return None, None
        include = found.include_root
        if found.origin == "sources":
            stem = found.location.name.split(".tar")[0]
            name, _, version = stem.rpartition("-")
            package = f"{name.replace('_', '-')} {version}" if name else None
    try:
        return package, headers_digest(include)
    except OSError:
        return package, None


def _triton_version() -> str | None:
    try:
        return f"triton {importlib.metadata.version('triton')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvcc_of(entry: CacheEntry) -> str | None:
    compiler = entry.compiler or ""
    return compiler[len("nvcc "):] if compiler.startswith("nvcc ") else None


def contents_fingerprint(entries: Iterable[CacheEntry]) -> dict[str, Any]:
    """The fingerprint of a bundle holding ``entries`` (see the module docstring)."""
    entries = list(entries)
    backends: dict[str, Any] = {}
    by_api: dict[str, list[CacheEntry]] = defaultdict(list)
    triton = []
    for entry in entries:
        if entry.backend == "triton":
            triton.append(entry)
        elif (api := api_of_layout(entry.format)) is not None:
            by_api[api].append(entry)
    if by_api:
        backends["deep_ep"] = {}
        for api, held in sorted(by_api.items()):
            recorded = sorted({n for e in held if (n := _nvcc_of(e))})
            package, headers = deep_ep_facts(api)
            backends["deep_ep"][api] = {
                "layout": held[0].format, "entries": len(held),
                "nvcc": recorded or ([here] if (here := local_nvcc()) else []),
                "archs": sorted({e.arch for e in held if e.arch}), "package": package, "headers": headers}
    if triton:
        backends["triton"] = {"entries": len(triton), "version": _triton_version(),
                              "archs": sorted({e.arch for e in triton if e.arch})}
    return {"backends": backends, "archs": sorted({e.arch for e in entries if e.arch})}


def _held(manifest_entries: Iterable[Mapping[str, Any]]) -> tuple[set[str], bool]:
    apis, triton = set(), False
    for entry in manifest_entries:
        if entry.get("backend") == "triton":
            triton = True
        elif (api := api_of_layout(str(entry.get("format")))) is not None:
            apis.add(api)
    return apis, triton


def _legacy(bundle: Mapping[str, Any], apis: set[str], triton: bool) -> list[str]:
    found = []
    if (theirs := bundle.get("nvcc")) and (ours := local_nvcc()) and theirs != ours and apis:
        found.append(f"nvcc: bundle {theirs!r}, here {ours!r}")
    if triton and (theirs := bundle.get("triton")) and (ours := _triton_version()) and theirs != ours:
        found.append(f"triton: bundle {theirs!r}, here {ours!r}")
    return found


def fingerprint_mismatches(bundle: Mapping[str, Any], manifest_entries: Iterable[Mapping[str, Any]] = (), *,
                           target_arch: str | None = None) -> list[str]:
    """What differs, for the entries the bundle holds, between the machine that built them and this one.

    ``target_arch`` (``jitcache import --arch``): every cubin must be for it;
    a machine without a GPU cannot tell its target on its own.
    """
    apis, triton = _held(manifest_entries)
    backends = bundle.get("backends")
    found: list[str] = []
    if not isinstance(backends, Mapping):
        found = _legacy(bundle, apis, triton)
    else:
        for api, facts in sorted((backends.get("deep_ep") or {}).items()):
            if api not in apis or not isinstance(facts, Mapping):
                continue
            ours = local_nvcc()
            theirs = [v for v in facts.get("nvcc") or () if v]
            if ours and theirs and any(v != ours for v in theirs):
                found.append(f"nvcc: bundle {', '.join(map(repr, theirs))} (DeepEP {api} entries), here {ours!r}")
            package, headers = deep_ep_facts(api)
            if facts.get("headers") and headers:  # the truth: the entries' names hash the headers' contents
                if facts["headers"] != headers:
                    found.append(f"deep_ep {api} headers: bundle {facts['headers'][:12]} ({facts.get('package')}), "
                                 f"here {headers[:12]} ({package})")
            elif facts.get("package") and package and facts["package"] != package:
                found.append(f"deep_ep {api}: bundle {facts['package']!r}, here {package!r}")
        tri = backends.get("triton")
        if triton and isinstance(tri, Mapping) and tri.get("version") and (ours := _triton_version()) \
                and tri["version"] != ours:
            found.append(f"triton: bundle {tri['version']!r}, here {ours!r}")
    theirs_archs = set(bundle.get("archs") or ())
    if target_arch and theirs_archs and not theirs_archs <= {target_arch}:
        found.append(f"archs: bundle {sorted(theirs_archs)}, target here {[target_arch]}")
    return found
