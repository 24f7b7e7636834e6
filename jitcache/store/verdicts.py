"""Remembered verdicts: what a scan read out of a file, reused while the file is provably unchanged.

A scan reads three files of every entry (``kernel.cu``, ``kernel.cubin``,
``meta.json``) and derives facts from them (template parameters, the
cubin's arch and kernel entries, the nvcc version). Those facts are kept in
``<meta>/verdicts.json``, each under the file's path with its *signature*:
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` (by directory, then file
name: ``{"checker": ..., "dirs": {dir: {name: [signature, facts]}}}``). A later scan that
finds the same signature reuses the facts instead of reading and parsing
the file again; any write, replacement, chmod or copy changes the
signature (``ctime`` cannot be set from user space), so the file is read
afresh. What is *checked* from the facts (one kernel entry, the arch, the
permissions, the markers) is still checked on every scan, from fresh
``lstat`` results.

Two rules keep a remembered verdict from ever describing other bytes:

- "racily clean" files (git's term) are not remembered: a file modified
  less than :data:`RACY_S` seconds before it was read could be rewritten
  within the same timestamp tick after the read, with the same size;
- the signature is taken before the read and compared with ``fstat`` after
  it; a file that changed meanwhile is not remembered.

The file is a cache: a missing, stale or damaged one only costs time. It is
written (atomically, to a temporary file then renamed) only into a meta
folder that already exists, never created by a read-only command, and a
failure to write it is ignored. Verdicts of the checker's older versions
are dropped (:data:`CHECKER`, plus the size and mtime of ``elf.py``,
``formats.py`` and ``kernels.py``, which derive them).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .reading import read_bytes_and_stat

__all__ = ["RACY_S", "VERDICTS_FILE", "VerdictCache", "signature"]

VERDICTS_FILE = "verdicts.json"
#: Bump when what a verdict holds, or how it is derived, changes.
CHECKER = 4
#: A file modified this recently is read every time (see the module doc).
RACY_S = 2.0


def signature(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _checker_id() -> str:
    """:data:`CHECKER` and the size and mtime of the modules that derive the facts: editing or
    reinstalling any of them drops every remembered verdict."""
    # By path, not by importing them: formats imports this module (no cycle, lazy or not: tests/test_layers.py).
    here = os.path.dirname(os.path.abspath(__file__))
    parts = [str(CHECKER)]
    for module in ("elf", "formats", "kernels"):
        try:
            st = os.stat(os.path.join(here, f"{module}.py"))
            parts.append(f"{st.st_size}.{st.st_mtime_ns}")
        except OSError:
            parts.append("?")
    return ":".join(parts)


class VerdictCache:
    """Facts derived from files, keyed by path and signature. ``file=None``: remember nothing across runs.

    Held (and written) by directory, then file name: an entry's three files share one key.
    """

    def __init__(self, file: Path | None = None) -> None:
        self.file = file
        self._checker = _checker_id()
        self._old: dict[str, dict[str, list]] = {}
        self._new: dict[str, dict[str, list]] = {}
        self._old_count = self._new_count = 0
        self._changed = False
        self._now = time.time()
        if file is not None:
            try:
                data = json.loads(file.read_bytes())
                if isinstance(data, dict) and data.get("checker") == self._checker and \
                        isinstance(data.get("dirs"), dict):
                    self._old = data["dirs"]
                    self._old_count = sum(len(files) for files in self._old.values() if isinstance(files, dict))
            except (OSError, ValueError):
                pass

    @classmethod
    def for_root(cls, root: Any) -> "VerdictCache":
        return cls(Path(root.meta_dir) / VERDICTS_FILE)

    def get(self, path: str, st: os.stat_result) -> tuple[bool, Any]:
        """``(True, facts)`` remembered for ``path`` with exactly this signature, else ``(False, None)``."""
        directory, _, name = path.rpartition("/")
        return self.get_in(directory, name, st)

    def get_in(self, directory: str, name: str, st: os.stat_result) -> tuple[bool, Any]:
        """:meth:`get` of ``directory + "/" + name``."""
        files = self._old.get(directory)
        record = files.get(name) if isinstance(files, dict) else None
        if isinstance(record, list) and len(record) == 2 and \
                record[0] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]:
            self._keep(directory, name, record)
            return True, record[1]
        return False, None

    def _keep(self, directory: str, name: str, record: list) -> None:
        files = self._new.get(directory)
        if files is None:
            files = self._new[directory] = {}
        if name not in files:
            self._new_count += 1
        files[name] = record

    def put(self, path: str, before: os.stat_result, after: os.stat_result | None, facts: Any) -> None:
        """Remember ``facts`` read from ``path`` between the ``before`` and ``after`` (fstat) signatures."""
        directory, _, name = path.rpartition("/")
        self.put_in(directory, name, before, after, facts)

    def put_in(self, directory: str, name: str, before: os.stat_result, after: os.stat_result | None,
               facts: Any) -> None:
        """:meth:`put` of ``directory + "/" + name``."""
        sig = signature(before)
        if after is None or signature(after) != sig or self._now - before.st_mtime < RACY_S:
            return
        self._keep(directory, name, [sig, facts])
        self._changed = True

    def read(self, path: str, before: os.stat_result | None = None) -> tuple[bytes, os.stat_result, os.stat_result]:
        """The bytes of ``path`` with its signature before (``before``: a ``stat`` the caller already took)
        and after the read (raises ``OSError``). Never a use: a read keeps the file's atime (:mod:`.reading`)."""
        if before is None:
            before = os.stat(path)
        data, after = read_bytes_and_stat(path, before.st_size)
        return data, before, after

    def save(self) -> None:
        """Write what this run used or learned (and drop what it did not see), if the meta folder exists."""
        if self.file is None or not (self._changed or self._new_count != self._old_count):
            return
        if not self.file.parent.is_dir():
            return
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        try:
            blob = json.dumps({"checker": self._checker, "dirs": self._new}, separators=(",", ":"))
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(blob)  # one C-encoded string: json.dump's chunked writes are ~10x slower
            os.replace(tmp, self.file)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
