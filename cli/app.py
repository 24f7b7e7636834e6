"""`jitcache`: the Typer application and its error handling.

Commands live in one module per group and only parse options, call the
library and render; errors are handled here, once, in one style: ``Error: ...``
and a ``Hint: ...`` line on stderr (never hard-wrapped when stderr is not a
terminal), exit code 2 for usage (a bad option value, an unknown command, a
missing option: Click's errors too, without Typer's boxed panels) and 1 for a
failure; a :class:`~jitcache.errors.JitCacheError` carries its own code and
hint; a traceback only with ``JITCACHE_DEBUG=1``.
"""

from __future__ import annotations

import sys
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers take this name)

from jitcache import __version__

if TYPE_CHECKING:
    from typing import Any, Callable

    import typer
    from typer._click import exceptions as click_errors

    from jitcache.errors import JitCacheError

# typer (and click, and the command modules) are imported by ``main`` once it knows the command:
# ``jitcache --version`` needs none of them.

#: Top-level command -> the module whose ``register(app)`` adds it. ``main`` imports only the module of the
#: command it runs (start-up: a probe such as ``jitcache env`` loads no warmup, remote or stats code);
#: help, no command or an unknown one get them all. tests/test_fast_paths.py holds this table to the modules.
COMMAND_MODULES = {
    "buckets": "plan_cmds", "plan": "plan_cmds", "profiles": "plan_cmds",
    "warmup": "warmup_cmds",
    "stats": "stats_cmds",
    "env": "cache_cmds", "inspect": "cache_cmds", "verify": "cache_cmds", "prune": "cache_cmds",
    "export": "bundle_cmds", "import": "bundle_cmds", "relocate": "bundle_cmds",
    "push": "remote_cmds", "pull": "remote_cmds",
    "sources": "sources_cmds",
}
#: Every command module, in the order the help lists them.
GROUPS = ("plan_cmds", "warmup_cmds", "stats_cmds", "cache_cmds", "bundle_cmds", "remote_cmds", "sources_cmds")


def _click_errors() -> Any:
    try:  # Typer 0.2x vendors Click as typer._click; older Typer uses Click itself
        from typer._click import exceptions
    except ImportError:  # pragma: no cover
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def _root_callback() -> Any:
    import typer

    def _version(value: bool) -> None:
        if value:
            typer.echo(f"jitcache {__version__}")
            raise typer.Exit()

    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="Print the version and exit."),
    ) -> None:
        """jitcache: no JIT compile on the serving path."""

    return _root


