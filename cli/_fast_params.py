"""Typer's value coercion without pydantic for the plain option types this CLI uses.

Typer 0.2x coerces every option value through a pydantic ``TypeAdapter``;
importing pydantic and building the adapters is ~50 ms, twice what
``python -c pass`` costs, on every command. For the types here (``str``,
``int``, ``pathlib.Path``, an ``Enum`` of choices, lists and ``Optional`` of
those) this module does what those adapters do, with the same typer
functions they wrap (``coerce_cli_path``, ``coerce_cli_choice``), and hands
every other case to typer unchanged: another type, a ``parser``, ``min`` or
``max``, and every value it is not sure of (``"+1"``, ``""``, a choice that
does not match). A value typer would refuse therefore gets typer's own error
message. With a typer without this machinery (older or newer), nothing is
patched.
"""

from __future__ import annotations

import enum
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

__all__ = ["install"]

_UNDECIDED = object()
_INT = re.compile(r"-?[0-9]+\Z")


def _plain(annotation: Any) -> Any:
    """``X`` for ``Optional[X]`` (``X | None``), else the annotation itself."""
    if get_origin(annotation) in (Union, getattr(types, "UnionType", Union)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _leaf(annotation: Any, info: Any, value: Any, param: Any, ctx: Any) -> Any:
    from typer import _param_types

    annotation = _plain(annotation)
    if annotation is str:
        return value if isinstance(value, str) else _UNDECIDED
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT.match(value):
            return int(value)
        return _UNDECIDED
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return _param_types.coerce_cli_choice(value, choices=list(annotation),
                                                  case_sensitive=info.case_sensitive, ctx=ctx)
        except ValueError:
            return _UNDECIDED
    if annotation is Path and info.path_type in (None, Path):
        if isinstance(value, str) and value:
            value = Path(value)
        if not isinstance(value, Path):
            return _UNDECIDED
        return _param_types.coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
    return _UNDECIDED


def _eligible(info: Any) -> bool:
    return (getattr(info, "parser", None) is None and getattr(info, "click_type", None) is None
            and getattr(info, "min", None) is None and getattr(info, "max", None) is None)


def install() -> bool:
    """Patch typer's parameters to try the pydantic-free coercion first; ``False`` if typer has no such path."""
    try:
        from typer import _coercion, _param_types, core
    except ImportError:
        return False
    param_cls = getattr(core, "_TyperParameter", None)
    base = getattr(_coercion, "RuntimeParam", None)
    build = getattr(_coercion, "build_runtime_param", None)
    needed = (getattr(_param_types, "coerce_cli_path", None), getattr(_param_types, "coerce_cli_choice", None))
    if param_cls is None or base is None or build is None or None in needed or \
            not hasattr(param_cls, "get_runtime_param") or getattr(param_cls, "_jitcache_fast", False):
        return False

    class FastRuntimeParam(base):  # type: ignore[misc, valid-type]
        """Coerces plain values itself; anything else goes to typer's pydantic-backed param, built then."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            annotation, info = self.annotation, self.parameter_info
            if get_origin(_plain(annotation)) is list and isinstance(value, (list, tuple)):
                (item_type,) = get_args(_plain(annotation)) or (Any,)
                items = [_leaf(item_type, info, item, param, ctx) for item in value]
                if all(item is not _UNDECIDED for item in items):
                    return items
            else:
                out = _leaf(annotation, info, value, param, ctx)
                if out is not _UNDECIDED:
                    return out
            assert build is not None
            return build(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)

    original = param_cls.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        descriptor = self.type_descriptor
        if self._runtime_param is None and descriptor.file_annotation is None and \
                _eligible(descriptor.parameter_info):
            self._runtime_param = FastRuntimeParam(annotation=descriptor.annotation,
                                                   parameter_info=descriptor.parameter_info)
        return original(self)

    param_cls.get_runtime_param = get_runtime_param
    param_cls._jitcache_fast = True
    return True
