"""`jitcache env | inspect | verify | prune`: the persistent cache, seen and maintained.

`export | import | relocate` (moving entries between machines and names) are :mod:`.bundle_cmds`.

Each command parses, calls :mod:`jitcache.store`, and renders the frozen
report it gets back; errors are raised as :class:`~jitcache.errors.JitCacheError`
and handled once, in ``app.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional


from jitcache.errors import JitCacheError, UsageError

from ._spec import command, option
from .output import Format, Output, human_bytes

if TYPE_CHECKING:
    import typer

    from jitcache.store.root import CacheRoot, LockHolder

# The rest of the library is imported inside each command: start-up loads only what the
# command runs (tarfile, zstandard and hashlib only for export and import).

FORMAT = option(Format.human, "--format", help="human (tables) or json (stdout holds only JSON).")
CACHE_DIR = option(None, "--cache-dir", help="The jitcache root (default: JITCACHE_HOME, "
                         "$XDG_CACHE_HOME/jitcache, ~/.cache/jitcache).")
DEEP_EP_DIR = option(None, "--deep-ep-dir", help="A DeepEP cache dir used directly (what EP_JIT_CACHE_DIR "
                           "pointed at), e.g. one DeepEP wrote on its own.")

DEEP_EP_ROOT = option(None, "--deep-ep-root", help="The serving deep_ep package dir (default: the importable "
                            "deep_ep), whose entry names are judged.")
NCCL_INCLUDE = option(None, "--nccl-include", help="The serving NCCL include dir, as that machine spells it "
                            "(default: DeepEP's own lookup).")
NVCC = option(None, "--nvcc", help="The serving nvcc (default: $CUDA_HOME/bin/nvcc, else nvcc on PATH).")

# Template parameters shown in the entries table, besides num_max_tokens_per_rank.
_SHOWN = ("hidden", "hidden_bytes", "num_experts", "num_topk", "num_ranks", "num_sms", "do_expand",
          "reuse_slot_indices",
          "do_cpu_sync", "cached_mode", "use_expanded_layout")


def _root(cache_dir: Optional[Path], deep_ep_dir: Optional[Path], *, must_exist: bool = True) -> CacheRoot:
    """The root a command works on. Commands that only read (inspect, verify, prune, export) refuse a root that
    does not exist: a typo'd --cache-dir would otherwise report a healthy, empty cache."""
    from jitcache.store.root import CacheRoot, resolve_root

    if cache_dir is not None and deep_ep_dir is not None:
        raise UsageError("give --cache-dir or --deep-ep-dir, not both")
    if deep_ep_dir is not None:
        if not deep_ep_dir.is_dir():
            raise UsageError(f"--deep-ep-dir {deep_ep_dir}: no such directory")
        return CacheRoot.for_deep_ep_dir(deep_ep_dir)
    root = resolve_root(cache_dir)
    if must_exist and not root.exists():
        given = f"--cache-dir {cache_dir}" if cache_dir is not None else "the default cache root"
        raise UsageError(f"{given}: no such directory ({root.path})",
                         hint="check the path; `jitcache warmup --aot` or `jitcache import` create a cache")
    root.check_layout()
    return root


def _arch_option(arch: Optional[str]) -> Optional[str]:
    from jitcache.store.elf import normalize_arch

    if arch is None:
        return None
    if (normal := normalize_arch(arch)) is None:
        raise UsageError(f"--arch {arch!r}: not a GPU arch", hint="use e.g. sm_90a, sm_90, sm_100a")
    return normal


def _waiting(out: Output):
    def notice(holder: LockHolder) -> None:
        out.info(f"Waiting for the cache lock {holder.describe()} holds...")
    return notice


def _params_text(params: dict) -> str:
    if "template_args" in params:
        return f"{params.get('kernel', '?')}<{', '.join(map(str, params['template_args']))}>"
    return " ".join(f"{k}={params[k]}" for k in _SHOWN if k in params)


def _serving(deep_ep_root: Optional[Path], nccl_include: Optional[str], nvcc: Optional[Path]):
    from jitcache.adapters.serving import locate_serving

    return locate_serving(deep_ep_root, nccl_include, nvcc=nvcc)


