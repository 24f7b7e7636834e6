"""Fresh-node readiness from a remote store (pull + relocate) against an AOT compile, same machine, one run.

Writes ``benchmarks/results/<machine>/remote_pull.json``. Starts moto's S3
server on 127.0.0.1 (a free port), then:

1. the build box, empty cache: ``warmup_aot_remote`` compiles the whole
   profile with this machine's default paths (the pull finds nothing) and
   pushes it: the compile is what a node without a shared store pays;
2. a fresh serving node, whose DeepEP and NCCL live elsewhere (a ``deep_ep``
   package dir with the same headers at another path, NCCL at
   ``/srv/nccl/include``), so none of the pushed names is the one it looks
   up: ``jitcache pull --deep-ep-root ... --nccl-include ...`` as a
   subprocess into an empty cache, timed from process start to exit
   (``--repeats`` times, each into a new empty cache): every entry found by
   its source, verified as ``import`` verifies it, published, relocated to
   the serving names. Each resulting cache is checked to be complete by name
   for that DeepEP (what ``inspect --check`` gates on);
3. the same from a directory store (NFS-like);
4. ``jitcache warmup --aot --remote`` for the serving node's paths
   (``--target-*``): pull + relocate, 0 compiled;
5. ``--nodes`` ``jitcache pull`` processes started together, each into its
   own empty cache;
6. where the time goes: the interpreter alone, importing the CLI, the pull
   report's own phase timings (index, download, verify + publish, relocate)
   and the rest of the process (setup, serving names, output).

The load average is recorded at the start and the end of each phase.

    python benchmarks/remote_pull.py [--profile h200-ep1] [--jobs N] [--nodes 8] [--repeats 5]
        [--deep-ep-include PATH] [--machine NAME] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, machine_label, say, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jitcache.adapters.serving import locate_serving  # noqa: E402
from jitcache.warm.remote_warmup import remote_env, warmup_aot_remote  # noqa: E402
from jitcache.build.toolchain import release_line, resolve_toolchain  # noqa: E402
from jitcache.planning.profiles import load_profile  # noqa: E402
from jitcache.planning.variants import plan  # noqa: E402
from jitcache.store.names import name_coverage  # noqa: E402
from jitcache.store.root import resolve_root  # noqa: E402

SERVING_NCCL = "/srv/nccl/include"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, done


def _median_wall(argv: list[str], env: dict[str, str], repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        wall, done = _timed(argv, env)
        assert done.returncode == 0, done.stderr[-2000:]
        walls.append(wall)
    return round(statistics.median(walls), 4)


def _complete(root_dir: Path, the_plan, serving) -> bool:
    return name_coverage(the_plan, serving, [resolve_root(root_dir).deep_ep_dir]).complete


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="h200-ep1")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--machine", default=os.environ.get("JITCACHE_MACHINE") or machine_label())
    parser.add_argument("--deep-ep-include", default=str(REPO.parent / "shared" / "gpu" / "deepinfer_ep-2.5.0.tar.gz"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    profile = load_profile(args.profile)
    the_plan = plan(profile)
    toolchain = resolve_toolchain(deep_ep_include=args.deep_ep_include, api=profile.deep_ep.api)
    env = remote_env(profile, toolchain=toolchain)
    loads: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="jitcache-remote-bench-"))
    package = work / "serving" / "site-packages" / "deep_ep"   # the serving DeepEP: same headers, another path
    shutil.copytree(toolchain.deep_ep_include, package / "include")
    (package / "__init__.py").write_text("")
    serving = locate_serving(package, SERVING_NCCL)
    flags = ["--deep-ep-root", str(package), "--nccl-include", SERVING_NCCL]
    proc, endpoint = _start_moto(_free_port())
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    os.environ.update(aws)
    url = "s3://jitcache-bench/fleet"
    child_env = {**os.environ, **aws, "NO_COLOR": "1"}
    cli = [sys.executable, "-m", "jitcache.cli"]
    try:
        loads["aot"] = [_load()]
        say(f"build box: AOT compile of {profile.name} ({len(the_plan)} variants, {args.jobs} jobs), then push")
        a = warmup_aot_remote(the_plan, toolchain, resolve_root(work / "a"), remote=url, num_workers=args.jobs)
        assert a.ok and a.pulled == 0, a.to_dict()["aot"]["totals"]
        loads["aot"].append(_load())
        entries = a.pushed
        say(f"build box: compiled {a.compiled} in {a.aot.wall_seconds:.1f} s, pushed {a.pushed} "
            f"({a.push.bytes_sent} B) in {a.push.seconds:.2f} s")
        assert not _complete(work / "a", the_plan, serving)   # the serving node's names are not the build box's

        def fresh_pull(remote: str, tag: str) -> dict:
            loads[tag] = [_load()]
            walls, reports = [], []
            for i in range(args.repeats):
                target = work / f"{tag}{i}"
                wall, done = _timed([*cli, "pull", "-p", args.profile, "--remote", remote, "--cache-dir", str(target),
                                     *flags, "--format", "json"], child_env)
                assert done.returncode == 0, done.stderr[-3000:]
                report = json.loads(done.stdout)
                assert len(report["pulled"]) == entries and len(report["relocated"]) == entries, report
                assert _complete(target, the_plan, serving)
                walls.append(wall)
                reports.append(report)
            loads[tag].append(_load())
            best = min(range(len(walls)), key=walls.__getitem__)
            median = sorted(range(len(walls)), key=walls.__getitem__)[len(walls) // 2]
            say(f"{tag}: fresh node ready (pull + relocate {entries}) in {walls[median]:.3f} s median "
                f"(best {walls[best]:.3f} s)")
            med = reports[median]
            return {"wall_seconds_median": round(walls[median], 4), "wall_seconds_best": round(walls[best], 4),
                    "wall_seconds": [round(w, 4) for w in walls], "pulled": len(med["pulled"]),
                    "relocated": len(med["relocated"]), "bytes_received": med["bytes_received"],
                    "pull_seconds": med["seconds"], "pull_timings": med.get("timings"),
                    "process_minus_pull_seconds": round(walls[median] - med["seconds"], 4),
                    "complete_by_name_for_serving": True}

        say("fresh serving node: `jitcache pull` + relocation from S3")
        s3 = fresh_pull(url, "s3-")
        say("directory store: the build box pushes there too, then the same fresh pull")
        directory = work / "nfs"
        done = subprocess.run([*cli, "push", "-p", args.profile, "--deep-ep-api", env.deep_ep_api, "--cache-dir",
                               str(work / "a"), "--remote", str(directory), "--format", "json"],
                              capture_output=True, text=True, env=child_env)
        assert done.returncode == 0, done.stderr[-2000:]
        nfs = fresh_pull(str(directory), "dir-")

        say("`jitcache warmup --aot --remote` for the serving node's paths: pull + relocate, 0 compiled")
        loads["warmup"] = [_load()]
        wall, done = _timed([*cli, "warmup", "--aot", "-p", args.profile, "--deep-ep-include", args.deep_ep_include,
                             "--target-deep-ep-root", str(package), "--target-nccl-include", SERVING_NCCL,
                             "--cache-dir", str(work / "w"), "--remote", url, "--format", "json"], child_env)
        loads["warmup"].append(_load())
        assert done.returncode == 0, done.stderr[-3000:]
        w = json.loads(done.stdout)
        assert w["compiled"] == 0 and len(w["pull"]["relocated"]) == entries, w["aot"]["totals"]
        say(f"warmup --aot --remote: ready in {wall:.2f} s ({w['pulled']} pulled, {w['compiled']} compiled)")

        say(f"{args.nodes} nodes: `jitcache pull` at once, each into its own empty cache")
        loads["nodes"] = [_load()]
        go = work / "go"
        waiter = ("import os, sys, time, subprocess\n"
                  "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
                  "t = time.perf_counter(); r = subprocess.run(sys.argv[2:], capture_output=True, text=True)\n"
                  "print(f'{time.perf_counter() - t:.4f}'); sys.stderr.write(r.stderr); sys.exit(r.returncode)")
        procs = [subprocess.Popen([sys.executable, "-c", waiter, str(go), *cli, "pull", "-p", args.profile,
                                   "--cache-dir", str(work / f"n{i}"), "--remote", url, *flags, "--format", "json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)
                 for i in range(args.nodes)]
        time.sleep(1.0)   # let every waiter start before the gun
        start = time.perf_counter()
        go.touch()
        outs = [p.communicate() for p in procs]
        many_wall = time.perf_counter() - start
        loads["nodes"].append(_load())
        assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
        per_node = sorted(float(o.strip()) for o, _ in outs)
        assert all(_complete(work / f"n{i}", the_plan, serving) for i in range(args.nodes))
        say(f"{args.nodes} nodes: all ready in {many_wall:.2f} s (slowest {per_node[-1]:.2f} s)")

        say("start-up floors: the interpreter alone, importing the CLI, `jitcache --version`")
        loads["startup"] = [_load()]
        startup = {"python_bare": _median_wall([sys.executable, "-c", "pass"], child_env, args.repeats),
                   "import_cli": _median_wall([sys.executable, "-c", "import jitcache.cli.app"], child_env,
                                              args.repeats),
                   "jitcache_version": _median_wall([*cli, "--version"], child_env, args.repeats)}
        loads["startup"].append(_load())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "remote_pull",
        "profile": profile.name,
        "machine": args.machine,
        "facts": machine_facts(),
        "load_average_1m": loads,
        "note": "a shared machine: the AOT baseline and the pulls ran in the same run; load_average_1m gives each "
                "phase's 1-minute load average at its start and end",
        "nvcc": release_line(toolchain.nvcc_version_output),
        "deep_ep_api": toolchain.deep_ep_api,
        "store": "moto S3 server on 127.0.0.1 (python -m moto.server); a local directory",
        "remote_prefix": env.prefix,
        "serving": {"package_dir": serving.package_dir, "nccl_include": serving.nccl_include,
                    "what": "the fresh node's DeepEP: the build box's headers at another path, NCCL elsewhere, so "
                            "every pulled entry must be relocated to be found"},
        "num_entries": entries,
        "store_bytes": a.push.bytes_sent,
        "aot_compile": {"jobs": a.aot.jobs, "compiled": a.compiled, "wall_seconds": round(a.aot.wall_seconds, 2),
                        "push_seconds": round(a.push.seconds, 3), "pushed": a.pushed},
        "fresh_node_pull_s3_cli": {**s3, "what": "`jitcache pull -p P --remote s3://... --deep-ep-root D "
                                                 "--nccl-include N` into an empty cache, process start to exit"},
        "fresh_node_pull_directory_cli": {**nfs, "what": "the same from a directory store"},
        "fresh_node_warmup_remote_cli": {
            "wall_seconds": round(wall, 3), "pulled": w["pulled"], "relocated": len(w["pull"]["relocated"]),
            "compiled": w["compiled"], "pull_seconds": w["pull"]["seconds"],
            "what": "`jitcache warmup --aot --remote` with the serving node's --target-* paths into an empty cache: "
                    "process start, toolchain, render + digest of every variant, pull, relocate, 0 compiles"},
        "concurrent_pull_cli": {"nodes": args.nodes, "wall_seconds": round(many_wall, 3),
                                "per_node_seconds": [round(t, 3) for t in per_node],
                                "what": f"{args.nodes} `jitcache pull` processes (with relocation) started together, "
                                        "each into its own empty cache (one machine: they share its cores and the "
                                        "one moto server)"},
        "startup_seconds_median": startup,
        "speedup_fresh_node_vs_aot": round(a.aot.wall_seconds / s3["wall_seconds_median"], 1),
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
