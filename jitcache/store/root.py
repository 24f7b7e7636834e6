"""The cache root: where it is, what it holds, its lock, and the exports a worker needs.

Layout (version :data:`LAYOUT_VERSION`)::

    <root>/
      CACHEDIR.TAG          # backup and indexing tools skip the whole tree
      deep_ep/              # DeepEP's own format: EP_JIT_CACHE_DIR points here
        cache/<name>.<32 hex>/   (2.5 / DeepJIT)  or  cache/kernel.<name>.<32 hex>/  (2.1)
        tmp/<uuid>/              builds in progress (DeepEP's and ours)
      triton/               # Triton's own format: TRITON_CACHE_DIR points here
      meta/                 # jitcache's own files
        layout.json         # {"layout": 1, ...}
        root.lock           # the mutation lock (filelock)
        root.lock.owner     # who holds it: pid, host, command, since
      quarantine/           # entries `verify --repair` moved out of the way

Each backend folder is in the backend's native format, so DeepEP and Triton
read and write it directly, with or without jitcache in the process.

Readers never take the lock; every mutation does (``with root.lock(): ...``).
The lock serialises jitcache's own maintenance commands. It is *not* what keeps
entries whole: DeepEP ranks never take it, and on NFS/Lustre ``flock`` may
succeed in two processes at once. Entries stay whole because every one of them
is published by a single directory rename (see :mod:`jitcache.store.publish`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from jitcache import settings
from jitcache.errors import CacheError, CacheLockTimeout, UsageError

__all__ = [
    "CACHEDIR_TAG",
    "LAYOUT_VERSION",
    "CacheRoot",
    "LockHolder",
    "activate",
    "default_root_path",
    "env_exports",
    "resolve_root",
]

#: The version of the layout above. A root written by a newer jitcache is refused, not guessed at.
LAYOUT_VERSION = 1

#: https://bford.info/cachedir/ : the first line is the signature tools look for.
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by jitcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)

#: Seconds a mutation waits for the root lock before giving up (``JITCACHE_LOCK_TIMEOUT`` overrides).
DEFAULT_LOCK_TIMEOUT = 600.0
#: Seconds of waiting after which the caller is told who holds the lock.
LOCK_NOTICE_AFTER = 3.0

# Permissions for what jitcache creates: cubins in here are executed on the GPU,
# so nothing is writable by group or others, whatever the umask says.
DIR_MODE = 0o755
FILE_MODE = 0o644


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) the root lock, read from the lock's sidecar file."""

    pid: int | None
    host: str | None
    command: str | None
    since: float | None

    def describe(self) -> str:
        import socket

        if self.pid is None:
            return "another process (no owner recorded)"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        age = f" for {time.time() - self.since:.0f} s" if self.since else ""
        what = f" ({self.command})" if self.command else ""
        return f"pid {self.pid}{where}{what}{age}"


