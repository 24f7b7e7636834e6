"""Reading a bundle before anything is written: its manifest, the rules for its members, the size limit.

:func:`_read_manifest` finds ``manifest.json`` (the last member) from the tar
headers read directly where they are plain ustar/GNU file and directory
headers, through :mod:`tarfile` otherwise, never unpacking more than
``JITCACHE_IMPORT_MAX_BYTES`` before it; :func:`declared_sizes` and
:func:`_member_target` are what the staging in :mod:`.bundle` holds every
member to, and :class:`_TarStream` the header reader it stages with.
Nothing here writes.
"""

from __future__ import annotations

import json
import re
import tarfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from jitcache import settings
from jitcache.errors import BundleError

from .bundle_export import _CHUNK, _ENTRY_FILE, BUNDLE_KIND
from .formats import TRITON_KEY, classify_deep_ep_name
from .model import SCHEMA_VERSION
from .publish import COMMIT_MARKER

__all__ = ["declared_sizes"]


def _member_target(name: str, bundle: Path, *, is_dir: bool = False) -> tuple[str, str, str] | None:
    """``(tree, entry, file)`` for a file member; ``None`` for ``manifest.json`` or a directory; raises if unsafe."""
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise BundleError(f"{bundle}: member {name!r} has an absolute or odd path; refused", path=bundle)
    parts = name.split("/")
    if "" in parts or "." in parts or ".." in parts:  # also "a//b", "./a", a trailing "/"
        raise BundleError(f"{bundle}: member {name!r} escapes the cache root; refused", path=bundle)
    if is_dir:
        if parts[0] not in ("deep_ep", "triton") or len(parts) > 3:
            raise BundleError(f"{bundle}: directory {name!r} is outside deep_ep/cache/ and triton/; refused",
                              path=bundle)
        return None
    if name == "manifest.json":
        return None
    if len(parts) == 4 and parts[0] == "deep_ep" and parts[1] == "cache" and _is_deep_ep_name(parts[2]):
        tree, entry, file = "deep_ep", parts[2], parts[3]
    elif len(parts) == 3 and parts[0] == "triton" and TRITON_KEY.fullmatch(parts[1]):
        tree, entry, file = "triton", parts[1], parts[2]
    else:
        raise BundleError(f"{bundle}: member {name!r} is not a file of a deep_ep/cache/ or triton/ entry; refused",
                          path=bundle)
    if not _ENTRY_FILE.fullmatch(file) or file == COMMIT_MARKER:  # fullmatch: "$" would take a final newline
        raise BundleError(f"{bundle}: member {name!r} has a file name jitcache does not ship; refused", path=bundle)
    return tree, entry, file


@lru_cache(maxsize=1024)
def _is_deep_ep_name(name: str) -> bool:
    """:func:`classify_deep_ep_name`, once per entry of a bundle, not once per member."""
    return classify_deep_ep_name(name) is not None


def _valid_entry_name(tree: Any, name: Any) -> bool:
    if not isinstance(name, str):
        return False
    return bool(classify_deep_ep_name(name)) if tree == "deep_ep" else bool(TRITON_KEY.match(name))


#: A bundle may unpack to at most this many bytes (the sizes its manifest declares, checked before anything is
#: written): kernels are kilobytes to megabytes, so this only stops a bundle meant to fill the disk.
_MAX_BYTES_ENV = "JITCACHE_IMPORT_MAX_BYTES"
_MAX_BYTES_DEFAULT = 16 << 30
#: The manifest itself is read into memory: a few hundred bytes per entry.
_MANIFEST_MAX = 64 << 20


def _max_bytes() -> int:
    return settings.import_max_bytes(_MAX_BYTES_DEFAULT)


