"""The one place that writes to the terminal.

Data goes to stdout (a rich table for people, ``--format json`` for machines:
then stdout holds only JSON); narration, warnings, errors and hints go to
stderr, so ``jitcache inspect --format json | jq`` always works.
"""

from __future__ import annotations

import enum
import json
import os
import re
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from rich.console import Console

# rich is imported on first human output, not at start-up: `--format json` never loads it.


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


#: A top-level list longer than this is written one item a line, each by json's C encoder: ``indent=``
#: makes json encode in pure Python, ~30 us an entry (0.3 s of a 10,000-entry ``inspect --format json``).
LONG_LIST = 100


def dumps_document(document: dict[str, Any]) -> str:
    """``json.dumps(document, indent=2, default=str)``, except that a long top-level list has one item a line."""
    if not any(isinstance(v, list) and len(v) > LONG_LIST for v in document.values()):
        return json.dumps(document, indent=2, default=str)
    compact = json.JSONEncoder(default=str).encode
    parts = []
    for key, value in document.items():
        if isinstance(value, list) and len(value) > LONG_LIST:
            text = "[\n    " + ",\n    ".join(compact(item) for item in value) + "\n  ]"
        else:
            text = json.dumps(value, indent=2, default=str).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(str(key))}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}"


# -- human output in a pipe, without rich --------------------------------------------------------------
# rich costs more to import than `python -c pass` takes: when stdout is not a terminal (no colour, no live
# width), the plain lines and tables the probe commands print are written here, exactly as rich writes them
# there (tests/test_cli_startup.py compares them). Anything these do not take on (a wrapped line, non-ASCII,
# an emoji code, a markup tag they do not know, a table wider than the console) answers None: rich does it.

_RICH_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")  # rich.markup.RE_TAGS
_EMOJI = re.compile(r"(:(\S*?)(?:(?:\-)(emoji|text))?:)")  # rich._emoji_replace's pattern
_PLAIN_STYLES = {"bold", "dim", "italic", "underline", "red", "green", "yellow", "blue", "cyan", "magenta", "white"}
_PRINTABLE = re.compile(r"[ -~\n]*\Z")


def _from_markup(text: str) -> str | None:
    """What rich's markup renders ``text`` to, without styles (they show nowhere in a pipe); None if unsure."""
    if "[" not in text:
        return text
    out: list[str] = []
    stack: list[str] = []
    position = 0
    for match in _RICH_TAG.finditer(text):
        full, escapes, tag = match.groups()
        start, end = match.span()
        out.append(text[position:start].replace("\\[", "["))
        position = end
        if escapes:
            backslashes, escaped = divmod(len(escapes), 2)
            out.append("\\" * backslashes)
            if escaped:
                out.append(full[len(escapes):])
                continue
        if tag.startswith("/"):
            name = tag[1:].strip()
            if name:
                if name not in stack:
                    return None  # rich raises a MarkupError
                del stack[len(stack) - 1 - stack[::-1].index(name)]
            elif stack:
                stack.pop()
            else:
                return None
        elif set(tag.split()) <= _PLAIN_STYLES:
            stack.append(tag.strip())
        else:
            return None  # a style, link or handler this does not know: rich's business
    out.append(text[position:].replace("\\[", "["))
    return "".join(out)


def _plain_cell(text: str, markup: bool = True) -> str | None:
    """One line of rich text as it shows in a pipe, or None (rich must decide: emoji, markup, wide characters)."""
    if not _PRINTABLE.match(text) or _EMOJI.search(text):
        return None
    return _from_markup(text) if markup else text


def _plain_text(text: str, *, markup: bool, width: int) -> str | None:
    """``Console.print(text)`` as rich writes it to a pipe (no wrapping needed), or None."""
    plain = _plain_cell(text, markup)
    if plain is None or any(len(line) > width for line in plain.split("\n")):
        return None
    return plain + "\n"


def _plain_table(title: str | None, columns: list[str], rows: list[list[Any]], justify: dict[str, str], *,
                 width: int) -> str | None:
    """The rich ``Table`` of :meth:`Output.table` (heavy head, one space of padding) as text, or None."""
    if not rows or not columns:
        return None
    header = [_plain_cell(c) for c in columns]
    body = [[_plain_cell(str(cell)) for cell in row] for row in rows]
    if None in header or any(None in row or len(row) != len(columns) for row in body):
        return None
    if any(cell is not None and cell != cell.strip() for cell in (*header, *(c for row in body for c in row))):
        return None  # rich trims a justified cell's edges its own way
    if any(justify.get(c, "left") not in ("left", "right") for c in columns):
        return None
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
    total = sum(widths) + 3 * len(widths) + 1
    if total > width:
        return None  # rich would shrink and wrap the columns
    lines = []
    if title:  # rich draws no title line for None or ""
        text = _plain_cell(title)
        if text is None or len(text) > total or "\n" in text:
            return None
        lines.append(text.ljust(total))
    lines.append("┏" + "┳".join("━" * (w + 2) for w in widths) + "┓")

    def row_line(cells: list[Any], bar: str) -> str:
        parts = [str(cell).rjust(w) if justify.get(c, "left") == "right" else str(cell).ljust(w)
                 for cell, w, c in zip(cells, widths, columns)]
        return bar + " " + f" {bar} ".join(parts) + " " + bar

    lines.append(row_line(header, "┃"))
    lines.append("┡" + "╇".join("━" * (w + 2) for w in widths) + "┩")
    lines.extend(row_line(row, "│") for row in body)
    lines.append("└" + "┴".join("─" * (w + 2) for w in widths) + "┘")
    return "\n".join(lines) + "\n"


