"""Issue 12 through the CLI: `inspect --profile --check`, `verify --profile`, `relocate`, `import` relocating.

"Compile on a CPU box, ship, serve": the cache holds h200-ep1's 57 entries
named for a build box's paths; the serving DeepEP is a package dir with the
2.5 headers at another path and NCCL at /srv/nccl.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aot_fixtures import NVCC_13_0, REPO, deep_ep25_include  # noqa: F401
from jitcache.adapters.serving import locate_serving
from jitcache.planning.profiles import load_profile
from jitcache.planning.variants import plan
from jitcache.store.root import resolve_root
from test_cli_cache import run
from test_relocate import tree, write_shipped

DATA = REPO / "tests" / "data" / "deepep25-h200" / "cache"


@pytest.fixture
def setup(tmp_path, deep_ep25_include):  # noqa: F811
    package = tmp_path / "serving" / "site-packages" / "deep_ep"
    shutil.copytree(deep_ep25_include, package / "include")
    (package / "__init__.py").write_text("")
    root = resolve_root(tmp_path / "root").ensure()
    build = locate_serving("/build/site-packages/deep_ep", "/build/nccl/include", headers=deep_ep25_include)
    write_shipped(root.deep_ep_dir / "cache", plan(load_profile("h200-ep1")), build)
    serving = ["--deep-ep-root", str(package), "--nccl-include", "/srv/nccl/include"]
    return root, serving


def test_inspect_check_is_a_gate_and_relocate_opens_it(capsys, setup):
    root, serving = setup
    base = ["--cache-dir", str(root.path), "--profile", "h200-ep1", *serving]
    code, out, _ = run(capsys, "inspect", *base, "--check")
    assert code == 1
    assert "judged for DeepEP 2.5 at" in out and "NCCL /srv/nccl/include" in out
    assert "57 entries that DeepEP looks up: 0 found, 57 relocatable (right source, other paths), 0 missing" in out
    code, out, _ = run(capsys, "inspect", *base, "--format", "json")
    cov = json.loads(out)["coverage_by_name"]
    assert code == 0 and cov["num_relocatable"] == 57 and cov["deep_ep"]["nccl_include"] == "/srv/nccl/include"
    assert cov["deep_ep"]["version"] == "2.5" and cov["deep_ep"]["package_dir"].endswith("site-packages/deep_ep")

    code, out, _ = run(capsys, "relocate", *base, "--dry-run")
    assert code == 0 and "Would publish 57 entries" in out
    assert len(list((root.deep_ep_dir / "cache").iterdir())) == 57
    code, out, _ = run(capsys, "relocate", *base)
    assert code == 0 and "Published 57 entries" in out and "this DeepEP will find all 57 entries." in out
    code, out, _ = run(capsys, "inspect", *base, "--check")
    assert code == 0 and "57 found, 0 relocatable" in out
    code, out, _ = run(capsys, "verify", "--cache-dir", str(root.path), "--profile", "h200-ep1", *serving,
                       "--format", "json")
    assert json.loads(out)["coverage_by_name"]["complete"] is True
    assert len(list((root.deep_ep_dir / "cache").iterdir())) == 114   # the old names stay until prune


def test_a_genuinely_missing_entry_keeps_the_gate_shut(capsys, setup):
    root, serving = setup
    victim = sorted((root.deep_ep_dir / "cache").glob("combine.*"))[0]
    shutil.rmtree(victim)
    base = ["--cache-dir", str(root.path), "--profile", "h200-ep1", *serving]
    code, out, _ = run(capsys, "relocate", *base)
    assert code == 0 and "Published 56 entries" in out and "1 missing" in out
    code, out, _ = run(capsys, "inspect", *base, "--check")
    assert code == 1 and "serving would compile 1 kernels" in out and "missing: combine" in out


def _ship_real_entries(cache: Path, headers: Path) -> int:
    """DeepEP's own 22 H200 entries (kernel.cu, cubin, meta.json) under the names a build box gives them."""
    from jitcache.adapters.serving import local_entry_name, serving_meta_json

    build = locate_serving("/build/site-packages/deep_ep", "/build/nccl/include", headers=headers,
                           nvcc_version_output=NVCC_13_0)
    cache.mkdir(parents=True, exist_ok=True)
    for entry in sorted(DATA.iterdir()):
        family = entry.name.rsplit(".", 1)[0]
        name = local_entry_name(build, family, (entry / "kernel.cu").read_text(), "sm_90a")
        shutil.copytree(entry, cache / name)
        (cache / name / "meta.json").write_text(serving_meta_json(build, "sm_90a").replace("{dir}", "/build/tmp/x"))
        (cache / name / ".committed").write_bytes(b"")
    return len(list(cache.iterdir()))


def test_import_relocates_by_default(capsys, setup, tmp_path, deep_ep25_include):  # noqa: F811
    _, serving = setup
    shipped = resolve_root(tmp_path / "build-root").ensure()
    assert _ship_real_entries(shipped.deep_ep_dir / "cache", deep_ep25_include) == 22
    bundle = tmp_path / "shipped.tar.zst"
    code, _, err = run(capsys, "export", "--cache-dir", str(shipped.path), "-o", str(bundle))
    assert code == 0, err
    target = tmp_path / "serving-root"
    code, out, err = run(capsys, "import", str(bundle), "--cache-dir", str(target), *serving)
    assert code == 0, err
    assert "Imported 22 entries" in out and "Relocated 22 entries to the names DeepEP 2.5 at" in out
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(target), "--profile", "h200-ep1", *serving,
                       "--format", "json")
    assert json.loads(out)["coverage_by_name"]["num_found"] == 16      # its decode entries (buckets 1, 2, 4 and 8192)
    plain = tmp_path / "plain-root"
    code, out, _ = run(capsys, "import", str(bundle), "--cache-dir", str(plain), "--no-relocate", *serving)
    assert code == 0 and "Relocated" not in out
    code, out, _ = run(capsys, "inspect", "--cache-dir", str(plain), "--profile", "h200-ep1", *serving,
                       "--format", "json")
    cov = json.loads(out)["coverage_by_name"]
    assert cov["num_found"] == 0 and cov["num_relocatable"] == 16


def test_bad_input_is_an_error_and_changes_nothing(capsys, setup, tmp_path):
    root, serving = setup
    before = tree(root.deep_ep_dir)
    code, _, err = run(capsys, "relocate", "--cache-dir", str(root.path), "--deep-ep-root", str(tmp_path / "nope"))
    assert code == 2 and "Error: --deep-ep-root" in err and "no DeepEP package there" in " ".join(err.split())
    code, _, err = run(capsys, "inspect", "--cache-dir", str(root.path), "--check")
    assert code == 2 and "--check needs --profile" in err
    assert tree(root.deep_ep_dir) == before
