"""import's staging pass reads tar headers directly: every hostile header is refused before a byte of its
member is written, the same way through the direct reader and through tarfile (where the reader leaves a
bundle to it), and the cubin check it takes from the bytes it wrote is the check of the files on disk.

Bundles are real exports of the 22 entries DeepEP 2.5 wrote on the H200 (tests/data/deepep25-h200),
taken apart and written again by tarfile: GNU format (``gnu``: plain headers and GNU long names, what
export writes, read directly) or pax with a pax record on the first member (``pax``: left to tarfile).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard

import jitcache.store.bundle as bundle_mod
from jitcache.errors import BundleError
from jitcache.store.bundle import export_bundle, import_bundle
from jitcache.store.root import CacheRoot, resolve_root
from jitcache.store.verdicts import VerdictCache
from store_fixtures import bundle_members

DATA = Path(__file__).parent / "data" / "deepep25-h200" / "cache"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="no captured DeepEP cache in tests/data")

Members = list[tuple[tarfile.TarInfo, "bytes | None"]]


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("real")
    root = resolve_root(base / "root").ensure()
    for entry in sorted(DATA.iterdir()):
        shutil.copytree(entry, root.deep_ep_dir / "cache" / entry.name)
    for p in (root.deep_ep_dir / "cache").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # git checkouts may carry group-writable modes
    return Path(export_bundle(root, base / "real.tar.zst").path)


def _parts(bundle: Path) -> tuple[Members, dict]:
    members = bundle_members(bundle.read_bytes())
    manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))  # type: ignore[arg-type]
    return [(m, d) for m, d in members if m.name != "manifest.json"], manifest


def _tar(members: Members, manifest: dict | None, fmt: str, *, manifest_first: bool = False,
         after_manifest: Members = (), end: bool = True) -> bytes:
    """A tar stream (not compressed) of ``members`` and the manifest, in ``fmt`` (``end=False``: without
    the end-of-archive blocks)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT if fmt == "gnu" else tarfile.PAX_FORMAT) as tar:
        def manifest_member() -> None:
            if manifest is not None:
                blob = json.dumps(manifest).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        if manifest_first:
            manifest_member()
        for index, (info, data) in enumerate(members):
            info = _copy(info)
            if fmt == "pax" and index == 0:
                info.pax_headers = {"comment": "a pax record: tarfile reads this bundle"}
            if data is not None and info.isfile():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None and info.isfile() else None)
        if not manifest_first:
            manifest_member()
        for info, data in after_manifest:
            info = _copy(info)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        body = tar.offset
    return raw.getvalue() if end else raw.getvalue()[:body]


def _copy(info: tarfile.TarInfo) -> tarfile.TarInfo:
    new = tarfile.TarInfo(info.name)
    new.size, new.mode, new.mtime, new.type, new.linkname = info.size, info.mode, info.mtime, info.type, info.linkname
    new.devmajor, new.devminor = info.devmajor, info.devminor
    return new


def _zst(path: Path, tar_bytes: bytes) -> Path:
    path.write_bytes(zstandard.ZstdCompressor().compress(tar_bytes))
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.fixture
def paths(monkeypatch) -> dict[str, int]:
    """How many times each staging path ran (``direct``: the header reader, ``tarfile``: the fallback)."""
    counts = {"direct": 0, "tarfile": 0}
    direct, fallback = bundle_mod._stage_direct, bundle_mod._stage_tarfile

    def counted_direct(*args, **kwargs):
        counts["direct"] += 1
        return direct(*args, **kwargs)

    def counted_tarfile(*args, **kwargs):
        counts["tarfile"] += 1
        return fallback(*args, **kwargs)
    monkeypatch.setattr(bundle_mod, "_stage_direct", counted_direct)
    monkeypatch.setattr(bundle_mod, "_stage_tarfile", counted_tarfile)
    return counts


def _refused(tmp_path: Path, bundle: Path, match: str) -> BundleError:
    target = resolve_root(tmp_path / "target")
    with pytest.raises(BundleError, match=match) as caught:
        import_bundle(target, bundle)
    assert "Traceback" not in str(caught.value)
    assert list((target.deep_ep_dir / "cache").iterdir()) == []  # nothing published
    assert list((target.deep_ep_dir / "tmp").iterdir()) == []     # and the staging is gone
    return caught.value


