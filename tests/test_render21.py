"""DeepEP 2.1 rendering, pinned three ways: the strings of the real library, its headers, its digest rule.

The ``tokenspeed-deepep`` wheel (the ``aot`` extra) is the reference: its
``_C`` library holds the source templates DeepEP 2.1 formats, and its
``deep_ep/include`` headers the template parameter lists those sources
instantiate. The cache DeepEP 2.1 wrote on the H200 pins the same rules end to
end (test_deepep21_realdata.py); docs/aot.md says what each test proves.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from jitcache.adapters.digest21 import IncludeHasher21, cache_key21, flags21, hex_digest21
from jitcache.planning.profiles import load_profile
from jitcache.adapters.render21 import (SOURCE_TEMPLATE21, render_barrier21, render_plan21, target_facts21,
                               token_layout_num_bytes21)
from jitcache.planning.variants import plan

PROFILES = ("h200-ep1", "deepseek-v3-ep8", "deepseek-v3-ep16x2", "qwen3-30b-a3b-ep4")


def _wheel() -> Path | None:
    spec = importlib.util.find_spec("deep_ep")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "include" / "deep_ep" / "impls" / "dispatch.cuh").is_file():
            return Path(location)
    return None


@pytest.fixture(scope="module")
def wheel() -> Path:
    found = _wheel()
    if found is None and os.environ.get("CI"):
        pytest.fail("CI installs the aot extra, which brings tokenspeed-deepep (DeepEP 2.1): it must be there")
    if found is None:
        pytest.skip("tokenspeed-deepep (DeepEP 2.1) is not installed: pip install 'jitcache[aot]'")
    return found


@pytest.fixture(scope="module")
def library_strings(wheel) -> set[str]:
    """Every NUL-terminated printable string of DeepEP 2.1's ``_C`` library."""
    data = next(wheel.glob("_C*.so")).read_bytes()
    return {m.decode() for m in re.findall(rb"[\t\n\x20-\x7e]{8,}", data)}


def _profile_plan(name: str):
    profile = load_profile(name)
    if profile.parallel.ep_size > 1 and not profile.deep_ep.num_sms:
        from dataclasses import replace
        profile = replace(profile, deep_ep=replace(profile.deep_ep, num_sms=24))
    return plan(profile)


def _kernels(name: str):
    the_plan = _profile_plan(name)
    return list(render_plan21(the_plan)) + [render_barrier21(the_plan.profile)]


def _as_format_string(kernel_call: str) -> str:
    """``dispatch_impl<true, 132, ...>`` -> ``dispatch_impl<{}, {}, ...>`` (the fmt string that made it)."""
    name, _, args = kernel_call.partition("<")
    return f"{name}<{', '.join('{}' for _ in args[:-1].split(', '))}>"


# -- (b) the format strings we use are DeepEP 2.1's, verbatim -------------------------------------


def test_generic_source_template_is_in_the_library(library_strings):
    fmt = SOURCE_TEMPLATE21.replace("{header}", "{}").replace("{call}", "{}")
    assert fmt in library_strings


@pytest.mark.parametrize("profile", PROFILES)
def test_every_rendered_kernel_comes_from_a_format_string_of_the_library(library_strings, profile):
    for kernel in _kernels(profile):
        header = re.search(r"#include <deep_ep/impls/(\w+)\.cuh>", kernel.source).group(1)
        call_fmt = _as_format_string(kernel.function)
        generic = SOURCE_TEMPLATE21.replace("{header}", "{}").replace("{call}", "{}")
        specific = SOURCE_TEMPLATE21.replace("{header}", header).replace("{call}", call_fmt)
        # DeepEP formats either the whole source with the kernel's own template list inline, or the
        # generic source around a separately formatted "kernel<{}, ...>" (dispatch and combine).
        assert specific in library_strings or (generic in library_strings and call_fmt in library_strings), \
            f"{kernel.name}: {call_fmt} with header {header} is not a format string of DeepEP 2.1"


def test_flags_and_key_strings_are_the_librarys(library_strings):
    flags = flags21(arch="sm_90a", nccl_root="N", library_include="L")
    head, _, tail = flags.partition(" -I N/include")
    assert head.replace("-std=c++20", "-std=c++{}") in library_strings
    assert "{} -I{} --gpu-architecture=sm_{}" + tail.split("sm_90a", 1)[1] in library_strings
    for text in (" -I {}/include", "{}$${}$${}$${}", "kernel.{}.{}", "NVCC{}.{}", "cd {} && {} {} -cubin -o {} {}",
                 "// Includes' hash value: {}\n{}"):
        assert text in library_strings


# -- the rendered arguments fit the wheel's headers ----------------------------------------------


