"""Measured speedup beside the MAC-based CRF, from benchmarks/speculative.py's JSONs (issue 36, item 2).

One panel per task: each decode-timed variant (lossy, speculative) at each batch size is a point at its exact CRF
(MACs: x) and its measured speedup over exits off (time per token: y, the paired median with quartile bars). The
diagonal is where time follows compute. A speculative point may sit above it (a verification of several positions
costs several steps in MACs but, where a step is memory-bound, about one in time) or below it (where the step is
compute-bound, as on a small model on a CPU); lossy points sit at or below it but for overheads. Whole calls
(`generate`, `assistant_early_exit`) have no CRF here and stay in the tables.

  python benchmarks/speed_figure.py docs/results/real-small/speed/*_batch*.json \\
      --out docs/results/real-small/speed/speedup_vs_crf.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from any folder

from workflow_lib.analysis.figures import save_figure  # noqa: E402

TASKS = {"triviaqa": "TriviaQA", "coqa": "CoQA", "truthfulqa": "TruthfulQA"}
KINDS = {"lossy": ("s", "lossy at the no-loss threshold"), "speculative": ("o", "speculative (lossless)")}
BATCH_COLOURS = {1: "tab:blue", 8: "tab:orange"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsons", nargs="+", type=Path, help="benchmarks/speculative.py outputs (one per task and batch)")
    p.add_argument("--out", type=Path, required=True, help="figure file (.png or .pdf)")
    return p.parse_args(argv)


def points(paths: list[Path]) -> pd.DataFrame:
    """The decode-timed variants with a speedup and a CRF, one row per (file, variant)."""
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        if data.get("benchmark") != "speculative":
            raise SystemExit(f"error: {path} is not a benchmarks/speculative.py result")
        for r in data["rows"]:
            if r["kind"] in KINDS and r.get("speedup_median") is not None:
                rows.append({"task": data["task"], **{k: r.get(k) for k in (
                    "variant", "kind", "batch_size", "crf_exact_macs", "speedup_median", "speedup_q1", "speedup_q3",
                    "threshold")}})
    if not rows:
        raise SystemExit("error: no lossy or speculative row with a speedup in " + ", ".join(map(str, paths)))
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame) -> plt.Figure:
    tasks = [t for t in TASKS if t in set(table["task"])]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False, sharey=True)
    top = max(1.1, table["speedup_q3"].max() * 1.05)
    left, right = min(0.5, table["crf_exact_macs"].min() * 0.95), max(1.3, table["crf_exact_macs"].max() * 1.05)
    for ax, task in zip(axes[0], tasks):
        for (kind, batch), part in table[table["task"] == task].groupby(["kind", "batch_size"]):
            marker, label = KINDS[kind]
            err = [part["speedup_median"] - part["speedup_q1"], part["speedup_q3"] - part["speedup_median"]]
            ax.errorbar(part["crf_exact_macs"], part["speedup_median"], yerr=err, fmt=marker, capsize=3,
                        color=BATCH_COLOURS.get(batch, "tab:gray"), label=f"{label}, batch {batch}")
            for _, r in part.iterrows():  # which threshold each point is
                ax.annotate(f"{r['threshold']:g}", (r["crf_exact_macs"], r["speedup_median"]), fontsize=7,
                            xytext=(4, 2), textcoords="offset points")
        ax.plot([left, right], [left, right], color="gray", lw=0.8, ls=":", label="speedup = CRF")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axvline(1.0, color="black", lw=0.5, ls="--")
        ax.set(title=TASKS[task], xlabel="exact CRF (MACs)", xlim=(left, right), ylim=(0, top))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, prune="upper"))  # no label meets the next panel's
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("measured speedup over exits off\n(time per token, paired median [q1, q3])")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.out.suffix not in (".png", ".pdf"):
        raise SystemExit(f"error: --out must end in .png or .pdf, got {a.out}")
    missing = [str(p) for p in a.jsons if not p.is_file()]
    if missing:
        raise SystemExit("error: no such file: " + ", ".join(missing))
    fig = plot(points(a.jsons))
    save_figure(fig, [a.out])
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