def _expect_path(paths: dict[str, int], fmt: str) -> None:
    if fmt == "gnu":
        assert paths == {"direct": 1, "tarfile": 0}, paths
    else:
        assert paths["tarfile"] == 1, paths


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_round_trip_through_either_reader(tmp_path, real_bundle, paths, fmt):
    members, manifest = _parts(real_bundle)
    bundle = _zst(tmp_path / "b.tar.zst", _tar(members, manifest, fmt))
    target = resolve_root(tmp_path / "target")
    result = import_bundle(target, bundle)
    _expect_path(paths, fmt)
    assert len(result.published) == len(manifest["entries"]) == 22
    for info, data in members:
        assert (target.path / info.name).read_bytes() == data
        assert (target.path / info.name).stat().st_mode & 0o777 == 0o644
    assert all((target.deep_ep_dir / "cache" / e["name"] / ".committed").is_file() for e in manifest["entries"])


UNSAFE = {
    "symlink": (tarfile.SYMTYPE, "/etc/passwd", "is a symlink"),
    "hardlink": (tarfile.LNKTYPE, "deep_ep/cache/x", "is a hard link"),
    "chardev": (tarfile.CHRTYPE, "", "is a device file"),
    "blockdev": (tarfile.BLKTYPE, "", "is a device file"),
    "fifo": (tarfile.FIFOTYPE, "", "is a device file"),
}


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_links_and_devices_are_refused_from_their_header(tmp_path, real_bundle, paths, fmt, kind):
    members, manifest = _parts(real_bundle)
    typ, link, says = UNSAFE[kind]
    victim = members[0][0].name  # a name the manifest lists, with the size it declares
    evil = _info(victim, typ, link=link)
    bundle = _zst(tmp_path / "evil.tar.zst", _tar([(evil, None), *members[1:]], manifest, fmt))
    error = _refused(tmp_path, bundle, says)
    assert victim in str(error)
    _expect_path(paths, fmt)


