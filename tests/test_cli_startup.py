"""Start-up of the probe commands (issue 16): what they import, and their typer-free parse giving typer's answers.

No timings here (benchmarks/floors.py measures start-up): these tests hold what the time depends on, the
modules a command loads, and that the fast path (cli/_spec.py) changes nothing a user can see.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jitcache.cli import _spec, app as app_module, cache_cmds, plan_cmds

from cli_helpers import run_cli

#: Modules no probe command needs: the CLI framework (parsed by cli/_spec.py), rich (a table in a pipe is
#: written without it), and what only other commands use.
HEAVY = ("typer", "click", "pydantic", "rich", "tarfile", "zstandard", "elftools", "filelock", "importlib.metadata",
         "subprocess", "shutil", "tempfile", "socket", "uuid", "platform", "torch", "triton", "deep_ep",
         "jitcache.adapters", "jitcache.build", "jitcache.warm", "jitcache.runtime")
#: ... and what only some of them need (module -> the command lines that may load it: any one of these groups of
#: words): a profile (plan), the plan's fingerprints (plan's JSON), the cache's model (JSON, inspect's scan),
#: the settings (the cache root).
ONLY_FOR = {"tomllib": [("plan",)], "jitcache.planning.profiles": [("plan",)],
            "jitcache.planning.variants": [("plan",)], "hashlib": [("plan", "--format")],
            "jitcache.store.model": [("inspect",), ("--format",)], "jitcache.store.scan": [("inspect",)],
            "jitcache.settings": [("env",), ("inspect",)]}

_PROBE = """
import sys
from jitcache.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sys.argv[0].split(",")
sys.stderr.write("LOADED: " + " ".join(m for m in heavy if m in sys.modules) + "\\n")
"""

PROBES = [["--version"], ["env"], ["buckets", "-n", "8192"], ["plan"], ["inspect"], ["env", "--format", "json"],
          ["buckets", "-n", "64", "--format", "json"], ["plan", "--format", "json"], ["inspect", "--format", "json"],
          ["plan", "-p", "deepseek-v3-ep8", "--mode", "decode"]]


@pytest.mark.parametrize("argv", PROBES, ids=" ".join)
def test_probe_commands_load_nothing_heavy(argv, tmp_path):
    """stdout a pipe, as in floors.py: human output too is written without rich, and nothing runs typer."""
    (tmp_path / "empty").mkdir()  # inspect refuses a root that does not exist
    env = {**os.environ, "JITCACHE_HOME": str(tmp_path / "empty")}
    heavy = list(HEAVY) + [m for m, users in ONLY_FOR.items() if not any(set(words) <= set(argv) for words in users)]
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "JITCACHE_DEBUG"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", _PROBE.replace("sys.argv[0]", repr(",".join(heavy))), *argv],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = done.stderr.rsplit("LOADED:", 1)[1].split() if "LOADED:" in done.stderr else None
    assert loaded is not None, done.stderr
    assert loaded == [], f"{' '.join(argv)} imported {loaded}"
    assert done.stdout


# -- the fast parse against typer's ---------------------------------------------------------------

FUNCS = {"env": (cache_cmds, "env_cmd", "cache_cmds"), "inspect": (cache_cmds, "inspect_cmd", "cache_cmds"),
         "buckets": (plan_cmds, "buckets", "plan_cmds"), "plan": (plan_cmds, "plan_cmd", "plan_cmds")}

PARSED = [
    ("env", []),
    ("env", ["--cache-dir", "/x y", "--read-only-root", "/a", "--read-only-root=/b", "--format", "json"]),
    ("env", ["--format=human", "--cache-dir=rel/dir", "--cache-dir", "/last"]),
    ("buckets", ["-n", "64"]),
    ("buckets", ["--max-num-batched-tokens=0064", "-k", "2", "--min-bucket", "4", "--alignment", "8", "--format=json"]),
    ("buckets", ["--steps-per-octave", "3", "-n", "6144"]),
    ("plan", []),
    ("plan", ["-p", "x", "-m", "decode", "--mode", "prefill", "--format", "json"]),
    ("plan", ["--profile=/some/file.toml"]),
    ("inspect", []),
    ("inspect", ["--cache-dir", "/c", "--profile", "p", "--deep-ep", "2.1", "--deep-ep-root", "/r", "--nccl-include",
                 "/n", "--nvcc", "/bin/nvcc", "--check", "--format", "json"]),
    ("inspect", ["--deep-ep-dir", "/d", "-p", "q", "-p", "r", "--check", "--check"]),
]

#: Command lines the fast parse leaves to typer (help, errors, forms it does not read): it must answer None.
DECLINED = [
    ("env", ["--help"]), ("env", ["-h"]), ("env", ["--cache-dir"]), ("env", ["--cache-dir", ""]),
    ("env", ["--no-such-option"]), ("env", ["positional"]), ("env", ["--", "x"]), ("env", ["--format", "JSON"]),
    ("buckets", []), ("buckets", ["-n", "6x4"]), ("buckets", ["-n", "+64"]), ("buckets", ["-n8192"]),
    ("buckets", ["-n", "-5"]), ("buckets", ["-n=64"]), ("buckets", ["--max-num", "64"]),
    ("inspect", ["--check=yes"]), ("inspect", ["--profile", "--check"]), ("plan", ["-p"]),
]


def _typer_kwargs(monkeypatch, command: str, argv: list[str]) -> dict:
    """The keyword arguments typer calls ``command``'s function with for ``argv``."""
    module, name, group = FUNCS[command]
    original = getattr(module, name)
    seen: list[dict] = []

    @functools.wraps(original)
    def recorder(**kwargs):
        seen.append(kwargs)

    monkeypatch.setattr(module, name, recorder)
    application = app_module.build_app((group,))
    application(args=[command, *argv], prog_name="jitcache", standalone_mode=False)
    monkeypatch.setattr(module, name, original)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("command,argv", PARSED, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_fast_parse_gives_typers_arguments(monkeypatch, command, argv):
    module, name, _ = FUNCS[command]
    fast = _spec.parse(getattr(module, name), argv)
    assert fast is not None, "the fast path declined a plain command line"
    theirs = _typer_kwargs(monkeypatch, command, argv)
    assert fast == theirs
    assert [type(v) for v in fast.values()] == [type(v) for v in theirs.values()]


@pytest.mark.parametrize("command,argv", DECLINED, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_fast_parse_leaves_the_rest_to_typer(command, argv):
    module, name, _ = FUNCS[command]
    assert _spec.parse(getattr(module, name), argv) is None


def test_every_fast_command_is_parsed_without_typer():
    """Each command of the fast table declares only what the fast parse reads (else it would always decline)."""
    for command, (module, name) in app_module.FAST_COMMANDS.items():
        func = getattr(getattr(sys.modules["jitcache.cli"], module), name)
        assert _spec._spec(func) is not None, command
        assert FUNCS[command][:2] == (sys.modules[f"jitcache.cli.{module}"], name)
    assert set(FUNCS) == set(app_module.FAST_COMMANDS)


def test_the_fast_path_and_typers_path_print_the_same(tmp_path):
    """The same command line, through the fast path and through typer (a form only typer reads: ``-n8192``)."""
    (tmp_path / "empty").mkdir()
    env = {"JITCACHE_HOME": str(tmp_path / "empty")}
    pairs = [(["buckets", "-n", "8192"], ["buckets", "-n8192"]),
             (["buckets", "-n", "100", "--format", "json"], ["buckets", "-n100", "--format", "json"]),
             (["plan", "-p", "h200-ep1"], ["plan", "-ph200-ep1"]),
             (["plan", "-p", "no-such-profile"], ["plan", "-pno-such-profile"]),
             (["buckets", "-n", "0"], ["buckets", "-n0"]),
             (["env", "--format", "json"], ["env", "--format", "json", "--"]),
             (["inspect"], ["inspect", "--"]),
             (["inspect", "--cache-dir", str(tmp_path / "nope")], ["inspect", "--cache-dir", str(tmp_path / "nope"),
                                                                    "--"])]
    for fast, slow in pairs:
        a, b = run_cli(*fast, env=env), run_cli(*slow, env=env)
        assert (a.code, a.stdout, a.stderr) == (b.code, b.stdout, b.stderr), (fast, slow)


def test_tables_in_a_pipe_are_rich_tables_drawn_without_rich(tmp_path):
    """The plain renderer writes what rich would for the tables it takes (and leaves the rest to rich)."""
    import io

    from jitcache.cli import output

    cases = [  # (..., whether the plain renderer takes it)
        (None, ["num_tokens", "bucket", "worst padding"], [["0..1", 1, "1.00x"], ["2..2", 2, "1.00x"]],
         {"bucket": "right", "worst padding": "right"}, True),
        ("a title shorter than the table", ["mode", "dispatch", "total"], [["decode", 14, 56], ["prefill", 1, 2]],
         None, True),
        ("t", ["x"], [["a"], ["bb"], [""]], {"x": "right"}, True),
        (None, ["markup"], [["[bold]x[/bold]"], ["\\[y]"], ["\\[1]"]], None, True),
        (None, ["w"], [["x" * 190]], None, True),
        (None, ["backend", "family"], [["deep_ep", "dispatch"]], {"family": "center"}, False),
        ("a title that is a good deal longer than the narrow table below it", ["a"], [["b"]], None, False),
        (None, ["wide"], [["x" * 300]], None, False),  # wider than the console: rich wraps it
        (None, ["time"], [["2026-12-02T17:55:00Z"]], None, False),  # ':55:' could be an emoji code
        (None, ["style"], [["[link=x]y[/link]"]], None, False),
        (None, ["empty"], [], None, False),
    ]
    for title, columns, rows, justify, taken in cases:
        rich = io.StringIO()
        mine = output._plain_table(title, columns, rows, justify or {}, width=200)
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column, justify=(justify or {}).get(column, "left"))
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        Console(file=rich, no_color=True, soft_wrap=False, highlight=False, width=200).print(table)
        assert (mine is not None) == taken, (title, columns)
        if mine is not None:
            assert mine == rich.getvalue(), (title, columns)


def test_plain_lines_in_a_pipe_are_what_rich_prints(tmp_path):
    import io

    from rich.console import Console

    from jitcache.cli import output

    taken = ["14 buckets for max_num_batched_tokens=8192", "[bold]h200-ep1[/bold]  (builtin)", "[bold]\\[model][/bold]",
             "  hidden = 7168", "a [not markup", "x\\\\[bold]y[/bold]", "[dim]Hint:[/dim] z", "trailing   ", "",
             "[bold red]a[/] b", "a \\[1] b", "two\nlines", "x" * 200]
    declined = ["ünïcode", "a\ttab", "x" * 201, "a :smile: b", "[link=https://x]y[/link]", "[/bold]",
                "[bold red]a[/] b [/bold red]"]
    for text in taken + declined:
        for markup in (True, False):
            if text in declined and (markup or text in ("ünïcode", "a\ttab", "x" * 201, "a :smile: b")):
                assert output._plain_text(text, markup=markup, width=200) is None, text
                continue
            rich = io.StringIO()
            Console(file=rich, no_color=True, soft_wrap=False, highlight=False, width=200).print(text, markup=markup)
            mine = output._plain_text(text, markup=markup, width=200)
            assert mine == rich.getvalue(), (text, markup)


def test_the_vocabularys_layouts_are_the_adapters():
    """inspect sorts entries by DeepEP from jitcache.types (no adapter loads): the same map, in the same order."""
    from jitcache.adapters.registry import ADAPTERS
    from jitcache.types import DEEP_EP_LAYOUTS

    assert list(DEEP_EP_LAYOUTS.items()) == [(a.version, a.layout) for a in ADAPTERS]