def _name_coverage(root: CacheRoot, profile: str, deep_ep_root: Optional[Path], nccl_include: Optional[str],
                   nvcc: Optional[Path]):
    from jitcache.planning.profiles import load_profile
    from jitcache.planning.variants import plan

    from jitcache.store.names import name_coverage

    the_plan = plan(load_profile(profile))
    return name_coverage(the_plan, _serving(deep_ep_root, nccl_include, nvcc), [root.deep_ep_dir])


def _label(v) -> str:
    e = v.entry
    return e.family if e.variant is None else f"{e.family} num_max_tokens_per_rank={e.num_max_tokens_per_rank} ({e.mode})"


def render_name_coverage(o: Output, cov) -> None:
    """Per profile: found / relocatable / missing, and for which DeepEP."""
    o.print(f"Profile {cov.profile}, judged for {cov.serving.describe()}:", markup=False)
    o.print(f"  {len(cov.verdicts)} entries that DeepEP looks up: {len(cov.found)} found, {len(cov.relocatable)} "
            f"relocatable (right source, other paths), {len(cov.missing)} missing", markup=False)
    if cov.complete:
        o.print(f"  this DeepEP will find all {len(cov.verdicts)} entries.", markup=False)
    else:
        o.print(f"  serving would compile {len(cov.relocatable) + len(cov.missing)} kernels"
                + (" (`jitcache relocate` publishes the relocatable ones under these names)" if cov.relocatable
                   else ""), markup=False)
    for v in cov.relocatable:
        o.print(f"  relocatable: {_label(v)} <- {Path(v.path).name}", markup=False)
    for v in cov.missing:
        o.print(f"  missing: {_label(v)}" + (f" ({v.note})" if v.note else ""), markup=False)
    if cov.unplanned:
        o.print(f"  {len(cov.unplanned)} entries of this layout match no planned variant (left alone)", markup=False)


def env_cmd(
    cache_dir: Optional[Path] = CACHE_DIR,
    read_only_roots: Optional[list[Path]] = option(None, "--read-only-root", help="Another cache to "
                                                         "look kernels up in, read-only (repeatable; DeepEP 2.5)."),
    fmt: Format = FORMAT,
) -> None:
    """Print the exports a worker needs to use the cache (EP_JIT_CACHE_DIR, TRITON_CACHE_DIR)."""
    from jitcache.store.root import env_exports, resolve_root

    root = resolve_root(cache_dir)
    exports = env_exports(root, read_only_roots or ())

    lines = [shell_export(name, value) for name, value in exports.items()]

    def render(o: Output) -> None:
        o.raw_lines(lines)  # never through rich: a wrapped or re-spaced line would eval to something else

    Output(fmt).result({"root": str(root.path), "env": exports}, render)  # result() puts "schema" first


def shell_export(name: str, value: str) -> str:
    """``export NAME='value'``, quoted for any POSIX sh (bash, dash, zsh): ``eval`` gives back ``value`` exactly.

    Single quotes keep every byte literal (``$()``, backticks, tabs, newlines);
    a single quote is written as ``'"'"'``. A value that is not valid text
    (a path with undecodable bytes) cannot be written faithfully: refused.
    """
    import shlex

    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{name}: the path {value!r} is not valid UTF-8; cannot print it as a shell export",
                         hint="use a --cache-dir whose path is plain text") from None
    return f"export {name}={shlex.quote(value)}"


def _adapters() -> tuple:
    """The DeepEP adapters, imported when a command needs them (start-up: ``env`` never does)."""
    from jitcache.adapters.registry import ADAPTERS

    return tuple(ADAPTERS)


def _deep_ep_of_format() -> dict[str, str]:
    """The DeepEP version that reads each on-disk layout (the adapters', named by the vocabulary: no adapter loads)."""
    from jitcache.types import DEEP_EP_LAYOUTS

    return {layout: version for version, layout in DEEP_EP_LAYOUTS.items()}


def _by_deep_ep(entries) -> dict[str, list]:
    of_format = _deep_ep_of_format()
    found: dict[str, list] = {v: [] for v in of_format.values()}
    for e in entries:
        if e.format in of_format:
            found[of_format[e.format]].append(e)
    return found


def _versions_text(counts: dict[str, int]) -> str:
    """`` (DeepEP 2.5: 57)``: which DeepEP the entries are for, or nothing when there are none."""
    text = ", ".join(f"DeepEP {v}: {n}" for v, n in counts.items() if n)
    return f" ({text})" if text else ""


