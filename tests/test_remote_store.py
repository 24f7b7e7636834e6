"""The remote store against real servers on 127.0.0.1: moto's S3 (IAM auth on), a directory, http.server.

Round trips, two pushing processes at once, a pull killed with kill -9, a
tampered object, a denied or wrong credential, an unreachable store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from jitcache.errors import RemoteError
from jitcache.store.remote import RemoteEnv, RemoteStore, entry_key, index_key, pull, push
from jitcache.store.root import resolve_root
from jitcache.store.scan import scan
from jitcache.planning.variants import plan
from remote_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import bundle_members

pytestmark = pytest.mark.nvcc
pytest.importorskip("obstore")

ENV = RemoteEnv("2.5", "13.0.88", "sm_90a")
REPO = Path(__file__).resolve().parents[1]


def _deep_ep_tree(root) -> dict[str, str]:
    """Every file of every DeepEP entry (marker included) -> sha256: what 'the same cache' compares."""
    out = {}
    for p in sorted((root.deep_ep_dir / "cache").rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root.deep_ep_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _entry_names(root) -> set[str]:
    return {p.name for p in (root.deep_ep_dir / "cache").iterdir()} if (root.deep_ep_dir / "cache").is_dir() else set()


@pytest.fixture
def the_plan(test_profile):
    return plan(test_profile)


@pytest.mark.parametrize("backend", ["s3", "directory"])
def test_push_then_pull_into_an_empty_cache_gives_the_same_entries(backend, filled_root, the_plan, tmp_path,
                                                                   request):
    url = request.getfixturevalue("s3_url") if backend == "s3" else str(tmp_path / "nfs" / "jitcache")
    store = RemoteStore(url)
    first = push(filled_root, store, ENV, plan=the_plan)
    assert len(first.pushed) == len(the_plan.variants) == 16 and first.present == () and first.skipped == ()
    assert first.index_entries == 16 and first.bytes_sent > 0

    again = push(filled_root, store, ENV, plan=the_plan)
    assert again.pushed == () and len(again.present) == 16  # create-if-absent: nothing rewritten

    fresh = resolve_root(tmp_path / "fresh")
    got = pull(fresh, store, ENV, plan=the_plan)
    assert len(got.pulled) == 16 and got.missing == () and got.refused == () and got.index_found
    theirs = {k: v for k, v in _deep_ep_tree(filled_root).items()}
    assert _deep_ep_tree(fresh) == theirs  # every file, the .committed marker too
    assert all(e.status == "ok" for e in scan(fresh).entries)

    twice = pull(fresh, store, ENV, plan=the_plan)
    assert twice.pulled == () and len(twice.local) == 16 and twice.bytes_received == 0


def test_pull_by_the_serving_machines_names_fetches_only_those(filled_root, the_plan, s3_url, tmp_path):
    store = RemoteStore(s3_url)
    push(filled_root, store, ENV, plan=the_plan)
    names = sorted(_entry_names(filled_root))
    fresh = resolve_root(tmp_path / "fresh")
    wanted = names[:3] + ["dispatch." + "0" * 32]   # the last: a name nobody pushed
    got = pull(fresh, store, ENV, names=wanted)
    assert sorted(got.pulled) == names[:3] and got.missing == ("dispatch." + "0" * 32,)
    assert _entry_names(fresh) == set(names[:3])


def test_another_env_or_profile_finds_nothing(filled_root, the_plan, s3_url, tmp_path):
    store = RemoteStore(s3_url)
    push(filled_root, store, ENV, plan=the_plan)
    fresh = resolve_root(tmp_path / "fresh")
    other = pull(fresh, store, RemoteEnv("2.5", "13.0.48", "sm_90a"), plan=the_plan)
    assert other.pulled == () and not other.index_found
    by_name = pull(fresh, store, RemoteEnv("2.5", "13.0.88", "sm_100a"), names=sorted(_entry_names(filled_root)))
    assert by_name.pulled == () and len(by_name.missing) == 16
    assert _entry_names(fresh) == set()


def test_http_remote_is_read_only_and_pulls_what_a_directory_push_wrote(filled_root, the_plan, http_server,
                                                                       tmp_path):
    directory, url = http_server
    push(filled_root, RemoteStore(str(directory)), ENV, plan=the_plan)
    web = RemoteStore(url)
    assert web.read_only
    fresh = resolve_root(tmp_path / "fresh")
    got = pull(fresh, web, ENV, plan=the_plan)
    assert len(got.pulled) == 16 and _deep_ep_tree(fresh) == _deep_ep_tree(filled_root)
    with pytest.raises(RemoteError, match="read-only"):
        push(filled_root, web, ENV, plan=the_plan)


def _tampered(blob: bytes) -> bytes:
    """The same one-entry bundle with one byte of the cubin flipped (its manifest left as it was)."""
    import zstandard

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for member, payload in bundle_members(blob):
            if member.name.endswith("kernel.cubin"):
                payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
            dst.addfile(member, io.BytesIO(payload))
    return zstandard.ZstdCompressor().compress(out.getvalue())


def test_a_tampered_object_is_refused_and_the_rest_is_pulled(filled_root, the_plan, s3_server, s3_url, tmp_path):
    import boto3

    store = RemoteStore(s3_url)
    push(filled_root, store, ENV, plan=the_plan)
    victim = sorted(_entry_names(filled_root))[0]
    key = entry_key(ENV, victim)
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                      aws_access_key_id=s3_server.rw[0], aws_secret_access_key=s3_server.rw[1])
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=_tampered(store.get(key)))

    # Through the index: the object's sha256 is not the one the index lists.
    fresh = resolve_root(tmp_path / "fresh")
    got = pull(fresh, store, ENV, plan=the_plan)
    assert [n for n, _ in got.refused] == [victim] and "sha256" in got.refused[0][1]
    assert victim not in _entry_names(fresh) and len(got.pulled) == 15

    # By name (no index): import's own per-file sha256 check refuses it, naming the object.
    bare = resolve_root(tmp_path / "bare")
    by_name = pull(bare, store, ENV, names=[victim])
    assert [n for n, _ in by_name.refused] == [victim]
    reason = by_name.refused[0][1]
    assert "kernel.cubin fails its sha256 check" in reason and str(tmp_path) not in reason
    assert _entry_names(bare) == set() and not list((bare.deep_ep_dir / "tmp").iterdir())


def test_an_object_with_a_consistent_manifest_but_no_valid_cubin_is_refused_by_imports_elf_check(
        filled_root, the_plan, s3_url, tmp_path):
    """Whoever rewrites an object with matching sha256s still meets import's cubin checks (the same code)."""
    import zstandard

    store = RemoteStore(s3_url)
    victim = sorted(_entry_names(filled_root))[0]
    push(filled_root, store, ENV, names=[victim])
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(store.get(entry_key(ENV, victim)))).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w",
                                                                   format=tarfile.PAX_FORMAT) as dst:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
        garbage = b"not an ELF file at all" * 10
        manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))
        for spec in manifest["entries"][0]["files"]:
            if spec["path"] == "kernel.cubin":
                spec.update(size=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
        for member, data in members:
            data = garbage if member.name.endswith("kernel.cubin") else (
                json.dumps(manifest).encode() if member.name == "manifest.json" else data)
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    other = RemoteStore(s3_url.rsplit("/", 1)[0] + "/forged-" + s3_url.rsplit("/", 1)[1])
    assert other.put_new(entry_key(ENV, victim), zstandard.ZstdCompressor().compress(out.getvalue()))
    fresh = resolve_root(tmp_path / "fresh")
    got = pull(fresh, other, ENV, names=[victim])
    assert [n for n, _ in got.refused] == [victim] and "invalid_cubin" in got.refused[0][1]
    assert _entry_names(fresh) == set()


def test_denied_and_wrong_credentials_are_clear_errors(filled_root, the_plan, s3_server, s3_url, monkeypatch):
    push(filled_root, RemoteStore(s3_url), ENV, plan=the_plan)
    for name, value in s3_server.env(s3_server.ro).items():
        monkeypatch.setenv(name, value)
    read_only_user = RemoteStore(s3_url)
    assert read_only_user.get(index_key(ENV, the_plan.profile.name, the_plan.fingerprint())) is not None
    with pytest.raises(RemoteError, match=r"access denied \(write\): 403 Forbidden.*AccessDenied"):
        read_only_user.put_new("jitcache/v1/probe", b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(RemoteError, match=r"access denied \(read\): 403"):
        RemoteStore(s3_url).get(index_key(ENV, the_plan.profile.name, the_plan.fingerprint()))


def test_an_unreachable_store_is_a_clear_error(monkeypatch, s3_url):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(RemoteError, match="unreachable") as info:
        RemoteStore(s3_url).get("jitcache/v1/anything")
    assert info.value.hint and "--remote-optional" in info.value.hint
    assert f"unreachable at {dead} (" in info.value.message and info.value.message.count("127.0.0.1") == 1


_PUSHER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from jitcache.planning.profiles import load_profile
    from jitcache.store.remote import RemoteEnv, RemoteStore, push
    from jitcache.store.root import resolve_root
    from jitcache.planning.variants import plan
    root, url, profile, go = sys.argv[1:5]
    while not Path(go).exists():
        time.sleep(0.01)
    report = push(resolve_root(root), RemoteStore(url), RemoteEnv("2.5", "13.0.88", "sm_90a"),
                  plan=plan(load_profile(profile)))
    print(json.dumps(report.to_dict()))
""")


@pytest.mark.parametrize("backend", ["s3", "directory"])
def test_two_processes_pushing_the_same_entries_at_once(backend, filled_root, the_plan, test_profile, tmp_path,
                                                        request):
    url = request.getfixturevalue("s3_url") if backend == "s3" else str(tmp_path / "nfs")
    twin = tmp_path / "twin"
    shutil.copytree(filled_root.path, twin)
    go = tmp_path / "go"
    script = tmp_path / "pusher.py"
    script.write_text(_PUSHER)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), url, test_profile.source, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (filled_root.path, twin)]
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    reports = [json.loads(o) for o, _ in outs]
    pushed = [set(r["pushed"]) for r in reports]
    assert not pushed[0] & pushed[1]                      # no object written twice
    assert pushed[0] | pushed[1] == _entry_names(filled_root)
    fresh = resolve_root(tmp_path / "fresh")
    got = pull(fresh, RemoteStore(url), ENV, plan=the_plan)
    assert len(got.pulled) == 16 and got.refused == ()
    assert _deep_ep_tree(fresh) == _deep_ep_tree(filled_root)


_PULLER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from jitcache.planning.profiles import load_profile
    from jitcache.store.remote import RemoteEnv, RemoteStore, pull
    from jitcache.store.root import resolve_root
    from jitcache.planning.variants import plan
    root, url, profile, phase, at, flag = sys.argv[1:7]

    def progress(p):
        if p.phase == phase and p.done == int(at):
            Path(flag).touch()
            time.sleep(600)   # the test kills us here

    pull(resolve_root(root), RemoteStore(url), RemoteEnv("2.5", "13.0.88", "sm_90a"), plan=plan(load_profile(profile)),
         on_progress=progress)
""")


@pytest.mark.parametrize("phase,at,visible", [("pull", 5, 0), ("publish", 3, 3)])
def test_a_pull_killed_with_kill_9_leaves_only_whole_entries(phase, at, visible, filled_root, the_plan, test_profile,
                                                             s3_url, tmp_path):
    push(filled_root, RemoteStore(s3_url), ENV, plan=the_plan)
    fresh = resolve_root(tmp_path / "fresh")
    script, flag = tmp_path / "puller.py", tmp_path / "reached"
    script.write_text(_PULLER)
    proc = subprocess.Popen([sys.executable, str(script), str(fresh.path), s3_url, test_profile.source, phase,
                             str(at), str(flag)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    names = _entry_names(fresh)
    assert len(names) == visible
    full = _deep_ep_tree(filled_root)
    for name in names:   # each visible entry is whole: every file, the marker, the same bytes
        assert {k: v for k, v in _deep_ep_tree(fresh).items() if k.split("/")[1] == name} == \
               {k: v for k, v in full.items() if k.split("/")[1] == name}
    assert all(e.status == "ok" for e in scan(fresh).entries)

    again = pull(fresh, RemoteStore(s3_url), ENV, plan=the_plan)   # the next pull finishes the job
    assert len(again.pulled) == 16 - visible and _deep_ep_tree(fresh) == full
