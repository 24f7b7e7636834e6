"""A grouped-expert MoE MLP in Triton whose work follows the token-expert pairs it is given.

This is the expert computation of ``decode_moe_step.py``: what runs between
DeepEP's ``dispatch`` and ``combine`` in a decode step. It consumes DeepEP 2.5's
non-expanded output as is:

- ``recv_x`` ``[M, hidden]`` bf16, where ``M = num_max_tokens_per_rank * num_ranks``
  (the host does not know how many rows are real without a CPU sync, and decode
  runs with ``do_cpu_sync=False``);
- ``recv_topk_idx`` ``[M, num_topk]``: *local* expert indices, ``-1`` for a slot
  whose expert lives on another rank (``dispatch_copy_epilogue.cuh``). Rows past
  DeepEP's received count (``handle.psum_num_recv_tokens_per_scaleup_rank[-1]``,
  a GPU tensor) are never written: ``torch::empty`` memory;
- ``recv_topk_weights`` ``[M, num_topk]`` float32. ``combine`` does not apply them
  (it only reduces rows across ranks), so the expert layer does.

Per pair ``(row, k)`` with expert ``e = recv_topk_idx[row, k]`` the layer adds
``w[row, k] * (silu(x @ W1[e][:, :I]) * (x @ W1[e][:, I:])) @ W2[e]`` to
``out[row]``: DeepSeek-V3's expert MLP, ``W1: hidden -> 2 x I`` (gate and up,
7168 -> 2 x 2048 = 4096) with SiLU-and-multiply, then ``W2: I -> hidden``
(2048 -> 7168). Two Triton kernels:

1. ``_gate_up_silu``: for each tile of up to ``BLOCK_M`` pairs of one expert,
   gate and up GEMMs over ``hidden`` and SiLU(gate) * up, into an ``[P_max, I]``
   bf16 buffer;
2. ``_down_weighted``: the down GEMM, scaled by the pair's routing weight and
   atomically added (fp32) into ``out[row]``.

The routing prep (:func:`route`, plain torch, no host sync: CUDA-graph style) sorts
the ``M x num_topk`` slots by expert, pads each expert's group to ``BLOCK_M`` and
names the expert of each tile. The launch grid is sized from ``M`` (the host
cannot know the real pair count); tiles past the real pairs exit at once. So the
GEMM work follows the real pairs, while the routing pass, the early-exit tiles,
the output zeroing and the buffers scale with ``M``. ``num_valid`` (DeepEP's
received count, on the GPU) drops slots of rows past it; ``None`` trusts every
row of ``recv_x`` (a layer that treats the received shape as the token count).
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK_M = 16
BLOCK_N = 64
BLOCK_K = 64
KERNEL_DESCRIPTION = (
    "Triton grouped expert MLP over (row, local expert) pairs from recv_topk_idx: "
    "gate/up GEMM hidden->2xI (7168->2x2048) + SiLU(gate)*up, then down GEMM I->hidden (2048->7168), "
    "scaled by recv_topk_weights and atomically summed per row (fp32), bf16 in/out; "
    f"tiles of BLOCK_M={BLOCK_M} pairs of one expert, BLOCK_N={BLOCK_N}, BLOCK_K={BLOCK_K}")


@triton.jit
def _gate_up_silu(x_ptr, w1_ptr, pairs_ptr, tile_expert_ptr, act_ptr,
                  num_pairs, num_topk, num_experts, hidden, inter,
                  stride_xm, stride_we, stride_wk, stride_am,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(tile_expert_ptr + pid_m)
    if expert >= num_experts:  # a tile past the real pairs: no work
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + offs_m)
    row_ok = pair < num_pairs
    row = tl.where(row_ok, pair // num_topk, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < inter
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w1_ptr + expert.to(tl.int64) * stride_we
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < hidden
        a = tl.load(x_ptr + row.to(tl.int64)[:, None] * stride_xm + k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_rows = w_base + k.to(tl.int64)[:, None] * stride_wk
        wmask = k_ok[:, None] & n_ok[None, :]
        w_gate = tl.load(w_rows + offs_n[None, :], mask=wmask, other=0.0)
        w_up = tl.load(w_rows + (inter + offs_n)[None, :], mask=wmask, other=0.0)
        acc_gate = tl.dot(a, w_gate, acc_gate)
        acc_up = tl.dot(a, w_up, acc_up)
    act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    tl.store(act_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_n[None, :], act.to(act_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_weighted(act_ptr, w2_ptr, pairs_ptr, tile_expert_ptr, weights_ptr, out_ptr,
                   num_pairs, num_topk, num_experts, inter, hidden,
                   stride_am, stride_we, stride_wk, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(tile_expert_ptr + pid_m)
    if expert >= num_experts:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + offs_m)
    row_ok = pair < num_pairs
    safe_pair = tl.where(row_ok, pair, 0)
    row = safe_pair // num_topk
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hidden
    offs_k = tl.arange(0, BLOCK_K)
    w_base = w2_ptr + expert.to(tl.int64) * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < inter
        a = tl.load(act_ptr + offs_m.to(tl.int64)[:, None] * stride_am + k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_base + k.to(tl.int64)[:, None] * stride_wk + offs_n[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    weight = tl.load(weights_ptr + safe_pair, mask=row_ok, other=0.0)
    acc = acc * weight[:, None]
    tl.atomic_add(out_ptr + row.to(tl.int64)[:, None] * stride_om + offs_n[None, :], acc,
                  mask=row_ok[:, None] & n_ok[None, :])


def route(topk_idx, num_experts: int, num_valid=None, block_m: int = BLOCK_M):
    """Group the ``[M, num_topk]`` slots by expert, each group padded to ``block_m``; no host sync.

    Returns ``(sorted_pairs, tile_expert, num_pairs)``: ``sorted_pairs[P_max]`` holds flat
    pair indices ``row * num_topk + k`` tile by tile (``num_pairs`` = ``M * num_topk`` marks
    padding), ``tile_expert[P_max / block_m]`` the expert of each tile (``num_experts`` for
    a tile past the real pairs). A slot counts when ``0 <= id < num_experts`` and, if
    ``num_valid`` (a GPU scalar tensor or int) is given, its row is below it.
    """
    import torch

    rows, topk = topk_idx.shape
    device = topk_idx.device
    ids = topk_idx.to(torch.int64)
    ok = (ids >= 0) & (ids < num_experts)
    if num_valid is not None:
        ok &= (torch.arange(rows, device=device) < num_valid)[:, None]
    key = torch.where(ok, ids, num_experts).reshape(-1)
    num_pairs = rows * topk
    sorted_key, order = torch.sort(key, stable=True)
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, key, torch.ones_like(key))
    counts = counts[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    start = torch.cumsum(counts, 0) - counts
    valid = sorted_key < num_experts
    expert = sorted_key.clamp(max=num_experts - 1)
    position = torch.arange(num_pairs, device=device)
    max_padded = -(-(num_pairs + num_experts * (block_m - 1)) // block_m) * block_m
    dest = torch.where(valid, padded_start[expert] + position - start[expert], max_padded)
    sorted_pairs = torch.full((max_padded + 1,), num_pairs, dtype=torch.int64, device=device)
    sorted_pairs.scatter_(0, dest, torch.where(valid, order, num_pairs))
    sorted_pairs = sorted_pairs[:max_padded]
    tile_start = torch.arange(0, max_padded, block_m, device=device)
    tile_expert = torch.searchsorted(padded_end, tile_start, right=True).to(torch.int32)
    return sorted_pairs, tile_expert, num_pairs


def grouped_expert_mlp(x, topk_idx, topk_weights, w1, w2, num_valid=None):
    """The expert layer: ``out[row] = sum_k w[row, k] * mlp_{e(row, k)}(x[row])``, ``[M, hidden]`` in x's dtype.

    ``w1``: ``[E, hidden, 2 * I]`` (gate columns first, then up); ``w2``: ``[E, I, hidden]``.
    """
    import torch

    rows, hidden = x.shape
    num_experts, _, two_inter = w1.shape
    inter = two_inter // 2
    sorted_pairs, tile_expert, num_pairs = route(topk_idx, num_experts, num_valid)
    num_tiles = tile_expert.shape[0]
    act = torch.empty((sorted_pairs.shape[0], inter), dtype=x.dtype, device=x.device)
    out = torch.zeros((rows, hidden), dtype=torch.float32, device=x.device)
    weights = topk_weights.reshape(-1).to(torch.float32)
    x = x.contiguous()
    grid1 = (num_tiles, triton.cdiv(inter, BLOCK_N))
    _gate_up_silu[grid1](x, w1, sorted_pairs, tile_expert, act, num_pairs, topk_idx.shape[1], num_experts,
                         hidden, inter, x.stride(0), w1.stride(0), w1.stride(1), act.stride(0),
                         BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    grid2 = (num_tiles, triton.cdiv(hidden, BLOCK_N))
    _down_weighted[grid2](act, w2, sorted_pairs, tile_expert, weights, out, num_pairs, topk_idx.shape[1],
                          num_experts, inter, hidden, act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
                          BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out.to(x.dtype)


def count_pairs(topk_idx, num_experts: int, num_valid=None) -> int:
    """How many (row, expert) pairs :func:`grouped_expert_mlp` computes for these inputs (syncs)."""
    import torch

    ok = (topk_idx >= 0) & (topk_idx < num_experts)
    if num_valid is not None:
        ok &= (torch.arange(topk_idx.shape[0], device=topk_idx.device) < num_valid)[:, None]
    return int(ok.sum().item())


def reference_mlp(x, topk_idx, topk_weights, w1, w2, num_valid=None):
    """The same layer in float32 torch, pair by pair (for tests)."""
    import torch

    rows, hidden = x.shape
    num_experts, _, two_inter = w1.shape
    inter = two_inter // 2
    out = torch.zeros((rows, hidden), dtype=torch.float32, device=x.device)
    limit = rows if num_valid is None else int(num_valid)
    for row in range(min(rows, limit)):
        for k in range(topk_idx.shape[1]):
            e = int(topk_idx[row, k])
            if not 0 <= e < num_experts:
                continue
            h = x[row].float() @ w1[e].float()
            act = torch.nn.functional.silu(h[:inter]) * h[inter:]
            act = act.to(x.dtype).float()  # the kernel keeps the activation in the input dtype
            out[row] += float(topk_weights[row, k]) * (act @ w2[e].float())
    return out
