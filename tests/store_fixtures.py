"""Real cache entries for the store tests: nvcc cubins in both DeepEP layouts, a Triton group.

Everything expensive (nvcc, Triton) runs once per session; each test gets
its own copy of the tree. Kernel sources have the exact shape DeepEP writes
(an ``__instantiate_kernel`` taking the address of ``deep_ep::ep::<kernel>_impl<...>``)
but a tiny variadic kernel body, so they compile in a second without
DeepEP's headers and decode like the real thing.

Import the fixtures into a test module with ``from store_fixtures import *``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jitcache.planning.profiles import load_profile
from jitcache.store.kernels import BARRIER_PARAMS, TEMPLATE_PARAMS
from jitcache.store.root import CacheRoot, resolve_root
from jitcache.planning.variants import plan

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")

#: A small profile: the H200 rig's model at EP1 with buckets 1, 2, 4, 8 (16 variants + the barrier).
PROFILE_TOML = """
description = "store tests: DeepSeek-V3 shape, EP1, buckets 1..8"
[model]
name = "test/moe"
hidden = 7168
num_experts = 256
num_topk = 8
[parallel]
ep_size = 1
ranks_per_node = 1
[serving]
max_num_batched_tokens = 8
[target]
arch = "sm_90a"
num_device_sms = 132
"""

#: What the GPU decides (not the plan): SMs, warps, QPs, timeout cycles.
GPU_PARAMS = {"num_sms": 132, "num_notify_warps": 4, "num_dispatch_warps": 15, "num_warps": 16,
              "num_channels": 1, "num_qps": 129, "num_timeout_cycles": 198000000000,
              "num_ranks": 1, "num_threads": 512, "flush_stores": True}

_TINY_KERNEL = """\
namespace deep_ep::ep {{
template <auto... kArgs>
__global__ void {kernel}(int* out) {{
    if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int>(sizeof...(kArgs));
}}
}}  // namespace deep_ep::ep
"""

FAMILY_KERNELS = {"dispatch": "dispatch_impl", "dispatch_copy_epilogue": "dispatch_copy_epilogue_impl",
                  "combine": "combine_impl", "combine_reduce_epilogue": "combine_reduce_epilogue_impl"}
#: With the buffer's barrier (``plan.buffer_kernels``): every kernel DeepEP compiles for serving.
ALL_KERNELS = {**FAMILY_KERNELS, "barrier": "barrier_impl"}


def _template(kernel: str) -> tuple[str, ...]:
    return BARRIER_PARAMS[8] if kernel == "barrier_impl" else TEMPLATE_PARAMS[kernel]


def _literal(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def template_args(kernel: str, params: dict[str, Any]) -> list[Any]:
    """A plan variant's params (plus the GPU's) in the kernel template's order."""
    merged = {**GPU_PARAMS, **params}
    if kernel == "combine_impl":
        merged["num_ranks"] = merged.get("num_scaleup_ranks", 1) * merged.get("num_scaleout_ranks", 1)
    return [merged[name] for name in _template(kernel)]


def render_source(kernel: str, args: list[Any], style: str = "2.5") -> str:
    """kernel.cu as DeepEP writes it (2.5: qualified name; 2.1: includes hash + using namespace)."""
    inst = f"{kernel}<{', '.join(_literal(a) for a in args)}>"
    body = _TINY_KERNEL.format(kernel=kernel)
    if style == "2.1":
        return ("// Includes' hash value: 0123456789abcdef\n" + body + "using namespace deep_ep::ep;\n"
                "static void __instantiate_kernel() {\n"
                f"    auto ptr = reinterpret_cast<void*>(&{inst});\n}}\n")
    return (body + "\nstatic void __instantiate_kernel() {\n"
            f"    auto ptr = reinterpret_cast<void*>(&deep_ep::ep::{inst});\n}}\n")


TWO_KERNELS_SOURCE = textwrap.dedent("""\
    __global__ void first_kernel(int* x) { x[0] = 1; }
    __global__ void second_kernel(int* x) { x[0] = 2; }
""")


