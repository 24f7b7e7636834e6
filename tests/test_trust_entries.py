"""Issue 14, cases 2, 3 and 11: what `jitcache verify` must see in entries an attacker or an accident left.

Real cubins from nvcc (sm_90a and sm_80), real symlinks and modes, the real
console script in a subprocess.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cli_helpers import run_cli
from jitcache.store.root import resolve_root
from jitcache.planning.variants import plan
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import FAMILY_KERNELS, fill_plan, make_entry, template_args

pytestmark = pytest.mark.nvcc


def _verify(root_path: Path, *extra: str) -> tuple[int, dict]:
    done = run_cli("verify", "--cache-dir", str(root_path), "--format", "json", *extra)
    assert "Traceback" not in done.stderr, done.stderr
    return done.code, done.json()


def _codes(data: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for p in data["problems"]:
        found.setdefault(p["path"], set()).add(p["code"])
    return found


def _dispatch_entry(the_plan, deep_ep_dir: Path, cubins, **kwargs) -> Path:
    variant = next(v for v in the_plan.variants if v.family == "dispatch")
    return make_entry(deep_ep_dir, variant.family, variant.param_dict, cubins, **kwargs)


# -- case 2: symlinks are followed and checked like plain entries ----------------------------------


def test_root_that_is_a_symlink_to_a_world_writable_dir_is_flagged(tmp_path, cubins, test_profile):
    real = tmp_path / "shared-0777"
    fill_plan(resolve_root(real).ensure().deep_ep_dir, plan(test_profile), cubins, buckets=(1,))
    os.chmod(real, 0o777)
    link = tmp_path / "root"
    link.symlink_to(real)
    code, data = _verify(link)
    assert code == 1
    assert "unsafe_permissions" in _codes(data).get(str(real), set()), data["problems"]


def test_entry_dir_symlinked_into_a_world_writable_place_is_flagged(tmp_path, cubins, test_profile):
    root = resolve_root(tmp_path / "root").ensure()
    entry = _dispatch_entry(plan(test_profile), root.deep_ep_dir, cubins)
    elsewhere = tmp_path / "world"
    elsewhere.mkdir()
    moved = elsewhere / entry.name
    shutil.move(entry, moved)
    os.chmod(moved, 0o777)
    entry.symlink_to(moved)
    code, data = _verify(root.path)
    assert code == 1 and data["entries_checked"] == 1  # the symlinked entry is seen, as DeepEP sees it
    problems = [p for p in data["problems"] if p["entry"] == entry.name]
    assert [p["code"] for p in problems] == ["unsafe_permissions"] and problems[0]["path"] == str(moved)


def test_cubin_symlinked_to_a_world_writable_file_is_flagged(tmp_path, cubins, test_profile):
    root = resolve_root(tmp_path / "root").ensure()
    entry = _dispatch_entry(plan(test_profile), root.deep_ep_dir, cubins)
    outside = tmp_path / "outside" / "kernel.cubin"
    outside.parent.mkdir()
    shutil.move(entry / "kernel.cubin", outside)
    os.chmod(outside, 0o666)
    (entry / "kernel.cubin").symlink_to(outside)
    code, data = _verify(root.path)
    assert code == 1
    problems = [p for p in data["problems"] if p["entry"] == entry.name]
    assert [p["code"] for p in problems] == ["unsafe_permissions"] and problems[0]["path"] == str(outside)
    # the same entry with a sound link target is fine: a symlink alone is not a problem
    os.chmod(outside, 0o644)
    assert _verify(root.path)[0] == 0


# -- case 3: the arch comes from the cubin's ELF header ------------------------------------------


def test_sm80_cubin_in_an_sm90a_entry_is_wrong_arch(tmp_path, cubins, test_profile):
    root = resolve_root(tmp_path / "root").ensure()
    variant = next(v for v in plan(test_profile).variants if v.family == "combine")
    kernel = FAMILY_KERNELS["combine"]
    sm80 = cubins.matching(kernel, template_args(kernel, variant.param_dict), "sm_80")
    entry = make_entry(root.deep_ep_dir, "combine", variant.param_dict, sm80)  # meta.json says sm_90a
    code, data = _verify(root.path)
    assert code == 1
    problem = next(p for p in data["problems"] if p["entry"] == entry.name)
    assert problem["code"] == "wrong_arch" and "sm_80" in problem["message"] and "sm_90a" in problem["message"]


def test_verify_arch_checks_deep_ep21_entries_too(tmp_path, cubins, test_profile):
    root = resolve_root(tmp_path / "root").ensure()
    the_plan = plan(test_profile)
    fill_plan(root.deep_ep_dir, the_plan, cubins, style="2.1", buckets=(1,))
    variant = next(v for v in the_plan.variants if v.family == "combine" and v.num_max_tokens_per_rank == 2)
    kernel = FAMILY_KERNELS["combine"]
    sm80 = cubins.matching(kernel, template_args(kernel, variant.param_dict), "sm_80")
    bad = make_entry(root.deep_ep_dir, "combine", variant.param_dict, sm80, style="2.1")
    assert _verify(root.path)[0] == 0  # 2.1 records no arch: only the serving GPU's can be compared
    code, data = _verify(root.path, "--arch", "sm_90a")
    assert code == 1 and [p["entry"] for p in data["problems"] if p["code"] == "wrong_arch"] == [bad.name]
    code, data = _verify(root.path, "--arch", "sm_80")
    assert code == 1 and len([p for p in data["problems"] if p["code"] == "wrong_arch"]) == 4
    assert run_cli("verify", "--cache-dir", str(root.path), "--arch", "hopper").code == 2


def test_cubin_of_another_instantiation_is_flagged(tmp_path, cubins, test_profile):
    """A cubin for nmax=1 in the nmax=8 entry would run with the wrong buffer sizes."""
    root = resolve_root(tmp_path / "root").ensure()
    the_plan = plan(test_profile)
    small, big = (next(v for v in the_plan.variants if v.family == "dispatch" and v.num_max_tokens_per_rank == n)
                  for n in (1, 8))
    kernel = FAMILY_KERNELS["dispatch"]
    entry = make_entry(root.deep_ep_dir, "dispatch", big.param_dict,
                       cubins.matching(kernel, template_args(kernel, small.param_dict)))
    other = make_entry(root.deep_ep_dir, "combine", next(v for v in the_plan.variants if v.family == "combine")
                       .param_dict, cubins.matching(kernel, template_args(kernel, small.param_dict)))
    code, data = _verify(root.path)
    assert code == 1
    found = {p["entry"]: p for p in data["problems"] if p["code"] == "entry_symbols"}
    assert set(found) == {entry.name, other.name}
    assert "other template arguments" in found[entry.name]["message"]
    assert "is not combine_impl" in found[other.name]["message"]


# -- case 11: stray files are warnings --------------------------------------------------------------


def test_stray_files_in_root_and_cache_are_warnings(filled_root):
    (filled_root.path / "notes.txt").write_text("hello")
    (filled_root.path / "old-cache").mkdir()
    (filled_root.deep_ep_dir / "cache" / "kernel.cubin").write_bytes(b"\x7fELF")
    (filled_root.deep_ep_dir / "cache" / "README").symlink_to("/etc/hostname")
    (filled_root.deep_ep_dir / "random.log").write_text("x")
    code, data = _verify(filled_root.path)
    stray = sorted(Path(p["path"]).name for p in data["problems"] if p["code"] == "stray_file")
    assert stray == ["README", "kernel.cubin", "notes.txt", "old-cache", "random.log"]
    assert all(p["severity"] == "warning" for p in data["problems"] if p["code"] == "stray_file")
    assert code == 0 and data["ok"] is True  # warnings only: serving is unaffected
    done = run_cli("inspect", "--cache-dir", str(filled_root.path))
    assert done.code == 0 and "stray_file" in done.stdout
    # repair never touches them
    assert run_cli("verify", "--cache-dir", str(filled_root.path), "--repair").code == 0
    assert (filled_root.path / "notes.txt").read_text() == "hello"
    assert (filled_root.deep_ep_dir / "cache" / "kernel.cubin").exists()
