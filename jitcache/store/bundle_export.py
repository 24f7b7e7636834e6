"""Bundles, the export side: a cache (or one profile's part of it) as one tar + zstd file.

The layout is :mod:`.bundle`'s docstring's. Export reads the cache without
the lock (it is a reader); an entry that vanishes while being read (a
concurrent prune) is left out whole and listed as skipped. The bundle is
written to a temporary file and renamed into place. :func:`write_bundle`
writes any entries with a precomputed fingerprint (``jitcache push``'s
one-entry bundles).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable

from jitcache.errors import BundleError, UsageError

from .fingerprint import contents_fingerprint
from .faults import filesystem_error, is_fault, require_writable
from .model import SCHEMA_VERSION, CacheEntry
from .publish import COMMIT_MARKER, fsync_dir
from .reading import O_NOATIME
from .root import CacheRoot
from .scan import coverage, scan

__all__ = ["BUNDLE_KIND", "ExportResult", "environment_fingerprint", "export_bundle", "write_bundle"]

BUNDLE_KIND = "jitcache-bundle"
_CHUNK = 1 << 20
_ENTRY_FILE = re.compile(r"^[A-Za-z0-9_.\-]+$")


# -- environment ------------------------------------------------------------------------------


def environment_fingerprint(entries: Iterable[CacheEntry] = ()) -> dict[str, Any]:
    """What decides whether ``entries`` hit there: per backend held, its versions, nvcc and cubin archs
    (:func:`jitcache.store.fingerprint.contents_fingerprint`)."""
    return contents_fingerprint(entries)


# -- export -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: str
    entries: tuple[str, ...]
    skipped: tuple[str, ...]           # vanished while being read
    missing_variants: int              # of the profile's plan, with no entry in the cache
    size: int                          # bytes of the bundle file
    manifest: dict[str, Any]
    foreign: tuple[str, ...] = ()      # other tools' entries in the root, left out

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "bundle": self.path, "entries": len(self.entries), "size": self.size,
                "skipped": list(self.skipped), "missing_variants": self.missing_variants,
                "foreign": list(self.foreign),
                "fingerprint": self.manifest["fingerprint"]}


def _bundle_prefix(entry: CacheEntry) -> str:
    return f"deep_ep/cache/{entry.name}" if entry.backend == "deep_ep" else f"triton/{entry.name}"


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
#: open() refusing a symlink (O_NOFOLLOW), a socket, or a directory: not a file we ship.
_NOT_A_FILE = {errno.ELOOP, errno.ENXIO, errno.EISDIR}


def _open_shipped(file: str) -> tuple[int, bool]:
    """``(fd, opened with O_NOATIME)``: an export is not a use, so the file's atime is kept."""
    if O_NOATIME:
        try:
            return os.open(file, _OPEN_FLAGS | O_NOATIME), True
        except PermissionError:
            pass  # not our file: read it plainly, then put the atime back
    return os.open(file, _OPEN_FLAGS), False


def _read_entry(path: str | Path, names: Iterable[str] = ()) -> list[tuple[str, bytes]] | None:
    """All shippable files of an entry (regular files, not symlinks), or ``None`` if it vanished while read.

    ``names``: the files the scan saw (``CacheEntry.files``), else one listdir; then per file one open
    (refusing symlinks; a FIFO cannot block it) and one fstat: the checks ``is_symlink``/``is_file``
    would make, without a stat of their own.
    """
    files = []
    if not names:  # the scan's list of the entry's files, else a listing now
        try:
            names = sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
    prefix = os.path.join(path, "")  # "<entry>/": a file's path is prefix + name, as os.path.join spells it
    for name in names:
        if name == COMMIT_MARKER or name.startswith("tmp.pid_"):
            continue
        file = prefix + name
        try:
            fd, noatime = _open_shipped(file)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _NOT_A_FILE:
                continue
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            chunks, size = [], 0
            while chunk := os.read(fd, max(st.st_size - size, 0) + 1):
                chunks.append(chunk)
                size += len(chunk)
                if size <= st.st_size:
                    break  # a short read of a regular file is its end (a file that grew is read on)
            if not noatime:  # an export is not a use: put the atime back (see .reading)
                try:
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                except OSError:
                    pass
        finally:
            os.close(fd)
        files.append((name, b"".join(chunks)))
    return files