#: (source, arch) -> cubin, for the whole test process: every module that imports these fixtures gets its own
#: copy of the "session" fixtures (pytest scopes them per defining module), but nvcc runs once per source.
_COMPILED: dict[tuple[str, str], bytes] = {}


def compile_cubin(source: str, workdir: Path, arch: str = "sm_90a") -> bytes:
    if (source, arch) in _COMPILED:
        return _COMPILED[(source, arch)]
    _COMPILED[(source, arch)] = _nvcc(source, workdir, arch)
    return _COMPILED[(source, arch)]


def _nvcc(source: str, workdir: Path, arch: str) -> bytes:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "kernel.cu").write_text(source)
    subprocess.run([NVCC, "kernel.cu", "--cubin", "--output-file", "kernel.cubin", f"--gpu-architecture={arch}",
                    "-w", "-O3", "-std=c++17"], cwd=workdir, check=True, capture_output=True, timeout=120)
    return (workdir / "kernel.cubin").read_bytes()


class CubinSet(dict):
    """Family name -> a real cubin of that kernel template (``two_kernels``: a cubin with two kernels).

    :meth:`matching` gives the cubin compiled from an entry's exact
    instantiation (memoised for the session), so that an entry's
    ``kernel.cu`` and ``kernel.cubin`` agree on the template arguments, as
    DeepEP's own entries do (verify and import check it).
    """

    def __init__(self, base: Path, compiled: dict[str, bytes]) -> None:
        super().__init__(compiled)
        self.base = base
        self._memo: dict[tuple[str, tuple, str], bytes] = {}

    def _compile(self, kernel: str, args: list[Any], arch: str = "sm_90a") -> bytes:
        key = (kernel, tuple(args), arch)
        if key not in self._memo:
            source = render_source(kernel, list(args))
            self._memo[key] = compile_cubin(source, self.base / "matching" / arch / entry_key(source), arch)
        return self._memo[key]

    def matching(self, kernel: str, args: list[Any], arch: str = "sm_90a") -> bytes:
        return self._compile(kernel, args, arch)

    def prefetch(self, pairs: list[tuple[str, list[Any]]]) -> None:
        todo = {(k, tuple(a), "sm_90a") for k, a in pairs} - set(self._memo)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for future in [pool.submit(self._compile, k, list(a), arch) for k, a, arch in sorted(todo)]:
                future.result()


def bundle_members(blob: bytes) -> list[tuple["tarfile.TarInfo", "bytes | None"]]:
    """A bundle's (tar + zstd) members in order, each with its bytes (None for a non-file): for tests that take
    a real bundle apart to damage or rewrite it."""
    import io
    import tarfile

    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def plan_instantiations(the_plan) -> list[tuple[str, list[Any]]]:
    """(template, arguments) of every variant of a plan, as make_entry renders them."""
    pairs = []
    for variant in the_plan.variants:
        params = variant.param_dict
        kernel = params.get("kernel", FAMILY_KERNELS[variant.family])
        pairs.append((kernel, template_args(kernel, params)))
    return pairs


@pytest.fixture(scope="session")
def cubins(tmp_path_factory, test_profile) -> CubinSet:
    """One real cubin per kernel template (+ ``two_kernels``), and every test-profile variant's, compiled once."""
    if NVCC is None:
        pytest.skip("nvcc is not on the PATH")
    base = tmp_path_factory.mktemp("cubins")
    jobs = {family: render_source(kernel, [1] * len(_template(kernel)))
            for family, kernel in ALL_KERNELS.items()}
    jobs["two_kernels"] = TWO_KERNELS_SOURCE
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(compile_cubin, src, base / name) for name, src in jobs.items()}
        compiled = CubinSet(base, {name: f.result() for name, f in futures.items()})
    compiled.prefetch(plan_instantiations(plan(test_profile)))
    return compiled


