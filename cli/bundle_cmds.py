"""`jitcache export | import | relocate`: entries moved between machines and under the serving DeepEP's names.

Each command parses, calls :mod:`jitcache.store` (bundles, relocation), and
renders the frozen report it gets back; errors are raised as
:class:`~jitcache.errors.JitCacheError` and handled once, in ``app.py``. The
options they share with `inspect` and `verify` are :mod:`.cache_cmds`'.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from jitcache.errors import JitCacheError

from . import cache_cmds
from .cache_cmds import (_adapters, _arch_option, _deep_ep_of_format, _root, _serving, _versions_text, _waiting,
                         render_name_coverage)
from .output import Format, Output, human_bytes

# cache_cmds declares its options for typer and its fast path alike (._spec): typer's own here.
CACHE_DIR, DEEP_EP_DIR, DEEP_EP_ROOT, FORMAT, NCCL_INCLUDE, NVCC = (
    p.typer() for p in (cache_cmds.CACHE_DIR, cache_cmds.DEEP_EP_DIR, cache_cmds.DEEP_EP_ROOT, cache_cmds.FORMAT,
                        cache_cmds.NCCL_INCLUDE, cache_cmds.NVCC))


def export_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="The bundle file to write (.tar.zst)."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Only the entries this profile needs."),
    cache_dir: Optional[Path] = CACHE_DIR,
    deep_ep_dir: Optional[Path] = DEEP_EP_DIR,
    fmt: Format = FORMAT,
) -> None:
    """Write the cache's healthy entries (or a profile's) to a tar + zstd bundle with checksums."""
    from jitcache.planning.profiles import load_profile
    from jitcache.planning.variants import plan
    from jitcache.store.bundle import export_bundle
    from jitcache.store.formats import classify_deep_ep_name

    root = _root(cache_dir, deep_ep_dir)
    out = Output(fmt)
    result = export_bundle(root, output, plan=None if profile is None else plan(load_profile(profile)))
    if result.missing_variants:
        out.warn(f"{result.missing_variants} variants of the profile are not in the cache and are not in the bundle")
    for name in result.skipped:
        out.warn(f"{name} vanished while being exported (pruned?); left out")
    if result.foreign:
        out.warn(f"left {len(result.foreign)} foreign entries out (not DeepEP kernels: DeepGEMM's or another "
                 f"tool's in a shared root): {', '.join(result.foreign[:5])}" + (" ..." if len(result.foreign) > 5 else ""))

    data = result.to_dict()
    data["deep_ep_versions"] = {a.version: 0 for a in _adapters()}
    for name in result.entries:
        found = classify_deep_ep_name(name)
        if found is not None:
            data["deep_ep_versions"][_deep_ep_of_format()[found[0]]] += 1

    def render(o: Output) -> None:
        o.print(f"Exported {len(result.entries)} entries{_versions_text(data['deep_ep_versions'])} to {result.path} "
                f"({human_bytes(result.size)}).")

    out.result(data, render)


def import_cmd(
    bundle: Path = typer.Argument(..., help="A bundle written by `jitcache export`."),
    force: bool = typer.Option(False, "--force", help="Import even if built for another nvcc/DeepEP/Triton/arch."),
    arch: Optional[str] = typer.Option(None, "--arch", help="The serving GPU's arch (e.g. sm_90a): refuse cubins "
                                                             "built for another one."),
    relocate: bool = typer.Option(True, "--relocate/--no-relocate", help="Publish the imported entries also under "
                                  "the names the serving DeepEP looks up (default on; needs it findable here)."),
    deep_ep_root: Optional[Path] = DEEP_EP_ROOT,
    nccl_include: Optional[str] = NCCL_INCLUDE,
    nvcc: Optional[Path] = NVCC,
    cache_dir: Optional[Path] = CACHE_DIR,
    deep_ep_dir: Optional[Path] = DEEP_EP_DIR,
    fmt: Format = FORMAT,
) -> None:
    """Verify a bundle completely, publish each entry atomically (identical ones are skipped), then relocate."""
    from jitcache.store.bundle import import_bundle

    root = _root(cache_dir, deep_ep_dir, must_exist=False)
    out = Output(fmt)
    serving = None
    if relocate:
        try:
            serving = _serving(deep_ep_root, nccl_include, nvcc)
        except JitCacheError as exc:
            if deep_ep_root is not None or nccl_include is not None:
                raise
            out.warn(f"not relocating: {exc} (pass --deep-ep-root/--nccl-include, or --no-relocate)")
    result = import_bundle(root, bundle, force=force, target_arch=_arch_option(arch), on_wait=_waiting(out))
    for mismatch in result.forced_mismatches:
        out.warn(f"imported despite a mismatch ({mismatch})")
    for name in result.conflicts:
        out.warn(f"{name} is already in the cache with other files; kept the cache's (run `jitcache verify`)")

    moved = None
    if serving is not None:
        from jitcache.store.relocate import relocate_entries

        cache = os.fspath(root.deep_ep_dir / "cache")
        names = [*result.published, *result.identical]
        moved = relocate_entries(root.deep_ep_dir, serving, sources=[f"{cache}/{n}" for n in names])
    data = result.to_dict()
    data["relocation"] = None if moved is None else moved.to_dict()

    def render(o: Output) -> None:
        o.print(f"Imported {len(result.published)} entries; {len(result.identical)} already present"
                + (f", {len(result.conflicts)} conflicting kept" if result.conflicts else "")
                + (f", {len(result.lost_race)} published meanwhile by another process" if result.lost_race else "")
                + ".")
        if moved is not None and serving is not None:
            o.print(f"Relocated {len(moved.published)} entries to the names {serving.describe()} looks up"
                    + (f" ({len(moved.present)} already there)" if moved.present else "") + ".", markup=False)
            for entry, why in moved.refused:
                o.print(f"  not relocated: {Path(entry).name}: {why}", markup=False)

    out.result(data, render)


def relocate_cmd(
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Relocate what this profile needs (default: "
                                          "every entry, by its own source)."),
    deep_ep_root: Optional[Path] = DEEP_EP_ROOT,
    nccl_include: Optional[str] = NCCL_INCLUDE,
    nvcc: Optional[Path] = NVCC,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be published, write nothing."),
    cache_dir: Optional[Path] = CACHE_DIR,
    deep_ep_dir: Optional[Path] = DEEP_EP_DIR,
    fmt: Format = FORMAT,
) -> None:
    """Re-publish entries built for other install paths under the names the serving DeepEP looks up (no compile)."""
    from jitcache.planning.profiles import load_profile
    from jitcache.planning.variants import plan

    from jitcache.store.relocate import relocate

    root = _root(cache_dir, deep_ep_dir)
    out = Output(fmt)
    serving = _serving(deep_ep_root, nccl_include, nvcc)
    the_plan = None if profile is None else plan(load_profile(profile))
    try:
        result = relocate(root, serving, the_plan, dry_run=dry_run, on_wait=_waiting(out))
    except JitCacheError:
        if the_plan is not None and not out.is_json:  # read-only: the coverage still says what DeepEP will find
            render_name_coverage(out, relocate(root, serving, the_plan, dry_run=True).coverage)
        raise
    after = None
    if the_plan is not None and not dry_run:
        after = relocate(root, serving, the_plan, dry_run=True).coverage
    data = result.to_dict()
    data["coverage_after"] = None if after is None else after.to_dict()

    def render(o: Output) -> None:
        verb = "Would publish" if dry_run else "Published"
        o.print(f"{verb} {len(result.published)} entries under the names {serving.describe()} looks up"
                + (f"; {len(result.present)} already there" if result.present else "")
                + (f"; {len(result.lost_race)} published meanwhile by another process" if result.lost_race else "")
                + ".", markup=False)
        for name, source in result.published:
            o.print(f"  {Path(source).name} -> {name}", markup=False)
        for entry, why in result.refused:
            o.print(f"  not relocated: {Path(entry).name}: {why}", markup=False)
        if result.unplanned:
            o.print(f"  {len(result.unplanned)} entries match no planned variant (left alone)", markup=False)
        if after is not None:
            render_name_coverage(o, after)

    out.result(data, render)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.command("relocate")(relocate_cmd)
