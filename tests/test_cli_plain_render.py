"""The pipe renderer of cli/output.py against rich itself, on generated input (issue 16's start-up fast path).

For any line or table, ``_plain_text`` / ``_plain_table`` either decline (None: rich renders it) or write
exactly what rich writes to a pipe. Hand-picked cases are in tests/test_cli_startup.py; these search the
markup, escapes, emoji-like codes and widths that a hand-picked list can miss.
"""

from __future__ import annotations

import io

from hypothesis import given, settings, strategies as st
from rich.console import Console
from rich.table import Table

from jitcache.cli import output

WIDTH = 80

# Pieces that exercise rich's markup parser: tags it knows (and ones the renderer must decline), escapes,
# brackets that are not tags, emoji-like codes, and plain words.
_PIECES = st.sampled_from([
    "[bold]", "[/bold]", "[dim]", "[/dim]", "[red]", "[/red]", "[bold red]", "[/bold red]", "[/]", "[italic]",
    "[/italic]", "[link=x]", "[/link]", "[on blue]", "[#ff0000]", "[@click]", "\\[", "\\\\", "\\\\[bold]",
    "[", "]", "[1]", "[x y]", ":", ":smile:", ":x:", "a:b", "12:30:00", " ", "  ", "\n", "\t", "é", "x", "word",
    "-", "=", "[not", "markup]", "[/not]",
])
_TEXT = st.lists(_PIECES, max_size=12).map("".join)


def _rich_text(text: str, markup: bool) -> str | None:
    buffer = io.StringIO()
    try:
        Console(file=buffer, no_color=True, soft_wrap=False, highlight=False, width=WIDTH).print(text, markup=markup)
    except Exception:  # rich refuses it (a MarkupError): the renderer must decline too
        return None
    return buffer.getvalue()


@settings(max_examples=400, deadline=None)
@given(text=_TEXT, markup=st.booleans())
def test_a_plain_line_is_declined_or_is_richs(text, markup):
    mine = output._plain_text(text, markup=markup, width=WIDTH)
    if mine is not None:
        assert mine == _rich_text(text, markup), (text, markup)


_CELL = st.one_of(_TEXT.filter(lambda s: "\n" not in s), st.integers(-10**6, 10**6),
                  st.text(alphabet="abcxyz019 .-_/", max_size=30))


@st.composite
def _tables(draw):
    columns = draw(st.lists(st.text(alphabet="abcdefgh _-", min_size=1, max_size=12), min_size=1, max_size=5))
    rows = draw(st.lists(st.lists(_CELL, min_size=len(columns), max_size=len(columns)), max_size=6))
    justify = {c: draw(st.sampled_from(["left", "right", "center"])) for c in columns if draw(st.booleans())}
    title = draw(st.one_of(st.none(), st.text(alphabet="abc xyz:[]/", max_size=60)))
    return title, columns, rows, justify


@settings(max_examples=400, deadline=None)
@given(case=_tables())
def test_a_plain_table_is_declined_or_is_richs(case):
    title, columns, rows, justify = case
    mine = output._plain_table(title, columns, rows, justify, width=WIDTH)
    if mine is None:
        return
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, justify=justify.get(column, "left"))
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    buffer = io.StringIO()
    Console(file=buffer, no_color=True, soft_wrap=False, highlight=False, width=WIDTH).print(table)
    assert mine == buffer.getvalue(), case
