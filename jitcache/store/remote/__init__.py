"""A remote cache store shared by a fleet: S3 / S3-compatible, GCS, a directory (NFS), HTTP(S) read-only.

:mod:`.backend` (one small object-store interface, through obstore),
:mod:`.layout` (keys and the per-profile index, pure) and :mod:`.sync`
(push and pull, with ``import``'s validation and atomic publish).
"""

from __future__ import annotations

from .backend import REMOTE_ENV, RemoteStore, open_remote, remote_url_from_env
from .layout import RemoteEnv, entry_key, index_key
from .sync import PullReport, PushReport, RemoteProgress, entry_is_local, pull, push

__all__ = ["REMOTE_ENV", "PullReport", "PushReport", "RemoteEnv", "RemoteProgress", "RemoteStore", "entry_is_local",
           "entry_key", "index_key", "open_remote", "pull", "push", "remote_url_from_env"]
