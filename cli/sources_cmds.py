"""`jitcache sources`: fetch and list the DeepEP source archives the AOT compiler takes headers from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .output import Format, Output, human_bytes

sources_app = typer.Typer(help="DeepEP source archives (sdists) for `warmup --aot`: fetch, list.",
                          no_args_is_help=True)

FORMAT = typer.Option(Format.human, "--format", help="human (tables) or json (stdout holds only JSON).")
CACHE_DIR = typer.Option(None, "--cache-dir", help="The jitcache root (default: ~/.cache/jitcache).")


@sources_app.command("fetch")
def fetch(
    requirement: str = typer.Argument("deepinfer-ep==2.5.0", help="NAME or NAME==VERSION of a DeepEP sdist."),
    index_url: Optional[str] = typer.Option(
        None, "--index-url", help="A Simple API index (default: pip's configured index, $PIP_INDEX_URL)."),
    sha256: Optional[str] = typer.Option(
        None, "--sha256", help="Pin the archive: the index must serve a file with this sha256; one already stored "
                               "with it is used without asking the index."),
    cache_dir: Optional[Path] = CACHE_DIR,
    fmt: Format = FORMAT,
) -> None:
    """Download a DeepEP sdist (sha256-checked) into <cache root>/sources/; `warmup --aot` then finds its headers."""
    from jitcache.build.sources import fetch_sdist
    from jitcache.store.root import resolve_root

    out = Output(fmt)
    root = resolve_root(cache_dir)
    report = fetch_sdist(requirement, root_path=root.path, index_url=index_url, sha256=sha256)

    def render(o: Output) -> None:
        verb = "Fetched" if report.status == "fetched" else "Already present:"
        o.print(f"{verb} {report.filename} ({human_bytes(report.size)}, sha256 {report.sha256[:16]}...) "
                f"-> {report.path}")
        o.print((f"Index: {report.index_url}. " if report.index_url else "Pinned by sha256, the index was not asked. ")
                + "Next: jitcache warmup --aot --deep-ep 2.5 -p PROFILE")

    out.result(report.to_dict(), render)


@sources_app.command("list")
def list_(cache_dir: Optional[Path] = CACHE_DIR, fmt: Format = FORMAT) -> None:
    """The archives under <cache root>/sources/."""
    from jitcache.build.sources import list_sources, sources_dir
    from jitcache.store.root import resolve_root

    out = Output(fmt)
    directory = sources_dir(resolve_root(cache_dir).path)
    archives = list_sources(directory)

    def render(o: Output) -> None:
        if not archives:
            o.print(f"No source archives in {directory}. Fetch one: jitcache sources fetch")
            return
        rows = [[a.filename, a.version or "?", human_bytes(a.size), (a.sha256 or "?")[:16],
                 a.to_dict()["fetched_at"] or "?"]
                for a in archives]
        o.table(f"Source archives in {directory}", ["file", "version", "size", "sha256", "fetched"], rows,
                justify={"size": "right"})

    out.result({"sources_dir": str(directory), "archives": [a.to_dict() for a in archives]}, render)


def register(app: typer.Typer) -> None:
    app.add_typer(sources_app, name="sources")