def inspect_cmd(
    cache_dir: Optional[Path] = CACHE_DIR,
    deep_ep_dir: Optional[Path] = DEEP_EP_DIR,
    profile: Optional[str] = option(None, "--profile", "-p", help="Show coverage of this profile's plan."),
    deep_ep: Optional[str] = option(
        None, "--deep-ep", help="With --profile: the DeepEP that will serve, 2.5 or 2.1 (default: the profile's "
                                "[deep_ep] api, else the version whose entries the cache holds, else 2.5)."),
    deep_ep_root: Optional[Path] = DEEP_EP_ROOT,
    nccl_include: Optional[str] = NCCL_INCLUDE,
    nvcc: Optional[Path] = NVCC,
    check: bool = option(False, "--check", help="With --profile: exit 1 unless the serving DeepEP will find "
                               "every entry by the names it computes (a gate for an init container or a readiness "
                               "probe)."),
    fmt: Format = FORMAT,
) -> None:
    """What the cache holds: a summary per backend and family, then every entry, then problems."""
    from jitcache.store.model import iso_time
    from jitcache.store.scan import coverage, scan

    if deep_ep is not None and deep_ep not in _deep_ep_of_format().values():
        raise UsageError(f"--deep-ep {deep_ep}: expected 2.5 or 2.1")
    if check and profile is None:
        raise UsageError("--check needs --profile P")
    root = _root(cache_dir, deep_ep_dir)
    out = Output(fmt)
    report = scan(root)
    data = report.to_dict()
    by_version = _by_deep_ep(report.entries)
    data["deep_ep_versions"] = {v: len(es) for v, es in by_version.items()}
    cov = None
    covs: dict = {}
    if profile is not None:
        from jitcache.planning.profiles import load_profile
        from jitcache.planning.variants import plan

        prof = load_profile(profile)
        the_plan = plan(prof)
        # Coverage is per DeepEP version: a 2.1 entry is not what a 2.5 server loads, whatever its parameters.
        covs = {v: coverage(the_plan, es) for v, es in by_version.items()}
        present = [v for v, es in by_version.items() if es]
        chosen = deep_ep or (prof.deep_ep.api if prof.deep_ep.api != "auto" else None) or \
            (present[0] if len(present) == 1 else _adapters()[0].version)
        cov = covs[chosen]
        data["coverage"] = {"deep_ep": chosen, **cov.to_dict()}
        data["coverage_by_deep_ep"] = {v: {"deep_ep": v, **c.to_dict()} for v, c in covs.items()}
    names = why = None
    if profile is not None:
        try:
            names = _name_coverage(root, profile, deep_ep_root, nccl_include, nvcc)
        except JitCacheError as exc:
            if check:
                raise
            why = str(exc)
        data["coverage_by_name"] = None if names is None else names.to_dict()
        data["coverage_by_name_error"] = why

    def render(o: Output) -> None:
        if not report.entries:
            o.line(f"No entries in {report.deep_ep_dir}" + (f" or {report.triton_dir}" if report.triton_dir else ""))
        else:
            o.print(f"{root.path}: {len(report.entries)} entries, {human_bytes(report.size)}"
                    + _versions_text(data["deep_ep_versions"]), markup=False)
            o.table(None, ["backend", "family", "entries", "size", "broken"],
                    [[s["backend"], s["family"] or "-", s["entries"], human_bytes(s["size"]), s["broken"]]
                     for s in report.summary()], justify={"entries": "right", "size": "right", "broken": "right"})
            entries = sorted(report.entries, key=lambda e: (e.backend, e.family, e.num_max_tokens_per_rank or 0))
            o.table(None, ["backend", "family", "num_max_tokens_per_rank", "parameters", "arch", "size",
                           "last used", "status"],
                    [[e.backend, e.family or "-", e.num_max_tokens_per_rank if e.num_max_tokens_per_rank is not None
                      else "-", _params_text(e.params), e.arch or "-", human_bytes(e.size),
                      (iso_time(e.last_used) or "-").replace("+00:00", "Z"), e.status] for e in entries],
                    justify={"num_max_tokens_per_rank": "right", "size": "right"})
        problems = report.all_problems()
        if problems:
            o.print(f"{len(problems)} problem(s) found (run `jitcache verify` for details and --repair):")
            for p in problems[:20]:
                o.print(f"  {p.severity}: {p.code}: {p.path}: {p.message}", markup=False)
        if cov is not None:
            chosen = data["coverage"]["deep_ep"]
            name = f"Profile {cov.plan.profile.name}, DeepEP {chosen}"
            if cov.complete:
                o.print(f"{name}: all {cov.num_variants} kernels serving loads are in the cache (the buffer's "
                        "barrier included).")
            else:
                o.print(f"{name}: {len(cov.present)}/{cov.num_variants} kernels cached; a DeepEP {chosen} server "
                        f"would compile {len(cov.missing)} kernels:")
                for v in cov.missing:
                    if v.num_max_tokens_per_rank is None:
                        o.print(f"  missing: {v.family} (launched once per buffer, whatever the bucket)",
                                markup=False)
                    else:
                        o.print(f"  missing: {v.family} num_max_tokens_per_rank={v.num_max_tokens_per_rank} "
                                f"(mode {v.mode})", markup=False)
            for other, c in covs.items():
                if other != chosen:
                    o.print(f"Profile {cov.plan.profile.name}, DeepEP {other}: {len(c.present)}/{c.num_variants} "
                            f"kernels cached (what a DeepEP {other} server would find; --deep-ep {other} for its "
                            "details).")
        if names is not None:
            render_name_coverage(o, names)
        elif profile is not None:
            o.print(f"Cannot judge by the entry names the serving DeepEP looks up ({why}): the counts above are by "
                    "the parameters parsed from the cached sources, which does not prove DeepEP finds them.",
                    markup=False)

    out.result(data, render)
    if check and names is not None and not names.complete:
        raise SystemExit(1)


