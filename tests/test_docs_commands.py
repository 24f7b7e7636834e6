"""Every `jitcache ...` command the README and docs/ show parses as shown, and the quick ones run as shown.

Commands are taken from the code blocks of README.md and docs/*.md (fenced or indented, `$ ` prompts and
`# comments` stripped, `&&` / `||` / `|` / `$( )` split). Each is parsed by the real CLI's Click command tree
(every option name and value checked, nothing run); the ones that only read or print (`plan`, `buckets`, `env`,
`profiles`, `sources list`) are then run for real, with `/shared/...` paths moved into a temporary directory.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_FOR_REAL = {("plan",), ("buckets",), ("env",), ("profiles", "list"), ("profiles", "show"), ("sources", "list")}


def _code_lines(text: str) -> list[str]:
    """The lines of shell code blocks: fenced (no language, bash, sh, console, text) or indented by 4."""
    lines, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence in ("", "bash", "sh", "console", "text") or (fence is None and line.startswith("    ")):
            lines.append(line.strip())
    return lines


def doc_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `jitcache`) for every jitcache command line in the docs' code blocks."""
    found = []
    for path in DOCS:
        for line in _code_lines(path.read_text()):
            line = line.removeprefix("$ ")
            line = re.sub(r"\s+#\s.*$", "", line)              # a trailing comment
            for part in re.split(r"&&|\|\||\||\$\(|\)\"|\)", line):
                try:
                    words = shlex.split(part.strip().strip('"'))
                except ValueError:
                    continue
                if words[:1] in (["jitcache"], [".venv/bin/jitcache"]):
                    argv = words[1:]
                elif "-m" in words and words[words.index("-m") + 1:][:1] == ["jitcache.cli"]:
                    argv = words[words.index("-m") + 2:]
                else:
                    continue
                if argv and re.fullmatch(r"[a-z]+", argv[0]):
                    found.append((f"{path.relative_to(REPO)}: {line}", argv))
    return found


COMMANDS = doc_commands()


def _parse(argv: list[str]) -> tuple[str, ...]:
    """Parse argv with the CLI's own Click tree (types and option names checked); the command path parsed."""
    from jitcache.cli.app import app

    command = typer.main.get_command(app)
    names: list[str] = []
    ctx = None
    while hasattr(command, "commands") and argv and argv[0] in command.commands:
        names.append(argv[0])
        ctx = command.make_context(" ".join(names[:-1]) or "jitcache", [], parent=ctx, resilient_parsing=True)
        command, argv = command.commands[argv[0]], argv[1:]
    assert names and not hasattr(command, "commands"), f"no such command: jitcache {' '.join(names + argv)}"
    command.make_context(names[-1], list(argv), parent=ctx)   # raises click's UsageError / BadParameter
    return tuple(names)


def test_the_docs_show_the_main_commands():
    shown = {tuple(argv[:1]) for _, argv in COMMANDS}
    assert {("warmup",), ("plan",), ("env",), ("inspect",), ("relocate",), ("push",), ("pull",),
            ("sources",), ("buckets",)} <= shown, shown


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[" ".join(a) for _, a in COMMANDS])
def test_each_command_the_docs_show_parses(where, argv):
    try:
        _parse(argv)
    except Exception as exc:  # noqa: BLE001  (click's errors carry the reason)
        pytest.fail(f"{where}\n  jitcache {' '.join(argv)}: {exc}")


@pytest.mark.parametrize("where, argv", [(w, a) for w, a in COMMANDS if tuple(a[:2]) in RUN_FOR_REAL
                                         or tuple(a[:1]) in RUN_FOR_REAL],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_the_quick_ones_run_as_shown(where, argv, tmp_path):
    argv = [a.replace("/shared/", f"{tmp_path}/shared/") for a in argv]
    r = run_cli(*argv, env={"JITCACHE_HOME": str(tmp_path / "home")})
    assert r.code == 0, f"{where}\n{r.stderr}"
    assert r.stdout.strip() and "Traceback" not in r.stderr
