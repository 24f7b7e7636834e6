"""Two real gloo ranks running the live warmup (with its nvcc precompile) over a DeepEP test-double package.

Shared by the DeepEP 2.5 (EPBuffer) and 2.1 (ElasticBuffer) precompile tests: each rank is a separate Python
process that imports ``deep_ep`` from the package it is given, builds ``buffer_class`` from the profile and runs
``jitcache.warm.live.warmup``; its report comes back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from jitcache.build.pool import COMPILE_LOG_ENV

TESTS = Path(__file__).parent

_RANK = textwrap.dedent("""
    import json, os, sys
    tests, package, store, rank, profile, cache_dir, out, buffer_class = sys.argv[1:9]
    rank = int(rank)
    sys.path[:0] = [tests, package]
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=2, rank=rank)
    import deep_ep
    from jitcache.warm.live import warmup
    from jitcache.planning.profiles import load_profile

    prof = load_profile(profile)
    buf = getattr(deep_ep, buffer_class)(group=dist.group.WORLD,
                                         num_max_tokens_per_rank=prof.serving.max_num_batched_tokens,
                                         hidden=prof.model.hidden, num_topk=prof.model.num_topk)
    report = warmup(buf, prof, progress=False, cache_dir=cache_dir, save=rank == 0)
    json.dump({"pid": os.getpid(), "report": report.to_dict()}, open(out, "w"))
    # Leave without tearing gloo down: a peer closing its sockets first can abort the other (SIGABRT).
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)
""")


def nccl_root(tmp_path: Path, include: Path) -> Path:
    """``<tmp>/nccl`` whose ``include/`` links to ``include``: an NCCL root as DeepEP finds one."""
    root = tmp_path / "nccl"
    root.mkdir()
    (root / "include").symlink_to(include, target_is_directory=True)
    return root


def run_two_ranks(tmp_path: Path, packages: tuple[Path, Path], buffer_class: str, profile_toml: str,
                  env: dict[str, str], *, timeout: float) -> list[dict]:
    """Run both ranks (rank r imports ``deep_ep`` from ``packages[r]``) into the jitcache root ``<tmp>/root``.

    ``env`` adds to the ranks' environment: HOME, LOCAL_WORLD_SIZE=2, EP_JIT_CACHE_DIR (the root's deep_ep/)
    and the compile log (``<tmp>/compiles.log``) are set here. Returns each rank's ``{"pid", "report"}``.
    """
    (tmp_path / "profile.toml").write_text(profile_toml)
    root = tmp_path / "root"
    full_env = {**os.environ, "JITCACHE_STATS": "0", "HOME": str(tmp_path / "home"), "LOCAL_WORLD_SIZE": "2",
                "EP_JIT_CACHE_DIR": str(root / "deep_ep"), COMPILE_LOG_ENV: str(tmp_path / "compiles.log"), **env}
    full_env.pop("DJ_JIT_CACHE_DIR", None)
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(TESTS), str(packages[r]), str(tmp_path / "store"),
                               str(r), str(tmp_path / "profile.toml"), str(root), str(outs[r]), buffer_class],
                              env=full_env)
             for r in (0, 1)]
    assert [p.wait(timeout=timeout) for p in procs] == [0, 0]
    return [json.loads(o.read_text()) for o in outs]
