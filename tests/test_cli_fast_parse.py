"""The typer-free parse of the probe commands (cli/_spec.py) against typer itself, on generated command lines.

Whatever ``_spec.parse`` accepts, typer must accept too and call the command with the very same arguments
(values and types); where typer refuses a command line, the fast parse must have declined it. Hand-picked
lines are in tests/test_cli_startup.py; these are drawn from each command's own option names, both forms
(``--name value``, ``--name=value``), and values that are valid, invalid and option-like.
"""

from __future__ import annotations

import enum
import functools
import importlib
from pathlib import Path

from hypothesis import given, settings, strategies as st

from jitcache.cli import _spec, app as app_module

try:
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]

#: Values to draw for an option of each type (valid ones first, then ones typer refuses or reads otherwise).
_INTS = ["64", "0", "8192", "0064", "-1", "+8", "6x4", ""]
_WORDS = ["json", "human", "decode", "prefill", "2.1", "2.5", "h200-ep1", "JSON", "", "-p", "=", "a=b"]
_PATHS = ["/tmp/x y", "rel/dir", "/c", "", "--check", "a=b"]


def _command(name: str):
    module, function = app_module.FAST_COMMANDS[name]
    return importlib.import_module(f"jitcache.cli.{module}"), function, module


def _valid(annotation) -> list[str]:
    if annotation is int:
        return ["64", "0", "8192", "0064"]
    if annotation is Path:
        return ["/tmp/x y", "rel/dir"]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    return ["h200-ep1", "x"]


def _pool(annotation) -> list[str]:
    if annotation is int:
        return _INTS
    if annotation is Path:
        return _PATHS
    return _WORDS


@st.composite
def _command_lines(draw):
    name = draw(st.sampled_from(sorted(app_module.FAST_COMMANDS)))
    module, function, _ = _command(name)
    table = _spec._spec(getattr(module, function))
    assert table is not None
    tokens: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 9)) == 0:  # now and then, what only typer reads
            tokens.append(draw(st.sampled_from(["--no-such", "--help", "--", "positional", "-"])))
            continue
        option = draw(st.sampled_from(sorted(table)))
        _, annotation, _, _ = table[option]
        if annotation is bool:
            tokens.append(option if draw(st.integers(0, 5)) else f"{option}=1")
            continue
        value = draw(st.sampled_from(_valid(annotation)) | st.sampled_from(_pool(annotation)))
        form = draw(st.sampled_from(["space"] * 4 + ["equals"] * 2 + ["bare"]))
        if form == "space":
            tokens += [option, value]
        elif form == "equals":
            tokens.append(f"{option}={value}")
        else:
            tokens.append(option)
    return name, tokens


def _typer_call(name: str, argv: list[str]):
    """("ok", kwargs) typer calls the command with, or ("usage", None) if typer refuses the line."""
    module, function, group = _command(name)
    original = getattr(module, function)
    seen: list[dict] = []

    @functools.wraps(original)  # typer reads the command's parameters through the wrapper's signature
    def recorder(**kwargs):
        seen.append(kwargs)

    setattr(module, function, recorder)
    try:
        application = app_module.build_app((group,))
        try:
            application(args=[name, *argv], prog_name="jitcache", standalone_mode=False)
        except (click_errors.ClickException, click_errors.Exit, click_errors.Abort):
            return "usage", None
    finally:
        setattr(module, function, original)
    if not seen:  # --help: typer printed help and returned
        return "usage", None
    return "ok", seen[0]


@settings(max_examples=300, deadline=None)
@given(line=_command_lines())
def test_what_the_fast_parse_accepts_typer_calls_the_same_way(line):
    name, argv = line
    module, function, _ = _command(name)
    fast = _spec.parse(getattr(module, function), argv)
    if fast is None:
        return  # declined: typer parses it, with its own messages
    outcome, theirs = _typer_call(name, argv)
    assert outcome == "ok", (name, argv, fast)
    assert fast == theirs, (name, argv)
    assert [type(v) for v in fast.values()] == [type(v) for v in theirs.values()], (name, argv)