@dataclass(frozen=True)
class CacheRoot:
    """A jitcache cache root. Creating the object touches nothing on disk; :meth:`ensure` does.

    ``deep_ep_dir``, ``triton_dir`` and ``meta_dir`` default to the layout's
    folders under ``path``; :meth:`for_deep_ep_dir` builds a root around a
    cache DeepEP wrote on its own (no jitcache files in it).
    """

    path: Path
    external: bool = False

    # -- layout ----------------------------------------------------------------------------------

    @property
    def deep_ep_dir(self) -> Path:
        return self.path if self.external else self.path / "deep_ep"

    @property
    def triton_dir(self) -> Path | None:
        return None if self.external else self.path / "triton"

    @property
    def meta_dir(self) -> Path:
        # A bare DeepEP cache gets a hidden folder: DeepEP only looks in cache/ and tmp/.
        return self.path / (".jitcache" if self.external else "meta")

    @property
    def quarantine_dir(self) -> Path:
        return self.meta_dir / "quarantine" if self.external else self.path / "quarantine"

    @property
    def layout_file(self) -> Path:
        return self.meta_dir / "layout.json"

    @property
    def lock_file(self) -> Path:
        return self.meta_dir / "root.lock"

    @property
    def owner_file(self) -> Path:
        return self.meta_dir / "root.lock.owner"

    @classmethod
    def for_deep_ep_dir(cls, directory: str | Path) -> "CacheRoot":
        """A root around an existing DeepEP cache dir (what ``EP_JIT_CACHE_DIR`` pointed at)."""
        return cls(Path(directory).expanduser().absolute(), external=True)

    def exists(self) -> bool:
        return self.path.is_dir()

    def layout_version(self) -> int | None:
        """The layout version written in the root, ``None`` for a root jitcache never initialised."""
        try:
            data = json.loads(self.layout_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CacheError(f"{self.layout_file}: unreadable layout file ({exc})", path=self.layout_file,
                             hint="fix or remove the file; jitcache rewrites it") from None
        version = data.get("layout") if isinstance(data, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise CacheError(f"{self.layout_file}: field 'layout' must be an integer, got {version!r}",
                             path=self.layout_file)
        return version

    def check_layout(self) -> None:
        """Refuse a root written by a newer jitcache (its layout may mean something else)."""
        version = self.layout_version()
        if version is not None and version > LAYOUT_VERSION:
            raise CacheError(
                f"{self.path}: cache layout {version} is newer than this jitcache understands ({LAYOUT_VERSION})",
                path=self.path, hint="upgrade jitcache, or use another --cache-dir")

    def ensure(self) -> "CacheRoot":
        """Create the layout (idempotent) and return self. Only writers call this."""
        from .publish import atomic_write_text  # publish imports root: keep the cycle lazy

        self.check_layout()
        dirs = [self.path, self.deep_ep_dir, self.deep_ep_dir / "cache", self.deep_ep_dir / "tmp", self.meta_dir]
        if self.triton_dir is not None:
            dirs.append(self.triton_dir)
        for directory in dirs:
            make_private_dir(directory)
        from .faults import filesystem_error

        if not self.external:
            tag = self.path / "CACHEDIR.TAG"
            if not tag.exists():
                try:
                    atomic_write_text(tag, CACHEDIR_TAG)
                except OSError as exc:
                    raise filesystem_error(exc, tag, action="create the cache root's CACHEDIR.TAG") from None
        if not self.layout_file.exists():
            from jitcache._version import __version__

            try:
                atomic_write_text(self.layout_file, json.dumps(
                    {"layout": LAYOUT_VERSION, "created_by": f"jitcache {__version__}"}, indent=2) + "\n")
            except OSError as exc:
                raise filesystem_error(exc, self.layout_file, action="write the cache layout file") from None
        return self

    # -- lock ------------------------------------------------------------------------------------

    def lock_holder(self) -> LockHolder:
        """Who last took the lock (meaningful while the lock is held)."""
        try:
            data = json.loads(self.owner_file.read_text())
            return LockHolder(pid=data.get("pid"), host=data.get("host"), command=data.get("command"),
                              since=data.get("since"))
        except (OSError, ValueError, AttributeError):
            return LockHolder(None, None, None, None)

    @contextmanager
    def lock(self, *, timeout: float | None = None, command: str | None = None,
             on_wait: Callable[[LockHolder], None] | None = None,
             notice_after: float = LOCK_NOTICE_AFTER) -> Iterator["CacheRoot"]:
        """Hold the root's mutation lock.

        Waits up to ``timeout`` seconds (default ``JITCACHE_LOCK_TIMEOUT`` or
        600); after ``notice_after`` seconds of waiting ``on_wait`` is called
        once with the holder, so that a command can say who it waits for.
        Raises :class:`CacheLockTimeout` naming the lock file and the holder.
        """
        import filelock  # only mutations lock: readers (inspect, env) never load it

        from .faults import filesystem_error, require_writable

        self.ensure()
        # A read-only cache cannot be changed: say so now, not as a lock that never comes.
        require_writable(self.meta_dir, action=f"change the cache ({command or 'take its lock'})")
        if timeout is None:
            timeout = settings.lock_timeout(DEFAULT_LOCK_TIMEOUT)
        lock = filelock.FileLock(str(self.lock_file), mode=FILE_MODE)
        start = time.monotonic()
        noticed = False
        while True:
            try:
                lock.acquire(timeout=0.1 if timeout > 0 else 0, poll_interval=0.05)
                break
            except filelock.Timeout:
                waited = time.monotonic() - start
                if waited >= timeout:
                    holder = self.lock_holder()
                    raise CacheLockTimeout(
                        f"{self.lock_file}: held by {holder.describe()}; gave up after {waited:.0f} s",
                        path=self.lock_file,
                        hint="wait for that command to finish, or raise JITCACHE_LOCK_TIMEOUT") from None
                if not noticed and waited >= notice_after and on_wait is not None:
                    noticed = True
                    on_wait(self.lock_holder())
            except OSError as exc:  # a lock file we may not create or open (read-only, full)
                raise filesystem_error(exc, self.lock_file, action="take the cache lock") from None
        try:
            self._write_owner(command)
            yield self
        finally:
            try:
                self.owner_file.unlink()
            except OSError:
                pass
            lock.release()

    def _write_owner(self, command: str | None) -> None:
        import socket

        from .publish import atomic_write_text

        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "command": command or (" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None),
                  "since": time.time()}
        try:
            atomic_write_text(self.owner_file, json.dumps(record) + "\n")
        except OSError:
            pass  # the sidecar is a courtesy; the lock itself is what counts


def make_private_dir(directory: Path) -> None:
    """mkdir -p, then make sure what we created is not writable by group or others."""
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from .faults import filesystem_error

        raise filesystem_error(exc, directory, action="create directory") from None
    for created in missing:
        try:
            os.chmod(created, os.stat(created).st_mode & 0o7777 & ~0o022)
        except OSError:
            pass


# -- where the root is ----------------------------------------------------------------------------


def default_root_path() -> Path:
    """``JITCACHE_HOME``, else ``$XDG_CACHE_HOME/jitcache``, else ``~/.cache/jitcache`` (:func:`settings.default_root`)."""
    return settings.default_root()


def resolve_root(cache_dir: str | Path | None = None) -> CacheRoot:
    """The cache root: ``cache_dir`` (``--cache-dir``) if given, else :func:`default_root_path`.

    Touches nothing on disk; call :meth:`CacheRoot.ensure` before writing.
    """
    if cache_dir is not None and str(cache_dir) == "":
        raise UsageError("--cache-dir must not be empty")
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_root_path()
    path = path.absolute()
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # ENAMETOOLONG, EACCES on a parent, ELOOP...
        raise CacheError(f"{path}: cannot use this path as a cache root ({exc.strerror})", path=path) from None
    if exists and not is_dir:  # a wrong path given by the user (or by JITCACHE_HOME): usage, not a failure
        given = f"--cache-dir {cache_dir}" if cache_dir is not None else "the default cache root"
        raise UsageError(f"{given}: {path} exists and is not a directory",
                         hint="give a directory (an empty or missing one is created by `warmup` and `import`)")
    return CacheRoot(path)


# -- the environment a worker needs ---------------------------------------------------------------


def env_exports(root: CacheRoot, read_only_roots: Sequence[str | Path] = ()) -> dict[str, str]:
    """The environment variables that point DeepEP and Triton at ``root``.

    ``EP_JIT_CACHE_DIR`` lists the writable root first, then read-only lookup
    roots (DeepEP 2.5 / DeepJIT accept ``A:B:C``; DeepEP 2.1 only reads one).
    A read-only root may be a jitcache root (its ``deep_ep/`` is used) or a
    DeepEP cache dir itself.
    """
    parts = [str(root.deep_ep_dir)]
    for extra in read_only_roots:
        path = Path(extra).expanduser().absolute()
        if (path / "deep_ep").is_dir() and not (path / "cache").is_dir():
            path = path / "deep_ep"
        text = str(path)
        if ":" in text:
            raise CacheError(f"read-only root {text!r} contains ':', which separates roots in EP_JIT_CACHE_DIR",
                             path=text)
        if text not in parts:
            parts.append(text)
    if ":" in parts[0]:
        raise CacheError(f"cache root {parts[0]!r} contains ':', which DeepEP reads as a root separator",
                         path=parts[0], hint="use a --cache-dir without ':' in its path")
    exports = {"EP_JIT_CACHE_DIR": ":".join(parts)}
    if root.triton_dir is not None:
        exports["TRITON_CACHE_DIR"] = str(root.triton_dir)
    return exports


def _deep_ep_modules() -> list[str]:
    return sorted(name for name in sys.modules if name.split(".")[0].startswith("deep_ep"))


def activate(cache_dir: str | Path | None = None, read_only_roots: Sequence[str | Path] = ()) -> CacheRoot:
    """Point DeepEP and Triton in this process at the jitcache root; returns the root.

    DeepEP reads ``EP_JIT_CACHE_DIR`` once, when its JIT runtime is first
    used (a lazy init in ``csrc/runtime/jit.hpp``), and its ``__init__`` may
    copy a value baked in at build time into ``os.environ``. So: if a
    ``deep_ep`` module is already imported and the variable already names
    another directory, DeepEP is (or will be) using that one, and changing
    the variable now would silently split the cache; that is an error.
    """
    root = resolve_root(cache_dir).ensure()
    exports = env_exports(root, read_only_roots)
    loaded = _deep_ep_modules()
    current = os.environ.get("EP_JIT_CACHE_DIR")
    if loaded and current is not None and current != exports["EP_JIT_CACHE_DIR"]:
        raise CacheError(
            f"{loaded[0]} is already imported with EP_JIT_CACHE_DIR={current}; "
            f"cannot switch it to {exports['EP_JIT_CACHE_DIR']}",
            path=current,
            hint="call jitcache.activate() before importing deep_ep, or export the variables "
                 "printed by `jitcache env` before starting the process")
    os.environ.update(exports)
    return root