def verify_cmd(
    cache_dir: Optional[Path] = CACHE_DIR,
    deep_ep_dir: Optional[Path] = DEEP_EP_DIR,
    do_repair: bool = option(False, "--repair", help="Move broken entries and dead builds to quarantine."),
    dry_run: bool = option(False, "--dry-run", help="With --repair: show the moves, make none."),
    arch: Optional[str] = option(None, "--arch", help="The serving GPU's arch (e.g. sm_90a): a cubin whose "
                                                             "ELF header names another is an error."),
    profile: Optional[str] = option(None, "--profile", "-p", help="Also judge this profile's coverage by the "
                                          "entry names the serving DeepEP looks up."),
    deep_ep_root: Optional[Path] = DEEP_EP_ROOT,
    nccl_include: Optional[str] = NCCL_INCLUDE,
    nvcc: Optional[Path] = NVCC,
    fmt: Format = FORMAT,
) -> None:
    """Find entries that would crash or mislead a runtime; --repair quarantines them (never deletes)."""
    from jitcache.store.verify import repair, verify

    root = _root(cache_dir, deep_ep_dir)
    out = Output(fmt)
    result = verify(root, expected_arch=_arch_option(arch))
    data = result.to_dict()
    data["deep_ep_versions"] = {v: len(es) for v, es in _by_deep_ep(result.scan.entries).items()}
    names = None
    if profile is not None:
        names = _name_coverage(root, profile, deep_ep_root, nccl_include, nvcc)
        data["coverage_by_name"] = names.to_dict()
    outcome = None
    if do_repair and not dry_run:
        outcome = repair(root, result, on_wait=_waiting(out))
        data["repair"] = outcome.to_dict()
    data["dry_run"] = dry_run

    def render(o: Output) -> None:
        for p in result.problems:
            o.print(f"{p.severity}: {p.code}: {p.path}: {p.message}", markup=False)
        o.print(f"Checked {len(result.scan.entries)} entries{_versions_text(data['deep_ep_versions'])}: "
                f"{len(result.errors)} error(s), "
                f"{len(result.problems) - len(result.errors)} warning(s).")
        if result.moves and outcome is None:
            verb = "Would move" if dry_run else "To repair, run with --repair; it would move"
            o.print(f"{verb} {len(result.moves)} item(s) to {root.quarantine_dir}:")
            for m in result.moves:
                o.print(f"  {m.source} -> {m.destination}  ({', '.join(m.codes)})", markup=False)
        if outcome is not None:
            for m in outcome.moved:
                o.print(f"Quarantined {m.source} -> {m.destination} ({', '.join(m.codes)})", markup=False)
            for m, why in outcome.failed:
                o.print(f"Could not move {m.source}: {why}", markup=False)
            if outcome.moved:
                o.print(f"Moved {len(outcome.moved)} item(s) to quarantine; the runtime will recompile them.")
        for p in result.unrepairable:
            o.print(f"Not repaired (fix by hand): {p.path}: {p.message}", markup=False)
        if names is not None:
            render_name_coverage(o, names)

    out.result(data, render)
    remaining = len(result.errors) > 0
    if outcome is not None:
        remaining = bool(outcome.failed or result.unrepairable)
    if remaining:
        raise SystemExit(1)


