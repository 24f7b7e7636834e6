"""Issue 14, cases 3 and 4: `jitcache import` checks every cubin itself before publishing anything.

Bundles are self-consistent (sizes and sha256 in the manifest match the
files): only the cubins lie. The real console script imports them.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from cli_helpers import run_cli
from jitcache.store.bundle import export_bundle
from jitcache.store.root import resolve_root
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import FAMILY_KERNELS, bundle_members, template_args

pytestmark = pytest.mark.nvcc


def _tree(root) -> dict[str, str]:
    out = {}
    for base in (root.deep_ep_dir / "cache", root.triton_dir):
        for p in sorted(base.rglob("*")) if base.is_dir() else ():
            if p.is_file():
                out[str(p.relative_to(root.path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def replace_file(bundle: Path, out: Path, entry_prefix: str, file: str, data: bytes,
                 tar_format: int = tarfile.PAX_FORMAT) -> tuple[Path, str]:
    """A copy of ``bundle`` with ``file`` of the first entry whose name starts with ``entry_prefix``
    replaced by ``data``, and the manifest's size and sha256 updated to match (self-consistent).
    ``tar_format``: PAX (long Triton names get pax records: import stages through tarfile) or GNU (GNU
    long names: import reads the headers itself and checks the cubins from the bytes it wrote)."""
    members = bundle_members(bundle.read_bytes())
    manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))
    victim = next(e for e in manifest["entries"] if e["name"].startswith(entry_prefix))
    for spec in victim["files"]:
        if spec["path"] == file:
            spec["size"], spec["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for m, d in members:
            if m.name == "manifest.json":
                d = json.dumps(manifest).encode()
            elif m.name == f"deep_ep/cache/{victim['name']}/{file}":
                d = data
            m.size = len(d)
            tar.addfile(m, io.BytesIO(d))
    out.write_bytes(zstandard.ZstdCompressor().compress(buffer.getvalue()))
    return out, victim["name"]


@pytest.fixture
def good_bundle(filled_root, tmp_path) -> Path:
    return Path(export_bundle(filled_root, tmp_path / "good.tar.zst").path)


def _import(bundle: Path, target: Path, *extra: str):
    done = run_cli("import", str(bundle), "--cache-dir", str(target), *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _param_dict(bundle_victim: str, filled_root) -> dict:
    from jitcache.store.formats import read_deep_ep_entry
    return read_deep_ep_entry(filled_root.deep_ep_dir / "cache" / bundle_victim).params


# -- case 3 -------------------------------------------------------------------------------------


def test_import_arch_reads_the_cubin_not_the_manifest(tmp_path, good_bundle, filled_root, cubins):
    victim = next(p.name for p in (filled_root.deep_ep_dir / "cache").iterdir() if p.name.startswith("combine."))
    params = _param_dict(victim, filled_root)
    kernel = FAMILY_KERNELS["combine"]
    sm80 = cubins.matching(kernel, template_args(kernel, params), "sm_80")
    bad, name = replace_file(good_bundle, tmp_path / "sm80.tar.zst", victim, "kernel.cubin", sm80)
    target = resolve_root(tmp_path / "target")
    done = _import(bad, target.path, "--arch", "sm_90a")
    assert done.code == 2 and "Error:" in done.stderr and name in done.stderr and "sm_80" in done.stderr
    assert _tree(target) == {}  # nothing published
    # without --arch the manifest's claim (sm_90a) is checked against the cubins as well
    done = _import(bad, target.path)
    assert done.code == 2 and "sm_80" in done.stderr and _tree(target) == {}


# -- case 4 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("what", ["garbage", "truncated", "two_kernels", "other_kernel"])
def test_import_refuses_a_bad_cubin_before_publishing(tmp_path, good_bundle, filled_root, cubins, what, tar_format):
    victim = sorted(p.name for p in (filled_root.deep_ep_dir / "cache").iterdir()
                    if p.name.startswith("dispatch."))[0]
    original = (filled_root.deep_ep_dir / "cache" / victim / "kernel.cubin").read_bytes()
    data = {"garbage": b"\x7fELF" + b"\0" * 200,
            "truncated": original[: len(original) // 2],
            "two_kernels": cubins["two_kernels"],
            "other_kernel": cubins["combine"]}[what]
    bad, name = replace_file(good_bundle, tmp_path / f"{what}.tar.zst", victim, "kernel.cubin", data, tar_format)
    target = resolve_root(tmp_path / "target")
    done = _import(bad, target.path)
    assert done.code == 2, done.stdout
    assert "Error:" in done.stderr and name in done.stderr and "kernel.cubin" in done.stderr
    assert _tree(target) == {}
    # and the good bundle still imports, every entry
    assert _import(good_bundle, target.path).code == 0 and len(_tree(target)) > 0
