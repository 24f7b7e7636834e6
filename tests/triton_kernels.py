"""Small Triton kernels for the AOT tests; importing this module registers them (a --triton-module)."""

from __future__ import annotations

import triton
import triton.language as tl

import jitcache.triton as jt


@triton.jit
def scale_rows(x_ptr, out_ptr, num_rows, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = (row < num_rows) & (cols < hidden)
    x = tl.load(x_ptr + row * hidden + cols, mask=mask)
    tl.store(out_ptr + row * hidden + cols, x * 2, mask=mask)


@triton.jit
def topk_count(idx_ptr, counts_ptr, num_tokens, NUM_TOPK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_tokens * NUM_TOPK
    experts = tl.load(idx_ptr + offs, mask=mask, other=0)
    tl.atomic_add(counts_ptr + experts, 1, mask=mask)


@triton.jit
def broken_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) + undefined_name, mask=offs < n)  # noqa: F821


def register_good() -> None:
    # num_rows is the bucket: 1 becomes a constexpr, 16, 32... get tt.divisibility=16, as at run time.
    jt.register(scale_rows, lambda bucket: {"x_ptr": "*bf16", "out_ptr": "*bf16", "num_rows": bucket,
                                            "hidden": 7168, "BLOCK": 128})
    jt.register(topk_count, lambda bucket: {"idx_ptr": "*i32", "counts_ptr": "*i32", "num_tokens": bucket,
                                            "NUM_TOPK": 8, "BLOCK": 256}, num_warps=2)


def register_broken() -> None:
    jt.register(broken_kernel, lambda bucket: {"x_ptr": "*fp32", "n": bucket, "BLOCK": 64})


register_good()
