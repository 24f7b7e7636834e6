"""DeepJIT's (DeepEP 2.5) digest rule: hand-checkable vectors, the parser, flags, and real entries when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aot_fixtures import NVCC_13_0, REPO, RIG_NCCL_INCLUDE, deep_ep25_include  # noqa: F401
from jitcache.adapters.deepjit import (FNV1a, IncludeHasher, NonStandardInclude, cache_key, deep_ep_compiler_options,
                              hex_digest, meta_json, nvcc_command, options_from_meta)

MASK = (1 << 64) - 1


def _reference(data: bytes) -> str:
    """The rule written out the long way: length (8 bytes LE) then data, two FNV-1a states, split-mix."""
    s0, s1 = 0xC6A4A7935BD1E995, 0xFF51AFD7ED558CCD
    for b in len(data).to_bytes(8, "little") + data:
        s0 = ((s0 ^ b) * 0x100000001B3) & MASK
        s1 = ((s1 ^ b) * 0x9E3779B97F4A7C15) & MASK

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    return f"{mix(s0):016x}{mix(s1):016x}"


@pytest.mark.parametrize("data", [b"", b"a", b"deep_ep", bytes(range(256))])
def test_hex_digest_matches_the_long_way(data):
    assert hex_digest(data) == _reference(data)


def test_golden_vectors():
    # Pinned: a change here changes every DeepEP 2.5 cache key jitcache computes.
    assert hex_digest("") == _reference(b"")
    assert hex_digest("") == "601991819c51b6b40cce57df1139bba4"
    assert len(hex_digest("x")) == 32


def test_updates_are_length_prefixed():
    assert FNV1a().update("ab").hexdigest() != FNV1a().update("a").update("b").hexdigest()
    assert FNV1a().update("").hexdigest() != FNV1a().hexdigest()


def test_parser_hashes_only_prefixed_angle_includes(tmp_path):
    inc = tmp_path / "inc"
    (inc / "deep_ep").mkdir(parents=True)
    (inc / "deep_ep" / "a.cuh").write_text("#pragma once\n#include <deep_ep/b.cuh>\nint a;\n")
    (inc / "deep_ep" / "b.cuh").write_text("int b;\n")
    hasher = IncludeHasher([inc])
    src = "\n  #  include <deep_ep/a.cuh>\n#include <cuda.h>\n// #include <deep_ep/missing.cuh>\n"
    b = _reference(b"int b;\n")
    # by hand: hash(src) then each included header's hex digest, each length-prefixed
    h = FNV1a().update(src)
    a_hash = FNV1a().update((inc / "deep_ep" / "a.cuh").read_bytes()).update(b).hexdigest()
    assert hasher.hash_source(src) == h.update(a_hash).hexdigest()
    # header contents matter, header paths do not
    other = tmp_path / "elsewhere"
    (other / "deep_ep").mkdir(parents=True)
    for name in ("a.cuh", "b.cuh"):
        (other / "deep_ep" / name).write_bytes((inc / "deep_ep" / name).read_bytes())
    assert IncludeHasher([other]).hash_source(src) == hasher.hash_source(src)
    (other / "deep_ep" / "b.cuh").write_text("int b2;\n")
    assert IncludeHasher([other]).hash_source(src) != hasher.hash_source(src)


def test_parser_rejects_quoted_includes_like_deepjit(tmp_path):
    with pytest.raises(NonStandardInclude):
        IncludeHasher([tmp_path]).hash_source('#include "local.h"\n')


def test_flags_in_deepjit_order():
    opts = deep_ep_compiler_options("sm_90a", "/nccl/include")
    assert opts.flags_string() == (
        "--gpu-architecture=sm_90a -O3 --compiler-options=-O3 --ptxas-options=--register-usage-level=10 "
        "-std=c++20 --compiler-options=-fPIC --compiler-options=-fconcepts --expt-relaxed-constexpr "
        "--expt-extended-lambda --diag-suppress=39,161,174,177,186,940,3012 "
        "--compiler-options=-Wno-deprecated-declarations,-Wno-abi -I/nccl/include -DEP_NUM_TOPK_IDX_BITS=64 "
        "-DNCCL_GIN_GDAKI_ENABLE=1 -DNCCL_GIN_PROXY_ENABLE=0 -DNCCL_GIN_GPI_ENABLE=0 -DNCCL_GIN_EFA_GDA_ENABLE=0")


def test_meta_json_round_trips_the_options():
    opts = deep_ep_compiler_options("sm_90a", "/nccl/include")
    cmd = nvcc_command("/cuda/bin/nvcc", "/c/tmp/x", opts, ["/pkg/deep_ep/include"])
    text = meta_json(cmd, python_library_root="/pkg/deep_ep", include_dirs=["/pkg/deep_ep/include"],
                     nvcc_path="/cuda/bin/nvcc", nvcc_version_output=NVCC_13_0, options=opts)
    assert text.startswith('{"command":"/cuda/bin/nvcc /c/tmp/x/kernel.cu --cubin --output-file ')
    learned = options_from_meta(text)
    assert learned.options == opts
    assert learned.nccl_include_dir == "/nccl/include"
    assert learned.nvcc_version_output == NVCC_13_0


def test_h200_ep1_digests_pinned(deep_ep25_include):  # noqa: F811
    """Our rule over the 2.5 sdist headers, nvcc 13.0 and the rig's NCCL path, pinned.

    These are the directory names DeepEP 2.5 writes on the H200 rig for these
    sources if the rule is right; test_real_entries checks it against entries
    DeepEP wrote, when tests/data/deepep25-h200 is present.
    """
    from jitcache import load_profile, plan
    from jitcache.adapters.render25 import render_plan

    kernels = render_plan(plan(load_profile("h200-ep1")))
    opts = deep_ep_compiler_options("sm_90a", RIG_NCCL_INCLUDE)
    hasher = IncludeHasher([deep_ep25_include])
    names = {f"{k.name}.{cache_key(k.source, opts, NVCC_13_0, hasher)}" for k in kernels[:4]}
    assert names == PINNED_NMAX_1


PINNED_NMAX_1 = {
    "dispatch.d9da7ca0640fe0dc1291abac0dfdcc53",
    "dispatch_copy_epilogue.b8dc52eae78e2d7ceb0f19e8336fa33e",
    "combine.7ff3902b9b293bdcd53058d54da5e766",
    "combine_reduce_epilogue.bf18dc8b9c267c425ee05c7692f4b2e5",
}

DATA = REPO / "tests" / "data" / "deepep25-h200"


@pytest.mark.skipif(not DATA.is_dir(), reason="no real DeepEP 2.5 cache sample in tests/data/deepep25-h200")
def test_real_entries(deep_ep25_include):  # noqa: F811
    """Every entry DeepEP itself wrote: recompute its digest from kernel.cu, meta.json and the 2.5 headers."""
    entries = sorted(p for p in DATA.rglob("kernel.cu"))
    assert entries
    hasher = IncludeHasher([deep_ep25_include])
    for kernel_cu in entries:
        entry = kernel_cu.parent
        learned = options_from_meta((entry / "meta.json").read_text())
        name, digest = entry.name.rsplit(".", 1)
        assert cache_key(kernel_cu.read_bytes(), learned.options, learned.nvcc_version_output, hasher) == digest, entry


@pytest.mark.skipif(not DATA.is_dir(), reason="no real DeepEP 2.5 cache sample in tests/data/deepep25-h200")
def test_rendered_entries_are_the_ones_deepep_wrote(deep_ep25_include):  # noqa: F811
    """Renderer + digest, end to end: for every real entry we render the same name and the same kernel.cu bytes."""
    from dataclasses import replace

    from jitcache import load_profile, plan
    from jitcache.adapters.render25 import render_plan

    profile = load_profile("h200-ep1")
    profile = replace(profile, serving=replace(profile.serving, modes=("decode", "prefill", "cached")))
    opts = deep_ep_compiler_options("sm_90a", RIG_NCCL_INCLUDE)
    hasher = IncludeHasher([deep_ep25_include])
    ours = {f"{k.name}.{cache_key(k.source, opts, NVCC_13_0, hasher)}": k.source for k in render_plan(plan(profile))}
    real = {cu.parent.name: cu.read_text() for cu in DATA.rglob("kernel.cu")}
    assert len(real) == 22
    assert set(real) <= set(ours)
    assert all(ours[name] == text for name, text in real.items())


def test_rendered_barrier_is_the_one_deepep_wrote(deep_ep25_include):  # noqa: F811
    """EPBuffer's constructor barrier: DeepEP wrote barrier.6e83... on the H200 rig
    (benchmarks/results/h200/inspect_rig.json); AOT warmups compile it too."""
    from jitcache import load_profile
    from jitcache.adapters.render25 import render_barrier

    kernel = render_barrier(load_profile("h200-ep1"))
    assert kernel.function == "barrier_impl<true, 1, 512, 1, 1, 198000000000, true, true>"
    opts = deep_ep_compiler_options("sm_90a", RIG_NCCL_INCLUDE)
    digest = cache_key(kernel.source, opts, NVCC_13_0, IncludeHasher([deep_ep25_include]))
    assert f"barrier.{digest}" == "barrier.6e833446fb8ba2030693b64b92acf947"


DATA_EP2 = REPO / "tests" / "data" / "deepep25-h200x2"


@pytest.mark.skipif(not DATA_EP2.is_dir(), reason="no real EP2 DeepEP 2.5 cache sample in tests/data")
def test_ep2_entries_deepep_wrote_on_two_h200s_are_the_ones_we_render(deep_ep25_include):  # noqa: F811
    """EP2 (h200x2-ep2, num_sms 28): every entry DeepEP wrote on two H200s, name and kernel.cu bytes,
    comes out of the renderer + digest with the profile's defaults (nothing learned from an entry)."""
    from jitcache import load_profile, plan
    from jitcache.adapters.render25 import render_barrier, render_plan

    profile = load_profile("h200x2-ep2")
    opts = deep_ep_compiler_options("sm_90a", RIG_NCCL_INCLUDE)
    hasher = IncludeHasher([deep_ep25_include])
    kernels = [*render_plan(plan(profile)), render_barrier(profile)]
    ours = {f"{k.name}.{cache_key(k.source, opts, NVCC_13_0, hasher)}": k.source for k in kernels}
    real = {cu.parent.name: cu.read_text() for cu in DATA_EP2.rglob("kernel.cu")}
    assert len(real) == 10
    assert set(real) <= set(ours)
    assert all(ours[name] == text for name, text in real.items())
    for kernel_cu in DATA_EP2.rglob("kernel.cu"):  # and DeepEP's own meta.json gives the same digest
        learned = options_from_meta((kernel_cu.parent / "meta.json").read_text())
        digest = kernel_cu.parent.name.rsplit(".", 1)[1]
        assert cache_key(kernel_cu.read_bytes(), learned.options, learned.nvcc_version_output, hasher) == digest