def _pipe_width() -> int | None:
    """The width rich gives stdout when it is not a terminal (as :attr:`Output.out` builds it), or None: rich."""
    if sys.stdout.isatty() or any(os.environ.get(v) for v in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")):
        return None
    if not (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").startswith("utf"):
        return None  # rich would draw an ASCII box
    columns = os.environ.get("COLUMNS")
    if columns is None:
        return 200
    return int(columns) if columns.isdigit() else None


class Format(str, enum.Enum):
    human = "human"
    json = "json"


def human_bytes(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    raise AssertionError("unreachable")


def _flush_c_stdio() -> None:
    # printf/std::cout output sits in libc's buffer (full buffering on a pipe) until exit, when it would
    # reach whatever fd 1 is then: flush it while fd 1 still points where it was written.
    import ctypes  # only the live warmup needs it: not loaded at start-up

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not glibc/musl/macOS libc)
        pass


@contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Point file descriptor 1 at stderr while inside, so that code we do not own cannot write into stdout.

    DeepEP prints to fd 1 from C++ and from Python ("Failed to get NVLink
    connection speed", seen on the H200), which would corrupt ``--format
    json``. Only ``dup2`` catches the C++ writes; ``sys.stdout`` (fd 1 too)
    follows, so Python prints go to stderr as well. Write the data after the
    block. A no-op when ``enabled`` is false.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    _flush_c_stdio()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        _flush_c_stdio()
        os.dup2(saved, 1)
        os.close(saved)


class Output:
    """Writes results and messages in the format the user asked for."""

    def __init__(self, fmt: Format = Format.human, *, quiet: bool = False) -> None:
        self.format = fmt
        self.quiet = quiet
        self._out: Console | None = None
        self._err: Console | None = None

    @property
    def out(self) -> "Console":
        if self._out is None:
            from rich.console import Console

            # Piped output (CI logs, files) is not squeezed into rich's 80-column default.
            width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
            self._out = Console(file=sys.stdout, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=False,
                                highlight=False, width=width)
        return self._out

    @property
    def err(self) -> "Console":
        if self._err is None:
            from rich.console import Console

            # Messages to a log (stderr not a terminal) are never hard-wrapped: one message, one line.
            err_tty = sys.stderr.isatty()
            self._err = Console(file=sys.stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False,
                                soft_wrap=not err_tty, width=None if err_tty else 10_000)
        return self._err

    @property
    def is_json(self) -> bool:
        return self.format == Format.json

    def result(self, data: Any, render: Callable[["Output"], None] | None = None) -> None:
        """Emit a command's result: JSON of ``data`` (a document: ``"schema"`` first), or ``render(self)``."""
        if self.is_json or render is None:
            from jitcache.store.model import SCHEMA_VERSION  # not at start-up: human output needs none of it

            # A document is an object that starts with its schema (a bare list is wrapped: {"schema", "items"}).
            body = data if isinstance(data, dict) else {"items": data}
            document = {"schema": SCHEMA_VERSION, **{k: v for k, v in body.items() if k != "schema"}}
            sys.stdout.write(dumps_document(document) + "\n")
            sys.stdout.flush()
        else:
            render(self)

    def raw(self, text: str) -> None:
        """Data that has a format of its own (Prometheus' text format): written to stdout as is."""
        sys.stdout.write(text)
        sys.stdout.flush()

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Human output to stdout (only used from ``render`` callbacks)."""
        if self._out is None and len(objects) == 1 and isinstance(objects[0], str) and set(kwargs) <= {"markup"} \
                and (width := _pipe_width()) is not None:
            text = _plain_text(objects[0], markup=kwargs.get("markup", True) is not False, width=width)
            if text is not None:
                sys.stdout.write(text)
                sys.stdout.flush()
                return
        self.out.print(*objects, **kwargs)

    def line(self, text: str) -> None:
        """One plain line of human output (no markup, no table) to stdout, written without loading rich."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def raw_lines(self, lines: list[str]) -> None:
        """Lines written as they are, bypassing rich (no wrapping, no markup, no re-spacing): shell code."""
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()

    def table(self, title: str | None, columns: list[str], rows: list[list[Any]],
              justify: dict[str, str] | None = None) -> None:
        if self._out is None and (width := _pipe_width()) is not None:
            text = _plain_table(title, columns, rows, justify or {}, width=width)
            if text is not None:
                sys.stdout.write(text)
                sys.stdout.flush()
                return
        from rich.table import Table

        table = Table(title=title, title_justify="left", header_style="bold")
        justify = justify or {}
        for column in columns:
            table.add_column(column, justify=justify.get(column, "left"))  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        self.out.print(table)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(escape(message))

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]Warning:[/yellow] {escape(message)}")

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(f"[bold red]Error:[/bold red] {escape(message)}")
        if hint:
            self.err.print(f"[dim]Hint:[/dim] {escape(hint)}")
