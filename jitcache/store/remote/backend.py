"""One small object-store interface for every remote: S3 (and MinIO...), GCS, a directory, HTTP(S) read-only.

All of them go through one library, `obstore` (Python bindings of the Rust
``object_store`` crate that arrow-rs, DataFusion and delta-rs use), because it
is the only candidate that gives the two writes this cache needs on *every*
backend with the backend's own mechanism:

- create-if-absent (:meth:`RemoteStore.put_new`): S3 ``If-None-Match: *``,
  GCS ``ifGenerationMatch=0``, a local/NFS directory by a hard link that
  fails when the name exists (atomic on NFS too);
- compare-and-swap (:meth:`RemoteStore.replace`): S3 ``If-Match: <etag>``
  (``conditional_put = "etag"``), GCS generation match; a directory has none,
  so there the index is replaced by an atomic rename (see ``docs/remote.md``).

Credentials and endpoints come only from obstore's standard configuration:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` (MinIO, moto, any S3-compatible server),
web identity and instance metadata; ``GOOGLE_APPLICATION_CREDENTIALS`` and
``GOOGLE_SERVICE_ACCOUNT*`` for GCS. ``AWS_PROFILE`` goes through obstore's
own boto3 credential provider (boto3 must be installed for profiles). An
``http://`` endpoint is allowed when the URL or ``AWS_ENDPOINT_URL`` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from jitcache import settings
from jitcache.errors import RemoteError, UsageError

__all__ = ["RemoteStore", "open_remote", "remote_url_from_env"]

#: The environment variable naming the remote when ``--remote`` is not given.
REMOTE_ENV = "JITCACHE_REMOTE"

# A store that does not answer should say so in seconds, not after obstore's default 10 retries over 3 minutes.
_RETRY = {"max_retries": 2, "retry_timeout": timedelta(seconds=20),
          "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2}}
_CLIENT = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=60)}


def remote_url_from_env(url: str | None) -> str | None:
    """``url`` (``--remote``), else ``JITCACHE_REMOTE``, else ``None``."""
    if url is not None and url.strip() == "":
        raise UsageError("--remote must not be empty")
    return url or settings.remote()


def _normalise(url: str) -> str:
    """A bare path (``/mnt/nfs/jitcache``) is a directory remote: ``file://`` it."""
    if "://" not in url:
        return Path(url).expanduser().absolute().as_uri()
    return url