BAD_NAMES = {
    "absolute": ("/tmp/evil/kernel.cubin", "absolute or odd path"),
    "dotdot": ("deep_ep/cache/../../../evil", "escapes the cache root"),
    "long-dotdot": ("deep_ep/cache/" + "../" * 40 + "evil", "escapes the cache root"),  # a GNU long name / pax path
    "dot": ("./deep_ep/cache/dispatch." + "a" * 32 + "/kernel.cu", "escapes the cache root"),
    "double-slash": ("deep_ep//cache/dispatch." + "a" * 32 + "/kernel.cu", "escapes the cache root"),
    "backslash": ("deep_ep\\cache\\evil", "absolute or odd path"),
    "outside": ("meta/layout.json", "not a file of a deep_ep/cache/ or triton/ entry"),
    "not-an-entry": ("deep_ep/cache/evil/kernel.cu", "not a file of a deep_ep/cache/ or triton/ entry"),
    "newline": ("deep_ep/cache/dispatch." + "a" * 32 + "/kernel.cu\n", "a file name jitcache does not ship"),
    "marker": ("deep_ep/cache/dispatch." + "a" * 32 + "/.committed", "a file name jitcache does not ship"),
}


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_bad_names_are_refused_before_a_byte_is_written(tmp_path, real_bundle, paths, fmt, case, monkeypatch):
    members, manifest = _parts(real_bundle)
    name, says = BAD_NAMES[case]
    written: list[str] = []
    real_write = bundle_mod._write_bytes
    monkeypatch.setattr(bundle_mod, "_write_bytes", lambda dest, *a: written.append(dest) or real_write(dest, *a))
    bundle = _zst(tmp_path / "evil.tar.zst", _tar([(_info(name, size=1), b"x"), *members], manifest, fmt))
    _refused(tmp_path, bundle, says)
    assert written == []
    assert not Path("/tmp/evil").exists()
    _expect_path(paths, fmt)


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
@pytest.mark.parametrize("change", [+1, -1, 64 << 10])
def test_a_size_other_than_the_manifests_is_refused_before_the_member_is_written(tmp_path, real_bundle, paths,
                                                                                fmt, change, monkeypatch):
    members, manifest = _parts(real_bundle)
    index = next(i for i, (m, _) in enumerate(members) if m.name.endswith("/kernel.cubin"))
    info, data = members[index]
    assert data is not None
    members[index] = (info, data + bytes(change) if change > 0 else data[:change])
    written: list[str] = []
    real_write = bundle_mod._write_bytes
    monkeypatch.setattr(bundle_mod, "_write_bytes", lambda dest, *a: written.append(dest) or real_write(dest, *a))
    bundle = _zst(tmp_path / "bomb.tar.zst", _tar(members, manifest, fmt))
    error = _refused(tmp_path, bundle, "the manifest declares")
    assert info.name in str(error) and str(len(data) + change) in str(error)
    assert not any(p.endswith(info.name.split("/", 2)[2]) for p in written)
    _expect_path(paths, fmt)


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_an_unlisted_member_is_refused_before_or_after_the_manifest(tmp_path, real_bundle, paths, fmt, where):
    members, manifest = _parts(real_bundle)
    entry_dir = members[0][0].name.rsplit("/", 1)[0]
    extra = (_info(f"{entry_dir}/kernel.ptx", size=3), b"ptx")
    tar = (_tar([members[0], extra, *members[1:]], manifest, fmt) if where == "before" else
           _tar(members, manifest, fmt, after_manifest=[extra]))
    error = _refused(tmp_path, _zst(tmp_path / "extra.tar.zst", tar), "not in the manifest")
    assert f"{entry_dir}/kernel.ptx" in str(error)
    _expect_path(paths, fmt)


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
@pytest.mark.parametrize("where", ["next", "after-manifest"])
def test_a_member_twice_is_refused(tmp_path, real_bundle, paths, fmt, where):
    members, manifest = _parts(real_bundle)
    tar = (_tar([members[0], members[0], *members[1:]], manifest, fmt) if where == "next" else
           _tar(members, manifest, fmt, after_manifest=[members[0]]))
    error = _refused(tmp_path, _zst(tmp_path / "twice.tar.zst", tar), "appears twice")
    assert members[0][0].name in str(error)
    _expect_path(paths, fmt)


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_a_listed_member_after_the_manifest_is_staged_like_any_other(tmp_path, real_bundle, paths, fmt):
    members, manifest = _parts(real_bundle)
    tar = _tar(members[1:], manifest, fmt, after_manifest=[members[0]])
    result = import_bundle(resolve_root(tmp_path / "target"), _zst(tmp_path / "late.tar.zst", tar))
    assert len(result.published) == 22
    _expect_path(paths, fmt)


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
@pytest.mark.parametrize("cut", ["mid-data", "mid-header", "mid-padding"])
def test_a_truncated_stream_is_refused(tmp_path, real_bundle, paths, fmt, cut):
    """Manifest first, so that the first pass finds it and staging meets the cut."""
    members, manifest = _parts(real_bundle)
    tar = _tar(members, manifest, fmt, manifest_first=True)
    cubin = next(m for m, _ in members if m.name.endswith("/kernel.cubin"))
    at = tar.index(cubin.name.encode())  # its header (or the long name header before it, or the pax header)
    at = tar.index(b"\x7fELF", at)  # its data
    at = {"mid-data": at + 100, "mid-header": at - 200, "mid-padding": at + cubin.size + 1}[cut]
    if cut == "mid-padding" and cubin.size % 512 == 0:
        pytest.skip("the cubin fills its last block")
    _refused(tmp_path, _zst(tmp_path / "cut.tar.zst", tar[:at]),
             "not a readable jitcache bundle|files differ from the manifest")
    _expect_path(paths, fmt)


def test_a_bad_checksum_goes_to_tarfile_which_refuses_the_bundle(tmp_path, real_bundle, paths):
    members, manifest = _parts(real_bundle)
    tar = bytearray(_tar(members, manifest, "gnu", manifest_first=True))
    second = tar.index(members[1][0].name.encode())
    tar[second + 150] ^= 1  # inside the checksum field
    _refused(tmp_path, _zst(tmp_path / "sum.tar.zst", bytes(tar)), "files differ from the manifest")
    assert paths == {"direct": 1, "tarfile": 1}  # the reader gave up, tarfile ended the archive there


def test_a_gnu_long_name_with_no_member_after_it_is_refused(tmp_path, real_bundle, paths):
    members, manifest = _parts(real_bundle)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_info("deep_ep/cache/" + "x" * 200, size=1), io.BytesIO(b"x"))
    long_name = raw.getvalue()[:1024]  # the 'L' header and the block holding the name
    assert long_name[156:157] == tarfile.GNUTYPE_LONGNAME
    body = _tar(members, manifest, "gnu", manifest_first=True, end=False)
    for tail in (b"", bytes(1024)):  # the stream ends, or the archive does
        bundle = _zst(tmp_path / "dangling.tar.zst", body + long_name + tail)
        _refused(tmp_path, bundle, "not a readable jitcache bundle")
    assert paths["direct"] == 2 and paths["tarfile"] == 2  # the reader leaves it to tarfile, which refuses it


