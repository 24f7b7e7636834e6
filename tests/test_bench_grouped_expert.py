"""The benchmark's grouped-expert Triton kernels against a torch reference, on CPU via Triton's interpreter.

``benchmarks/decode_moe_step.py`` times these kernels on the H200; here their
math is checked at small shapes with ``TRITON_INTERPRET=1`` (set before Triton
is imported, in a subprocess so that the rest of the suite keeps compiling
Triton for real). The interpreter mishandles bf16 loads (it returns garbage for
them here), so the math is checked in float16 and float32; the bf16 path the
benchmark times is checked on the GPU by ``decode_moe_step.py`` itself
(``kernel_check`` in its JSON).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("numpy")  # Triton's interpreter runs on numpy

SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import _grouped_expert as ge

torch.manual_seed(0)
rows, topk, experts, hidden, inter = 7, 3, 5, 80, 40   # hidden and inter not multiples of the tiles
dtype = getattr(torch, sys.argv[2])
x = (torch.randn(rows, hidden) * 0.5).to(dtype)
w1 = (torch.randn(experts, hidden, 2 * inter) * 0.1).to(dtype)
w2 = (torch.randn(experts, inter, hidden) * 0.1).to(dtype)
idx = torch.stack([torch.randperm(experts)[:topk] for _ in range(rows)]).to(torch.int64)
idx[1, 0] = -1            # a slot routed to another rank
idx[2, :] = -1            # a row with nothing here
idx[4, 2] = 99            # garbage past the local experts: ignored
idx[6, :] = 0             # rows past num_valid: dropped when num_valid is given
weights = torch.rand(rows, topk)

for num_valid in (None, 6):
    ref = ge.reference_mlp(x, idx, weights, w1, w2, num_valid)
    got = ge.grouped_expert_mlp(x, idx, weights, w1, w2, num_valid).float()
    err = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 0.02 * scale + 1e-3, (num_valid, err, scale)
    assert torch.all(got[2] == 0), "a row without local experts must stay zero"
    if num_valid is not None:
        assert torch.all(got[num_valid:] == 0)
    pairs = ge.count_pairs(idx, experts, num_valid)
    expected = sum(1 for r in range(rows if num_valid is None else num_valid)
                   for k in range(topk) if 0 <= int(idx[r, k]) < experts)
    assert pairs == expected, (pairs, expected)

# routing: every real pair lands exactly once, in a tile of its own expert
sorted_pairs, tile_expert, num_pairs = ge.route(idx, experts, None, block_m=ge.BLOCK_M)
seen = {}
for pos, pair in enumerate(sorted_pairs.tolist()):
    if pair == num_pairs:
        continue
    e = int(tile_expert[pos // ge.BLOCK_M])
    assert e == int(idx.view(-1)[pair]), (pos, pair, e)
    seen[pair] = seen.get(pair, 0) + 1
assert all(v == 1 for v in seen.values()) and len(seen) == ge.count_pairs(idx, experts)
assert int((tile_expert < experts).sum()) == sum(-(-int((idx == e).sum()) // ge.BLOCK_M) for e in range(experts))
print("ok")
"""


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_grouped_expert_kernels_match_torch_reference_in_the_interpreter(dtype):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "benchmarks"), dtype], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")
