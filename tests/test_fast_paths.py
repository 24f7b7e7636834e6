"""The fast paths of issue 16 give the answers of the slow ones: the struct ELF reader against
pyelftools on real nvcc cubins and damaged ones, the verdict cache against a fresh read after every
kind of change, per-thread dispatch counters against the exact totals, and what each probe command
imports. No timings here (benchmarks/floors.py measures)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jitcache.planning.buckets import BucketPolicy
from jitcache.runtime.dispatcher import BucketedDispatcher
from jitcache.store import elf, formats
from jitcache.store.elf import InvalidCubin, parse_cubin
from jitcache.store.root import resolve_root
from jitcache.store.scan import scan
from jitcache.store.verdicts import VERDICTS_FILE
from jitcache.planning.variants import plan
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import NVCC, compile_cubin, fill_plan, render_source

pytestmark = pytest.mark.nvcc

DATA = Path(__file__).parent / "data"
REAL_CUBINS = sorted(DATA.glob("*/cache/*/kernel.cubin"))


def _slow(data: bytes, path: str = "k.cubin"):
    """parse_cubin with the struct reader switched off: pyelftools decides everything."""
    original = elf._fast_sections
    elf._fast_sections = lambda data: None
    try:
        return _outcome(data, path)
    finally:
        elf._fast_sections = original


def _outcome(data: bytes, path: str = "k.cubin"):
    try:
        return parse_cubin(data, path)
    except InvalidCubin as exc:
        return ("invalid", exc.reason.split(" (")[0])


# -- the ELF reader -------------------------------------------------------------------------------


def test_fast_reader_agrees_with_pyelftools_on_deepeps_own_cubins():
    assert len(REAL_CUBINS) >= 20
    for path in REAL_CUBINS:
        data = path.read_bytes()
        assert elf._fast_sections(data) is not None, path  # took the fast path
        fast, slow = _outcome(data), _slow(data)
        assert fast == slow, path
        assert len(fast.entry_symbols) == 1 and fast.arch == "sm_90a"


@pytest.fixture(scope="module")
def arch_cubins(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc is not on the PATH")
    base = tmp_path_factory.mktemp("arch")
    source = render_source("combine_impl", list(range(12)))
    return {arch: compile_cubin(source, base / arch, arch=arch) for arch in ("sm_90a", "sm_80", "sm_100a")}


def test_fast_reader_agrees_on_nvcc_cubins_of_several_archs(arch_cubins, cubins):
    for arch, data in arch_cubins.items():
        fast = _outcome(data)
        assert fast == _slow(data)
        assert fast.arch == arch and len(fast.entry_symbols) == 1
    two = _outcome(cubins["two_kernels"])
    assert two == _slow(cubins["two_kernels"]) and len(two.entry_symbols) == 2


def test_garbage_is_rejected_by_both_readers(arch_cubins):
    real = arch_cubins["sm_90a"]
    samples = {
        "random": random.Random(1).randbytes(4096),
        "empty-ish": b"\x7fELF" + bytes(60),
        "truncated": real[: len(real) // 2],
        "header only": real[:64],
        "x86 ELF": Path(sys.executable).resolve().read_bytes()[:8192],
        "section table past the end": real[:40] + (len(real) + 4096).to_bytes(8, "little") + real[48:],
    }
    for name, data in samples.items():
        fast, slow = _outcome(data), _slow(data)
        assert isinstance(fast, tuple) and fast[0] == "invalid", name
        assert fast == slow, name


def test_mutated_cubins_get_the_same_verdict_from_both_readers(arch_cubins):
    """Single-byte damage anywhere in a real cubin: the struct reader never accepts what pyelftools refuses."""
    real = arch_cubins["sm_90a"]
    rng = random.Random(16)
    for _ in range(2000):
        data = bytearray(real)
        position = rng.randrange(len(data))
        data[position] = rng.randrange(256)
        data = bytes(data)
        try:
            slow = _slow(data)
        except Exception:  # noqa: BLE001 - pyelftools crashing outright: the fast path must still not crash
            slow = None
        fast = _outcome(data)
        if slow is not None:
            assert fast == slow, position


# -- the verdict cache ----------------------------------------------------------------------------


def _age(root: Path, seconds: float = 3600) -> None:
    """Make every file look written an hour ago (fresh files are never remembered: racily clean)."""
    then = time.time() - seconds
    for current, _, files in os.walk(root):
        for name in files:
            os.utime(Path(current) / name, (then, then))


@pytest.fixture
def counted_parses(monkeypatch):
    calls = []
    real = formats.parse_cubin

    def counting(data, path):
        calls.append(str(path))
        return real(data, path)
    monkeypatch.setattr(formats, "parse_cubin", counting)
    return calls


@pytest.fixture
def aged_root(tmp_path, cubins, test_profile):
    root = resolve_root(tmp_path / "root").ensure()
    fill_plan(root.deep_ep_dir, plan(test_profile), cubins)
    _age(root.path)
    return root


def _summary(report):
    return [(e.name, e.status, e.arch, e.compiler, tuple(sorted(e.params.items())),
             tuple((p.code, p.message) for p in e.problems)) for e in report.entries]


def test_second_scan_reads_no_cubin_and_reports_the_same(aged_root, counted_parses):
    first = scan(aged_root)
    assert len(counted_parses) == len(first.entries) == 16
    assert (aged_root.meta_dir / VERDICTS_FILE).is_file()
    counted_parses.clear()
    second = scan(aged_root)
    assert counted_parses == []
    assert _summary(second) == _summary(first)


def test_a_changed_cubin_is_read_again_even_with_its_old_size_and_mtime(aged_root, cubins, counted_parses):
    scan(aged_root)
    victim = sorted((aged_root.deep_ep_dir / "cache").glob("dispatch.*"))[0] / "kernel.cubin"
    st = victim.stat()
    other = cubins["two_kernels"]
    replacement = (other + bytes(st.st_size))[: st.st_size]  # same size, two kernels, then padding
    victim.write_bytes(replacement)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only ctime tells
    counted_parses.clear()
    report = scan(aged_root)
    assert counted_parses == [str(victim)]
    entry = next(e for e in report.entries if e.path == str(victim.parent))
    assert entry.status == "broken" and {p.code for p in entry.problems} & {"entry_symbols", "invalid_cubin"}


def test_replaced_source_and_meta_are_read_again(aged_root):
    scan(aged_root)
    entry = sorted((aged_root.deep_ep_dir / "cache").glob("combine.*"))[0]
    (entry / "meta.json").write_text("{not json")
    (entry / "kernel.cu").write_text("int main() {}\n")
    _age(entry)
    report = {e.name: e for e in scan(aged_root).entries}[entry.name]
    assert {p.code for p in report.problems} == {"bad_meta", "undecoded_source"}
    assert report.params == {}


def test_fresh_files_are_not_remembered(tmp_path, cubins, test_profile, counted_parses):
    root = resolve_root(tmp_path / "root").ensure()
    fill_plan(root.deep_ep_dir, plan(test_profile), cubins)  # written just now: racily clean
    scan(root)
    counted_parses.clear()
    scan(root)
    assert len(counted_parses) == 16


def test_a_damaged_or_foreign_verdict_file_is_ignored(aged_root, counted_parses):
    first = scan(aged_root)
    file = aged_root.meta_dir / VERDICTS_FILE
    data = json.loads(file.read_text())
    data["checker"] = "0:older"
    file.write_text(json.dumps(data))
    counted_parses.clear()
    assert _summary(scan(aged_root)) == _summary(first)
    assert len(counted_parses) == 16
    file.write_text("\0\0garbage")
    assert _summary(scan(aged_root)) == _summary(first)
    assert json.loads(file.read_text())["dirs"]  # rewritten whole


def test_export_reuses_verifys_verdicts(aged_root, counted_parses, tmp_path):
    from jitcache.store.bundle import export_bundle
    from jitcache.store.verify import verify

    assert verify(aged_root).ok
    counted_parses.clear()
    result = export_bundle(aged_root, tmp_path / "b.tar.zst")
    assert len(result.entries) == 16 and counted_parses == []


def test_a_scan_of_a_root_without_meta_writes_nothing(tmp_path, cubins, test_profile):
    root = resolve_root(tmp_path / "root").ensure()
    fill_plan(root.deep_ep_dir, plan(test_profile), cubins)
    _age(root.path)
    for item in root.meta_dir.iterdir():
        item.unlink()
    root.meta_dir.rmdir()
    before = sorted(p.relative_to(root.path) for p in root.path.rglob("*"))
    scan(root)
    assert sorted(p.relative_to(root.path) for p in root.path.rglob("*")) == before


# -- dispatcher counters --------------------------------------------------------------------------


class EPBuffer:
    def dispatch(self, x, topk_idx=None, topk_weights=None, num_experts=None, num_max_tokens_per_rank=None,
                 num_sms=0, handle=None, do_cpu_sync=None, do_expand=False):
        return num_max_tokens_per_rank


class Rows:
    def __init__(self, n: int) -> None:
        self.shape = (n, 16)


def test_counters_are_exact_under_threads():
    policy = BucketPolicy(1024)
    dispatcher = BucketedDispatcher(EPBuffer(), policy, warm=policy.buckets())
    threads, per_thread = 8, 5000
    sizes = [[random.Random(t).randint(1, 1024) for _ in range(per_thread)] for t in range(threads)]
    stop = threading.Event()
    snapshots = []

    def reader():
        while not stop.is_set():
            snapshots.append(dispatcher.stats().bucketed_calls)

    def worker(ns):
        for n in ns:
            assert dispatcher.dispatch(Rows(n), num_experts=8, do_expand=False) == policy.bucket(n)
        dispatcher.dispatch(Rows(1), do_expand=True)  # a pass-through, counted apart

    watcher = threading.Thread(target=reader)
    watcher.start()
    workers = [threading.Thread(target=worker, args=(ns,)) for ns in sizes]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    watcher.join()
    snap = dispatcher.stats()
    flat = [n for ns in sizes for n in ns]
    expected = {}
    for n in flat:
        expected[policy.bucket(n)] = expected.get(policy.bucket(n), 0) + 1
    assert dict(snap.calls) == expected
    assert snap.bucketed_calls == threads * per_thread and snap.passthrough == threads
    assert snap.real_rows == sum(flat) and snap.padded_rows == sum(policy.bucket(n) for n in flat)
    assert snapshots == sorted(snapshots)  # counts only grow, whatever a reader sees meanwhile


# -- start-up imports -----------------------------------------------------------------------------

_PROBE = """
import contextlib, io, sys
from jitcache.cli.app import main
try:
    with contextlib.redirect_stdout(io.StringIO()):
        main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = ("pydantic", "rich", "tarfile", "zstandard", "elftools", "filelock", "importlib.metadata")
