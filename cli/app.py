"""`jitcache`: the Typer application and its error handling.

Commands live in one module per group and only parse options, call the
library and render; errors are handled here, once: a
:class:`~jitcache.errors.JitCacheError` becomes ``Error: ...`` (plus a hint)
on stderr and its exit code; a traceback only with ``JITCACHE_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import typer

from jitcache import __version__
from jitcache.errors import JitCacheError

from . import cache_cmds, plan_cmds, sources_cmds, stats_cmds, warmup_cmds
from .output import Output

app = typer.Typer(
    name="jitcache",
    help="Warm DeepEP's JIT before serving: bucket policy, warmup, and a persistent, shippable kernel cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"jitcache {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """jitcache: no JIT compile on the serving path."""


# One module per command group; each adds its commands to `app`.
for _group in (plan_cmds, warmup_cmds, stats_cmds, cache_cmds, sources_cmds):
    _group.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="jitcache", standalone_mode=True)
    except JitCacheError as exc:
        if os.environ.get("JITCACHE_DEBUG"):
            raise
        Output().error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A full disk, a read-only mount, a denied path that no command handled closer to the work:
        # still an Error naming the path and the free space, never a traceback.
        from jitcache.store.faults import filesystem_error, is_fault

        if os.environ.get("JITCACHE_DEBUG") or not (is_fault(exc) or exc.filename):
            raise
        error = filesystem_error(exc, action="write" if is_fault(exc) else "use")
        Output().error(error.message, error.hint)
        sys.exit(1)
    except KeyboardInterrupt:
        Output().error("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
