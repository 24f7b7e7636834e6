"""Rank agreement before a collective warmup, on a real 2-process gloo group (torch CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

TESTS = Path(__file__).parent

_RANK = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import torch.distributed as dist
    import fake_deep_ep as fake
    from jitcache.errors import WarmupError
    from jitcache.warm.live import warmup
    from jitcache.planning.profiles import parse_profile

    store, rank, cap, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=2, rank=rank)
    profile = parse_profile({
        "model": {"name": "m", "hidden": 128, "num_experts": 8, "num_topk": 2},
        "parallel": {"ep_size": 2, "ranks_per_node": 2},
        "serving": {"max_num_batched_tokens": cap},
    }, source="p.toml", name="p")
    buf = fake.EPBuffer(group=dist.group.WORLD, num_max_tokens_per_rank=cap, hidden=128, num_topk=2)
    result = {"rank": rank}
    try:
        report = warmup(buf, profile, progress=False, save=False)
        result.update(ok=True, steps=[[r.mode, r.num_max_tokens_per_rank] for r in report.results],
                      world=report.world_size)
    except WarmupError as exc:
        result.update(ok=False, error=str(exc))
    result["dispatches"] = len(buf.calls)
    json.dump(result, open(out, "w"))
    # Leave without tearing gloo down: a peer closing its sockets first can abort the other (SIGABRT).
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)
""")


def _run_pair(tmp_path: Path, caps: tuple[int, int]) -> list[dict]:
    env = {**os.environ, "JITCACHE_STATS": "0", "EP_JIT_CACHE_DIR": str(tmp_path / "dj")}
    store = tmp_path / "store"
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(TESTS), str(store), str(r), str(caps[r]),
                               str(outs[r])], env=env) for r in (0, 1)]
    codes = [p.wait(timeout=180) for p in procs]
    assert codes == [0, 0]
    return [json.loads(o.read_text()) for o in outs]


def test_mismatched_profile_fails_on_every_rank_naming_the_rank_before_any_dispatch(tmp_path):
    results = _run_pair(tmp_path, (16, 8))
    for result in results:
        assert result["ok"] is False and result["dispatches"] == 0
        assert "warmup plan differs across ranks: rank 1" in result["error"]
        assert "profile_fingerprint" in result["error"] and "no dispatch was issued" in result["error"]


def test_matching_ranks_warm_the_same_sequence(tmp_path):
    results = _run_pair(tmp_path, (16, 16))
    assert all(r["ok"] and r["world"] == 2 for r in results)
    assert results[0]["steps"] == results[1]["steps"] == [["decode", b] for b in (1, 2, 4, 8, 16)]
    assert results[0]["dispatches"] == results[1]["dispatches"] == 5
