"""Bundles: a cache (or one profile's part of it) as a single tar + zstd file, to ship between machines.

Layout of a bundle (a tar stream, zstd-compressed)::

    deep_ep/cache/<entry>/<file>      DeepEP entries, either layout (``.committed`` is not shipped:
    triton/<key>/<file>               import writes it last, on publish); Triton key directories
    manifest.json                     last: schema, environment fingerprint, and per entry its files
                                      with size and sha256

Export (:mod:`.bundle_export`, re-exported here) reads the cache without the
lock (it is a reader); an entry that vanishes while being read (a concurrent
prune) is left out whole and listed as skipped. The bundle is written to a
temporary file and renamed into place.

Import is all-or-nothing. It reads the manifest first (without writing
anything), refuses a bundle whose declared sizes exceed the limit or the free
space, then streams the bundle into a private staging directory inside the
root (same filesystem), refusing, from its header and before writing a byte
of it, any member the manifest does not list or whose size is not the one
it declares (a decompression bomb), and any member
that is not a regular file or directory (symlinks, hard links, devices,
FIFOs), any absolute path or ``..``, and anything outside the two trees
above. The tar headers are read directly (512-byte blocks, in large reads
of the decompressed stream; a bundle with a header that reader leaves to
:mod:`tarfile`, such as pax records, is staged again through tarfile), and
each DeepEP entry's cubin check is taken, as soon as its files are written,
from the bytes in memory (for a bundle of 500 entries or more, by a forked
child process reading them back while staging goes on: it only returns
verdicts, and any it does not return are taken here from disk). It then checks every file against the manifest
(size and sha256, nothing missing, nothing extra), the cubins, and the
environment fingerprint (refused on a mismatch unless ``force``). Only then, under the root lock, is each entry
published with one atomic rename; an identical entry already present is
skipped. If publishing fails part-way, the entries this import published
are taken back out, so the cache is exactly as before; a process killed
outright leaves only whole entries and a staging directory that
``verify --repair`` cleans up. :func:`import_bundles` does the same for
several bundles at once (one verification pass, one lock, one undo): the
per-entry bundles that ``jitcache pull`` downloads go through it, so a
pulled entry passes exactly the checks an imported one does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from jitcache.adapters.registry import adapter_for_layout
from jitcache.errors import BundleError, CacheError

from .bundle_export import _CHUNK, BUNDLE_KIND, ExportResult, environment_fingerprint, export_bundle, write_bundle
from .bundle_manifest import (_MAX_BYTES_ENV, _REFUSED_KINDS, Staged, _TarStream, _Unusual, _max_bytes, _member_target,
                              _open_tar, _read_manifest, _valid_entry_name, declared_sizes)
from .elf import InvalidCubin, normalize_arch, read_cubin
from .fingerprint import fingerprint_mismatches
from .formats import read_deep_ep_entry
from .faults import describe_free_space, filesystem_error, free_bytes, is_fault, require_writable
from .model import SCHEMA_VERSION
from .publish import COMMIT_MARKER, make_temp_dir, publish_entries, reclaim_orphans, remove_tree
from .reading import read_bytes
from .root import CacheRoot, LockHolder
from .verdicts import VerdictCache

__all__ = ["BUNDLE_KIND", "ExportResult", "ImportResult", "environment_fingerprint", "export_bundle",
           "import_bundle", "import_bundles", "write_bundle"]


# -- import -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    bundle: str
    published: tuple[str, ...]
    identical: tuple[str, ...]         # already present with the same files
    conflicts: tuple[str, ...]         # present with other files: kept as they were
    lost_race: tuple[str, ...]         # another process published the same entry meanwhile
    fingerprint: dict[str, Any]
    forced_mismatches: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "bundle": self.bundle, "published": list(self.published),
                "identical": list(self.identical), "conflicts": list(self.conflicts),
                "lost_race": list(self.lost_race), "fingerprint": self.fingerprint,
                "forced_mismatches": list(self.forced_mismatches)}


#: The verdict of one staged entry's cubin check, taken while staging: ``(arch or None, why it is refused or None)``.
Checked = dict[tuple[str, str], tuple["str | None", "str | None"]]

#: A member up to this size is kept in memory until its entry is checked (the entry's kernel.cu, cubin and
#: meta.json: kilobytes); a bigger one is streamed to disk and its entry is checked by reading it back.
_HOLD_MAX = 16 << 20
#: At most this many bytes are held for entries not yet complete (a bundle whose entries' members are
#: interleaved): past it, those entries are checked from disk instead.
_HELD_MAX = 256 << 20


def _stage(bundle: Path, staging: Path, manifest: dict[str, Any],
           sizes: dict[str, int] | None = None) -> tuple[Staged, Checked]:
    """Extract safely into ``staging/<tree>/<entry>/``: only members the manifest lists, each exactly the
    size it declares, checked from the member's header *before* a byte of it is written.

    Returns what was written, each file's size and sha256 taken from the
    bytes as they were written, so checking them needs no second read, and
    the cubin check of each DeepEP entry whose files were all held in memory
    (:func:`check_staged_cubins` checks the others from disk). The tar
    headers are read directly (:class:`~.bundle_manifest._TarStream`); a
    bundle with a header that reader leaves to tarfile is staged again from
    scratch through tarfile. ``sizes``: :func:`declared_sizes` of the manifest, if taken already.
    """
    sizes = declared_sizes(bundle, manifest) if sizes is None else sizes
    try:
        return _stage_direct(bundle, staging, manifest, sizes)
    except _Unusual:
        remove_tree(staging)
        staging.mkdir()
    return _stage_tarfile(bundle, staging, sizes), {}


def _refuse_member(bundle: Path, name: str, size: int, sizes: dict[str, int]) -> None:
    """The checks of a file member's header against the manifest, before a byte of it is written."""
    declared = sizes.get(name)
    if declared is None:
        raise BundleError(f"{bundle}: member {name!r} is not in the manifest; refused before "
                          "unpacking it", path=bundle)
    if size != declared:
        raise BundleError(f"{bundle}: member {name!r} is {size} bytes, the manifest "
                          f"declares {declared}: refused before unpacking it (a decompression "
                          "bomb, or a damaged bundle)", path=bundle)