def build_app(groups: tuple[str, ...] = GROUPS) -> typer.Typer:
    """The Typer application with the commands of ``groups`` (module names of :data:`GROUPS`)."""
    from importlib import import_module

    import typer

    from . import _fast_params

    _fast_params.install()  # option values without pydantic (typer >= 0.2x): ~50 ms less start-up
    application = typer.Typer(
        name="jitcache",
        help="Warm DeepEP's JIT before serving: bucket policy, warmup, and a persistent, shippable kernel cache.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    application.callback()(_root_callback())
    for group in groups:  # one module per command group; each adds its commands
        import_module(f"{__package__}.{group}").register(application)
    return application


def _groups_for(argv: list[str]) -> tuple[str, ...]:
    """The command modules ``argv`` needs: its command's, none for a bare ``--version``, else all."""
    for token in argv:
        if token.startswith("-"):
            if token in ("-h", "--help"):
                return GROUPS
            continue
        module = COMMAND_MODULES.get(token)
        return (module,) if module is not None else GROUPS
    return () if "--version" in argv else GROUPS


_FULL_APP: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    """``app``: the application with every command (built on first use, e.g. by typer's test runner)."""
    global _FULL_APP
    if name == "app":
        if _FULL_APP is None:
            _FULL_APP = build_app()
        return _FULL_APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _usage_hint(exc: click_errors.ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "jitcache"
    return f"see `{path} --help`"


def _failure_hint(exc: JitCacheError) -> str:
    """The hint of a failure (exit 1) that brought none: what to look at next, by kind of failure."""
    from jitcache.errors import (CacheLockTimeout, CompileError, RemoteError, ToolchainError, WarmupError,
                                 CacheError)

    debug = "JITCACHE_DEBUG=1 shows the traceback"
    for kind, hint in (
        (CacheLockTimeout, "another jitcache process holds the cache (named above); wait for it, or raise "
                           "JITCACHE_LOCK_TIMEOUT"),
        (RemoteError, "check the store's URL (--remote / JITCACHE_REMOTE) and its credentials; "
                      "`warmup --remote-optional` goes on without it"),
        (CacheError, "`jitcache verify` lists what is wrong with the cache; `verify --repair` quarantines it"),
        (CompileError, "the compiler's log is named above; `jitcache plan` shows what was being built"),
        (ToolchainError, "name the serving toolkit with --nvcc (or CUDA_HOME) and DeepEP's headers with "
                         "--deep-ep-include or `jitcache sources fetch`"),
        (WarmupError, "`jitcache warmup --help` lists the options; " + debug),
    ):
        if isinstance(exc, kind):
            return hint
    return debug


def _command_path(application: typer.Typer, argv: list[str]) -> str:
    """``jitcache sources fetch`` for ``["sources", "fetch", "-x", ...]``: the (sub)command the user ran."""
    import typer
    command: Any = typer.main.get_command(application)
    names = ["jitcache"]
    for token in argv:
        sub = getattr(command, "commands", {}).get(token)
        if sub is None:
            break
        names.append(token)
        command = sub
    return " ".join(names)


#: The probe commands run without typer when their command line is plain (:func:`._spec.parse`): command ->
#: (module, function). Their modules declare options with ``._spec.option`` and import typer only to register.
FAST_COMMANDS = {"env": ("cache_cmds", "env_cmd"), "inspect": ("cache_cmds", "inspect_cmd"),
                 "buckets": ("plan_cmds", "buckets"), "plan": ("plan_cmds", "plan_cmd")}


def _fast_call(args: list[str]) -> Callable[[], Any] | None:
    """The call ``args`` make, parsed without typer, or None (not a probe command, or not a plain command line)."""
    if not args or args[0] not in FAST_COMMANDS:
        return None
    from importlib import import_module

    from . import _spec

    module, name = FAST_COMMANDS[args[0]]
    func = getattr(import_module(f"{__package__}.{module}"), name)
    kwargs = _spec.parse(func, args[1:])
    if kwargs is None:
        return None
    return lambda: func(**kwargs)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:  # what the root's eager --version prints, without building the app
        sys.stdout.write(f"jitcache {__version__}\n")
        sys.stdout.flush()
        sys.exit(0)
    fast = _fast_call(args)
    if fast is not None:
        code = _handled(fast, lambda: f"jitcache {args[0]}")
        sys.exit(code if isinstance(code, int) else 0)
    application = build_app(_groups_for(args))  # only the commands argv needs
    code = _handled(lambda: application(args=args, prog_name="jitcache", standalone_mode=False),
                    lambda: _command_path(application, args))
    sys.exit(code if isinstance(code, int) else 0)


def _handled(call: Callable[[], Any], command_path: Callable[[], str]) -> Any:
    """``call()``, its errors written as ``Error:`` / ``Hint:`` lines and turned into exit codes (never returns then)."""
    from jitcache.errors import JitCacheError

    from .output import Output

    try:
        return call()
    except JitCacheError as exc:
        from jitcache import settings

        if settings.debug():
            raise
        hint = exc.hint
        if hint is None and exc.exit_code == 2:
            hint = f"see `{command_path()} --help`"
        elif hint is None:
            hint = _failure_hint(exc)
        Output().error(exc.message, hint)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A full disk, a read-only mount, a denied path that no command handled closer to the work:
        # still an Error naming the path and the free space, never a traceback.
        from jitcache import settings
        from jitcache.store.faults import filesystem_error, is_fault

        if settings.debug() or not (is_fault(exc) or exc.filename):
            raise
        error = filesystem_error(exc, action="write" if is_fault(exc) else "use")
        Output().error(error.message, error.hint)
        sys.exit(1)
    except KeyboardInterrupt:
        Output().error("interrupted")
        sys.exit(130)
    except Exception as exc:
        typer: Any = sys.modules.get("typer")  # imported by the call if it can raise typer's or click's errors
        if typer is None:
            raise
        click_errors = _click_errors()
        if isinstance(exc, click_errors.NoArgsIsHelpError):  # `jitcache`, `jitcache sources`: the help, as asked
            typer.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(exc.exit_code)
        if isinstance(exc, click_errors.ClickException):  # bad option values, unknown commands: usage (rc 2)
            Output().error(exc.format_message(), _usage_hint(exc))
            sys.exit(exc.exit_code)
        if isinstance(exc, typer.Abort):
            Output().error("interrupted")
            sys.exit(130)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