@pytest.fixture(scope="session")
def test_profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("profiles") / "store-test.toml"
    path.write_text(PROFILE_TOML)
    return load_profile(path)


def entry_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def make_entry(deep_ep_dir: Path, family: str, params: dict[str, Any], cubin: "bytes | CubinSet", *,
               style: str = "2.5", meta: bool = True, committed: bool = True) -> Path:
    """Write one entry in a DeepEP layout, with a real cubin and a decodable kernel.cu.

    ``cubin``: the bytes to use as they are, or the :class:`CubinSet`, which
    gives the cubin compiled from this entry's own instantiation.
    """
    kernel = params.get("kernel", ALL_KERNELS[family])
    args = template_args(kernel, params)
    source = render_source(kernel, args, style)
    if isinstance(cubin, CubinSet):
        cubin = cubin.matching(kernel, args)
    key = entry_key(source)
    name = f"{family}.{key}" if style == "2.5" else f"kernel.{family}.{key}"
    path = deep_ep_dir / "cache" / name
    path.mkdir(parents=True)
    (path / "kernel.cu").write_text(source)
    (path / "kernel.cubin").write_bytes(cubin)
    if style == "2.5":
        if meta:
            (path / "meta.json").write_text(json.dumps({
                "command": f"{NVCC} {path}/kernel.cu --cubin --output-file {path}/kernel.cubin",
                "compiler_info": {"path": NVCC, "version": "Cuda compilation tools, release 13.0, V13.0.88"},
                "compiler_options": {"arch": "sm_90a"}, "config": {}}))
        if committed:
            (path / ".committed").write_text("")
    return path


def fill_plan(deep_ep_dir: Path, the_plan, cubins: dict[str, bytes], *, style: str = "2.5",
              buckets: tuple[int, ...] | None = None, barrier: bool = False) -> list[Path]:
    """One entry per plan variant (optionally only for some buckets), and with ``barrier`` the buffer's barrier:
    then every kernel serving loads is there."""
    paths = []
    for variant in the_plan.kernels if barrier else the_plan.variants:
        if buckets is None or variant.num_max_tokens_per_rank in (*buckets, None):
            paths.append(make_entry(deep_ep_dir, variant.family, variant.param_dict, cubins, style=style))
    return paths


_TRITON_SCRIPT = """
import os, sys
os.environ["TRITON_CACHE_DIR"] = sys.argv[1]
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget

@triton.jit
def add_one(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)

src = triton.compiler.ASTSource(fn=add_one, signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32",
                                "BLOCK": "constexpr"}, constexprs={"BLOCK": 128})
triton.compile(src, target=GPUTarget("cuda", 90, 32))
"""


@pytest.fixture(scope="session")
def triton_cache(tmp_path_factory) -> Path:
    """A Triton cache dir holding one compiled kernel group (``add_one``), made by Triton itself."""
    pytest.importorskip("triton")
    base = tmp_path_factory.mktemp("triton")
    directory = base / "cache"
    script = base / "compile_add_one.py"  # @triton.jit reads the function's source file
    script.write_text(_TRITON_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(directory)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return directory


def copy_triton_tree(src: Path, dst: Path) -> None:
    """Copy a Triton cache, pointing each group's absolute ``child_paths`` at the copy (as import does)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    for group in dst.glob("*/__grp__*.json"):
        data = json.loads(group.read_text())
        data["child_paths"] = {name: str(group.parent / name) for name in data["child_paths"]}
        group.write_text(json.dumps(data))


@pytest.fixture
def filled_root(tmp_path, cubins, test_profile, triton_cache) -> CacheRoot:
    """A jitcache root with every variant of ``test_profile`` (DeepEP 2.5 layout) and a Triton group."""
    root = resolve_root(tmp_path / "root").ensure()
    fill_plan(root.deep_ep_dir, plan(test_profile), cubins)
    copy_triton_tree(triton_cache, root.triton_dir)
    return root


__all__ = ["cubins", "filled_root", "test_profile", "triton_cache"]  # fixtures