def _with_cubin_of(members: Members, manifest: dict, victim: str, donor: str) -> tuple[Members, dict]:
    """``victim``'s kernel.cubin replaced by ``donor``'s (another kernel: one wrong entry symbol), the
    manifest updated to match (a self-consistent bundle with one bad entry)."""
    donor_cubin = next(d for m, d in members if m.name == f"deep_ep/cache/{donor}/kernel.cubin")
    assert donor_cubin is not None
    out = [(m, donor_cubin if m.name == f"deep_ep/cache/{victim}/kernel.cubin" else d) for m, d in members]
    for entry in manifest["entries"]:
        if entry["name"] == victim:
            for spec in entry["files"]:
                if spec["path"] == "kernel.cubin":
                    spec["size"], spec["sha256"] = len(donor_cubin), hashlib.sha256(donor_cubin).hexdigest()
    return out, manifest


def _interleaved(members: Members) -> Members:
    """The same members, each entry's files far apart (first every entry's kernel.cu, then ...)."""
    return sorted(members, key=lambda md: (md[0].name.rsplit("/", 1)[1], md[0].name))


@pytest.mark.parametrize("mode", ["held", "interleaved", "over-the-cap", "streamed", "pax"])
def test_the_cubin_check_from_memory_is_the_check_from_disk(tmp_path, real_bundle, paths, mode, monkeypatch):
    members, manifest = _parts(real_bundle)
    names = sorted(e["name"] for e in manifest["entries"])
    victim = next(n for n in names if n.startswith("dispatch."))
    donor = next(n for n in names if n.startswith("combine."))
    if mode == "over-the-cap":
        monkeypatch.setattr(bundle_mod, "_HELD_MAX", 1)
    if mode == "streamed":
        monkeypatch.setattr(bundle_mod, "_HOLD_MAX", 100)
    order = _interleaved if mode in ("interleaved", "over-the-cap") else list
    fmt = "pax" if mode == "pax" else "gnu"
    good = _zst(tmp_path / "good.tar.zst", _tar(order(members), manifest, fmt))
    assert len(import_bundle(resolve_root(tmp_path / "ok"), good).published) == 22
    bad_members, bad_manifest = _with_cubin_of(members, json.loads(json.dumps(manifest)), victim, donor)
    bad = _zst(tmp_path / "bad.tar.zst", _tar(order(bad_members), bad_manifest, fmt))
    error = _refused(tmp_path, bad, "kernel.cubin")
    assert victim in str(error) and "entry_symbols" in str(error)


def test_verdicts_taken_while_staging_equal_a_read_of_the_staged_tree(tmp_path, real_bundle):
    members, manifest = _parts(real_bundle)
    names = sorted(e["name"] for e in manifest["entries"])
    bad_members, manifest = _with_cubin_of(members, manifest, names[-1], names[0])
    bundle = _zst(tmp_path / "b.tar.zst", _tar(bad_members, manifest, "gnu"))
    staging = tmp_path / "staging"
    staging.mkdir()
    staged, checked = bundle_mod._stage(bundle, staging, bundle_mod._read_manifest(bundle))
    assert set(checked) == set(staged) == {("deep_ep", n) for n in names}
    for (tree, name), verdict in checked.items():
        assert verdict == bundle_mod._deep_ep_verdict(str(staging / tree / name), name, VerdictCache(None))
    assert checked[("deep_ep", names[-1])][1] is not None  # the bad one is refused either way
    assert sum(v[1] is not None for v in checked.values()) == 1


def test_the_umask_is_read_not_set(tmp_path, real_bundle, monkeypatch):
    import os

    old = os.umask(0o077)
    try:
        assert bundle_mod._umask_clears(0o644)
        members, manifest = _parts(real_bundle)
        target = resolve_root(tmp_path / "target")
        import_bundle(target, _zst(tmp_path / "b.tar.zst", _tar(members, manifest, "gnu")))
        assert os.umask(0o077) == 0o077
        for info, _ in members:
            assert (target.path / info.name).stat().st_mode & 0o777 == 0o644  # whatever the umask
    finally:
        os.umask(old)


def test_export_writes_what_the_direct_reader_takes(tmp_path, real_bundle, paths):
    """What export writes never needs tarfile (and a root of it imports whole)."""
    target: CacheRoot = resolve_root(tmp_path / "target")
    assert len(import_bundle(target, real_bundle).published) == 22
    assert paths == {"direct": 1, "tarfile": 0}
