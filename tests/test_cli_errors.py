"""One error style for every command: `Error: ...` and a `Hint: ...` on stderr, nothing on stdout, rc 2 for
usage (Click's own errors included: no Typer panels), rc 1 for a failure, one line per message in a log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cli_helpers import run_cli
from store_fixtures import cubins, filled_root, test_profile, triton_cache  # noqa: F401  (fixtures)


@pytest.mark.parametrize("argv, message", [
    (["buckets", "-n", "abc"], "Error: Invalid value for '--max-num-batched-tokens' / '-n'"),
    (["buckets"], "Error: Missing option '--max-num-batched-tokens'"),
    (["warmup", "--aot", "--jobs", "0"], "Error: Invalid value for '--jobs' / '-j'"),
    (["inspect", "--format", "yaml"], "Error: Invalid value for '--format'"),
    (["bogus"], "Error: No such command 'bogus'"),
    (["prune", "--bogus-option"], "Error: No such option: --bogus-option"),
    (["plan", "-p", "no-such-profile"], "Error: no-such-profile: no built-in profile of that name"),
    (["prune", "--older-than", "5", "--cache-dir", "."], "Error: --older-than '5': a unit is required"),
    (["sources", "fetch", "--sha256", "abc"], "Error: --sha256 'abc': expected 64 hex digits"),
    (["buckets", "-n", "0"], "Error: max_num_batched_tokens must be >= 1, got 0"),
    (["warmup", "--aot", "--nvcc", "/nonexistent/nvcc"], "Error: --nvcc /nonexistent/nvcc: not an executable file"),
    (["warmup", "--aot", "--deep-ep-include", "/nonexistent"], "Error: --deep-ep-include /nonexistent: no DeepEP"),
    (["warmup", "--aot", "--learn-from", "/nonexistent"], "Error: --learn-from /nonexistent: no such directory"),
    (["warmup", "--aot", "--deep-ep", "3.0"], "Error: --deep-ep 3.0: expected 2.5 or 2.1"),
    (["import", "/nonexistent.tar.zst"], "Error: /nonexistent.tar.zst: no such bundle file"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_usage_errors_are_rc_2_in_one_style(argv, message, tmp_path):
    r = run_cli(*argv, env={"JITCACHE_HOME": str(tmp_path)})
    assert r.code == 2, r.stderr
    assert r.stderr.startswith(message), r.stderr
    assert "\nHint: " in r.stderr and r.stdout == ""
    assert not any(c in r.stderr for c in "╭│╰") and "Usage:" not in r.stderr and "Traceback" not in r.stderr


def test_a_usage_error_without_its_own_hint_points_at_the_commands_help():
    r = run_cli("buckets", "-n", "0")
    assert r.stderr.splitlines()[1] == "Hint: see `jitcache buckets --help`"


def test_a_failure_is_rc_1_in_the_same_style(tmp_path):
    r = run_cli("sources", "fetch", "--index-url", "http://127.0.0.1:9/simple/", "--cache-dir", str(tmp_path))
    assert r.code == 1 and r.stderr.startswith("Error: http://127.0.0.1:9/simple/deepinfer-ep/: cannot reach")
    assert "\nHint: " in r.stderr and r.stdout == ""


def test_stderr_is_not_hard_wrapped_in_a_log(tmp_path):
    """The hint listing every built-in profile is longer than 80 columns: one line when stderr is a pipe."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "JITCACHE_DEBUG")}
    done = subprocess.run([sys.executable, "-m", "jitcache.cli", "plan", "-p", "no-such-profile"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("Hint: built-in profiles:")
    assert len(lines[1]) > 80 and "qwen3-30b-a3b-ep4" in lines[1]


def test_no_arguments_shows_the_help():
    r = run_cli("sources")
    assert r.code == 2 and "fetch" in r.stdout and "list" in r.stdout


@pytest.mark.parametrize("command", [["inspect"], ["verify"], ["export", "-o", "x.jcb"], ["warmup", "--aot"],
                                     ["env"]], ids=lambda c: c[0])
def test_a_cache_dir_that_is_a_file_is_a_usage_error(tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("not a cache\n")
    r = run_cli(*command, "--cache-dir", str(afile), cwd=tmp_path)
    assert r.code == 2, r.stderr
    assert r.stderr.startswith(f"Error: --cache-dir {afile}: {afile} exists and is not a directory"), r.stderr
    assert "\nHint: give a directory" in r.stderr and r.stdout == ""
    assert afile.read_text() == "not a cache\n" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_failure_without_its_own_hint_gets_one_by_kind(monkeypatch, capsys):
    """Every rc 1 error ends with a Hint line: the error's own, else one for its kind, else JITCACHE_DEBUG."""
    from jitcache import errors
    from jitcache.cli import app as cli_app

    monkeypatch.delenv("JITCACHE_DEBUG", raising=False)
    cases = {
        errors.CacheLockTimeout("held"): "JITCACHE_LOCK_TIMEOUT",
        errors.RemoteError("denied"): "--remote-optional",
        errors.CacheError("broken"): "`jitcache verify`",
        errors.CompileError("nvcc failed"): "compiler's log",
        errors.ToolchainError("no nvcc"): "--nvcc",
        errors.WarmupError("ranks disagree"): "JITCACHE_DEBUG=1",
        errors.JitCacheError("anything else"): "JITCACHE_DEBUG=1 shows the traceback",
    }
    for exc, words in cases.items():
        def boom(exc=exc):
            raise exc
        monkeypatch.setattr(cli_app, "build_app", lambda *_: lambda **_: boom())
        with pytest.raises(SystemExit) as done:
            cli_app.main([])
        lines = capsys.readouterr().err.splitlines()
        assert done.value.code == 1 and lines[0] == f"Error: {exc.message}", lines
        assert len(lines) == 2 and lines[1].startswith("Hint: ") and words in lines[1], (type(exc), lines)


def test_a_lock_held_by_a_live_process_fails_with_its_holder_and_a_hint(filled_root):  # noqa: F811
    """A real second process holds the root lock; prune gives up at once (JITCACHE_LOCK_TIMEOUT=0), removing nothing."""
    root = filled_root.path
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from jitcache.store.root import resolve_root\n"
                               f"root = resolve_root({str(root)!r})\n"
                               "with root.lock(command='test holder'):\n"
                               "    print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        r = run_cli("prune", "--max-size", "1B", "--cache-dir", str(root), env={"JITCACHE_LOCK_TIMEOUT": "0"})
    finally:
        holder.kill()
        holder.wait()
    assert r.code == 1, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("Error: ") and "held by" in lines[0] and str(holder.pid) in lines[0], lines
    assert lines[1].startswith("Hint: ") and "JITCACHE_LOCK_TIMEOUT" in lines[1]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