class _TarWriter:
    """A tar stream of regular files (mode 0644, owner 0:0) written straight to ``out``.

    What :mod:`tarfile` writes for the same members, byte for byte (pinned by a
    test), without its per-member cost (a TarInfo copy, a pax check, header
    encoding field by field: ~100 us a file, most of an export). A name longer
    than a ustar name field gets :mod:`tarfile`'s own GNU long-name header.
    Members are gathered into writes of about :data:`_WRITE_SIZE` bytes (one
    call into the compressor per ~1 MiB, not three per file); :meth:`close`
    writes the rest.
    """

    def __init__(self, out: Any) -> None:
        self.out = out
        self.offset = 0
        self._pending: list[bytes] = []
        self._pending_size = 0

    @staticmethod
    def header(name: str, size: int, mtime: int) -> bytes:
        raw = name.encode("utf-8")
        if len(raw) > 100 or size >= 8 ** 11 or not 0 <= mtime < 8 ** 11:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, mtime
            return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        size_field, mtime_field = b"%011o\x00" % size, b"%011o\x00" % mtime
        # The checksum of a header is the sum of its bytes with its own field as spaces: the fixed
        # fields' sum is a constant, the name's, size's and mtime's are added.
        checksum = _HEADER_CONSTANT_SUM + sum(raw) + sum(size_field) + sum(mtime_field)
        return b"".join((raw, bytes(100 - len(raw)), _HEADER_MODE_OWNER, size_field, mtime_field,
                         b"%06o\x00 " % checksum, _HEADER_TAIL))

    def _write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _WRITE_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write what is gathered (the members so far) to ``out``."""
        if self._pending:
            self.out.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_size = 0

    def add(self, name: str, data: bytes, mtime: int) -> None:
        header = self.header(name, len(data), mtime)
        padding = -len(data) % _BLOCK
        if len(data) >= _WRITE_SIZE:  # a big file is written as it is, not copied into a gathered write
            self._write(header)
            self.flush()
            self.out.write(data)
            self._write(_ZEROS[:padding])
        else:
            self._pending += (header, data, _ZEROS[:padding])
            self._pending_size += len(header) + len(data) + padding
            if self._pending_size >= _WRITE_SIZE:
                self.flush()
        self.offset += len(header) + len(data) + padding

    def close(self) -> None:
        """Two zero blocks, then zeros up to a whole record, as tarfile ends a stream."""
        end = 2 * _BLOCK
        end += -(self.offset + end) % tarfile.RECORDSIZE
        self._write(bytes(end))
        self.offset += end
        self.flush()


_BLOCK = tarfile.BLOCKSIZE
_ZEROS = bytes(_BLOCK)
_WRITE_SIZE = 1 << 20
#: A ustar header's fields after the name (offsets 100-124: mode, uid, gid) and after the checksum
#: (156-512: type "0" regular file, no link name, GNU magic, the rest zero), as tarfile.GNU_FORMAT writes them.
_HEADER_MODE_OWNER = b"0000644\x000000000\x000000000\x00"
_HEADER_TAIL = b"0" + bytes(100) + tarfile.GNU_MAGIC + bytes(_BLOCK - 265)
_HEADER_CONSTANT_SUM = sum(_HEADER_MODE_OWNER) + sum(b"        ") + sum(_HEADER_TAIL)


def write_bundle(raw: IO[bytes], entries: Iterable[CacheEntry], *, profile: str | None = None,
                 fingerprint: dict[str, Any] | None = None, level: int = 3,
                 packed: list[CacheEntry] | None = None) -> tuple[tuple[CacheEntry, ...], tuple[str, ...], dict[str, Any]]:
    """Write ``entries`` as a bundle to the binary stream ``raw``: ``(written, vanished, manifest)``.

    ``fingerprint`` (what :func:`environment_fingerprint` returns, computed
    once by a caller writing many bundles, as ``jitcache push`` does) gets the
    written entries' archs; by default it is computed here. ``packed``, when
    given, receives each entry as it is written (what a failure had packed).
    """
    import zstandard

    manifest_entries: list[dict[str, Any]] = []
    exported: list[CacheEntry] = [] if packed is None else packed
    skipped: list[str] = []
    now = int(time.time())
    writer = zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False)
    tar = _TarWriter(writer)
    for entry in entries:
        files = _read_entry(entry.path, entry.files)
        if files is None:
            skipped.append(entry.name)
            continue
        prefix = _bundle_prefix(entry)
        listed = []
        for name, data in files:
            tar.add(f"{prefix}/{name}", data, now)
            listed.append({"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        manifest_entries.append({"backend": entry.backend, "format": entry.format, "name": entry.name,
                                 "family": entry.family, "key": entry.key, "files": listed})
        exported.append(entry)
    if fingerprint is None:
        fingerprint = environment_fingerprint(exported)
    else:
        fingerprint = {**fingerprint, "archs": sorted({e.arch for e in exported if e.arch})}
    manifest = {"schema": SCHEMA_VERSION, "kind": BUNDLE_KIND, "created_at": time.time(), "profile": profile,
                "fingerprint": fingerprint, "entries": manifest_entries}
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()  # the C encoder
    tar.add("manifest.json", blob, int(time.time()))
    tar.close()
    writer.close()
    return tuple(exported), tuple(skipped), manifest


def export_bundle(root: CacheRoot, output: str | Path, *, plan: Any = None,
                  level: int = 3) -> ExportResult:
    """Write the healthy entries of ``root`` (only those ``plan`` needs, if given) to ``output``."""
    report = scan(root)
    foreign = tuple(e.name for e in report.entries if e.foreign)  # DeepGEMM's (shared root): not ours to ship
    entries = [e for e in report.entries if e.status == "ok" and not e.foreign]
    missing = 0
    if plan is not None:
        cov = coverage(plan, entries)
        wanted = {p for _, paths in cov.present for p in paths}
        entries = [e for e in entries if e.path in wanted]
        missing = len(cov.missing)
    output = Path(output).expanduser().absolute()
    if output.is_dir():
        raise BundleError(f"{output}: is a directory; give a file name such as cache.jcb.tar.zst", path=output)
    if not output.parent.is_dir():
        raise UsageError(f"{output}: the directory {output.parent} does not exist",
                         hint="create it first (export does not create directories: a typo would hide the bundle)")
    require_writable(output.parent, action=f"write the bundle {output.name}")
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")
    exported: list[CacheEntry] = []
    try:
        with open(tmp, "wb") as raw:
            _, skipped, manifest = write_bundle(raw, entries, level=level, packed=exported,
                                                profile=None if plan is None else plan.profile.name)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, output)
        fsync_dir(output.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_fault(exc):
            raise filesystem_error(exc, output, action="write the bundle",
                                   partial=f"no bundle written (nothing left behind; {len(exported)} entries "
                                           "had been packed)") from None
        raise
    return ExportResult(str(output), tuple(e.name for e in exported), tuple(skipped), missing,
                        output.stat().st_size, manifest, foreign)