print(" ".join(m for m in heavy if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--version"], ["env", "--format", "json"], ["buckets", "-n", "64", "--format",
                                  "json"], ["plan", "--format", "json"], ["inspect", "--format", "json"]])
def test_probe_commands_load_nothing_heavy(argv, tmp_path):
    (tmp_path / "empty").mkdir()  # inspect refuses a root that does not exist
    env = {**os.environ, "JITCACHE_HOME": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_option_values_keep_typers_meaning_and_errors(tmp_path):
    env = {**os.environ, "JITCACHE_HOME": str(tmp_path / "empty")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "jitcache.cli", *args], capture_output=True, text=True,
                              env=env, timeout=120)
    ok = cli("buckets", "-n", "0064", "--format", "json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["max_num_batched_tokens"] == 64
    for args, needle in ((("buckets", "-n", "6x4"), "--max-num-batched-tokens"),
                         (("buckets", "-n", "64", "--format", "JSON"), "--format")):
        bad = cli(*args)
        assert bad.returncode == 2 and needle in bad.stderr and "Invalid value" in bad.stderr
    env_json = cli("env", "--cache-dir", str(tmp_path / "a b"), "--format", "json")
    assert json.loads(env_json.stdout)["root"] == str(tmp_path / "a b")


# -- the bundle's tar stream ----------------------------------------------------------------------


def test_export_tar_stream_is_what_tarfile_writes():
    import io
    import tarfile

    from jitcache.store.bundle_export import _TarWriter

    members = [("deep_ep/cache/combine.0123456789abcdef0123456789abcdef/kernel.cubin", bytes(range(256)) * 51),
               ("manifest.json", b"{}"), ("x" * 100, b""), ("triton/" + "A" * 120 + "/k.json", b"y" * 513)]
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = _TarWriter(ours)
    with tarfile.open(fileobj=theirs, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            writer.add(name, data, 1764600000)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1764600000
            tar.addfile(info, io.BytesIO(data))
    writer.close()
    assert ours.getvalue() == theirs.getvalue()
    listed = subprocess.run(["tar", "-tvf", "-"], input=ours.getvalue(), capture_output=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.decode().count("\n") == len(members)


def test_command_table_names_every_command_of_its_module():
    """main() imports only the module of the command it runs: the table must say where each command is."""
    import typer

    from jitcache.cli import app as app_module

    found = {}
    for group in app_module.GROUPS:
        single = app_module.build_app((group,))
        command = typer.main.get_command(single)
        for name in command.commands:
            found[name] = group
    assert found == app_module.COMMAND_MODULES
    assert sorted(typer.main.get_command(app_module.app).commands) == sorted(found)
    assert app_module._groups_for(["--version"]) == ()
    assert app_module._groups_for(["inspect", "--format", "json"]) == ("cache_cmds",)
    assert app_module._groups_for(["--help"]) == app_module.GROUPS
    assert app_module._groups_for(["no-such-command"]) == app_module.GROUPS


def test_a_long_list_is_written_one_item_a_line_and_parses_the_same():
    from jitcache.cli.output import LONG_LIST, dumps_document

    small = {"schema": 1, "entries": [{"a": 1}], "nested": {"x": [1, 2], "s": "line\nbreak"}}
    assert dumps_document(small) == json.dumps(small, indent=2)
    big = {"schema": 1, "root": "/r", "entries": [{"name": f"e{i}", "params": {"n": i}, "when": None,
                                                   "text": "a\nb"} for i in range(LONG_LIST + 5)],
           "problems": [], "coverage": {"missing": [1, 2]}, "path": Path("/x")}
    text = dumps_document(big)
    assert json.loads(text) == json.loads(json.dumps(big, default=str))
    assert text.startswith('{\n  "schema": 1,')
    assert len(text.splitlines()) == LONG_LIST + 5 + 14


def test_the_models_deep_ep_layouts_are_the_adapters():
    from jitcache.adapters.registry import ADAPTERS
    from jitcache.store.model import BACKENDS

    assert BACKENDS["deep_ep"] == tuple(a.layout for a in ADAPTERS)


@pytest.mark.parametrize("fmt", ["gnu", "pax", "pax-headers", "long-name"])
def test_the_manifest_is_found_from_headers_as_tarfile_finds_it(tmp_path, fmt, monkeypatch):
    """import's first pass reads tar headers directly; whatever it does not take as is goes to tarfile."""
    import io
    import tarfile

    import zstandard

    from jitcache.store import bundle_manifest as bundle_mod

    manifest = {"schema": 1, "kind": bundle_mod.BUNDLE_KIND, "entries": []}
    raw = io.BytesIO()
    tar_format = tarfile.GNU_FORMAT if fmt in ("gnu", "long-name") else tarfile.PAX_FORMAT
    with tarfile.open(fileobj=raw, mode="w", format=tar_format) as tar:
        name = "deep_ep/cache/" + ("x" * 120 if fmt == "long-name" else "dispatch." + "0" * 32) + "/kernel.cu"
        for member, data in ((name, b"// source\n" * 100), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            if fmt == "pax-headers":
                info.pax_headers = {"comment": "written by another tar"}
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "b.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    with open(path, "rb") as handle:
        direct = bundle_mod._manifest_from_headers(zstandard.ZstdDecompressor().stream_reader(handle), path, 1 << 30)
    if fmt in ("gnu", "pax", "long-name"):
        assert json.loads(direct) == manifest  # plain headers and GNU long names: read directly
    else:
        assert direct is bundle_mod._ODD  # pax records: tarfile decides
    assert bundle_mod._read_manifest(path) == manifest
    monkeypatch.setenv("JITCACHE_IMPORT_MAX_BYTES", "100")  # the source member alone is 1,000 bytes
    with pytest.raises(bundle_mod.BundleError, match="unpacks to more than 100 bytes before its manifest"):
        bundle_mod._read_manifest(path)