def _stage_direct(bundle: Path, staging: Path, manifest: dict[str, Any], sizes: dict[str, int]
                  ) -> tuple[Staged, Checked]:
    """:func:`_stage` from the tar headers read directly; raises :class:`_Unusual` (nothing of that member
    written) where tarfile must decide."""
    import zstandard

    listed = _listed_counts(manifest)
    staged: Staged = {}
    checked: Checked = {}
    held: dict[tuple[str, str], dict[str, bytes]] = {}  # entries being staged whose bytes are all in memory
    held_bytes = 0
    verdicts = _HeldBytes()
    worker = _CheckWorker.start(sum(1 for tree, _ in listed if tree == "deep_ep"))
    chmod = _umask_clears(0o644)
    top = os.fspath(staging)
    made: set[str] = set()
    try:
        with open(bundle, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            try:
                tar = _TarStream(reader)
                while (member := tar.next_member()) is not None:
                    name, kind, size, is_dir = member
                    target = _member_target(name, bundle, is_dir=is_dir)
                    if is_dir:
                        continue  # tarfile reads no data after a directory's header either
                    refused = _REFUSED_KINDS.get(kind)
                    if refused is not None:
                        raise BundleError(f"{bundle}: member {name!r} is a {refused}; refused", path=bundle)
                    padded = size + (-size % tarfile.BLOCKSIZE)
                    if target is None:  # manifest.json: read already
                        if not tar.skip(padded):
                            raise _truncated(bundle, name)
                        continue
                    _refuse_member(bundle, name, size, sizes)
                    tree, entry, file = target
                    key = (tree, entry)
                    files = staged.get(key)
                    directory = f"{top}/{tree}/{entry}"
                    if files is None:
                        if tree not in made:
                            os.makedirs(f"{top}/{tree}", mode=0o755, exist_ok=True)
                            made.add(tree)
                        try:
                            os.mkdir(directory, 0o755)
                        except FileExistsError:
                            pass
                        files = staged[key] = {}
                        if tree == "deep_ep":
                            held[key] = {}
                    if file in files:
                        raise BundleError(f"{bundle}: member {name!r} appears twice; refused", path=bundle)
                    path = f"{directory}/{file}"
                    if size <= _HOLD_MAX:
                        data = tar.take(size)
                        if len(data) < size or not tar.skip(padded - size):
                            raise _truncated(bundle, name)
                        files[file] = _write_bytes(path, data, chmod)
                        holding = held.get(key)
                        if holding is not None:
                            holding[file] = data
                            held_bytes += size
                    else:
                        files[file] = _write_streamed(path, tar, size, chmod, bundle, name)
                        tar.skip(padded - size)
                        held.pop(key, None)
                    if len(files) == listed.get(key) and key in held:
                        holding = held.pop(key)
                        held_bytes -= sum(map(len, holding.values()))
                        if worker is not None:  # its files are written and closed: the worker reads them
                            worker.submit(key, directory, entry)
                            continue
                        verdicts.held = {f"{directory}/{n}": d for n, d in holding.items()}
                        checked[key] = _deep_ep_verdict(directory, entry, verdicts)
                        verdicts.held = {}
                    elif held_bytes > _HELD_MAX:  # interleaved entries: check them from disk later
                        held.clear()
                        held_bytes = 0
            finally:
                reader.close()
            if worker is not None:
                checked.update(worker.results())  # what it could not check is checked from disk later
    except (zstandard.ZstdError, EOFError) as exc:
        raise BundleError(f"{bundle}: not a readable jitcache bundle ({exc})", path=bundle) from None
    finally:
        if worker is not None:
            worker.close()
    return staged, checked


def _truncated(bundle: Path, name: str) -> BundleError:
    return BundleError(f"{bundle}: not a readable jitcache bundle (unexpected end of data in {name!r})",
                       path=bundle)


def _listed_counts(manifest: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(tree, entry) -> how many distinct files the manifest lists for it (malformed entries are left to
    :func:`_check_staged`)."""
    counts: dict[tuple[str, str], int] = {}
    for entry in manifest.get("entries") or ():
        try:
            counts[(str(entry["backend"]), str(entry["name"]))] = len({f["path"] for f in entry["files"]})
        except (KeyError, TypeError):
            continue
    return counts


def _umask_clears(mode: int) -> bool:
    """Whether the process umask clears any bit of ``mode`` (read from /proc, never set: threads share it)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return bool(int(line.split()[1], 8) & mode)
    except (OSError, ValueError, IndexError):
        pass
    return True  # unknown: chmod every file


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _write_bytes(dest: str, data: bytes, chmod: bool) -> tuple[int, str]:
    """Write ``data`` to a new file ``dest`` (mode 0644 whatever the umask); its size and sha256.

    Not fsync'ed here: :func:`~.publish.publish_entries` syncs the whole
    staging tree once, before the first rename.
    """
    fd = os.open(dest, _CREATE, 0o644)
    try:
        if chmod:
            os.fchmod(fd, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return len(data), hashlib.sha256(data).hexdigest()


def _write_streamed(dest: str, tar: _TarStream, size: int, chmod: bool, bundle: Path, name: str
                    ) -> tuple[int, str]:
    """:func:`_write_bytes` of the next ``size`` bytes of ``tar``, a chunk at a time (a big member)."""

    def chunks() -> Iterator[bytes]:
        left = size
        while left:
            chunk = tar.take(min(left, _CHUNK))
            if not chunk:
                raise _truncated(bundle, name)
            left -= len(chunk)
            yield chunk

    return _write_chunks(dest, chunks(), chmod)


def _write_chunks(dest: str, chunks: Iterable[bytes], chmod: bool) -> tuple[int, str]:
    """:func:`_write_bytes` of ``chunks`` as they come (a member too big to hold, or a tarfile member)."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dest, _CREATE, 0o644)
    try:
        if chmod:
            os.fchmod(fd, 0o644)
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return size, digest.hexdigest()


#: A bundle with at least this many DeepEP entries has its cubin checks taken by a second process while
#: staging writes (the checks are half of an import's CPU time, the writes most of the rest).
_WORKER_MIN_ENTRIES = 500


class _CheckWorker:
    """The cubin checks of staged DeepEP entries in a forked child process, while staging goes on.

    The child reads each entry from disk once staging has written and
    closed all of its files, and checks it as :func:`check_staged_cubins`
    does; it only takes verdicts, never decides: whatever it does not
    return (it died, was killed, or failed on an entry) is checked by the
    caller from disk as before. It ends when staging closes its end of the
    pipe (also when the importing process is killed outright).
    """

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_check_worker_main, args=(child, self.conn), daemon=True,
                                    name="jitcache-import-check")
        self.proc.start()
        child.close()
        self.batch: list[tuple[tuple[str, str], str, str]] = []
        self.failed = False

    @classmethod
    def start(cls, entries: int) -> "_CheckWorker | None":
        """A worker for a bundle of ``entries`` DeepEP entries, or None: a small bundle, one core, a process
        with other threads (forking one is unsafe), or no ``fork`` here."""
        import sys
        import threading

        if entries < _WORKER_MIN_ENTRIES or (os.cpu_count() or 1) < 2 or threading.active_count() != 1 \
                or not sys.platform.startswith("linux"):
            return None
        try:
            return cls()
        except (OSError, ValueError):
            return None

    def submit(self, key: tuple[str, str], directory: str, name: str) -> None:
        self.batch.append((key, directory, name))
        if len(self.batch) >= 64:
            self._flush()

    def _flush(self) -> None:
        batch, self.batch = self.batch, []
        if batch and not self.failed:
            try:
                self.conn.send(batch)
            except (OSError, ValueError):
                self.failed = True  # the child is gone: the caller checks these entries itself

    def results(self) -> Checked:
        """Every verdict the child took; then it is gone."""
        out: Checked = {}
        try:
            self._flush()
            if not self.failed:
                self.conn.send(None)
                received = self.conn.recv()
                if isinstance(received, dict):
                    out = received
        except (OSError, EOFError, ValueError):
            pass
        finally:
            self.close()
        return out

    def close(self) -> None:
        if self.proc is None:
            return
        self.conn.close()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.proc.close()
        self.proc = None  # type: ignore[assignment]


def _check_worker_main(conn: Any, parent_end: Any) -> None:
    """The child of :class:`_CheckWorker`: batches of ``(key, directory, name)`` in, one dict of verdicts out."""
    parent_end.close()  # else the child would keep its own pipe open after the parent died
    verdicts = VerdictCache(None)
    out: Checked = {}
    try:
        while (batch := conn.recv()) is not None:
            for key, directory, name in batch:
                try:
                    out[key] = _deep_ep_verdict(directory, name, verdicts)
                except Exception:
                    continue  # left to the parent, which checks it from disk
        conn.send(out)
    except BaseException:  # the parent is gone or interrupted: nothing to report, nothing to print
        pass
    finally:
        conn.close()


class _HeldBytes(VerdictCache):
    """No verdicts remembered (staged files are new); a file staging still holds is read from memory."""

    def __init__(self) -> None:
        super().__init__(None)
        self.held: dict[str, bytes] = {}

    def read(self, path: str, before: os.stat_result | None = None) -> tuple[bytes, os.stat_result, os.stat_result]:
        data = self.held.get(path)
        if data is None:
            return super().read(path, before)
        st = os.stat(path) if before is None else before
        return data, st, st

    def put(self, path: str, before: os.stat_result, after: os.stat_result | None, facts: Any) -> None:
        pass  # a staged file's facts are never remembered


def _stage_tarfile(bundle: Path, staging: Path, sizes: dict[str, int]) -> Staged:
    """:func:`_stage` through tarfile's members: a bundle whose headers :class:`_TarStream` leaves to it."""
    import zstandard

    staged: Staged = {}
    chmod = _umask_clears(0o644)
    try:
        with _open_tar(bundle) as tar:
            for member in tar:
                target = _member_target(member.name, bundle, is_dir=member.isdir())
                if member.isdir():
                    continue
                if not member.isfile():
                    kind = ("symlink" if member.issym() else "hard link" if member.islnk() else
                            "device file" if member.isdev() else "special file")
                    raise BundleError(f"{bundle}: member {member.name!r} is a {kind}; refused", path=bundle)
                if target is None:
                    continue  # manifest.json: read already
                _refuse_member(bundle, member.name, member.size, sizes)
                source = tar.extractfile(member)
                assert source is not None
                tree, entry, file = target
                files = staged.get((tree, entry))
                directory = staging / tree / entry
                if files is None:
                    files = staged[(tree, entry)] = {}
                    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
                if file in files:
                    raise BundleError(f"{bundle}: member {member.name!r} appears twice; refused", path=bundle)
                chunks = iter(functools.partial(source.read, _CHUNK), b"")
                files[file] = _write_chunks(os.fspath(directory / file), chunks, chmod)
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise BundleError(f"{bundle}: not a readable jitcache bundle ({exc})", path=bundle) from None
    return staged


def _check_room(bundle: Path, staging: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Refuse, before writing, a bundle that declares more than the limit or than the free space; returns
    :func:`declared_sizes`."""
    sizes = declared_sizes(bundle, manifest)
    declared = sum(sizes.values())
    limit = _max_bytes()
    if declared > limit:
        raise BundleError(f"{bundle}: its manifest declares {declared} bytes, so it unpacks to more than {limit} "
                          f"bytes ({_MAX_BYTES_ENV} sets the limit); refused", path=bundle)
    room = free_bytes(staging)
    if room is not None and declared > room:
        raise CacheError(f"{staging.parent}: the bundle unpacks to {declared} bytes, {describe_free_space(staging)} "
                         "; nothing imported", path=staging.parent,
                         hint="free some space (jitcache prune --max-size ...), or import into another --cache-dir")
    return sizes


def _sha256(path: Path) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()  # comparing with a cached entry is not a use


def _check_staged(bundle: Path, staged: Staged, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every staged file is the manifest's (size, sha256), nothing missing, nothing unlisted."""
    entries = manifest.get("entries")
    if not isinstance(entries, list):
        raise BundleError(f"{bundle}: manifest field 'entries' must be a list", path=bundle)
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        try:
            tree, name, files = entry["backend"], entry["name"], entry["files"]
            listed = {f["path"]: f for f in files}
        except (KeyError, TypeError):
            raise BundleError(f"{bundle}: manifest entries[{index}] is malformed", path=bundle) from None
        if tree not in ("deep_ep", "triton") or not _valid_entry_name(tree, name):
            raise BundleError(f"{bundle}: manifest entries[{index}] ({tree!r}, {name!r}) is not a cache entry",
                              path=bundle)
        if (tree, name) in seen:
            raise BundleError(f"{bundle}: manifest lists entry {name} twice", path=bundle)
        present = staged.get((tree, str(name)), {})
        if set(present) != set(listed):
            extra, lost = sorted(set(present) - set(listed)), sorted(set(listed) - set(present))
            raise BundleError(f"{bundle}: entry {name}: files differ from the manifest "
                              f"(missing {lost or 'none'}, unlisted {extra or 'none'})", path=bundle)
        for file_name, spec in listed.items():
            size, sha = present[file_name]
            if size != spec.get("size") or sha != spec.get("sha256"):
                raise BundleError(f"{bundle}: entry {name}: {file_name} fails its sha256 check "
                                  f"(expected {spec.get('sha256')})", path=bundle)
        seen.add((tree, str(name)))
    for tree, name in staged:
        if (tree, name) not in seen:
            raise BundleError(f"{bundle}: entry {name} is not in the manifest; refused", path=bundle)
    return entries


#: Problems of a staged entry that say nothing about the bundle (the marker is written on publish; the
#: staging directory is ours).
_STAGING_CODES = frozenset({"not_committed", "unsafe_permissions", "foreign_owner"})


def _deep_ep_verdict(directory: str, name: str, verdicts: VerdictCache) -> tuple[str | None, str | None]:
    """``(arch or None, why the entry is refused or None)`` of one staged DeepEP entry, read as a runtime
    will see it (see :func:`check_staged_cubins`)."""
    found = read_deep_ep_entry(directory, verdicts=verdicts)
    if found.foreign:
        return None, (f"entry {name} is not a DeepEP kernel ({found.family!r}); jitcache ships only DeepEP's "
                      "and Triton's; nothing imported")
    errors = [p for p in found.problems if p.severity == "error" and p.code not in _STAGING_CODES]
    if errors:
        return None, (f"entry {name}: {os.path.basename(errors[0].path)} {errors[0].message} ({errors[0].code}); "
                      "nothing imported")
    return found.arch or None, None


def check_staged_cubins(bundle: Path, staging: Path, entries: list[dict[str, Any]],
                        checked: Checked | None = None) -> list[str]:
    """Every staged cubin as a runtime will see it: a CUDA ELF, for the arch its ELF header names and
    (DeepEP) holding exactly the one kernel its ``kernel.cu`` instantiates. Returns the archs found.

    The arch comes from each cubin, never from the manifest: a bundle is
    input from elsewhere, and a cubin for another GPU would fail only when
    serving. Raises :class:`BundleError` naming the entry and the file, for
    the first refused entry in the manifest's order. ``checked`` holds the
    verdicts staging already took from the bytes it wrote (:func:`_stage`);
    every other entry is read from ``staging``.
    """
    archs: set[str] = set()
    verdicts = VerdictCache(None)  # staged files are new: nothing to remember, one cache for the batch
    checked = checked or {}
    for entry in entries:
        tree, name = entry["backend"], str(entry["name"])
        directory = staging / tree / name
        if tree == "deep_ep":
            verdict = checked.get((tree, name))
            arch, why = verdict if verdict is not None else _deep_ep_verdict(os.fspath(directory), name, verdicts)
            if why is not None:
                raise BundleError(f"{bundle}: {why}", path=bundle)
            if arch:
                archs.add(arch)
            continue
        for cubin in sorted(directory.glob("*.cubin")):
            try:
                archs.add(read_cubin(cubin).arch)
            except InvalidCubin as exc:
                raise BundleError(f"{bundle}: entry {name}: {cubin.name} {exc.reason} (invalid_cubin); "
                                  "nothing imported", path=bundle) from None
    return sorted(archs)


def _same_entry(staged: Path, final: Path, tree: str) -> bool:
    """Identical files (Triton group files compared by the names they list: their paths differ by root)."""
    try:
        ours = {p.name for p in staged.iterdir()}
        theirs = {p.name for p in final.iterdir() if p.name != COMMIT_MARKER}
    except OSError:
        return False
    if ours != theirs:
        return False
    for name in ours:
        if tree == "triton" and name.startswith("__grp__"):
            try:
                a = json.loads((staged / name).read_text())["child_paths"].keys()
                b = json.loads((final / name).read_text())["child_paths"].keys()
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            if set(a) != set(b):
                return False
        elif _sha256(staged / name) != _sha256(final / name):
            return False
    return True


def _rewrite_triton_groups(directory: Path, final: Path) -> None:
    """Triton's group files hold absolute paths: point them at where the entry will live."""
    for group in directory.glob("__grp__*.json"):
        data = json.loads(group.read_text())
        data["child_paths"] = {name: str(final / name) for name in data["child_paths"]}
        group.write_text(json.dumps(data))


def import_bundle(root: CacheRoot, bundle: str | Path, *, force: bool = False, target_arch: str | None = None,
                  on_wait: Callable[[LockHolder], None] | None = None, timeout: float | None = None,
                  _after_publish: Callable[[str], None] | None = None) -> ImportResult:
    """Import ``bundle`` into ``root``: verify everything, then publish entry by entry (see module doc).

    ``target_arch`` (``sm_90a``) makes a bundle whose cubins are for another arch a mismatch.
    """
    return import_bundles(root, [bundle], force=force, target_arch=target_arch, on_wait=on_wait, timeout=timeout,
                          _after_publish=_after_publish)[0]


def import_bundles(root: CacheRoot, bundles: Sequence[str | Path], *, force: bool = False,
                   target_arch: str | None = None, on_wait: Callable[[LockHolder], None] | None = None,
                   timeout: float | None = None, command: str | None = None,
                   _after_publish: Callable[[str], None] | None = None) -> tuple[ImportResult, ...]:
    """Import several bundles as one: every one verified before any entry is published, one lock, one undo.

    What ``jitcache pull`` uses for the per-entry bundles it downloads; one
    result per bundle, in order.
    """
    paths = [Path(b).expanduser().absolute() for b in bundles]
    for bundle in paths:
        if not bundle.is_file():
            raise BundleError(f"{bundle}: no such bundle file", path=bundle)
    what = command or f"jitcache import {paths[0].name if len(paths) == 1 else f'({len(paths)} bundles)'}"
    label = paths[0].name if len(paths) == 1 else f"{len(paths)} bundles"
    root.ensure()
    require_writable(root.deep_ep_dir, action=f"import {label}")
    reclaim_orphans(root.deep_ep_dir / "tmp")  # what killed imports and warmups left behind
    staging = make_temp_dir(root.deep_ep_dir, kind="import")
    published: list[str] = []  # final paths of the entries this import renamed into place
    try:
        checked = []
        for index, bundle in enumerate(paths):
            here = staging / str(index)
            here.mkdir()
            manifest = _read_manifest(bundle)
            sizes = _check_room(bundle, here, manifest)
            try:
                staged_files, checked_cubins = _stage(bundle, here, manifest, sizes)
            except OSError as exc:
                raise filesystem_error(exc, staging.parent, action=f"unpack {bundle.name}",
                                       partial="nothing imported (the partly unpacked copy is removed)") from None
            entries = _check_staged(bundle, staged_files, manifest)
            fingerprint = manifest.get("fingerprint") or {}
            archs = check_staged_cubins(bundle, here, entries, checked_cubins)
            claimed = fingerprint.get("archs") if isinstance(fingerprint, dict) else None
            claimed = sorted({a for a in claimed if isinstance(a, str) and normalize_arch(a)}) if claimed else []
            if claimed and claimed != archs:
                raise BundleError(f"{bundle}: the manifest says its cubins are for {claimed}, their ELF "
                                  f"headers say {archs}; refused", path=bundle)
            mismatches = fingerprint_mismatches({**fingerprint, "archs": archs}, entries, target_arch=target_arch)
            if mismatches and not force:
                raise BundleError(f"{bundle}: built for another environment: {'; '.join(mismatches)}", path=bundle,
                                  hint="pass --force to import anyway (entries for another compiler or GPU are "
                                       "never hit)")
            if any(e["backend"] == "triton" for e in entries) and root.triton_dir is None:
                raise BundleError(f"{bundle}: holds Triton entries, but {root.path} is a bare DeepEP cache",
                                  path=bundle)
            checked.append((bundle, here, entries, fingerprint, mismatches))
        results = []
        with root.lock(command=what, on_wait=on_wait, timeout=timeout):
            builds: list[tuple[str, str, str | None]] = []
            outcomes: list[dict[str, list[str]]] = []
            owner: list[int] = []  # the bundle (index into checked) of each build
            markers: dict[str, str | None] = {}  # entry format -> its commit marker
            cache_dir = os.fspath(root.deep_ep_dir / "cache")
            triton_dir = os.fspath(root.triton_dir) if root.triton_dir is not None else ""
            for index, (bundle, here, entries, fingerprint, mismatches) in enumerate(checked):
                result: dict[str, list[str]] = {"published": [], "identical": [], "conflicts": [], "lost_race": []}
                outcomes.append(result)
                top = os.fspath(here)
                for entry in entries:
                    tree, name = entry["backend"], entry["name"]
                    staged = f"{top}/{tree}/{name}"
                    final = f"{cache_dir}/{name}" if tree == "deep_ep" else f"{triton_dir}/{name}"
                    if os.path.exists(final):
                        key = "identical" if _same_entry(Path(staged), Path(final), tree) else "conflicts"
                        result[key].append(name)
                        continue
                    if tree == "triton":
                        _rewrite_triton_groups(Path(staged), Path(final))
                    fmt = str(entry.get("format"))
                    if fmt not in markers:
                        layout = adapter_for_layout(fmt)
                        markers[fmt] = layout.commit_marker if layout is not None else None
                    builds.append((staged, final, markers[fmt]))
                    owner.append(index)

            def on_published(build: int, final: str) -> None:
                published.append(final)
                name = os.path.basename(final)
                outcomes[owner[build]]["published"].append(name)
                if _after_publish is not None:
                    _after_publish(name)

            # One sync for every build of every bundle, then one rename per entry (see publish_entries).
            won = publish_entries(builds, on_published=on_published)
            for (_, final, _), ok, index in zip(builds, won, owner):
                if not ok:
                    outcomes[index]["lost_race"].append(os.path.basename(final))
            for (bundle, _, _, fingerprint, mismatches), result in zip(checked, outcomes):
                results.append(ImportResult(str(bundle), tuple(result["published"]), tuple(result["identical"]),
                                            tuple(result["conflicts"]), tuple(result["lost_race"]), fingerprint,
                                            tuple(mismatches) if force else ()))
    except BaseException as exc:
        _take_back(root, published)
        taken_back = f"nothing imported ({len(published)} entries published before the failure were taken back)"
        if isinstance(exc, OSError) and is_fault(exc):
            raise filesystem_error(exc, root.deep_ep_dir / "cache", action=f"import {label}",
                                   partial=taken_back) from None
        if type(exc) is CacheError and published:
            raise CacheError(f"{exc.message}; {taken_back}", path=exc.path, hint=exc.hint) from None
        raise
    finally:
        remove_tree(staging)
    return tuple(results)


def _take_back(root: CacheRoot, published: list[str]) -> None:
    """Undo this import's publishes after a failure: out of ``cache/`` by rename, then deleted."""
    for final in reversed(published):
        try:
            doomed = make_temp_dir(root.deep_ep_dir)
            os.rename(final, doomed / os.path.basename(final))
            remove_tree(doomed)
        except (OSError, CacheError):
            pass