def _build(url: str) -> Any:
    import obstore.store as stores

    scheme = url.split("://", 1)[0].lower()
    options: dict[str, Any] = dict(_CLIENT)
    if scheme == "file":
        return stores.from_url(url, mkdir=True)
    if scheme == "http" or (scheme in ("s3", "s3a") and any(
            os.environ.get(v, "").startswith("http://") for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                                                                 "AWS_ENDPOINT"))):
        options["allow_http"] = True
    kwargs: dict[str, Any] = {"client_options": options, "retry_config": _RETRY}
    if scheme in ("s3", "s3a"):
        kwargs["config"] = {"conditional_put": "etag"}
        if os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID"):
            try:
                from obstore.auth.boto3 import Boto3CredentialProvider
            except ImportError:
                raise RemoteError(f"{url}: AWS_PROFILE is set, and reading profiles needs boto3",
                                  url=url, hint="pip install boto3, or export AWS_ACCESS_KEY_ID/...") from None
            kwargs["credential_provider"] = Boto3CredentialProvider()
    if scheme in ("s3", "s3a") and not os.environ.get("AWS_REGION") and os.environ.get("AWS_DEFAULT_REGION"):
        kwargs["config"]["region"] = os.environ["AWS_DEFAULT_REGION"]
    return stores.from_url(url, **kwargs)


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and what a compare-and-swap needs to replace exactly that version."""

    data: bytes
    e_tag: str | None
    version: str | None


class RemoteStore:
    """Keys (``a/b/c``) -> bytes under one URL prefix. Every failure is a :class:`RemoteError` naming the URL."""

    def __init__(self, url: str) -> None:
        try:
            import obstore  # noqa: F401
        except ImportError:
            raise UsageError("a remote store needs obstore", hint="pip install 'jitcache[remote]'") from None
        self.url = _normalise(url).rstrip("/")
        try:
            self._store = _build(self.url)
        except RemoteError:
            raise
        except Exception as exc:  # obstore raises ValueError / its own errors for a URL it cannot use
            raise RemoteError(f"{self.url}: not a usable remote store URL ({_first_line(exc)})", url=self.url,
                              hint="use s3://bucket/prefix, gs://bucket/prefix, a directory, or http(s)://...") from None
        self.kind = type(self._store).__name__.replace("Store", "").lower()   # s3 | gcs | local | http | ...
        # Where requests actually go, when the URL does not say it (MinIO, moto, any S3-compatible server).
        self.endpoint = next((os.environ[v] for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
                              if os.environ.get(v)), None) if self.kind == "s3" else None
        self.read_only = self.kind == "http"

    def where(self, key: str) -> str:
        return f"{self.url}/{key}"

    # -- reads -----------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The object's bytes, ``None`` when there is no such object."""
        got = self.get_versioned(key)
        return None if got is None else got.data

    def get_versioned(self, key: str) -> Versioned | None:
        import obstore

        try:
            result = obstore.get(self._store, key)
            data = bytes(result.bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._error(exc, "read", key) from None
        meta = result.meta
        return Versioned(data, meta.get("e_tag"), meta.get("version"))

    # -- writes ----------------------------------------------------------------------------------

    def check_writable(self, key: str) -> None:
        if self.read_only:
            raise RemoteError(f"{self.url}: an {self.kind} remote is read-only; cannot write {key}", url=self.url,
                              hint="push to s3://, gs:// or a directory, and serve that over HTTP(S)")

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent (one atomic conditional write): ``False`` when it already existed."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        self.check_writable(key)
        try:
            obstore.put(self._store, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as exc:
            raise self._error(exc, "write", key) from None
        return True

    def replace(self, key: str, data: bytes, previous: Versioned | None) -> bool:
        """Write ``key`` if it is still ``previous`` (``None``: still absent); ``False`` when someone changed it.

        A directory remote cannot compare and swap; there the object is
        replaced by an atomic rename (no reader ever sees half of it).
        """
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        if previous is None:
            return self.put_new(key, data)
        self.check_writable(key)
        mode: Any = "overwrite" if self.kind == "local" or previous.e_tag is None else (
            {"e_tag": previous.e_tag, "version": previous.version} if previous.version else {"e_tag": previous.e_tag})
        try:
            obstore.put(self._store, key, data, mode=mode)
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as exc:
            raise self._error(exc, "write", key) from None
        return True

    # -- errors ----------------------------------------------------------------------------------

    def _error(self, exc: Exception, action: str, key: str) -> RemoteError:
        from obstore.exceptions import NotSupportedError, PermissionDeniedError, UnauthenticatedError

        where = self.where(key)
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError)):
            return RemoteError(f"{where}: access denied ({action}): {_status(exc)}", url=self.url,
                               hint="check the credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE, "
                                    "GOOGLE_APPLICATION_CREDENTIALS) and the bucket policy")
        if isinstance(exc, (NotImplementedError, NotSupportedError)):
            return RemoteError(f"{where}: this {self.kind} remote cannot {action} that way ({_first_line(exc)})",
                               url=self.url)
        text = str(exc)
        if "error sending request" in text or "connect" in text.lower() or "dns" in text.lower():
            at = f" at {self.endpoint}" if self.endpoint else ""
            return RemoteError(f"{where}: remote store unreachable{at} ({_first_line(exc)})", url=self.url,
                               hint="check the URL and AWS_ENDPOINT_URL; `warmup --remote-optional` warms locally instead")
        return RemoteError(f"{where}: cannot {action} ({_first_line(exc)})", url=self.url)


def _first_line(exc: BaseException) -> str:
    """The useful part of an obstore message: its first line, without the request's URL and timings."""
    import re

    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"Error performing \w+ \S+ in [^-]*?(- |$)", "", text)
    text = re.sub(r"^Generic \w+ error: ", "", text).strip(" -:")
    return text[:300] or type(exc).__name__


def _status(exc: BaseException) -> str:
    """The HTTP status and the server's error code, from obstore's message."""
    import re

    text = str(exc)
    status = re.search(r"status code: (\d{3}[^:<]*)", text)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    parts = [p for p in ((status.group(1).strip() if status else None), (code.group(1) if code else None)) if p]
    return ", ".join(parts) or _first_line(exc)


def open_remote(url: str | RemoteStore) -> RemoteStore:
    """A :class:`RemoteStore` for ``url`` (an object already open is returned as it is)."""
    return url if isinstance(url, RemoteStore) else RemoteStore(url)
