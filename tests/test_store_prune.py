"""prune: LRU order, --older-than, --max-size, kept profiles, dry plans, parsing of sizes and ages."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jitcache.errors import UsageError
from jitcache.planning.profiles import load_profile
from jitcache.store.prune import parse_age, parse_size, plan_prune, prune
from jitcache.store.scan import scan
from jitcache.planning.variants import plan
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import PROFILE_TOML

pytestmark = pytest.mark.nvcc


def _age(root, days_by_bucket: dict[int, float]) -> None:
    """Set last_used (the .committed mtime DeepJIT touches on a hit) per bucket."""
    now = time.time()
    for entry in scan(root, check_cubins=False).entries:
        if entry.backend == "deep_ep":
            t = now - days_by_bucket[entry.num_max_tokens_per_rank] * 86400
            os.utime(Path(entry.path) / ".committed", (t, t))


def test_parse():
    assert parse_size("10G") == 10 * 1024**3 and parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size("500MB") == 500 * 10**6 and parse_size("0") == 0
    assert parse_age("30d") == 30 * 86400 and parse_age("90min") == 5400 and parse_age("2w") == 14 * 86400
    for bad in ("ten", "-1G", "5X"):
        with pytest.raises(UsageError, match="--max-size"):
            parse_size(bad)
    with pytest.raises(UsageError, match="--older-than"):
        parse_age("soon")


def test_older_than(filled_root):
    _age(filled_root, {1: 40, 2: 10, 4: 1, 8: 0})
    the_plan = plan_prune(scan(filled_root), older_than=parse_age("7d"))
    assert sorted({e.num_max_tokens_per_rank for e in the_plan.remove}) == [1, 2]
    assert set(the_plan.reasons) == {"older_than"}
    result = prune(filled_root, the_plan)
    assert len(result.removed) == 8 and result.freed == the_plan.freed > 0
    left = scan(filled_root).entries
    assert sorted({e.num_max_tokens_per_rank for e in left if e.backend == "deep_ep"}) == [4, 8]
    assert not any(p.exists() for p in (Path(e.path) for e in the_plan.remove))


def test_max_size_is_lru(filled_root):
    _age(filled_root, {1: 3, 2: 1, 4: 4, 8: 2})
    report = scan(filled_root)
    per_bucket = sum(e.size for e in report.entries if e.num_max_tokens_per_rank == 4)
    the_plan = plan_prune(report, max_size=report.size - per_bucket)
    # the Triton entry was used just now; bucket 4 is the least recently used
    assert {e.num_max_tokens_per_rank for e in the_plan.remove} == {4}
    assert the_plan.size_after <= report.size - per_bucket


def test_keep_profile_protects(filled_root, test_profile):
    _age(filled_root, {1: 40, 2: 40, 4: 40, 8: 40})
    the_plan = plan_prune(scan(filled_root), max_size=0, keep_plans=[plan(test_profile)])
    assert [e.backend for e in the_plan.remove] == ["triton"]
    assert len(the_plan.protected) == 16
    # a profile with other dims protects nothing here
    other = load_profile("qwen3-30b-a3b-ep4")
    assert len(plan_prune(scan(filled_root), max_size=0, keep_plans=[plan(other)]).remove) == 17


def test_nothing_to_remove(filled_root):
    the_plan = plan_prune(scan(filled_root), max_size=parse_size("10G"))
    assert the_plan.remove == () and the_plan.freed == 0
    assert prune(filled_root, the_plan).removed == ()


def test_dry_plan_touches_nothing(filled_root):
    before = sorted(str(p) for p in filled_root.path.rglob("*"))
    plan_prune(scan(filled_root), max_size=0)
    assert sorted(str(p) for p in filled_root.path.rglob("*")) == before
