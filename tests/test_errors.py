"""One exception hierarchy: the pure core's bad values are ValueErrors too, the lock timeout is a TimeoutError,
and every error crosses a process boundary (pickle) with its fields."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from jitcache import BucketPolicy, errors, load_profile, plan
from jitcache.errors import (BundleError, CacheError, CacheLockTimeout, ColdVariantError, CompileError, HeaderError,
                             JitCacheError, ProfileError, ToolchainError, UsageError, WarmupError)

SAMPLES = [
    JitCacheError("m", hint="h"),
    UsageError("bad option", hint="fix it"),
    ProfileError("p.toml", "must be positive", field="model.hidden", hint="see docs"),
    CacheError("cannot write", path="/tmp/x", hint="check permissions"),
    CacheLockTimeout("held by pid 1", path="/tmp/x/.lock", hint="wait"),
    BundleError("damaged", path="/tmp/b.tar.zst"),
    CompileError("nvcc failed", log_path="/tmp/log.txt", hint="read the log"),
    ToolchainError("no nvcc", hint="install CUDA"),
    HeaderError("no kernel reference"),
    ColdVariantError(64),
    WarmupError("ranks disagree"),
]


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_survives_pickling_with_its_fields(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and back.__dict__ == error.__dict__
    assert str(back) == str(error) and back.args == error.args


def _raise_profile_error(_: int) -> None:
    load_profile("no-such-profile")


def test_a_profile_error_crosses_a_process_pool():
    with ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ProfileError) as caught:
            pool.submit(_raise_profile_error, 0).result()
    assert caught.value.source == "no-such-profile" and "no built-in profile" in str(caught.value)


def test_usage_errors_are_value_errors_and_the_lock_timeout_a_timeout_error():
    assert issubclass(UsageError, ValueError) and issubclass(ProfileError, ValueError)
    assert issubclass(HeaderError, ValueError) and issubclass(HeaderError, ToolchainError)
    assert issubclass(CacheLockTimeout, TimeoutError) and issubclass(CacheLockTimeout, CacheError)
    assert set(errors.__all__) >= {type(e).__name__ for e in SAMPLES}


def test_the_pure_core_raises_project_errors():
    with pytest.raises(UsageError, match="min_bucket=64 exceeds"):
        BucketPolicy(32, min_bucket=64)
    with pytest.raises(UsageError, match="not an integer"):
        BucketPolicy(8192).bucket(1.5)
    with pytest.raises(UsageError, match="unknown mode"):
        plan(load_profile("h200-ep1"), ["warp-speed"])
