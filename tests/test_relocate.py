"""Issue 12 items 2-3: coverage by name (found / relocatable / missing) and relocation, with real files.

The "shipped" cache is h200-ep1's 57 entries named as an AOT run on a build box
names them (its own deep_ep and NCCL paths), with real DeepEP cubins; the
serving machine is the H200 rig (its paths, as DeepEP 2.5's own entries in
tests/data recorded them). Relocating must give exactly the names DeepEP
wrote there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aot_fixtures import NVCC_13_0, REPO, RIG_NCCL_INCLUDE, deep_ep25_include  # noqa: F401
from jitcache.adapters.serving import locate_serving, planned_entries, serving_meta_json
from jitcache.errors import CacheError
from jitcache.planning.profiles import load_profile
from jitcache.planning.variants import plan
from jitcache.store.names import FOUND, MISSING, name_coverage
from jitcache.store.relocate import relocate, relocate_entries
from jitcache.store.root import CacheRoot

DATA = REPO / "tests" / "data" / "deepep25-h200" / "cache"
RIG_PACKAGE = "/tmp/gpu-rig/site/deep_ep"


def build_box(headers):
    return locate_serving("/build/venv/lib/python3.12/site-packages/deep_ep", "/build/venv/nvidia/nccl/include",
                          nvcc_version_output=NVCC_13_0, headers=headers)


def rig(headers):
    return locate_serving(RIG_PACKAGE, RIG_NCCL_INCLUDE, nvcc_version_output=NVCC_13_0, headers=headers,
                          nvcc_path="/usr/local/cuda/bin/nvcc")


def _cubins() -> dict[str, bytes]:
    out = {}
    for entry in sorted(DATA.iterdir()):
        out.setdefault(entry.name.rsplit(".", 1)[0], (entry / "kernel.cubin").read_bytes())
    out.setdefault("barrier", out["combine"])
    return out


def write_shipped(cache: Path, the_plan, serving) -> list:
    """Every planned entry of ``serving``, as DeepEP 2.5 lays one out (kernel.cu, cubin, meta.json, .committed)."""
    cubins = _cubins()
    cache.mkdir(parents=True, exist_ok=True)
    entries = planned_entries(the_plan, serving)
    meta = serving_meta_json(serving, the_plan.profile.target.arch)
    for e in entries:
        path = cache / e.name
        path.mkdir()
        (path / "kernel.cu").write_text(e.kernel_cu)
        (path / "kernel.cubin").write_bytes(cubins[e.family])
        (path / "meta.json").write_text(meta.replace("{dir}", f"/build/tmp/{e.name}"))
        (path / ".committed").write_bytes(b"")
    return list(entries)


def tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def shipped(tmp_path, deep_ep25_include):  # noqa: F811
    root = CacheRoot.for_deep_ep_dir(tmp_path / "dj")
    the_plan = plan(load_profile("h200-ep1"))
    entries = write_shipped(root.deep_ep_dir / "cache", the_plan, build_box(deep_ep25_include))
    return root, the_plan, entries


def test_a_cache_built_for_other_paths_is_relocatable_not_found(shipped, deep_ep25_include):  # noqa: F811
    root, the_plan, _ = shipped
    serving = rig(deep_ep25_include)
    cov = name_coverage(the_plan, serving, [root.deep_ep_dir])
    assert len(cov.verdicts) == 57 and not cov.complete
    assert len(cov.relocatable) == 57 and not cov.found and not cov.missing   # right sources, other paths
    data = cov.to_dict()
    assert data["deep_ep"]["package_dir"] == RIG_PACKAGE and data["deep_ep"]["nccl_include"] == RIG_NCCL_INCLUDE
    assert data["deep_ep"]["version"] == "2.5" and data["num_relocatable"] == 57
    # for the build box's own DeepEP the same cache is complete
    assert name_coverage(the_plan, build_box(deep_ep25_include), [root.deep_ep_dir]).complete


def test_relocation_gives_the_names_deepep_wrote_and_keeps_the_old_ones(shipped, deep_ep25_include):  # noqa: F811
    root, the_plan, shipped_entries = shipped
    serving = rig(deep_ep25_include)
    before = tree(root.deep_ep_dir / "cache")
    result = relocate(root, serving, the_plan)
    assert len(result.published) == 57 and not result.refused
    cache = root.deep_ep_dir / "cache"
    # the names DeepEP itself wrote on the H200: all 16 of its decode entries (the rest are prefill/cached)
    real = {p.name for p in DATA.iterdir()} & {name for name, _ in result.published}
    assert len(real) == 16
    for name, source in result.published:
        new, old = cache / name, Path(source)
        assert sorted(p.name for p in new.iterdir()) == [".committed", "kernel.cu", "kernel.cubin", "meta.json"]
        assert (new / "kernel.cu").read_bytes() == (old / "kernel.cu").read_bytes()
        assert (new / "kernel.cubin").read_bytes() == (old / "kernel.cubin").read_bytes()
        meta = json.loads((new / "meta.json").read_text())
        assert meta["config"]["python_library_root"] == RIG_PACKAGE and f"-I{RIG_NCCL_INCLUDE}" in meta["command"]
        if name in real:  # DeepEP's own meta.json, up to the build dir it recorded
            theirs = json.loads((DATA / name / "meta.json").read_text())
            assert {k: v for k, v in meta.items() if k != "command"} == \
                {k: v for k, v in theirs.items() if k != "command"}
    assert {k: v for k, v in tree(cache).items() if k.split("/")[0] in before_names(before)} == before  # old names stay
    assert name_coverage(the_plan, serving, [root.deep_ep_dir]).complete
    again = relocate(root, serving, the_plan)
    assert again.published == () and again.coverage.complete


def before_names(before: dict[str, str]) -> set[str]:
    return {k.split("/")[0] for k in before}


def test_unplanned_and_unusable_entries_are_left_alone_and_reported(shipped, deep_ep25_include):  # noqa: F811
    root, the_plan, entries = shipped
    cache = root.deep_ep_dir / "cache"
    serving = rig(deep_ep25_include)
    # an entry whose source matches no planned variant (another model's), and one built by another nvcc
    stray = cache / ("dispatch." + "ab" * 16)
    shutil.copytree(cache / entries[0].name, stray)
    (stray / "kernel.cu").write_text(entries[0].kernel_cu.replace(", 1, 256, 8,", ", 3, 256, 8,"))
    other_nvcc = cache / entries[1].name
    meta = json.loads((other_nvcc / "meta.json").read_text())
    meta["compiler_info"]["version"] = meta["compiler_info"]["version"].replace("V13.0.88", "V13.0.48")
    (other_nvcc / "meta.json").write_text(json.dumps(meta))
    stray_files = tree(stray)
    cov = name_coverage(the_plan, serving, [root.deep_ep_dir])
    assert cov.unplanned == (str(stray),)
    missing = [v for v in cov.verdicts if v.status == MISSING]
    assert [v.entry.name for v in missing] == [entries[1].name.replace(entries[1].name, v.entry.name)
                                              for v in missing] and len(missing) == 1
    assert "built by nvcc 'release 13.0, V13.0.48'" in missing[0].note
    result = relocate(root, serving, the_plan)
    assert len(result.published) == 56 and result.unplanned == (str(stray),)
    assert tree(stray) == stray_files
    assert sum(v.status == FOUND for v in name_coverage(the_plan, serving, [root.deep_ep_dir]).verdicts) == 56


def test_relocation_without_a_plan_goes_by_each_entrys_own_source(shipped, deep_ep25_include):  # noqa: F811
    root, the_plan, _ = shipped
    serving = rig(deep_ep25_include)
    result = relocate_entries(root.deep_ep_dir, serving)
    assert len(result.published) == 57
    assert name_coverage(the_plan, serving, [root.deep_ep_dir]).complete
    assert relocate_entries(root.deep_ep_dir, serving).published == ()


def _can_mount(probe: Path) -> bool:
    probe.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
    if done.returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
    return done.returncode == 0


def test_a_read_only_cache_reports_coverage_and_refuses_to_write(tmp_path, shipped, deep_ep25_include):  # noqa: F811
    root, the_plan, _ = shipped
    if not _can_mount(tmp_path / "probe"):
        pytest.skip("mount(2) is not allowed here: a real read-only filesystem cannot be made")
    mounted = tmp_path / "ro"
    mounted.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mounted)], check=True)
    try:
        shutil.copytree(root.deep_ep_dir, mounted / "dj")
        subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
        ro = CacheRoot.for_deep_ep_dir(mounted / "dj")
        before = tree(mounted)
        serving = rig(deep_ep25_include)
        assert len(name_coverage(the_plan, serving, [ro.deep_ep_dir]).relocatable) == 57
        with pytest.raises(CacheError, match=r"cannot relocate 57 entries into .*: .* read-only filesystem; "
                                             r"nothing was changed"):
            relocate(ro, serving, the_plan)
        assert relocate(ro, serving, the_plan, dry_run=True).published  # what it would do
        assert tree(mounted) == before
    finally:
        subprocess.run(["umount", "-l", str(mounted)], capture_output=True)


_KILL_SCRIPT = """
import sys, time
sys.path[:0] = [sys.argv[1]]
from aot_fixtures import NVCC_13_0
from jitcache.adapters.serving import locate_serving
from jitcache.planning.profiles import load_profile
from jitcache.planning.variants import plan
from jitcache.store.relocate import relocate
from jitcache.store.root import CacheRoot
serving = locate_serving("/tmp/gpu-rig/site/deep_ep", "/tmp/gpu-rig/nccl/include", nvcc_version_output=NVCC_13_0,
                         headers=sys.argv[3])