def prune_cmd(
    cache_dir: Optional[Path] = CACHE_DIR,
    deep_ep_dir: Optional[Path] = DEEP_EP_DIR,
    max_size: Optional[str] = option(None, "--max-size", help="Shrink to this size (500M, 10G, 1.5GiB)."),
    older_than: Optional[str] = option(None, "--older-than", help="Remove entries unused this long (30d, 12h)."),
    keep_profiles: Optional[list[str]] = option(None, "--keep-profile", help="Never remove entries this "
                                                      "profile needs (repeatable)."),
    dry_run: bool = option(False, "--dry-run", help="Show what would be removed, remove nothing."),
    fmt: Format = FORMAT,
) -> None:
    """Evict least-recently-used entries; a kept profile's entries are never removed."""
    from jitcache.planning.profiles import load_profile
    from jitcache.planning.variants import plan
    from jitcache.store.prune import parse_age, parse_size, plan_prune, prune
    from jitcache.store.scan import scan

    if max_size is None and older_than is None:
        raise UsageError("prune needs --max-size and/or --older-than")
    root = _root(cache_dir, deep_ep_dir)
    out = Output(fmt)
    kept = [plan(load_profile(p)) for p in keep_profiles or ()]
    the_plan = plan_prune(scan(root, check_cubins=False), max_size=None if max_size is None else parse_size(max_size),
                          older_than=None if older_than is None else parse_age(older_than), keep_plans=kept)
    data = the_plan.to_dict()
    data["dry_run"] = dry_run
    if the_plan.max_size_reached is False:
        assert the_plan.max_size is not None
        reasons = ([f"{len(the_plan.protected)} entries kept profiles need ({human_bytes(the_plan.protected_size)}) "
                    "are protected"] if the_plan.protected else [])
        reasons += [f"{len(the_plan.foreign)} foreign entries are never removed"] if the_plan.foreign else []
        why = "; ".join(reasons) or "the entries left are broken (`jitcache verify --repair`)"
        out.warn(f"--max-size {max_size} cannot be reached: {why}; the cache stays at "
                 f"{human_bytes(the_plan.size_after)}, {human_bytes(the_plan.size_after - the_plan.max_size)} over")
    result = None
    if not dry_run and the_plan.remove:
        result = prune(root, the_plan, on_wait=_waiting(out))
        data["removed"] = [e.path for e in result.removed]
        data["failed"] = [{"path": e.path, "error": why} for e, why in result.failed]

    if the_plan.foreign:
        out.info(f"Left {len(the_plan.foreign)} foreign entries alone (not DeepEP kernels: DeepGEMM's or another "
                 "tool's in a shared root).")

    def render(o: Output) -> None:
        if not the_plan.remove:
            o.print(f"Nothing to remove: the cache holds {human_bytes(the_plan.size_before)} and every entry is "
                    "within the limits" + (f" or kept ({len(the_plan.protected)} protected)" if kept else "") + ".")
            return
        if dry_run:
            for e, why in zip(the_plan.remove, the_plan.reasons):
                o.print(f"Would remove {e.path} ({human_bytes(e.size)}, {why})", markup=False)
            o.print(f"Would remove {len(the_plan.remove)} entries ({human_bytes(the_plan.freed)}).")
            return
        assert result is not None
        for e, why in result.failed:
            o.print(f"Could not remove {e.path}: {why}", markup=False)
        o.print(f"Removed {len(result.removed)} entries ({human_bytes(result.freed)}).")

    out.result(data, render)
    if result is not None and result.failed:
        raise SystemExit(1)


def register(app: typer.Typer) -> None:
    app.command("env")(command(env_cmd))
    app.command("inspect")(command(inspect_cmd))
    app.command("verify")(command(verify_cmd))
    app.command("prune")(command(prune_cmd))
