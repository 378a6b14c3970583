"""Paper-style figures (Fig. 1-5): task metric versus CRF for one backbone and one task (matplotlib; no torch).

One panel per headline metric of the task. Each head x policy is a series (line through its thresholds,
its own marker shape), with markers coloured by threshold; layer pruning is a black dashed series (the n blocks
before the last), and a brown one (the n blocks chosen by angular distance);
a calibrated threshold is its head / policy's marker ringed in its delta's colour ("calm / copy calibrated
delta=0.05"); the full model (exits disabled) is a star at CRF 1. Invalid points (too many degenerate generations) are
drawn hollow with a red cross instead of being dropped.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from workflow_lib.analysis.tables import HEADLINE_METRICS, SERIES_NAMES, series_name  # noqa: E402
from workflow_lib.artifacts import atomic_path  # noqa: E402

MARKERS = ["o", "^", "s", "D", "v", "P", "X", "<", ">", "h"]
PRUNING_STYLES = [("prune", "black", "s"), ("prune_angular", "tab:brown", "D")]  # method, colour, marker
CALIBRATED_COLOURS = ["crimson", "darkorange", "purple", "teal"]  # one per calibration delta
CRF_LABELS = {"crf_exact": "CRF (exact MAC count)", "crf_paper": "CRF (paper block count)"}


def _valid(points: pd.DataFrame) -> pd.Series:
    return points["valid"].fillna(True).astype(bool) if "valid" in points else pd.Series(True, points.index)


def plot_task(grid: pd.DataFrame, backbone: str, task: str, crf: str = "crf_exact") -> plt.Figure:
    """The figure for one backbone and task from the tidy grid table."""
    points = grid[(grid["backbone"] == backbone) & (grid["task"] == task)]
    if points.empty:
        raise ValueError(f"no grid points for backbone {backbone!r} and task {task!r}")
    metrics = [m for m in HEADLINE_METRICS.get(task, []) if m in points and points[m].notna().any()]
    if not metrics:
        raise ValueError(f"no headline metric of task {task!r} in the records (columns: {list(points.columns)})")
    exits = points[points["method"] == "early_exit"]
    norm = Normalize(vmin=exits["threshold"].min() if len(exits) else 0.0,
                     vmax=exits["threshold"].max() if len(exits) else 1.0)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.6), squeeze=False)
    markers = {key: MARKERS[i % len(MARKERS)] for i, key in enumerate(sorted(set(zip(exits["head"], exits["policy"]))))}
    calibrated = points[points["method"] == "calibrated"]
    if len(calibrated):  # legend order: head, policy, delta
        calibrated = calibrated.sort_values(["head", "policy", "calibration.delta"])
    deltas = sorted(calibrated["calibration.delta"].unique()) if len(calibrated) else []
    for ax, metric in zip(axes[0], metrics):
        for (head, policy), series in exits.groupby(["head", "policy"], sort=True):
            series = series.sort_values(crf)
            marker, ok = markers[(head, policy)], _valid(series)
            ax.plot(series[crf], series[metric], color="0.6", lw=1, zorder=1)
            colours = cmap(norm(series["threshold"].to_numpy()))
            ax.scatter(series[crf][ok], series[metric][ok], c=colours[ok.to_numpy()], marker=marker, s=46,
                       edgecolors="black", linewidths=0.5, zorder=3, label=f"{head} / {policy}")
            ax.scatter(series[crf][~ok], series[metric][~ok], facecolors="none", marker=marker, s=46,
                       edgecolors=colours[~ok.to_numpy()], linewidths=1.2, zorder=3)
        for method, colour, marker in PRUNING_STYLES:
            pruning = points[points["method"] == method].sort_values(crf)
            if not len(pruning):
                continue
            ok = _valid(pruning)
            ax.plot(pruning[crf], pruning[metric], "--", color=colour, lw=1.2, zorder=2)
            ax.scatter(pruning[crf][ok], pruning[metric][ok], c=colour, marker=marker, s=40, zorder=3,
                       label=SERIES_NAMES[method])
            ax.scatter(pruning[crf][~ok], pruning[metric][~ok], facecolors="none", edgecolors=colour,
                       marker=marker, s=40, zorder=3)
        for _, row in calibrated.iterrows():  # its head / policy's marker, ringed in its delta's colour
            ax.scatter([row[crf]], [row[metric]], marker=markers.get((row["head"], row["policy"]), "o"), s=150,
                       facecolors="none", linewidths=2, zorder=4, label=series_name(row),
                       edgecolors=CALIBRATED_COLOURS[deltas.index(row["calibration.delta"]) % len(CALIBRATED_COLOURS)])
        baseline = points[points["method"] == "baseline"]
        if len(baseline):
            ax.scatter(baseline[crf], baseline[metric], c="red", marker="*", s=160, zorder=4,
                       edgecolors="black", linewidths=0.5, label="full model")
        invalid = points[~_valid(points)]
        if len(invalid):
            ax.scatter(invalid[crf], invalid[metric], c="red", marker="x", s=70, zorder=5,
                       label="invalid (degenerate)")
        ax.set_xlabel(CRF_LABELS.get(crf, crf))
        ax.set_ylabel(metric)
        ax.set_title(f"{backbone}: {task} ({metric})")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    if len(exits):
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), label="threshold")
    return fig


def save_figure(fig: plt.Figure, paths: list[str | Path]) -> None:
    """Write the figure in each format given by the paths' suffixes (png, pdf, svg)."""
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)
