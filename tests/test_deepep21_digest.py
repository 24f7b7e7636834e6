"""DeepEP 2.1's digest rule: vectors by hand, and its facts checked against the tokenspeed-deepep binary."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest

from jitcache.adapters.digest21 import cache_key21, flags21, hex_digest21

MASK = (1 << 64) - 1


def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_empty_input_is_the_mixed_seeds():
    assert hex_digest21("") == f"{_mix(0xC6A4A7935BD1E995):016x}{_mix(0x9E3779B97F4A7C15):016x}"
    assert hex_digest21("a") != hex_digest21("b")


def test_key_layout():
    code = "// Includes' hash value: x\nint k;"
    assert cache_key21("dispatch", code, "-O3", 13, 0) == hex_digest21("dispatch$$NVCC13.0$$-O3$$" + code)
    flags = flags21(arch="sm_90a", nccl_root="/n", library_include="/p/deep_ep/include")
    assert flags.startswith("-std=c++20 --diag-suppress=39,161,174,177,186,940,3012 "
                            "--ptxas-options=--register-usage-level=10 -I /n/include -I/p/deep_ep/include "
                            "--gpu-architecture=sm_90a ")


def test_facts_are_in_the_real_2_1_library():
    spec = importlib.util.find_spec("deep_ep")
    libs = [p for loc in (spec.submodule_search_locations or []) for p in Path(loc).glob("_C*.so")] if spec else []
    if not libs:
        pytest.skip("tokenspeed-deepep (DeepEP 2.1) is not installed")
    data = libs[0].read_bytes()
    for constant in (0xC6A4A7935BD1E995, 0x9E3779B97F4A7C15, 0x100000001B3, 0xBF58476D1CE4E5B9):
        assert struct.pack("<Q", constant) in data
    for text in (b"{}$${}$${}$${}", b"kernel.{}.{}", b"NVCC{}.{}", b" -I {}/include", b"// Includes' hash value: {}",
                 b"{} -I{} --gpu-architecture=sm_{} --compiler-options=-fPIC,-O3,-fconcepts,"
                 b"-Wno-deprecated-declarations,-Wno-abi -O3 --expt-relaxed-constexpr --expt-extended-lambda"):
        assert text in data