def _template_params(header_text: str, function: str) -> list[str]:
    definition = re.search(rf"\n{function}\(", header_text)
    start = header_text.rfind("template <", 0, definition.start())
    depth, body = 0, []
    for char in header_text[start + len("template "):definition.start()]:
        depth += {"<": 1, ">": -1}.get(char, 0)
        if depth == 0:
            break
        body.append(char)
    text, parts, depth, current = "".join(body)[1:], [], 0, ""
    for char in text:
        depth += {"<": 1, ">": -1, "(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()]


@pytest.mark.parametrize("profile", PROFILES)
def test_arguments_match_the_headers_template_parameters(wheel, profile):
    for kernel in _kernels(profile):
        header = re.search(r"#include <(deep_ep/impls/\w+\.cuh)>", kernel.source).group(1)
        name, _, args = kernel.function.partition("<")
        values = args[:-1].split(", ")
        params = [p for p in _template_params((wheel / "include" / header).read_text(), name) if "=" not in p]
        assert len(values) == len(params), f"{name}: {len(values)} arguments for {params}"
        for value, param in zip(values, params):
            kind = param.split()[0]
            assert (value in ("true", "false")) == (kind == "bool"), f"{name}: {value} for {param}"
            if kind in ("int", "int64_t"):
                assert int(value) >= 0


def test_h200_ep1_arguments_by_hand():
    """EP1 on an H200 (132 SMs, 232448 B shared memory, 1.98 GHz), bf16 hidden 7168, top-8 of 256."""
    the_plan = plan(load_profile("h200-ep1"))
    facts = target_facts21(the_plan.profile)
    assert (facts.num_sms, facts.num_qps, facts.num_timeout_cycles) == (132, 129, 198_000_000_000)
    # hidden 14336 + metadata (8*8 + 9*4 = 100 -> 128) + mbarrier 32; no 64-byte RDMA alignment in 2.1
    assert token_layout_num_bytes21(14336, 0, 8, True, True) == 14496
    from jitcache.adapters.render25 import token_layout_num_bytes
    # gpt-oss's hidden 2880 (5760 B) + top-4 weights (32 B): 2.1 packs 5824 B where 2.5 pads the data to 64 B
    assert token_layout_num_bytes21(5760, 0, 4, False, True) == 5824
    assert token_layout_num_bytes(5760, 0, 4, False, True) == 5856
    first = {k.name: k.function for k in render_plan21(the_plan)[:4]}
    assert first["dispatch"] == ("dispatch_impl<true, false, false, 132, 4, 15, 1, 14336, 0, 1, 256, 8, 1, "
                                 "129, 198000000000>")  # warps: (232448 - 1536) // 14496 = 15
    assert first["dispatch_copy_epilogue"] == ("dispatch_copy_epilogue_impl<false, false, false, 132, 1, 16, 1, 1, "
                                               "14336, 0, 1, 256, 8, 1>")
    assert first["combine"] == "combine_impl<true, false, true, 132, 16, 1, 7168, 1, 256, 8, 129, 198000000000>"
    assert first["combine_reduce_epilogue"] == "combine_reduce_epilogue_impl<false, true, 132, 16, 1, 1, 7168, 1, 256, 8>"
    assert render_barrier21(the_plan.profile).function == "barrier_impl<true, 1, 512, 1, 1, 198000000000, true>"


def test_hybrid_profile_uses_hybrid_kernels_and_channels():
    the_plan = _profile_plan("deepseek-v3-ep16x2")
    facts = target_facts21(the_plan.profile)
    assert facts.num_sms == 24 and 1 <= facts.num_channels_per_sm <= 8
    names = {k.function.partition("<")[0] for k in render_plan21(the_plan)}
    assert names == {"hybrid_dispatch_impl", "dispatch_copy_epilogue_impl", "hybrid_combine_impl",
                     "combine_reduce_epilogue_impl"}


# -- (c) the digest of a rendered source follows 2.1's rule ---------------------------------------


def test_digest_of_rendered_sources_follows_the_2_1_rule(wheel, tmp_path):
    from jitcache.adapters.deepep21 import build_jobs21, target_flags21
    from jitcache.build.toolchain import Toolchain

    from aot_fixtures import NVCC_13_0

    toolchain = Toolchain(nvcc=Path("/usr/bin/nvcc"), nvcc_version_output=NVCC_13_0,
                          deep_ep_include=wheel / "include", deep_ep_api="2.1", nccl_include=tmp_path,
                          target_nccl_include="/srv/nccl/include", python_library_root="/srv/site/deep_ep")
    kernels = render_plan21(plan(load_profile("h200-ep1")))[:4]
    jobs = build_jobs21(kernels, toolchain, "sm_90a")
    flags = target_flags21(toolchain, "sm_90a")
    assert " -I /srv/nccl/include -I/srv/site/deep_ep/include --gpu-architecture=sm_90a " in flags
    hasher = IncludeHasher21(wheel / "include")
    for kernel, job in zip(kernels, jobs):
        code = dict(job.files)["kernel.cu"]
        first, _, rest = code.partition("\n")
        assert rest == kernel.source
        assert first == "// Includes' hash value: " + hasher.hash_value(kernel.source)
        digest = hex_digest21(f"{kernel.name}$$NVCC13.0$${flags}$${code}")
        assert digest == cache_key21(kernel.name, code, flags, 13, 0)
        assert job.entry == f"kernel.{kernel.name}.{digest}" and job.marker is None
        # nvcc reads the local headers; the digest keeps the serving machine's paths
        assert f"-I{wheel / 'include'}" in job.argv and "/srv/site/deep_ep/include" not in " ".join(job.argv)
