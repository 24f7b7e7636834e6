"""Issue 14, case 10: a DeepJIT root shared with DeepGEMM. jitcache acts only on DeepEP's kernel families.

DeepEP 2.5 and DeepGEMM both default to ``$HOME/.dj`` with the same
``<name>.<32 hex>`` layout. The DeepGEMM entries here are real nvcc cubins
in DeepJIT's shape (one with two kernels, which DeepEP would reject but
DeepGEMM need not); prune, verify --repair and export must leave them alone
and say so.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from store_fixtures import *  # noqa: F401,F403 (fixtures)
from store_fixtures import compile_cubin, entry_key

pytestmark = pytest.mark.nvcc

GEMM_SOURCE = """\
namespace deep_gemm {
template <int kBlockM, int kBlockN>
__global__ void sm90_fp8_gemm_1d2d_impl(float* out) { out[threadIdx.x] = kBlockM * kBlockN; }
}  // namespace deep_gemm
static void __instantiate_kernel() {
    auto ptr = reinterpret_cast<void*>(&deep_gemm::sm90_fp8_gemm_1d2d_impl<128, 64>);
}
"""


@pytest.fixture(scope="module")
def gemm_cubins(tmp_path_factory, cubins) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("gemm")
    return {"gemm": compile_cubin(GEMM_SOURCE, base / "gemm"), "two": cubins["two_kernels"]}


def _gemm_entry(deep_ep_dir: Path, family: str, cubin: bytes, source: str = GEMM_SOURCE) -> Path:
    path = deep_ep_dir / "cache" / f"{family}.{entry_key(family + source)}"
    path.mkdir(parents=True)
    (path / "kernel.cu").write_text(source)
    (path / "kernel.cubin").write_bytes(cubin)
    (path / "meta.json").write_text(json.dumps({"command": "nvcc kernel.cu --gpu-architecture=sm_90a",
                                                "compiler_options": {"arch": "90a"}}))
    (path / ".committed").write_text("")
    return path


@pytest.fixture
def shared_root(filled_root, gemm_cubins):
    deep = filled_root.deep_ep_dir
    gemm = [_gemm_entry(deep, "sm90_fp8_gemm_1d2d", gemm_cubins["gemm"]),
            _gemm_entry(deep, "sm90_bf16_gemm", gemm_cubins["two"], GEMM_SOURCE.replace("128", "64")),
            _gemm_entry(deep, "fp8_mqa_logits", b"")]  # even a broken one: DeepGEMM's to deal with
    old = time.time() - 90 * 86400
    for entry in (deep / "cache").iterdir():
        os.utime(entry / ".committed", (old, old))
    return filled_root, gemm


def test_inspect_and_verify_name_foreign_entries(shared_root):
    root, gemm = shared_root
    data = run_cli("inspect", "--cache-dir", str(root.path), "--format", "json").json()
    foreign = sorted(e["name"] for e in data["entries"] if e["foreign"])
    assert foreign == sorted(p.name for p in gemm)
    # DeepEP's rules (one kernel, a non-empty cubin) are not theirs: the only word on them is "foreign"
    assert all([p["code"] for p in e["problems"]] == ["foreign_entry"] for e in data["entries"] if e["foreign"])
    assert sorted(p["path"] for p in data["problems"] if p["code"] == "foreign_entry") == sorted(map(str, gemm))
    done = run_cli("verify", "--cache-dir", str(root.path), "--format", "json")
    assert done.code == 0 and done.json()["ok"] is True


def test_prune_never_removes_foreign_entries(shared_root):
    root, gemm = shared_root
    done = run_cli("prune", "--cache-dir", str(root.path), "--older-than", "30d", "--format", "json")
    assert done.code == 0, done.stderr
    data = done.json()
    assert len(data["removed"]) == 16 and sorted(data["foreign"]) == sorted(map(str, gemm))
    assert all(p.is_dir() for p in gemm)
    assert sorted(p.name for p in (root.deep_ep_dir / "cache").iterdir()) == sorted(p.name for p in gemm)
    human = run_cli("prune", "--cache-dir", str(root.path), "--max-size", "0")
    assert human.code == 0 and "3 foreign entries" in human.stdout + human.stderr


def test_verify_repair_leaves_foreign_entries(shared_root):
    root, gemm = shared_root
    victim = next(p for p in (root.deep_ep_dir / "cache").iterdir() if p.name.startswith("dispatch."))
    (victim / "kernel.cubin").write_bytes(b"")
    done = run_cli("verify", "--cache-dir", str(root.path), "--repair", "--format", "json")
    assert done.code == 0, done.stdout
    moved = [m["source"] for m in done.json()["repair"]["moved"]]
    assert moved == [str(victim)] and all(p.is_dir() for p in gemm)


def test_export_leaves_foreign_entries_out(shared_root, test_profile, tmp_path):
    root, gemm = shared_root
    for args in ([], ["-p", test_profile.source]):
        out = tmp_path / f"b{len(args)}.tar.zst"
        done = run_cli("export", "--cache-dir", str(root.path), "-o", str(out), "--format", "json", *args)
        assert done.code == 0, done.stderr
        data = done.json()
        assert data["entries"] == (16 if args else 17) and sorted(data["foreign"]) == sorted(p.name for p in gemm)
        assert "foreign" in done.stderr  # said to the user, not only in the JSON
