"""Start-up and maintenance against their floors, each paired with its floor in the same run (issue 16).

What is timed (wall clock of a real process, the way a user runs it), and its floor:

- start-up of ``jitcache --version | env | buckets | plan | inspect`` (an empty root) against
  ``python -c pass`` (the same interpreter), interleaved, median of ``--startup-runs``;
- on synthetic caches of N entries (``--sizes``, e.g. 100,1000,10000,100000) copied from the 22 real
  DeepEP 2.5 entries in ``tests/data/deepep25-h200`` (DeepEP's own ``kernel.cu``, nvcc's ``kernel.cubin``,
  ``meta.json``, ``.committed``; each copy's ``kernel.cu`` gets one comment line so no two are equal):

  - ``inspect --format json`` and ``verify --format json``, first on a root without jitcache's verdict
    file (``cold``) and again (``warm``), against a process that reads every file of the root (the
    cache is left 2.5 s old before the first command: jitcache does not remember verdicts of files
    modified in the last 2 s);
  - ``export`` (after ``verify``, so it can reuse its verdicts) against ``tar -c | zstd -3``;
  - ``import`` of that bundle into an empty root against ``zstd -d | tar -x`` of the same bundle;

- ``BucketedDispatcher.dispatch`` over a no-op ``EPBuffer`` (``runtime_overhead.py``'s) against calling
  the buffer directly, and ``BucketPolicy.bucket`` alone.

Every ratio is taken between numbers of the same run. JSON goes to
``benchmarks/results/<machine>/floors_<label>.json``.

    python benchmarks/floors.py --label after [--sizes 100,1000,10000,100000] [--bundles-up-to 10000] [--import-only]
                                [--startup-runs 11] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import machine_facts, say, write_result  # noqa: E402

os.environ.setdefault("JITCACHE_STATS", "0")

TEMPLATES = HERE.parent / "tests" / "data" / "deepep25-h200" / "cache"
VERDICTS = ("meta/verdicts.json",)  # jitcache's verdict file(s), removed for a cold run
RACY_WAIT_S = 2.5  # > jitcache.store.verdicts.RACY_S


def _jitcache_cmd() -> list[str]:
    script = Path(sys.executable).parent / "jitcache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jitcache.cli"]


def _run(cmd: list[str] | str, *, env: dict | None = None, shell: bool = False, check: bool = True) -> float:
    return _run_cpu(cmd, env=env, shell=shell, check=check)[0]


def _run_cpu(cmd: list[str] | str, *, env: dict | None = None, shell: bool = False,
             check: bool = True) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of a command and its children."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, shell=shell)
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stderr:
        proc.stderr.close()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


# -- start-up ---------------------------------------------------------------------------------------


def startup(runs: int, workdir: Path) -> dict:
    (workdir / "empty-root").mkdir(exist_ok=True)  # inspect refuses a root that does not exist
    env = {**os.environ, "JITCACHE_HOME": str(workdir / "empty-root"), "COLUMNS": "200"}
    # The warm-up run below writes the .pyc files an installed package has: with PYTHONDONTWRITEBYTECODE set in
    # the caller's shell, every timed run would compile jitcache's sources again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    jc = _jitcache_cmd()
    commands = {"--version": ["--version"], "env": ["env"], "buckets": ["buckets", "-n", "8192"],
                "plan": ["plan"], "inspect": ["inspect"]}
    floor_cmd = [sys.executable, "-c", "pass"]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    floor: list[tuple[float, float]] = []
    for name, args in commands.items():  # once each first: page cache, .pyc files
        _run(jc + args, env=env)
    for _ in range(runs):
        floor.append(_run_cpu(floor_cmd, env=env))
        for name, args in commands.items():
            times[name].append(_run_cpu(jc + args, env=env))
    floor_s = statistics.median(w for w, _ in floor)
    floor_cpu = statistics.median(c for _, c in floor)
    out = {"runs": runs, "floor": "python -c pass", "floor_seconds": round(floor_s, 4),
           "floor_cpu_seconds": round(floor_cpu, 4), "commands": {},
           "what": "median wall time and median CPU time (user + system, from wait4) of each process; on a "
                   "loaded machine the CPU time is the steadier measure of what the command itself costs"}
    for name, values in times.items():
        median = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        out["commands"][name] = {"seconds": round(median, 4), "min_seconds": round(min(w for w, _ in values), 4),
                                 "ratio": round(median / floor_s, 2), "cpu_seconds": round(cpu, 4),
                                 "cpu_ratio": round(cpu / floor_cpu, 2)}
        say(f"start-up {name}: {median * 1000:.0f} ms ({median / floor_s:.1f}x python -c pass "
            f"{floor_s * 1000:.0f} ms); CPU {cpu * 1000:.0f} ms ({cpu / floor_cpu:.1f}x {floor_cpu * 1000:.0f} ms)")
    return out


# -- synthetic caches -------------------------------------------------------------------------------


def _templates() -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for entry in sorted(TEMPLATES.iterdir()):
        files = {p.name: p.read_bytes() for p in sorted(entry.iterdir()) if p.is_file()}
        out.append((entry.name.split(".")[0], files))
    return out


def build_cache(root: Path, count: int, templates) -> int:
    """A jitcache root holding ``count`` DeepEP 2.5 entries; returns its bytes."""
    from jitcache.store.root import CacheRoot

    CacheRoot(root).ensure()
    cache = root / "deep_ep" / "cache"
    total = 0
    for i in range(count):
        family, files = templates[i % len(templates)]
        key = hashlib.md5(f"{family}-{i}".encode()).hexdigest()
        entry = cache / f"{family}.{key}"
        entry.mkdir()
        for name, data in files.items():
            if name == "kernel.cu":
                data = data + f"// synthetic copy {i}\n".encode()
            with open(entry / name, "wb") as handle:
                handle.write(data)
            total += len(data)
    return total


_READ_ALL = ("import os, sys\n"
             "for d, _, fs in os.walk(sys.argv[1]):\n"
             "    for f in fs:\n"
             "        with open(os.path.join(d, f), 'rb') as h: h.read()\n")


def _clear_verdicts(root: Path) -> None:
    for name in VERDICTS:
        (root / name).unlink(missing_ok=True)


def maintenance(count: int, workdir: Path, templates, repeat: int, with_bundles: bool = True,
                import_only: bool = False) -> dict:
    jc = _jitcache_cmd()
    env = {**os.environ, "COLUMNS": "200"}
    base = workdir / f"n{count}"
    root = base / "root"
    t0 = time.perf_counter()
    size = build_cache(root, count, templates)
    say(f"{count} entries ({size / 2**20:.0f} MiB) built in {time.perf_counter() - t0:.1f} s")
    time.sleep(RACY_WAIT_S)  # files younger than this are read every time (racily clean): a real cache is older
    bundle = base / "bundle.tar.zst"
    floor_bundle = base / "floor.tar.zst"
    out: dict = {"entries": count, "bytes": size, "repeat": repeat, "operations": {},
                 "load_average_1m_start": os.getloadavg()[0]}

    def pair(name: str, floor_name: str, floor_cmd, op_cmd, before=None, floor_shell=False, after=None) -> None:
        floors, ops = [], []
        for _ in range(repeat):
            floors.append(_run_cpu(floor_cmd, env=env, shell=floor_shell))
            if before is not None:
                before()
            ops.append(_run_cpu(op_cmd, env=env))
            if after is not None:
                after()
        record(name, floor_name, floors, ops)

    def record(name: str, floor_name: str, floors: list, ops: list) -> None:
        """Median wall and median CPU (user + system of the process and its children, from wait4) of each."""
        f, o = statistics.median(w for w, _ in floors), statistics.median(w for w, _ in ops)
        fc, oc = statistics.median(c for _, c in floors), statistics.median(c for _, c in ops)
        out["operations"][name] = {"seconds": round(o, 3), "floor": floor_name, "floor_seconds": round(f, 3),
                                   "ratio": round(o / f, 2), "us_per_entry": round(o / count * 1e6, 1),
                                   "cpu_seconds": round(oc, 3), "floor_cpu_seconds": round(fc, 3),
                                   "cpu_ratio": round(oc / fc, 2)}
        say(f"  {name}: {o:.2f} s, floor ({floor_name}) {f:.2f} s: {o / f:.2f}x; "
            f"CPU {oc:.2f} s, floor {fc:.2f} s: {oc / fc:.2f}x")

    read_all = [sys.executable, "-c", _READ_ALL, str(root)]
    cd = ["--cache-dir", str(root), "--format", "json"]
    if not import_only:  # --import-only: the bundle, then import against its floor
        pair("inspect_cold", "read every file", read_all, jc + ["inspect", *cd], before=lambda: _clear_verdicts(root))
        pair("verify_cold", "read every file", read_all, jc + ["verify", *cd], before=lambda: _clear_verdicts(root))
        pair("verify_warm", "read every file", read_all, jc + ["verify", *cd])
        pair("inspect_warm", "read every file", read_all, jc + ["inspect", *cd])
    if not with_bundles:
        out["bundles"] = "skipped (--bundles-up-to)"
        out["load_average_1m_end"] = os.getloadavg()[0]
        shutil.rmtree(base, ignore_errors=True)
        return out
    tar_zstd = f"tar -cf - -C {root} deep_ep | zstd -3 -q -f -o {floor_bundle}"
    if import_only:
        _run(jc + ["export", "-o", str(bundle), *cd], env=env)
        _run(tar_zstd, env=env, shell=True)
    else:
        pair("export", "tar -c | zstd -3", tar_zstd, jc + ["export", "-o", str(bundle), *cd], floor_shell=True)
    out["bundle_bytes"] = bundle.stat().st_size
    out["floor_bundle_bytes"] = floor_bundle.stat().st_size
    dest = base / "untar"
    fresh = base / "imported"

    def untar() -> str:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        return f"zstd -d -q -c {bundle} | tar -xf - -C {dest}"

    floors, ops = [], []
    for _ in range(repeat):
        floors.append(_run_cpu(untar(), env=env, shell=True))
        shutil.rmtree(fresh, ignore_errors=True)
        ops.append(_run_cpu(jc + ["import", str(bundle), "--cache-dir", str(fresh), "--format", "json"], env=env))
    record("import", "zstd -d | tar -x", floors, ops)
    out["load_average_1m_end"] = os.getloadavg()[0]
    imported = sum(1 for _ in (fresh / "deep_ep" / "cache").iterdir())
    if imported != count:
        raise RuntimeError(f"import published {imported} entries, expected {count}")
    shutil.rmtree(base, ignore_errors=True)
    return out


# -- dispatcher -------------------------------------------------------------------------------------


def dispatcher(calls: int, repeat: int, block: int = 2000) -> dict:
    """Per-call times as the minimum over many short blocks, the variants interleaved block by block:
    on a shared machine a block that ran undisturbed gives the cost of the code, not of the neighbours."""
    from runtime_overhead import EPBuffer, Shape

    from jitcache.planning.buckets import BucketPolicy
    from jitcache.runtime.dispatcher import BucketedDispatcher

    rng = random.Random(0)
    policy = BucketPolicy(8192)
    buffer = EPBuffer()
    wrapped = BucketedDispatcher(buffer, policy, strict=True, warm=policy.buckets())
    xs = [Shape(rng.randint(1, 8192)) for _ in range(block)]
    kw = {"topk_idx": None, "topk_weights": None, "num_experts": 256, "expert_alignment": 1, "num_sms": 0,
          "do_expand": False, "do_cpu_sync": False}
    env = {"xs": xs, "d": buffer.dispatch, "w": wrapped.dispatch, "b": policy.bucket, "kw": kw,
           "ns": [x.shape[0] for x in xs]}
    stmts = {"loop": "for n in ns: pass", "bucket": "for n in ns: b(n)",
             "direct": "for x in xs: d(x, num_max_tokens_per_rank=x.shape[0], **kw)",
             "through": "for x in xs: w(x, **kw)"}
    timers = {name: timeit.Timer(stmt, globals=env) for name, stmt in stmts.items()}
    best = {name: float("inf") for name in stmts}
    blocks = max(calls // block, 1) * repeat
    for _ in range(blocks):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(1) / block)
    bucket = best["bucket"] - best["loop"]
    direct, through = best["direct"], best["through"]
    overhead = through - direct
    snap = wrapped.stats()
    out = {"calls_per_block": block, "blocks": blocks, "bucket_ns_per_call": round(bucket * 1e9, 1),
           "direct_ns_per_call": round(direct * 1e9, 1), "dispatcher_ns_per_call": round(through * 1e9, 1),
           "overhead_ns_per_call": round(overhead * 1e9, 1), "goal_ns": 1000,
           "counted_calls": snap.bucketed_calls, "expected_calls": blocks * block,
           "what": "BucketedDispatcher(strict=True, all warm).dispatch(x, **kw) minus buffer.dispatch(x, "
                   "num_max_tokens_per_rank=n, **kw) on a no-op EPBuffer; bucket(): the policy call alone; "
                   "each the minimum over short interleaved blocks"}
    say(f"dispatcher: +{overhead * 1e9:.0f} ns per call (direct {direct * 1e9:.0f} ns, through "
        f"{through * 1e9:.0f} ns); bucket() alone {bucket * 1e9:.0f} ns")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="before / after: the JSON is floors_<label>.json")
    parser.add_argument("--sizes", default="100,1000,10000", help="entry counts, comma-separated")
    parser.add_argument("--startup-runs", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=0, help="runs per operation (0: 3 below 10,000 entries, "
                        "else 1)")
    parser.add_argument("--calls", type=int, default=200_000, help="dispatcher calls per timing")
    parser.add_argument("--bundles-up-to", type=int, default=None, help="export/import only for caches up to "
                        "this many entries (bigger ones: inspect and verify only)")
    parser.add_argument("--import-only", action="store_true", help="of the maintenance commands, time only import "
                        "(against its floor; the bundle is exported untimed)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: startup,maintenance,dispatch")
    parser.add_argument("--workdir", default=None, help="where the synthetic caches go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/<machine>)")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workdir = Path(tempfile.mkdtemp(prefix="jitcache-floors-", dir=args.workdir))
    git = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    result: dict = {"benchmark": "floors", "label": args.label, "commit": git, "machine": machine_facts(),
                    "load_average_at_start": list(os.getloadavg())}
    try:
        if "startup" not in skip:
            result["startup"] = startup(args.startup_runs, workdir)
        if "dispatch" not in skip:
            result["dispatch"] = dispatcher(args.calls, 5)
        if "maintenance" not in skip:
            templates = _templates()
            result["maintenance"] = []
            for count in sizes:
                repeat = args.repeat or (3 if count < 10_000 else 1)
                with_bundles = args.bundles_up_to is None or count <= args.bundles_up_to
                result["maintenance"].append(maintenance(count, workdir, templates, repeat, with_bundles,
                                                         import_only=args.import_only))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["load_average_at_end"] = list(os.getloadavg())
    path = write_result(f"floors_{args.label}", result, out_dir=args.out)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
