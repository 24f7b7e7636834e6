"""GPU proof of digest truth (issue 12, item 6) on one H200, for DeepEP 2.1 (ElasticBuffer) and 2.5 (EPBuffer).

Input: two bundles exported on the 2-core CPU machine after ``jitcache warmup --aot -p h200-ep1`` with
the default paths there (DeepEP 2.1 headers of the ``tokenspeed-deepep`` wheel, NCCL of
``nvidia-nccl-cu13`` in that venv; 2.5 from the ``deepinfer-ep`` sdist), so every entry name in
them holds that machine's paths, not the H200 rig's. For each version, in new processes:

a. ``relocated``: ``jitcache import`` into an empty root (it relocates by default), then
   ``jitcache inspect --profile h200-ep1 --check`` (rc 0 expected), then a serving process: the
   buffer, a strict ``BucketedDispatcher`` over the 14 buckets, each dispatch + combine also made
   straight to DeepEP with the same bucket: new cache entries (0 expected), refusals (0), outputs
   bit-identical (``_common.compare_with_direct``).
b. ``not_relocated``: ``jitcache import --no-relocate``: ``inspect --check`` must fail, and the
   strict dispatcher must refuse the first bucket before DeepEP compiles anything (0 new entries).
c. ``missing``: relocated, then the entries of one bucket (64) deleted by the names the serving
   DeepEP computes: ``inspect --check`` fails naming them; the strict trace refuses that bucket
   only, serves the 13 others, and writes nothing.

Usage on the rig (repository root; jitcache importable through PYTHONPATH=$PWD and the two
package-dir links ``jitcache/cli`` and ``jitcache/cache_profiles``):

    python benchmarks/gpu_digest_proof.py --bundle21 B21.jcb --bundle25 B25.jcb --out "$OUT"

The parent imports neither torch nor deep_ep: it runs the CLI and the serving phases as children
(DeepEP 2.1 first on PYTHONPATH for the 2.1 ones, ``RIG_SITE21``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from _common import compare_with_direct, run_phase, say  # noqa: E402

PROFILE = "h200-ep1"
MISSING_BUCKET = 64


def _env(version: str, cache_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", JITCACHE_STATS="0")
    if version == "2.1":
        env["PYTHONPATH"] = os.environ["RIG_SITE21"] + os.pathsep + env.get("PYTHONPATH", "")
    if cache_dir is not None:
        env["EP_JIT_CACHE_DIR"] = str(cache_dir / "deep_ep")
    return env


def cli(version: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "jitcache.cli", *args], capture_output=True, text=True,
                          env=_env(version), timeout=300)
    try:
        data: Any = json.loads(proc.stdout)
    except ValueError:
        data = {"stdout_not_json": proc.stdout[-2000:]}
    return {"argv": list(args), "rc": proc.returncode, "json": data, "stderr_tail": proc.stderr[-2000:]}


def phase(version: str, name: str, cache_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    part = out / f"phase_{version}_{name}_{cache_dir.name}.json"
    cmd = [sys.executable, str(HERE), "--phase", name, "--version", version, "--cache-dir", str(cache_dir),
           "--phase-out", str(part), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(version, cache_dir), timeout=420)
    (out / f"log_{version}_{name}_{cache_dir.name}.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    data = json.loads(part.read_text()) if part.exists() else {"ok": False, "stderr_tail": proc.stderr[-3000:]}
    data.update(rc=proc.returncode, process_seconds=round(time.perf_counter() - t0, 2))
    return data


# --- phases (children: torch and deep_ep live here) -------------------------------------------------------------

def _entries(cache_dir: Path) -> set[str]:
    cache = cache_dir / "deep_ep" / "cache"
    return {p.name for p in cache.iterdir()} if cache.is_dir() else set()


def _buffer(version: str) -> tuple[Any, Any]:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29541", world_size=1, rank=0,
                            device_id=torch.device("cuda", 0))
    probe = torch.ones(1, device="cuda")
    dist.all_reduce(probe)
    import deep_ep

    if version == "2.1":
        buf = deep_ep.ElasticBuffer(dist.group.WORLD, num_max_tokens_per_rank=8192, hidden=7168, num_topk=8,
                                    explicitly_destroy=True)
    else:
        buf = deep_ep.EPBuffer(dist.group.WORLD, num_max_tokens_per_rank=8192, hidden=7168, num_topk=8)
    return buf, deep_ep


def serve_phase(args: argparse.Namespace) -> dict:
    """Strict dispatcher over the buckets; each step also straight to DeepEP with the same bucket."""
    import torch

    from jitcache import BucketedDispatcher
    from jitcache.errors import ColdVariantError
    from jitcache.planning.profiles import load_profile
    from jitcache.adapters.base import original_dispatch

    cache_dir = Path(args.cache_dir)
    before = _entries(cache_dir)
    buf, deep_ep = _buffer(args.version)
    after_buffer = _entries(cache_dir)
    profile = load_profile(PROFILE)
    dispatcher = BucketedDispatcher(buf, profile, strict=True)
    direct = original_dispatch(buf)
    gen = torch.Generator(device="cuda").manual_seed(0)
    steps, refused, equal, errors = [], [], 0, []
    buckets = [int(b) for b in args.buckets.split(",")]
    for bucket in buckets:
        n = max(1, bucket // 2 + 1) if bucket > 1 else 1   # a size that rounds up to this bucket
        x = torch.randn(n, 7168, dtype=torch.bfloat16, device="cuda", generator=gen)
        scores = torch.rand(n, 256, device="cuda", generator=gen)
        weights, idx = torch.topk(scores.softmax(-1), 8, dim=-1)
        idx = idx.to(deep_ep.topk_idx_t)
        record: dict[str, Any] = {"bucket": bucket, "num_tokens": n}
        t0 = time.perf_counter()
        mine = _entries(cache_dir)
        try:
            got = dispatcher.dispatch(x, topk_idx=idx, topk_weights=weights, num_experts=256,
                                      num_tokens_across_dp=[n], do_expand=False, do_cpu_sync=False)
        except ColdVariantError as exc:
            record.update(refused=True, message=str(exc)[:400])
            refused.append(bucket)
        except Exception as exc:  # noqa: BLE001
            record.update(error=f"{type(exc).__name__}: {exc}"[:400])
            errors.append(bucket)
        else:
            ref = direct(x, topk_idx=idx, topk_weights=weights, num_experts=256, num_max_tokens_per_rank=bucket,
                         do_expand=False, do_cpu_sync=False)
            c1 = buf.combine(got[0], got[3], topk_weights=got[2])
            c2 = buf.combine(ref[0], ref[3], topk_weights=ref[2])
            torch.cuda.synchronize()
            same = compare_with_direct(got, ref, c1, c2)
            ok = same["recv_equal"] and same["combined_equal"] and same["valid_rows"] == [n, n]
            equal += ok
            record.update(refused=False, outputs_equal=ok, recv_rows=list(got[0].shape)[:1])
        record["seconds"] = round(time.perf_counter() - t0, 4)
        record["new_entries"] = sorted(_entries(cache_dir) - mine)
        steps.append(record)
        say(f"{args.version} bucket {bucket}: {record}")
    new = sorted(_entries(cache_dir) - before)
    return {"buckets": buckets, "steps": steps, "refused": refused, "errors": errors, "served": len(buckets) - len(refused) - len(errors),
            "outputs_equal": equal, "new_entries": new, "new_entries_at_buffer": sorted(after_buffer - before),
            "deep_ep_file": deep_ep.__file__}


def drop_bucket_phase(args: argparse.Namespace) -> dict:
    """Delete the entries of one bucket by the names the serving DeepEP computes (no GPU needed)."""
    import shutil

    from jitcache.adapters.serving import locate_serving, planned_entries
    from jitcache.planning.profiles import load_profile
    from jitcache.planning.variants import plan

    serving = locate_serving()
    entries = planned_entries(plan(load_profile(PROFILE)), serving)
    cache = Path(args.cache_dir) / "deep_ep" / "cache"
    dropped = []
    for entry in entries:
        if entry.num_max_tokens_per_rank == MISSING_BUCKET and (cache / entry.name).is_dir():
            shutil.rmtree(cache / entry.name)
            dropped.append(entry.name)
    return {"dropped": dropped, "bucket": MISSING_BUCKET, "serving": str(serving)}


PHASES = {"serve": serve_phase, "drop_bucket": drop_bucket_phase}


# --- driver ------------------------------------------------------------------------------------------------------

def prove(version: str, bundle: Path, work: Path, out: Path, buckets: str) -> dict[str, Any]:
    result: dict[str, Any] = {"bundle": str(bundle), "bundle_bytes": bundle.stat().st_size}
    inspect = ("inspect", "--profile", PROFILE, "--check", "--format", "json")
    # a. relocated by import
    root = work / f"{version}-relocated"
    t0 = time.perf_counter()
    result["a_import"] = cli(version, "import", str(bundle), "--cache-dir", str(root), "--format", "json")
    result["a_import"]["seconds"] = round(time.perf_counter() - t0, 3)
    result["a_inspect"] = cli(version, *inspect, "--cache-dir", str(root))
    result["a_serve"] = phase(version, "serve", root, out, "--buckets", buckets)
    # b. shipped names as they are
    root = work / f"{version}-not-relocated"
    result["b_import"] = cli(version, "import", str(bundle), "--no-relocate", "--cache-dir", str(root), "--format", "json")
    result["b_inspect"] = cli(version, *inspect, "--cache-dir", str(root))
    result["b_serve"] = phase(version, "serve", root, out, "--buckets", buckets)
    # c. one bucket genuinely missing
    root = work / f"{version}-missing"
    result["c_import"] = cli(version, "import", str(bundle), "--cache-dir", str(root), "--format", "json")
    result["c_drop"] = phase(version, "drop_bucket", root, out)
    result["c_inspect"] = cli(version, *inspect, "--cache-dir", str(root))
    result["c_serve"] = phase(version, "serve", root, out, "--buckets", buckets)
    a, b, c = result["a_serve"], result["b_serve"], result["c_serve"]
    result["verdict"] = {
        "a_check_passed": result["a_inspect"]["rc"] == 0,
        "a_zero_written": a.get("ok") and not a.get("new_entries") and not a.get("new_entries_at_buffer"),
        "a_all_served_equal": a.get("ok") and a.get("outputs_equal") == len(a.get("buckets", [])) > 0,
        "b_check_failed": result["b_inspect"]["rc"] != 0,
        "b_refused_before_compiling": b.get("ok") and len(b.get("refused", [])) == len(b.get("buckets", [])) > 0
                                      and not b.get("new_entries"),
        "c_check_failed": result["c_inspect"]["rc"] != 0,
        "c_refused_only_missing": c.get("ok") and c.get("refused") == [MISSING_BUCKET] and not c.get("new_entries")
                                  and c.get("outputs_equal") == len(c.get("buckets", [])) - 1,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase")
    parser.add_argument("--phase-out")
    parser.add_argument("--version", default="2.5")
    parser.add_argument("--cache-dir")
    parser.add_argument("--buckets", default=",".join(str(1 << i) for i in range(14)))
    parser.add_argument("--bundle21", type=Path)
    parser.add_argument("--bundle25", type=Path)
    parser.add_argument("--versions", default="2.1,2.5")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.phase:
        return 0 if run_phase(PHASES, args).get("ok") else 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jitcache-digest-proof-"))
    report: dict[str, Any] = {"profile": PROFILE, "machine": os.uname().nodename, "versions": {}}
    for version in args.versions.split(","):
        bundle = args.bundle21 if version == "2.1" else args.bundle25
        say(f"digest proof: DeepEP {version} from {bundle}")
        report["versions"][version] = prove(version, bundle, work, args.out, args.buckets)
        (args.out / "digest_proof.json").write_text(json.dumps(report, indent=2, default=str))
        say(f"DeepEP {version}: {report['versions'][version]['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
