"""Regenerate the README's "Performance" table from the benchmark JSON under ``benchmarks/results/``.

Writes only between ``<!-- perf:begin -->`` and ``<!-- perf:end -->`` in
README.md (prints the table instead when the markers are missing, or with
``--print``). No figure is typed by hand: each cell comes from a JSON file,
named in the table with its machine, DeepEP version and profile. Single-GPU
figures are read only from ``results/h200/`` (a benchmark without a result
there is listed as not yet measured); multi-GPU ones from any folder's
``multi_proof.json``.

    python benchmarks/report.py [--print] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
GPU_DIR = "h200"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _src(path: Path) -> str:
    return f"`{path.relative_to(HERE.parent)}`"


def _gib(value) -> str:
    return f"{value / 2**30:.2f} GiB" if isinstance(value, (int, float)) else "?"


def _num(value, fmt: str = "{:.1f}", missing: str = "?") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else missing


def decode_rows() -> list[list[str]]:
    path = RESULTS / GPU_DIR / "decode_moe_step.json"
    data = _load(path)
    if not data or not data.get("summary"):
        return [["Decode MoE step", "not yet measured (`bash benchmarks/run_gpu.sh` on the H200)", "-", "H200", "-",
                 "h200-ep1", _src(path)]]
    env = data.get("environment", {})
    rows = []
    for row in data["summary"]:
        rows.append([
            f"Decode MoE step, {row['num_tokens']} tokens ({row['mode']})",
            f"unbounded {row['unbounded_ms']:.3f} ms, {row['unbounded_recv_rows']} rows, "
            f"{_gib(row['unbounded_peak_above_weights_bytes'])}",
            f"bucketed {row['bucketed_ms']:.3f} ms, {row['bucketed_recv_rows']} rows, "
            f"{_gib(row['bucketed_peak_above_weights_bytes'])}: **{row['speedup']}x**",
            env.get("gpu", "H200"), env.get("deep_ep", "?"), data.get("profile", "?"), _src(path)])
    return rows


def readiness_rows() -> list[list[str]]:
    path = RESULTS / GPU_DIR / "readiness.json"
    data = _load(path)
    if not data or not data.get("summary"):
        return [["Readiness", "not yet measured (`bash benchmarks/run_gpu.sh` on the H200)", "-", "H200", "-",
                 "h200-ep1", _src(path)]]
    s = data["summary"]
    where = s.get("gpu") or "H200"
    dep = s.get("deep_ep") or "?"
    prof = data.get("profile", "?")
    return [
        ["Readiness: cold live warmup (empty cache, DeepEP's own JIT, no nvcc pass)", f"{_num(s.get('cold_live_warmup_seconds'))} s warmup",
         f"{_num(s.get('cold_live_process_seconds'))} s process"
         + (" (reused from an earlier run)" if s.get("cold_live_reused_from") else ""), where, dep, prof, _src(path)],
        ["Readiness: AOT warmup from empty", f"{_num(s.get('aot_wall_seconds'))} s with {s.get('aot_jobs')} nvcc jobs",
         f"then a live pass: {s.get('aot_live_pass_compiled', '?')} compiled, "
         f"{_num(s.get('aot_live_pass_process_seconds'))} s process", where, dep, prof, _src(path)],
        ["Readiness: new worker on a populated cache", f"{_num(s.get('warm_live_warmup_seconds'), '{:.2f}')} s warmup",
         f"{_num(s.get('warm_live_process_seconds'))} s process, {s.get('warm_live_compiled', '?')} compiled",
         where, dep, prof, _src(path)],
    ]


def overhead_rows() -> list[list[str]]:
    rows = []
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir() and p.name != GPU_DIR):
        path = folder / "runtime_overhead_cpu.json"
        data = _load(path)
        if not data or not data.get("ok"):
            continue
        for label, r in data.get("bucket", {}).items():
            rows.append([f"`BucketPolicy.bucket` ({label})", f"{r['ns_per_call']:.0f} ns/call",
                         f"goal < {data.get('goal_ns_per_bucket_call', 1000)} ns", folder.name, "n/a (pure Python)",
                         data.get("profile", "?"), _src(path)])
        d = data.get("dispatch_noop_buffer")
        if d:
            rows.append(["`BucketedDispatcher.dispatch` overhead, no-op buffer",
                         f"{d['overhead_ns_per_call']:.0f} ns/call",
                         f"direct {d['direct_ns_per_call']:.0f} ns, wrapped {d['bucketed_dispatcher_ns_per_call']:.0f} ns",
                         folder.name, "n/a (no-op EPBuffer)", data.get("profile", "?"), _src(path)])
    path = RESULTS / GPU_DIR / "runtime_overhead_gpu.json"
    data = _load(path)
    cases = [c for c in (data or {}).get("cases", []) if "overhead_us_per_call" in c]
    if not cases:
        rows.append(["`BucketedDispatcher.dispatch` vs DeepEP direct", "not yet measured (`bash benchmarks/run_gpu.sh`)",
                     "-", "H200", "-", "h200-ep1", _src(path)])
    for c in cases:
        share = c.get("overhead_share_of_step")
        rows.append([f"`BucketedDispatcher.dispatch` vs DeepEP direct, {c['num_tokens']} tokens",
                     f"{c['overhead_us_per_call']:+.1f} us/call (direct {c['direct_us_per_call']:.1f} us)",
                     f"{100 * share:.2f}% of the MoE step" if isinstance(share, (int, float)) else "step time not given",
                     data.get("gpu", "H200"), data.get("deep_ep", "?"), data.get("profile", "?"), _src(path)])
    return rows


def storm_rows() -> list[list[str]]:
    rows = []
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        path = folder / "storm.json"
        data = _load(path)
        if not data:
            continue
        per = data["per_variant_compile_seconds"]
        for name, trace in data["traces"].items():
            for label, r in trace["policies"].items():
                rows.append([f"Storm, {name} trace ({trace['steps']} steps), {label}",
                             f"{r['distinct_num_max_tokens_per_rank']} variants, "
                             f"{r['serving_path_compile_seconds_computed_no_warmup']:.0f} s JIT (computed)",
                             f"padding {100 * r['padded_row_overhead']:.1f}%"
                             + ("" if r.get("warmup_compile_seconds_computed") is None else
                                f"; with warmup: 0 s on the serving path"),
                             f"{folder.name} (compile time: {per['machine']}, {per['seconds']:.1f} s/variant)",
                             data.get("deep_ep", "?"), data.get("profile", "?"), _src(path)])
    return rows


def live_proof_rows() -> list[list[str]]:
    path = RESULTS / GPU_DIR / "live_proof.json"
    data = _load(path)
    if not data or not data.get("summary"):
        return []
    s, phases = data["summary"], data.get("phases", {})
    env = phases.get("trace", {}).get("environment", {})
    gpu, deep_ep = env.get("gpu", "H200"), env.get("deep_ep", "?")
    raw = phases.get("raw", {})
    rows = [
        ["Live warmup from an empty cache, DeepEP compiling every variant (no nvcc pass)",
         f"{_num(s.get('warmup_seconds'))} s", f"all compiled: {s.get('warmup_every_variant_compiled')}",
         gpu, deep_ep, data.get("profile", "?"), _src(path)],
        [f"Serving trace, {data.get('steps')} decode steps of 1..8192 tokens, strict `BucketedDispatcher`",
         f"{s.get('trace_new_cache_entries')} new cache entries, {s.get('trace_misses')} misses",
         f"outputs bit-identical to direct DeepEP calls: {s.get('trace_all_bit_identical')}",
         gpu, deep_ep, data.get("profile", "?"), _src(path)],
    ]
    extra = s.get("raw_extrapolation") or {}
    if raw.get("measured"):
        rows.append([
            f"Same trace unbucketed: first {len(raw['measured'])} distinct sizes (measured)",
            f"{s.get('raw_compiles')} compiles, {_num(s.get('raw_seconds'))} s",
            f"full trace ({extra.get('distinct_sizes_in_trace', '?')} sizes): "
            f"~{_num(extra.get('estimated_compile_seconds_full_trace'), '{:.0f}')} s, EXTRAPOLATED",
            gpu, deep_ep, data.get("profile", "?"), _src(path)])
    return rows


def aot_rows() -> list[list[str]]:
    rows = []
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        path = folder / "aot_warmup.json"
        data = _load(path)
        if not data:
            continue
        rows.append([f"AOT warmup, no GPU ({data['num_variants']} variants, --jobs {data['jobs']})",
                     f"{data['wall_seconds']:.1f} s wall", f"nvcc time summed {data['compile_seconds_sum']:.1f} s; "
                     f"second run {data['second_run_wall_seconds']:.2f} s (all cached)",
                     f"{folder.name} ({data.get('cpu_model', '?')}, {data.get('cpu_count', '?')} cores)",
                     data.get("deep_ep_api", "?"), data.get("profile", "?"), _src(path)])
        path = folder / "aot_concurrent.json"
        data = _load(path)
        if data:
            rows.append([f"{data['processes']} AOT warmups of one cache at once",
                         f"{data['compiles_counted']} compiles for {data['planned_entries']} entries, "
                         f"{data['wall_seconds']:.0f} s", f"each compiled once: {data['every_variant_compiled_once']}",
                         folder.name, "2.5", data.get("profile", "?"), _src(path)])
    return rows


def cli_warmup_rows() -> list[list[str]]:
    rows = []
    for path in sorted(RESULTS.glob("*/cli_live_warmup*.json")):
        data = _load(path)
        if not data or not data.get("summary"):
            continue
        s, cold = data["summary"], data["runs"]["cold"]
        where = f"{data.get('gpu') or 'GPU'} ({path.parent.name}, {data.get('cpu_count', '?')} cores)"
        rows.append([f"`jitcache warmup` (the CLI, live) from an empty cache, one GPU",
                     f"{_num(s.get('cold_wall_seconds'))} s process: precompile {_num(cold.get('precompile_seconds'))} s "
                     f"({s.get('cold_precompile_compiled')} nvcc compiles), live steps compiled "
                     f"{s.get('cold_live_steps_compiled')}",
                     f"again on that cache: {_num(s.get('warm_wall_seconds'))} s process, "
                     f"{s.get('warm_live_steps_compiled')} compiled", where, data.get("deep_ep", "?"),
                     data.get("profile", "?"), _src(path)])
    return rows


def multi_gpu_rows() -> list[list[str]]:
    rows = []
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        path = folder / "multi_proof.json"
        data = _load(path)
        if not data or not data.get("summary"):
            continue
        s, phases = data["summary"], data.get("phases", {})
        world = data.get("world_size") or next((p["summary"].get("ranks") for p in phases.values()), "?")
        env = next((r.get("environment") for p in phases.values() for r in p.get("ranks", {}).values()
                    if isinstance(r.get("environment"), dict)), {})
        where, dep, prof = f"{world}x {env.get('gpu', 'H200')} ({folder.name})", env.get("deep_ep", "?"), data.get("profile", "?")
        lazy = (f"DeepEP alone: {_num(s.get('lazy_wall_seconds'))} s, {_num(s.get('lazy_compile_cpu_seconds'), '{:.0f}')} "
                "compile CPU-s (every rank compiles)" if "lazy_wall_seconds" in s else "DeepEP alone: not measured")
        if "live_wall_seconds" in s:
            rows.append([f"EP{world} live warmup from empty, precompile split over the ranks",
                         f"{_num(s.get('live_wall_seconds'))} s, {_num(s.get('live_compile_cpu_seconds'), '{:.0f}')} "
                         f"compile CPU-s; {s.get('live_precompile_compiled', '?')} nvcc compiles, "
                         f"{s.get('live_steps_that_compiled', '?')} in the live steps", lazy, where, dep, prof, _src(path)])
        if "live_plain_wall_seconds" in s:
            rows.append([f"EP{world} live warmup from empty, --no-precompile",
                         f"{_num(s.get('live_plain_wall_seconds'))} s, "
                         f"{_num(s.get('live_plain_compile_cpu_seconds'), '{:.0f}')} compile CPU-s",
                         lazy, where, dep, prof, _src(path)])
        if "aot_wall_seconds" in s:
            per = s.get("aot_compiled_per_rank") or {}
            rows.append([f"EP{world} `warmup --aot --distributed` from empty",
                         f"{_num(s.get('aot_wall_seconds'))} s, compiled per rank "
                         + "+".join(str(n) for _, n in sorted(per.items())),
                         f"every entry once: {s.get('aot_union_equals_plan')}", where, dep, prof, _src(path)])
        if "trace_passed" in s:
            t = phases.get("trace", {}).get("summary", {})
            rows.append([f"EP{world} trace, {t.get('steps_planned', '?')} decode steps, another token count on each "
                         "rank, strict `BucketedDispatcher`",
                         f"{s.get('trace_new_cache_entries')} new cache entries, {s.get('trace_misses')} misses, "
                         f"no hang: {s.get('trace_no_hang')}",
                         f"same bucket on every rank: {s.get('trace_buckets_agree')}; outputs identical to direct "
                         f"DeepEP calls: {s.get('trace_all_identical')}", where, dep, prof, _src(path)])
    return rows


def remote_rows() -> list[list[str]]:
    rows = []
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        path = folder / "remote_pull.json"
        data = _load(path)
        if not data:
            continue
        aot, many = data["aot_compile"], data["concurrent_pull_cli"]
        loads = data.get("load_average_1m") or {}
        where = f"{folder.name} (shared; 1-min load {_load_range(loads) or data.get('load_average_1m_start_end', '?')})"
        fresh = data.get("fresh_node_pull_s3_cli")
        if fresh is None:   # the first run's layout (warmup --aot --remote, no relocation)
            fresh = data["fresh_node_warmup_remote_cli"]
            rows.append([f"Fresh node from a remote store: `warmup --aot --remote` into an empty cache "
                         f"({fresh['pulled']} entries, {data['store_bytes'] / 1024:.0f} KiB, moto S3 on 127.0.0.1)",
                         f"{fresh['wall_seconds']:.2f} s wall, {fresh['compiled']} compiled",
                         f"AOT compile of the same entries in the same run: {aot['wall_seconds']:.1f} s "
                         f"(--jobs {aot['jobs']}); {many['nodes']} nodes pulling at once: all ready in "
                         f"{many['wall_seconds']:.2f} s", where, data.get("deep_ep_api", "?"),
                         data.get("profile", "?"), _src(path)])
            continue
        nfs, warm = data["fresh_node_pull_directory_cli"], data["fresh_node_warmup_remote_cli"]
        rows.append([f"Fresh node from a remote store: `jitcache pull` (+ relocation to another install's names) into "
                     f"an empty cache, process start to exit ({fresh['pulled']} entries, "
                     f"{data['store_bytes'] / 1024:.0f} KiB, moto S3 on 127.0.0.1)",
                     f"{fresh['wall_seconds_median']:.2f} s median of {len(fresh['wall_seconds'])} "
                     f"({fresh['relocated']} relocated; the pull itself {fresh['pull_seconds']:.2f} s); "
                     f"from a directory {nfs['wall_seconds_median']:.2f} s",
                     f"AOT compile of the same entries in the same run: {aot['wall_seconds']:.1f} s "
                     f"(--jobs {aot['jobs']}); {many['nodes']} nodes pulling at once: all ready in "
                     f"{many['wall_seconds']:.2f} s; `warmup --aot --remote`: {warm['wall_seconds']:.2f} s, "
                     f"{warm['compiled']} compiled", where, data.get("deep_ep_api", "?"),
                     data.get("profile", "?"), _src(path)])
    return rows


def _load_range(loads: dict) -> str:
    values = [v for pair in loads.values() for v in pair]
    return f"{min(values):.1f}-{max(values):.1f}" if values else ""


def h200_session3_rows() -> list[list[str]]:
    """The DeepEP 2.1 vLLM-shaped proof (issue 13) and the digest-truth proof for 2.1 and 2.5 (issue 12)."""
    rows = []
    path = RESULTS / GPU_DIR / "vllm_proof" / "vllm_proof.json"
    data = _load(path)
    if data and data.get("summary"):
        s = data["summary"]
        rows.append(["`jitcache warmup` (live, DeepEP 2.1) from an empty cache, vLLM's buffer flags",
                     f"{_num(s.get('live_with_precompile_seconds'))} s, live steps compiled "
                     f"{s.get('live_missed_by_live')}; `--format json` stdout parses: {s.get('live_stdout_is_json')}",
                     f"DeepEP 2.1 alone: {_num(s.get('live_deep_ep_alone_seconds'))} s",
                     "NVIDIA H200", "2.1", data.get("profile", "?"), _src(path)])
        rows.append([f"vLLM-shaped trace through the plugin, {data.get('steps')} steps of 1..8192 tokens",
                     f"{s.get('trace_new_cache_entries')} new cache entries, {s.get('trace_misses')} misses, "
                     f"{s.get('trace_refused')} refused", f"passed (outputs equal to direct calls): {s.get('trace_passed')}",
                     "NVIDIA H200", "2.1", data.get("profile", "?"), _src(path)])
    path = RESULTS / GPU_DIR / "digest_proof" / "digest_proof.json"
    data = _load(path)
    versions = data.get("versions", {}) if data else {}
    for version, result in sorted(versions.items()):
        v, a = result.get("verdict", {}), result.get("a_serve", {})
        rows.append([f"CPU-built bundle imported (relocated) on the H200, strict dispatcher over "
                     f"{len(a.get('buckets', []))} buckets",
                     f"{len(a.get('new_entries', []))} entries written, outputs equal {a.get('outputs_equal')}/"
                     f"{len(a.get('buckets', []))}",
                     f"not relocated: refused before compiling {v.get('b_refused_before_compiling')}; "
                     f"a deleted bucket refused alone {v.get('c_refused_only_missing')}",
                     "NVIDIA H200", version, (data or {}).get("profile", "?"), _src(path)])
    return rows


_FLOOR_OPS = (("inspect_cold", "`jitcache inspect --format json`, first scan"),
              ("inspect_warm", "`jitcache inspect --format json`, again"),
              ("verify_cold", "`jitcache verify`, first scan"),
              ("verify_warm", "`jitcache verify`, again"),
              ("export", "`jitcache export` (after verify)"),
              ("import", "`jitcache import` into an empty root"))


def _run_load(run: dict) -> str:
    """``; 1-min load 2.2-5.4``: the range of the load averages a floors run recorded."""
    loads = [v[0] for v in (run.get("load_average_at_start"), run.get("load_average_at_end")) if v]
    loads += [m[k] for m in run.get("maintenance", []) for k in ("load_average_1m_start", "load_average_1m_end")
              if k in m]
    return f"; 1-min load {min(loads):.1f}-{max(loads):.1f}" if loads else ""


def floors_rows() -> list[list[str]]:
    """Issue 16: start-up and maintenance against their floors, ``floors_before.json`` / ``floors_after.json``."""
    rows = []
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        before, after = _load(folder / "floors_before.json"), _load(folder / "floors_after.json")
        if not after:
            continue
        src = _src(folder / "floors_after.json") + (" / " + _src(folder / "floors_before.json") if before else "")
        where = f"{folder.name} ({after.get('commit', '?')}{_run_load(after)})"

        # Start-up: the dedicated runs (wall and CPU time) when present, else the main ones.
        st_before = (_load(folder / "floors_before_startup.json") or before or {}).get("startup") or {}
        st_after_file = folder / "floors_after_startup.json"
        st_run = _load(st_after_file) or after
        st = st_run.get("startup")
        st_src = _src(st_after_file) if st_after_file.exists() else src
        if (folder / "floors_before_startup.json").exists():
            st_src += " / " + _src(folder / "floors_before_startup.json")
        if st:
            for name, r in st["commands"].items():
                prev = st_before.get("commands", {}).get(name)
                cpu = (f"; CPU {1000 * r['cpu_seconds']:.0f} ms = **{r['cpu_ratio']:.1f}x** its "
                       f"{1000 * st['floor_cpu_seconds']:.0f} ms" if "cpu_ratio" in r else "")
                was = ""
                if prev:
                    was = f"; before: {prev['seconds']:.2f} s = {prev['ratio']:.1f}x" + (
                        f", CPU {prev['cpu_ratio']:.1f}x" if "cpu_ratio" in prev else "")
                rows.append([f"Start-up `jitcache {name}` (empty root, human output)",
                             f"{1000 * r['seconds']:.0f} ms = {r['ratio']:.1f}x `python -c pass`{cpu}",
                             f"`python -c pass` {1000 * st['floor_seconds']:.0f} ms wall (same run); goal <= 100 ms "
                             f"and <= 4x{was}", f"{folder.name} ({st_run.get('commit', '?')}{_run_load(st_run)})", "n/a", "-", st_src])
        old = {m["entries"]: m for m in (before or {}).get("maintenance", [])}
        big = _load(folder / "floors_after_100k.json")  # the largest cache, measured on its own
        runs = after.get("maintenance", []) + ((big or {}).get("maintenance") or [])
        if big:
            src += " / " + _src(folder / "floors_after_100k.json")
        for m in runs:
            n = m["entries"]
            if n < 10_000:
                continue  # the smaller caches appear in the per-entry rows below
            for key, label in _FLOOR_OPS:
                r = m["operations"].get(key)
                if not r:
                    continue
                prev = old.get(n, {}).get("operations", {}).get(key)
                rows.append([f"{label}, {n:,} entries",
                             f"{r['seconds']:.2f} s = **{r['ratio']:.1f}x** the floor ({r['us_per_entry']:.0f} us/entry)",
                             f"{r['floor']} {r['floor_seconds']:.2f} s (same run); goal <= 3x"
                             + (f"; before: {prev['seconds']:.1f} s = {prev['ratio']:.1f}x" if prev else ""),
                             where, "2.5 layout", "-", src])
        sizes = sorted((m["entries"], m["operations"]) for m in runs)
        for key, label in _FLOOR_OPS:
            per = [(n, ops[key]["us_per_entry"]) for n, ops in sizes if key in ops and n >= 1000]
            if len(per) >= 2:
                rows.append([f"{label}: cost per entry from {per[0][0]:,} to {per[-1][0]:,} entries",
                             ", ".join(f"{u:.0f} us" for _, u in per),
                             f"x{per[-1][1] / per[0][1]:.2f} per entry over x{per[-1][0] // per[0][0]} entries "
                             "(1.00 = linear)", where, "2.5 layout", "-", src])
        d = after.get("dispatch")
        if d:
            prev = (before or {}).get("dispatch")
            rows.append(["`BucketedDispatcher.dispatch` on a no-op buffer, added per call",
                         f"{d['overhead_ns_per_call']:.0f} ns (direct call {d['direct_ns_per_call']:.0f} ns)",
                         f"`bucket()` alone {d['bucket_ns_per_call']:.0f} ns (same run); goal <= 1000 ns"
                         + (f"; before: {prev['overhead_ns_per_call']:.0f} ns" if prev else ""),
                         where, "n/a (no-op EPBuffer)", "-", src])
    return rows


def table() -> str:
    header = ["Benchmark", "Result", "Compared with", "Machine", "DeepEP", "Profile", "Source"]
    rows = (live_proof_rows() + h200_session3_rows() + readiness_rows() + cli_warmup_rows() + multi_gpu_rows() + aot_rows() + remote_rows() + decode_rows() + overhead_rows()
            + storm_rows() + floors_rows())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the table, do not touch README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is not up to date")
    args = parser.parse_args(argv)
    text = table()
    readme = README.read_text() if README.exists() else ""
    if args.print or BEGIN not in readme or END not in readme:
        if not args.print:
            print(f"README.md has no {BEGIN} ... {END} markers: table printed, README untouched", file=sys.stderr)
        print(text)
        return 0
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{BEGIN}\n{text}\n{END}{tail}"
    if args.check:
        return 0 if updated == readme else 1
    if updated != readme:
        README.write_text(updated)
        print(f"updated {README}")
    else:
        print(f"{README} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
