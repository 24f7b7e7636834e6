"""Issue 14, case 5: a decompression bomb is refused before it fills the disk, and the error says why.

The bundles are real exports with one member swapped for a large run of
zeros (a few KiB compressed). The import runs in the real console script
with its cache on a real 2 MiB tmpfs (or, where mounting is not allowed,
under an RLIMIT_FSIZE of 2 MiB): a bomb that got written would fill it.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from fault_fixtures import free, run_cli_limited, small_disk
from jitcache.store.bundle import export_bundle
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import bundle_members

pytestmark = pytest.mark.nvcc

BOMB = 64 << 20  # 64 MiB of zeros: ~2 KiB of zstd


def _members(bundle: Path) -> tuple[list[tuple[tarfile.TarInfo, bytes]], dict]:
    members = bundle_members(bundle.read_bytes())
    manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))
    return [(m, d) for m, d in members if m.name != "manifest.json"], manifest


def _write(out: Path, members: list[tuple[tarfile.TarInfo, bytes]], manifest: dict,
           manifest_first: bool = False) -> Path:
    with open(out, "wb") as raw:
        writer = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            blob = json.dumps(manifest).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(blob)
            if manifest_first:
                tar.addfile(info, io.BytesIO(blob))
            for m, d in members:
                m.size = len(d)
                tar.addfile(m, io.BytesIO(d))
            if not manifest_first:
                tar.addfile(info, io.BytesIO(blob))
        writer.close()
    return out


@pytest.fixture
def exported(filled_root, tmp_path) -> Path:
    return Path(export_bundle(filled_root, tmp_path / "good.tar.zst").path)


def _import_on_small_disk(tmp_path: Path, bundle: Path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        target = (disk or tmp_path / "disk") / "root"
        before = free(disk) if disk else None
        done = run_cli_limited("import", str(bundle), "--cache-dir", str(target), fsize=None if disk else 2 << 20)
        leftovers = sorted(p.name for p in (target / "deep_ep" / "tmp").iterdir()) if (target / "deep_ep" / "tmp").is_dir() else []
        published = sorted(p.name for p in (target / "deep_ep" / "cache").iterdir()) if (target / "deep_ep" / "cache").is_dir() else []
        after = free(disk) if disk else None
    return done, leftovers, published, before, after


@pytest.mark.parametrize("manifest_first", [False, True], ids=["manifest-last", "manifest-first"])
def test_a_member_bigger_than_declared_is_refused_before_it_is_written(tmp_path, exported, manifest_first):
    members, manifest = _members(exported)
    index = next(i for i, (m, _) in enumerate(members) if m.name.endswith("/kernel.cubin"))
    members[index] = (members[index][0], bytes(BOMB))  # the manifest keeps the real cubin's size and sha256
    bomb = _write(tmp_path / "bomb.tar.zst", members, manifest, manifest_first)
    assert bomb.stat().st_size < 200_000
    done, leftovers, published, before, after = _import_on_small_disk(tmp_path, bomb)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Error:" in done.stderr
    assert members[index][0].name in done.stderr and "declares" in done.stderr and str(BOMB) in done.stderr
    assert leftovers == [] and published == []
    if before is not None:
        assert after >= before - (64 << 10)  # the layout's few small files, never the bomb


def test_a_member_the_manifest_does_not_list_is_refused_before_it_is_written(tmp_path, exported):
    members, manifest = _members(exported)
    entry_dir = members[0][0].name.rsplit("/", 1)[0]
    extra = tarfile.TarInfo(f"{entry_dir}/kernel.ptx")
    members.insert(1, (extra, bytes(BOMB)))
    bomb = _write(tmp_path / "unlisted.tar.zst", members, manifest)
    done, leftovers, published, _, _ = _import_on_small_disk(tmp_path, bomb)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{entry_dir}/kernel.ptx" in done.stderr and "not in the manifest" in done.stderr
    assert leftovers == [] and published == []


def test_declared_sizes_over_the_limit_are_refused_before_unpacking(tmp_path, exported):
    members, manifest = _members(exported)
    first = _write(tmp_path / "first.tar.zst", members, manifest, manifest_first=True)
    declared = sum(f["size"] for e in manifest["entries"] for f in e["files"])
    for bundle, says in ((first, f"declares {declared} bytes"), (exported, "more than 1000 bytes before its manifest")):
        done = run_cli_limited("import", str(bundle), "--cache-dir", str(tmp_path / "t"),
                               env={"JITCACHE_IMPORT_MAX_BYTES": "1000"})
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert says in done.stderr and "JITCACHE_IMPORT_MAX_BYTES" in done.stderr, done.stderr
        assert not any((tmp_path / "t" / "deep_ep" / "cache").iterdir())
        assert not any((tmp_path / "t" / "deep_ep" / "tmp").iterdir())