print("ready", flush=True)
relocate(CacheRoot.for_deep_ep_dir(sys.argv[2]), serving, plan(load_profile("h200-ep1")),
         _after_publish=lambda name: (print("published", name, flush=True), time.sleep(0.002)))
print("done", flush=True)
"""


def test_a_relocation_killed_at_any_moment_leaves_only_whole_entries(tmp_path, shipped, deep_ep25_include):  # noqa: F811
    """kill -9 at spread-out moments of a real relocation: every name under cache/ is a whole entry."""
    root, the_plan, entries = shipped
    template = tmp_path / "template"
    shutil.copytree(root.deep_ep_dir, template)
    script = tmp_path / "relocate_child.py"
    script.write_text(_KILL_SCRIPT)
    originals = {e.name for e in entries}
    expected = {e.name: e.kernel_cu for e in planned_entries(the_plan, rig(deep_ep25_include))}
    killed_mid = 0
    # None: kill while it judges coverage (before any publish); else that long after its first publish
    for attempt, delay in enumerate((None, 0.0, 0.003, 0.01, 0.03, 0.06)):
        target = tmp_path / f"run{attempt}"
        shutil.copytree(template, target)
        child = subprocess.Popen([sys.executable, str(script), str(REPO / "tests"), str(target),
                                  str(deep_ep25_include)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        if delay is not None:
            assert child.stdout.readline().startswith("published ")
            time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        names = set(os.listdir(target / "cache"))
        assert originals <= names
        new = names - originals
        killed_mid += 0 < len(new) < 57
        for name in new:
            entry = target / "cache" / name
            assert name in expected
            assert sorted(p.name for p in entry.iterdir()) == [".committed", "kernel.cu", "kernel.cubin", "meta.json"]
            assert (entry / "kernel.cu").read_text() == expected[name]
            assert json.loads((entry / "meta.json").read_text())["config"]["python_library_root"] == RIG_PACKAGE
        # what was cut off is finished by the next run
        assert len(relocate(CacheRoot.for_deep_ep_dir(target), rig(deep_ep25_include), the_plan).published) \
            == 57 - len(new)
    assert killed_mid, "no kill landed while entries were being published: widen the delays"


def test_deepep_21_entries_relocate_back_to_the_names_elasticbuffer_wrote(tmp_path):
    """The 57 entries ElasticBuffer wrote on the H200, as a build box with other paths names them, relocated
    for the rig's paths: exactly ElasticBuffer's own names, kernel.cu and cubin unchanged (2.1: no marker)."""
    from test_render21 import _wheel

    wheel = _wheel()
    if wheel is None:
        pytest.skip("tokenspeed-deepep (DeepEP 2.1) is not installed")
    from jitcache.adapters.serving import local_entry_name

    real = REPO / "tests" / "data" / "deepep21-h200" / "cache"
    build = locate_serving("/build/venv/site-packages/deep_ep", "/build/nccl/include", nvcc_version_output=NVCC_13_0,
                           headers=wheel / "include")
    rig21 = locate_serving("/tmp/gpu-rig/site21/deep_ep", "/tmp/gpu-rig/nccl/include", nvcc_version_output=NVCC_13_0,
                           headers=wheel / "include")
    cache = tmp_path / "dj" / "cache"
    cache.mkdir(parents=True)
    for entry in real.iterdir():
        name = local_entry_name(build, entry.name.split(".")[1], (entry / "kernel.cu").read_text(), "sm_90a")
        assert name != entry.name
        shutil.copytree(entry, cache / name)
    result = relocate_entries(tmp_path / "dj", rig21)
    assert not result.refused and {n for n, _ in result.published} == {p.name for p in real.iterdir()}
    for name, _ in result.published:
        assert sorted(p.name for p in (cache / name).iterdir()) == ["kernel.cu", "kernel.cubin"]
        assert tree(cache / name) == tree(real / name)
