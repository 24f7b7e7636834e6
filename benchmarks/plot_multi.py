"""Plot of the multi-GPU proof, drawn from a committed ``multi_proof.json`` (no GPU needed).

``results/h200x2/multi_warmup.png``: for one EP2 node from an empty cache, the wall
time until every rank has every planned variant, and the CPU seconds spent
compiling on both ranks: DeepEP alone, jitcache's live warmup without and with its
nvcc pass, and the AOT warmup split over the ranks.

    python benchmarks/plot_multi.py [--results benchmarks/results/h200x2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def warmup_plot(results: Path) -> Path:
    data = json.loads((results / "multi_proof.json").read_text())
    s, world = data["summary"], data.get("world_size", 2)
    rows = [("DeepEP alone\n(each rank compiles)", "lazy_wall_seconds", "lazy_compile_cpu_seconds", "#c44e52"),
            ("jitcache warmup\n--no-precompile", "live_plain_wall_seconds", "live_plain_compile_cpu_seconds", "#dd8452"),
            ("jitcache warmup\n(nvcc pass split)", "live_wall_seconds", "live_compile_cpu_seconds", "#55a868"),
            ("warmup --aot\n--distributed", "aot_wall_seconds", "aot_cpu_seconds", "#4c72b0")]
    rows = [r for r in rows if isinstance(s.get(r[1]), (int, float))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, index, label in ((axes[0], 1, "wall s, empty cache to every variant"),
                             (axes[1], 2, f"CPU s compiling ({world} ranks summed)")):
        values = [s.get(r[index]) or 0.0 for r in rows]
        bars = ax.bar([r[0] for r in rows], values, color=[r[3] for r in rows])
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
        ax.set_ylim(0, max(values) * 1.15)
        ax.set_ylabel(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    shared = next((p["summary"].get("shared_cache") for p in data["phases"].values()
                   if p["summary"].get("shared_cache")), {})
    fig.suptitle(f"{data.get('profile')}: EP{world} on {world} GPUs of one node "
                 f"({results.name}; {shared.get('entries', '?')} cache entries)")
    fig.tight_layout()
    path = results / "multi_warmup.png"
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(HERE / "results" / "h200x2"))
    args = parser.parse_args(argv)
    print(warmup_plot(Path(args.results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
