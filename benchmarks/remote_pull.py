"""Fresh-node readiness from a remote store against an AOT compile, on the same machine, in one run.

Writes ``benchmarks/results/<machine>/remote_pull.json``. Starts moto's S3
server on 127.0.0.1 (a free port) and, in this order:

1. node A, empty cache: ``warmup_aot_remote`` (pull finds nothing, the AOT
   pool compiles the whole profile, the push fills the store): the compile
   is the baseline a node without a shared store pays;
2. node B, empty cache: ``jitcache warmup --aot --remote s3://...`` as a
   subprocess (process start, toolchain, render + digest of every variant,
   pull by name, 0 compiles): fresh-node readiness from the store;
3. node C, empty cache: the library ``pull`` by the profile's index alone;
4. 8 nodes at once: 8 ``jitcache pull`` processes, each into its own empty
   cache, started together;
5. the same readiness from a directory store (NFS-like) for comparison.

Every pulled cache is checked to hold exactly node A's entry names, all
healthy. Runs wherever nvcc runs (no GPU).

    python benchmarks/remote_pull.py [--profile h200-ep1] [--jobs N] [--nodes 8]
        [--deep-ep-include PATH] [--machine NAME] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, machine_label, say, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from jitcache.warm.remote_warmup import remote_env, warmup_aot_remote  # noqa: E402
from jitcache.build.toolchain import release_line, resolve_toolchain  # noqa: E402
from jitcache.planning.profiles import load_profile  # noqa: E402
from jitcache.planning.variants import plan  # noqa: E402
from jitcache.store.remote import RemoteStore, pull  # noqa: E402
from jitcache.store.root import resolve_root  # noqa: E402
from jitcache.store.scan import scan  # noqa: E402


def _start_moto(port: int) -> tuple[subprocess.Popen, str]:
    import urllib.request

    import boto3

    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="jitcache-bench")
    return proc, endpoint


def _names(root_dir: Path) -> list[str]:
    cache = root_dir / "deep_ep" / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def _healthy(root_dir: Path) -> bool:
    report = scan(resolve_root(root_dir))
    return bool(report.entries) and all(e.status == "ok" for e in report.entries)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="h200-ep1")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--machine", default=os.environ.get("JITCACHE_MACHINE") or machine_label())
    parser.add_argument("--deep-ep-include", default=str(REPO.parent / "shared" / "gpu" / "deepinfer_ep-2.5.0.tar.gz"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from remote_fixtures import free_port  # the tests' helper: a free port on 127.0.0.1

    profile = load_profile(args.profile)
    the_plan = plan(profile)
    toolchain = resolve_toolchain(deep_ep_include=args.deep_ep_include, api=profile.deep_ep.api)
    env = remote_env(profile, toolchain=toolchain)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="jitcache-remote-bench-"))
    proc, endpoint = _start_moto(free_port())
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    os.environ.update(aws)
    url = "s3://jitcache-bench/fleet"
    child_env = {**os.environ, **aws, "NO_COLOR": "1"}
    cli = [sys.executable, "-m", "jitcache.cli"]
    try:
        say(f"node A: AOT compile of {profile.name} ({len(the_plan)} variants, {args.jobs} jobs), then push")
        a = warmup_aot_remote(the_plan, toolchain, resolve_root(work / "a"), remote=url, num_workers=args.jobs)
        assert a.ok and a.pulled == 0, a.to_dict()["aot"]["totals"]
        names = _names(work / "a")
        say(f"node A: compiled {a.compiled} in {a.aot.wall_seconds:.1f} s, pushed {a.pushed} "
            f"({a.push.bytes_sent} B) in {a.push.seconds:.2f} s")

        say("node B: `jitcache warmup --aot --remote` into an empty cache")
        start = time.perf_counter()
        done = subprocess.run([*cli, "warmup", "--aot", "-p", args.profile, "--deep-ep-include", args.deep_ep_include,
                               "--cache-dir", str(work / "b"), "--remote", url, "--format", "json"],
                              capture_output=True, text=True, env=child_env)
        b_wall = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-3000:]
        b = json.loads(done.stdout)
        assert b["compiled"] == 0 and b["pulled"] == len(names) and _names(work / "b") == names
        assert _healthy(work / "b")
        say(f"node B: ready in {b_wall:.2f} s (pull {b['pull']['seconds']:.2f} s, {b['pulled']} entries)")

        say("node C: library pull by the profile's index")
        c = pull(resolve_root(work / "c"), RemoteStore(url), env, plan=the_plan)
        assert _names(work / "c") == sorted(c.pulled) and set(c.pulled) <= set(names) and _healthy(work / "c")
        say(f"node C: {len(c.pulled)} entries in {c.seconds:.2f} s")

        say(f"{args.nodes} nodes: `jitcache pull` at once, each into its own empty cache")
        go = work / "go"
        waiter = ("import os, sys, time, subprocess; "
                  "exec('while not os.path.exists(sys.argv[1]): time.sleep(0.005)'); "
                  "t = time.perf_counter(); r = subprocess.run(sys.argv[2:], capture_output=True, text=True); "
                  "print(f'{time.perf_counter() - t:.4f}'); sys.stderr.write(r.stderr); sys.exit(r.returncode)")
        procs = [subprocess.Popen([sys.executable, "-c", waiter, str(go), *cli, "pull", "-p", args.profile,
                                   "--deep-ep-api", env.deep_ep_api, "--cache-dir", str(work / f"n{i}"),
                                   "--remote", url, "--format", "json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)
                 for i in range(args.nodes)]
        time.sleep(1.0)   # let every waiter start before the gun
        start = time.perf_counter()
        go.touch()
        outs = [p.communicate() for p in procs]
        many_wall = time.perf_counter() - start
        assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
        per_node = sorted(float(o.strip()) for o, _ in outs)
        for i in range(args.nodes):
            assert _names(work / f"n{i}") == _names(work / "c") and _healthy(work / f"n{i}")
        say(f"{args.nodes} nodes: all ready in {many_wall:.2f} s (slowest {per_node[-1]:.2f} s)")

        say("directory store: node A's warmup --aot --remote DIR fills it (all cached, all pushed), then a fresh node")
        directory = work / "nfs"
        done = subprocess.run([*cli, "warmup", "--aot", "-p", args.profile, "--deep-ep-include", args.deep_ep_include,
                               "--cache-dir", str(work / "a"), "--remote", str(directory), "--format", "json"],
                              capture_output=True, text=True, env=child_env)
        assert done.returncode == 0 and json.loads(done.stdout)["pushed"] == len(names), done.stderr[-3000:]
        start = time.perf_counter()
        done = subprocess.run([*cli, "warmup", "--aot", "-p", args.profile, "--deep-ep-include", args.deep_ep_include,
                               "--cache-dir", str(work / "d"), "--remote", str(directory), "--format", "json"],
                              capture_output=True, text=True, env=child_env)
        d_wall = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-3000:]
        d = json.loads(done.stdout)
        assert d["compiled"] == 0 and _names(work / "d") == names
        say(f"directory: ready in {d_wall:.2f} s ({d['pulled']} pulled, {d['compiled']} compiled)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "remote_pull",
        "profile": profile.name,
        "machine": args.machine,
        "facts": machine_facts(),
        "load_average_1m_start_end": [round(load_start[0], 1), round(os.getloadavg()[0], 1)],
        "note": "a shared machine: the AOT baseline and the pulls ran in the same run, under the same load",
        "nvcc": release_line(toolchain.nvcc_version_output),
        "deep_ep_api": toolchain.deep_ep_api,
        "store": "moto S3 server on 127.0.0.1 (python -m moto.server)",
        "remote_prefix": env.prefix,
        "num_entries": len(names),
        "store_bytes": a.push.bytes_sent,
        "aot_compile": {"jobs": a.aot.jobs, "compiled": a.compiled, "wall_seconds": round(a.aot.wall_seconds, 2),
                        "push_seconds": round(a.push.seconds, 3), "pushed": a.pushed},
        "fresh_node_warmup_remote_cli": {
            "wall_seconds": round(b_wall, 3), "pulled": b["pulled"], "compiled": b["compiled"],
            "pull_seconds": b["pull"]["seconds"], "bytes_received": b["bytes_received"],
            "what": "`jitcache warmup --aot --remote` subprocess into an empty cache: process start, toolchain, "
                    "render + digest of every variant, pull by name, verify, publish"},
        "fresh_node_pull_library": {"seconds": round(c.seconds, 3), "pulled": len(c.pulled),
                                    "bytes_received": c.bytes_received,
                                    "what": "jitcache.store.remote.pull by the profile's index (the plan's variants; "
                                            "the barrier entry is not a plan variant)"},
        "concurrent_pull_cli": {"nodes": args.nodes, "wall_seconds": round(many_wall, 3),
                                "per_node_seconds": [round(t, 3) for t in per_node],
                                "what": f"{args.nodes} `jitcache pull` processes started together, each into its own "
                                        "empty cache (one machine: they share its cores and the one moto server)"},
        "directory_store_warmup_remote_cli": {"wall_seconds": round(d_wall, 3), "pulled": d["pulled"],
                                              "compiled": d["compiled"]},
        "speedup_fresh_node_vs_aot": round(a.aot.wall_seconds / b_wall, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = write_result("remote_pull", result, args.machine) if args.out is None else args.out
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {path}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
