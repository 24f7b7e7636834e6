"""One exception hierarchy for the whole library.

Every error carries the thing at fault (a file, a profile field, a cache key, a
value) so that the CLI can say exactly what to fix. The CLI maps
:class:`JitCacheError` to ``Error: ...`` and an exit code; a traceback is only
shown with ``JITCACHE_DEBUG=1``.

Bad values given to the pure core (a bucket policy, a plan, a header that
does not parse) are :class:`UsageError` / :class:`HeaderError`, which are also
:class:`ValueError` s; a lock that is not released in time is also a
:class:`TimeoutError`. Every error survives pickling with its fields (they
cross process pools and rank exchanges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _restore(cls: type[JitCacheError], args: tuple[Any, ...], state: dict[str, Any]) -> JitCacheError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class JitCacheError(Exception):
    """Base class of every error jitcache raises on purpose.

    ``exit_code`` is what the CLI exits with; ``hint`` is an optional second line
    telling the user what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments than ``args``: rebuild from the fields instead.
        return _restore, (type(self), self.args, dict(self.__dict__))


class UsageError(JitCacheError, ValueError):
    """Bad input given by the user (an option, a value, a file that does not exist)."""

    exit_code = 2


class ProfileError(UsageError):
    """A deployment profile is missing, unreadable or invalid.

    ``source`` is the file (or built-in profile name) and ``field`` the dotted
    field (``serving.max_num_batched_tokens``) at fault, when there is one.
    """

    def __init__(self, source: str | Path, message: str, *, field: str | None = None,
                 hint: str | None = None) -> None:
        self.source = str(source)
        self.field = field
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {message}", hint=hint)


class CacheError(JitCacheError):
    """The on-disk cache cannot be read or changed as asked."""

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(message, hint=hint)


class CacheLockTimeout(CacheError, TimeoutError):
    """Another process holds the cache's root lock for longer than we wait."""


class BundleError(CacheError):
    """A bundle to import is damaged, unsafe or made for another environment."""

    exit_code = 2


class RemoteError(CacheError):
    """A remote cache store cannot be reached, denies access, or holds an object that fails its checks.

    ``url`` is the store (or object) at fault.
    """

    def __init__(self, message: str, *, url: str | None = None, hint: str | None = None) -> None:
        self.url = url
        super().__init__(message, path=url, hint=hint)


class CompileError(JitCacheError):
    """A kernel failed to compile; ``log_path`` holds the compiler's stderr."""

    def __init__(self, message: str, *, log_path: str | Path | None = None, hint: str | None = None) -> None:
        self.log_path = None if log_path is None else str(log_path)
        super().__init__(message, hint=hint)


class ToolchainError(JitCacheError):
    """A compiler, header directory or package that a compile needs is missing."""


class ToolchainOptionError(ToolchainError, UsageError):
    """An option (``--nvcc``, ``--deep-ep-include``, ``--nccl-include``) names nothing usable: bad input, exit 2."""


class HeaderError(ToolchainError, ValueError):
    """DeepEP headers (or a kernel source) do not hold what a digest or a learned entry needs."""


class ColdVariantError(JitCacheError):
    """A dispatch would make DeepEP JIT-compile a variant that was never warmed."""

    def __init__(self, num_max_tokens_per_rank: int, *, message: str | None = None) -> None:
        self.num_max_tokens_per_rank = num_max_tokens_per_rank
        super().__init__(
            message or f"num_max_tokens_per_rank={num_max_tokens_per_rank} is not warm: "
            "DeepEP would JIT-compile it on the serving path",
            hint="run `jitcache warmup` for this profile before serving, or pass strict=False",
        )


class WarmupError(JitCacheError):
    """A warmup could not run or did not finish (mismatched ranks, missing DeepEP...)."""


__all__ = [
    "BundleError",
    "CacheError",
    "CacheLockTimeout",
    "ColdVariantError",
    "CompileError",
    "HeaderError",
    "JitCacheError",
    "ProfileError",
    "RemoteError",
    "ToolchainError",
    "ToolchainOptionError",
    "UsageError",
    "WarmupError",
]
