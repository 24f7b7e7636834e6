"""Plots of the H200 results, drawn from the committed JSON (no GPU needed).

- ``results/h200/readiness.png``: time until every planned variant of h200-ep1
  is loaded: cold live warmup, AOT warmup (16 nvcc jobs) and a new worker on a
  populated cache.
- ``results/h200/decode_moe_step.png``: MoE step time and memory above the
  weights, unbounded (``num_max_tokens_per_rank=None``) vs bucketed, per token count.

    python benchmarks/plot_h200.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

H200 = Path(__file__).resolve().parent / "results" / "h200"


def readiness() -> Path:
    s = json.loads((H200 / "readiness.json").read_text())["summary"]
    labels = ["cold live warmup\n(DeepEP lazy JIT)", "AOT warmup\n(jitcache, 16 jobs)", "new worker,\npopulated cache"]
    values = [s["cold_live_warmup_seconds"], s["aot_wall_seconds"], s["warm_live_warmup_seconds"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(labels, values, color=["#c44e52", "#4c72b0", "#55a868"])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.1f} s" if value >= 1 else f"{value:.2f} s", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom")
    ax.set_ylim(0, max(values) * 1.15)
    ax.set_ylabel("seconds until all 56 variants are loaded")
    ax.set_title(f"h200-ep1 readiness on one {s['gpu']} (DeepEP {s['deep_ep']})")
    fig.tight_layout()
    path = H200 / "readiness.png"
    fig.savefig(path, dpi=120)
    return path


def decode() -> Path:
    data = json.loads((H200 / "decode_moe_step.json").read_text())
    rows = data["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for mode, style in (("valid", "-"), ("as_received", "--")):
        sel = [r for r in rows if r["mode"] == mode]
        n = [r["num_tokens"] for r in sel]
        left.plot(n, [r["unbounded_ms"] for r in sel], style, marker="o", color="#c44e52",
                  label=f"unbounded (None -> 8192 rows), experts: {mode}")
        left.plot(n, [r["bucketed_ms"] for r in sel], style, marker="o", color="#4c72b0",
                  label=f"bucketed, experts: {mode}")
    sel = [r for r in rows if r["mode"] == "valid"]
    n = [r["num_tokens"] for r in sel]
    right.plot(n, [r["unbounded_peak_above_weights_bytes"] / 2**20 for r in sel], marker="o", color="#c44e52",
               label="unbounded")
    right.plot(n, [r["bucketed_peak_above_weights_bytes"] / 2**20 for r in sel], marker="o", color="#4c72b0",
               label="bucketed")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens in the decode step")
    left.set_ylabel("MoE step (ms, median)")
    left.legend(fontsize=7)
    right.set_ylabel("peak memory above the weights (MiB)")
    right.set_yscale("log")
    right.legend(fontsize=8)
    env = data.get("environment", {})
    fig.suptitle(f"EP1 dispatch -> Triton grouped experts -> combine, {env.get('gpu', 'H200')}, "
                 f"DeepEP {env.get('deep_ep', '?')}")
    fig.tight_layout()
    path = H200 / "decode_moe_step.png"
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    for made in (readiness(), decode()):
        print(f"wrote {made}")