@contextmanager
def _open_tar(bundle: Path) -> Iterator[tarfile.TarFile]:
    """The bundle as a tar stream, decompressed on the fly (nothing is written anywhere)."""
    import zstandard

    with open(bundle, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                yield tar
        finally:
            reader.close()


def _read_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest, read before anything is written.

    It is a member of the tar stream (the last one, as export writes it);
    finding it means reading through the members without writing them: the
    decompressor's output goes nowhere, and a stream that decompresses past
    the limit before its manifest is refused.
    """
    import zstandard

    seen, limit = 0, _max_bytes()
    try:
        with open(bundle, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            try:
                blob = _manifest_from_headers(reader, bundle, limit)
            finally:
                reader.close()
    except (zstandard.ZstdError, EOFError) as exc:
        raise BundleError(f"{bundle}: not a readable jitcache bundle ({exc})", path=bundle) from None
    if blob is not _ODD:
        try:
            manifest = None if blob is None else json.loads(blob)
        except ValueError as exc:
            raise BundleError(f"{bundle}: manifest.json is not valid JSON ({exc})", path=bundle) from None
        return _checked_manifest(bundle, manifest)
    try:  # a header the direct reader does not take as it is (pax, GNU long names, links...): tarfile's way
        with _open_tar(bundle) as tar:
            for member in tar:
                if member.name == "manifest.json" and member.isfile():
                    if member.size > _MANIFEST_MAX:
                        raise BundleError(f"{bundle}: manifest.json is {member.size} bytes, more than "
                                          f"{_MANIFEST_MAX}; refused", path=bundle)
                    source = tar.extractfile(member)
                    assert source is not None
                    try:
                        manifest = json.loads(source.read())
                    except ValueError as exc:
                        raise BundleError(f"{bundle}: manifest.json is not valid JSON ({exc})", path=bundle) from None
                    break
                seen += member.size
                if seen > limit:
                    raise BundleError(f"{bundle}: unpacks to more than {limit} bytes before its manifest "
                                      f"({_MAX_BYTES_ENV} sets the limit); refused", path=bundle)
            else:
                manifest = None
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise BundleError(f"{bundle}: not a readable jitcache bundle ({exc})", path=bundle) from None
    return _checked_manifest(bundle, manifest)


def _checked_manifest(bundle: Path, manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
        raise BundleError(f"{bundle}: no jitcache manifest in the bundle", path=bundle)
    if manifest.get("schema") != SCHEMA_VERSION:
        raise BundleError(f"{bundle}: manifest schema {manifest.get('schema')!r} is not {SCHEMA_VERSION}",
                          path=bundle, hint="import it with the jitcache version that exported it")
    return manifest


#: :func:`_manifest_from_headers` met something it leaves to tarfile.
_ODD: Any = object()


def _manifest_from_headers(reader: Any, bundle: Path, limit: int) -> Any:
    """The manifest's bytes (``None``: no manifest) from the tar stream's 512-byte headers read directly
    (:class:`_TarStream`), skipping every other member's data: ~15x cheaper than tarfile's members, the
    pass import makes before writing anything. Only headers of files and directories (GNU long names
    included) are taken; at anything else it returns :data:`_ODD` and :func:`_read_manifest` asks
    tarfile instead. Refuses, as that pass does, a stream that unpacks past ``limit`` before its manifest."""
    seen = 0
    tar = _TarStream(reader)
    try:
        while (member := tar.next_member()) is not None:
            name, kind, size, is_dir = member
            if kind not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
                return _ODD  # a link or a device: tarfile's pass decides (staging refuses it)
            if name == "manifest.json" and not is_dir:
                if size > _MANIFEST_MAX:
                    raise BundleError(f"{bundle}: manifest.json is {size} bytes, more than {_MANIFEST_MAX}; "
                                      "refused", path=bundle)
                blob = tar.take(size)
                return blob if len(blob) == size else _ODD
            seen += size
            if seen > limit:
                raise BundleError(f"{bundle}: unpacks to more than {limit} bytes before its manifest "
                                  f"({_MAX_BYTES_ENV} sets the limit); refused", path=bundle)
            if not is_dir and not tar.skip(size + (-size % tarfile.BLOCKSIZE)):  # no data after a directory
                return _ODD
    except _Unusual:
        return _ODD
    return None


class _Unusual(Exception):
    """:class:`_TarStream` met a header it does not take as it is: the caller asks tarfile instead."""


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_OCTAL = re.compile(rb"[0-7]*")
#: Longest GNU long name taken directly (tar's own limit is PATH_MAX); a longer one goes to tarfile.
_LONG_NAME_MAX = 4096


def _octal(field: bytes) -> int | None:
    """A numeric header field as tarfile reads it (up to its first NUL, spaces stripped, octal);
    ``None`` for base-256 or anything else tarfile would have to decide."""
    digits = field.split(b"\0", 1)[0].strip()
    if not _OCTAL.fullmatch(digits):
        return None
    return int(digits, 8) if digits else 0


class _TarStream:
    """A tar stream's members read straight from its 512-byte headers: import's staging pass.

    Takes what export writes (GNU or ustar headers of regular files and
    directories, GNU long names) and what a hostile bundle must be refused
    for (links, devices, FIFOs: their headers are read so the caller can say
    so); raises :class:`_Unusual` at anything else (pax records, a ustar name
    prefix, base-256 numbers, a bad or signed checksum, sparse or
    contiguous files), before any of that member's data is read. Data is
    read in large chunks from ``reader`` and handed out by exact sizes.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.buf = b""
        self.pos = 0

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes of the stream (fewer only at its end)."""
        buf, pos = self.buf, self.pos
        end = pos + size
        if end <= len(buf):
            self.pos = end
            return buf[pos:end]
        parts, got = [buf[pos:]], len(buf) - pos
        self.buf, self.pos = b"", 0
        while got < size:
            chunk = self.reader.read(max(_CHUNK, size - got))
            if not chunk:
                break
            need = size - got
            if len(chunk) > need:
                parts.append(chunk[:need])
                self.buf, self.pos = chunk, need
                got = size
            else:
                parts.append(chunk)
                got += len(chunk)
        return b"".join(parts)

    def skip(self, size: int) -> bool:
        """Skip ``size`` bytes; ``False`` if the stream ended first."""
        held = len(self.buf) - self.pos
        if size <= held:
            self.pos += size
            return True
        size -= held
        self.buf, self.pos = b"", 0
        while size:
            chunk = self.reader.read(_CHUNK)
            if not chunk:
                return False
            if len(chunk) > size:
                self.buf, self.pos = chunk, size
                return True
            size -= len(chunk)
        return True

    def next_member(self) -> tuple[str, bytes, int, bool] | None:
        """``(name, typeflag, size, is_dir)`` of the next member, its data not yet read; ``None`` at the
        end of the archive (a zero block, or the stream's end where a header would start: tarfile's rule).

        A GNU long-name header is applied to the header after it; names are decoded as tarfile decodes
        them (UTF-8, undecodable bytes kept as surrogates), a directory's trailing slashes removed.
        """
        long_name: bytes | None = None
        while True:
            header = self.take(tarfile.BLOCKSIZE)
            if len(header) < tarfile.BLOCKSIZE or header == _ZERO_BLOCK:
                if long_name is not None:
                    raise _Unusual("a GNU long name with no header after it")
                return None
            checksum, size = _octal(header[148:156]), _octal(header[124:136])
            if checksum is None or size is None:
                raise _Unusual("a number field tarfile must decode")
            if checksum != 256 + sum(header) - sum(header[148:156]):
                raise _Unusual("a checksum that is not the unsigned sum of the header")
            kind = header[156:157]
            if header[345] != 0:
                raise _Unusual("a ustar name prefix")
            if kind == tarfile.GNUTYPE_LONGNAME:
                if long_name is not None or size > _LONG_NAME_MAX:
                    raise _Unusual("a second or overlong GNU long name")
                data = self.take(size + (-size % tarfile.BLOCKSIZE))
                if len(data) < size:
                    raise _Unusual("a truncated GNU long name")
                long_name = data[:size].split(b"\0", 1)[0]
                continue
            if kind not in _DIRECT_TYPES:
                raise _Unusual(f"member type {kind!r}")
            short = header[:100].split(b"\0", 1)[0]
            is_dir = kind == tarfile.DIRTYPE or (kind == tarfile.AREGTYPE and short.endswith(b"/"))
            raw = short if long_name is None else long_name
            name = raw.decode("utf-8", "surrogateescape")
            if is_dir:
                name = name.rstrip("/") if long_name is None else name.removesuffix("/")
            return name, kind, size, is_dir


#: Member types :class:`_TarStream` returns: files and directories, and those import refuses outright.
_DIRECT_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                           tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE})
#: What import calls each type it refuses (as tarfile's ``issym``, ``islnk``, ``isdev`` sort them).
_REFUSED_KINDS = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "device file",
                  tarfile.BLKTYPE: "device file", tarfile.FIFOTYPE: "device file"}


def declared_sizes(bundle: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Member name -> the size the manifest declares for it (what staging will accept, byte for byte)."""
    entries = manifest.get("entries")
    if not isinstance(entries, list):
        raise BundleError(f"{bundle}: manifest field 'entries' must be a list", path=bundle)
    sizes: dict[str, int] = {}
    for index, entry in enumerate(entries):
        try:
            tree, name, files = entry["backend"], entry["name"], entry["files"]
            specs = [(f["path"], f["size"]) for f in files]
        except (KeyError, TypeError):
            raise BundleError(f"{bundle}: manifest entries[{index}] is malformed", path=bundle) from None
        prefix = f"deep_ep/cache/{name}" if tree == "deep_ep" else f"triton/{name}"
        for file, size in specs:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BundleError(f"{bundle}: manifest entries[{index}] gives {file!r} the size {size!r}",
                                  path=bundle)
            sizes[f"{prefix}/{file}"] = size
    return sizes


#: What staging wrote: (tree, entry) -> file name -> (size, sha256 hex).
Staged = dict[tuple[str, str], dict[str, tuple[int, str]]]
