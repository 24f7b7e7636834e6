"""Options declared once, read by typer and by the start-up fast path without importing typer.

A command module that is on the fast path (:data:`jitcache.cli.app.FAST_COMMANDS`) declares
its parameters with :func:`option` / :func:`argument` instead of ``typer.Option`` /
``typer.Argument`` (the same arguments), and registers each command with :func:`command`:
typer then sees exactly the ``typer.Option(...)`` it would have seen, through a wrapper whose
signature carries them. The fast path (:func:`parse`) reads the same declarations to parse the
plain forms of a command line (``--name value``, ``--name=value``, ``-n value``, flags,
repeated options) and answers ``None`` for anything else (help, an unknown or malformed
option, a value it is not sure of: ``_fast_params``' rules), which typer then parses itself, with
its own error messages. Importing typer costs about as much as ``python -c pass``: the probe
commands (``env``, ``buckets``, ``plan``, ``inspect``) run without it. tests/test_fast_paths.py
holds both parsers to the same answers.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
from pathlib import Path
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

__all__ = ["Param", "argument", "command", "option", "parse"]

_INT = re.compile(r"-?[0-9]+\Z")
_UNSURE = object()


class Param:
    """The arguments of one ``typer.Option`` / ``typer.Argument``, kept until typer (if ever) is imported."""

    def __init__(self, kind: str, default: Any, decls: tuple[str, ...], kwargs: dict[str, Any]) -> None:
        self.kind, self.default, self.decls, self.kwargs = kind, default, decls, kwargs

    def typer(self) -> Any:
        """The ``typer.Option(...)`` / ``typer.Argument(...)`` this declares."""
        import typer

        make = typer.Option if self.kind == "option" else typer.Argument
        return make(self.default, *self.decls, **self.kwargs)


def option(default: Any, *decls: str, **kwargs: Any) -> Any:
    """``typer.Option(default, *decls, **kwargs)``, declared without typer."""
    return Param("option", default, decls, kwargs)


def argument(default: Any, **kwargs: Any) -> Any:
    """``typer.Argument(default, **kwargs)``, declared without typer."""
    return Param("argument", default, (), kwargs)


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` as typer must see it: the same function, its :class:`Param` defaults made typer's."""
    hints = get_type_hints(func)
    signature = inspect.signature(func)
    params = [p.replace(annotation=hints.get(p.name, p.annotation),
                        default=p.default.typer() if isinstance(p.default, Param) else p.default)
              for p in signature.parameters.values()]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**hints, "return": hints.get("return", None)}
    return wrapper


# -- the fast path --------------------------------------------------------------------------------


def _plain(annotation: Any) -> Any:
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _value(annotation: Any, text: str) -> Any:
    """``text`` as typer would convert it for ``annotation``, or ``_UNSURE``."""
    if annotation is str:
        return text
    if annotation is int:
        return int(text) if _INT.match(text) else _UNSURE
    if annotation is Path:
        return Path(text) if text else _UNSURE
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        for member in annotation:  # typer's Enum choices: case-sensitive, by value
            if member.value == text:
                return member
        return _UNSURE
    return _UNSURE


_SIMPLE_KWARGS = {"help"}


def _spec(func: Callable[..., Any]) -> Optional[dict[str, tuple[str, Any, Param, bool]]]:
    """``{"--name": (parameter, item type, its Param, multiple)}``, or None if a parameter is not plain."""
    hints = get_type_hints(func)
    table: dict[str, tuple[str, Any, Param, bool]] = {}
    for p in inspect.signature(func).parameters.values():
        param = p.default
        if not isinstance(param, Param) or param.kind != "option" or set(param.kwargs) - _SIMPLE_KWARGS:
            return None
        annotation = _plain(hints[p.name])
        multiple = get_origin(annotation) is list
        if multiple:
            (annotation,) = get_args(annotation)
        if annotation is bool:
            if multiple or param.default is not False or len(param.decls) != 1 or "/" in param.decls[0]:
                return None
        if not all(d.startswith("-") and "/" not in d for d in param.decls):
            return None
        for decl in param.decls:
            table[decl] = (p.name, annotation, param, multiple)
    return table


def parse(func: Callable[..., Any], args: list[str]) -> Optional[dict[str, Any]]:
    """The keyword arguments typer would call ``func`` with for ``args``, or None: let typer parse them."""
    table = _spec(func)
    if table is None:
        return None
    values: dict[str, Any] = {}
    position = 0
    while position < len(args):
        token = args[position]
        position += 1
        name, equals, attached = token.partition("=")
        if not token.startswith("-") or token in ("-", "--") or name not in table or \
                (equals and not name.startswith("--")):
            return None  # an argument, help, an unknown option, a short option with "=": typer decides
        parameter, annotation, _, multiple = table[name]
        if annotation is bool:
            if equals:
                return None
            values[parameter] = True
            continue
        if equals:
            text = attached
        else:
            if position >= len(args) or args[position].startswith("-"):
                return None  # a missing value, or one that looks like an option: typer's call
            text = args[position]
            position += 1
        value = _value(annotation, text)
        if value is _UNSURE:
            return None
        if multiple:
            values.setdefault(parameter, []).append(value)
        else:
            values[parameter] = value
    out: dict[str, Any] = {}
    for p in inspect.signature(func).parameters.values():
        param = p.default
        assert isinstance(param, Param)
        if p.name in values:
            out[p.name] = values[p.name]
        elif param.default is ...:
            return None  # a required option left out: typer's error
        else:
            out[p.name] = param.default
    return out
