"""Paper-style figures (Fig. 1-5): task metric versus CRF for one backbone and one task (matplotlib; no torch).

One panel per (headline metric, head): rows are the task's metrics, columns the heads, so that no panel holds
more than a handful of series. In a head's panel each missing-state policy is one colour, a line through its
thresholds with the 95% bootstrap interval as a vertical bar; the oracle bound of the same policy is a diamond
of the same colour (a thin diamond under the translator, an octagon under lens), and a calibrated threshold (python -m workflow_lib.cli.calibrate) is a large marker of its policy's
colour, one shape per calibration delta. Emission rules other than the paper's last_block (lens, translator) are
series of their own beside it: the policy's colour, a dashed (lens) or dotted (translator) line, the rule in the
label ("recompute / translator"). Untrained heads (softmax, saturation) are heads: their own
columns. Every panel repeats the references: the full model (red star at CRF 1, its interval as a grey band across
the panel) and layer pruning (black squares on a dashed line, with intervals); any other head-free series (pruning
(angular): the blocks chosen by angular distance) gets its own grey style. Invalid points (too many degenerate
generations) are drawn hollow instead of being dropped.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib.analysis.tables import HEADLINE_METRICS, emission_suffix, series_name  # noqa: E402
from workflow_lib.artifacts import atomic_path  # noqa: E402

POLICY_COLOURS = {"recompute": "tab:blue", "copy": "tab:orange", "copy_prev": "tab:green", "skip": "tab:purple"}
EMISSION_LINES = {"last_block": "-", "lens": "--", "translator": ":"}  # emission rules: line style, marker
EMISSION_MARKERS = {"last_block": "o", "lens": "^", "translator": "s"}
ORACLE_MARKERS = {"last_block": "D", "lens": "8", "translator": "d"}  # the oracle per rule: tell the bounds apart
OTHER_STYLES = [("0.45", "v", ":"), ("0.3", "^", "-."), ("0.6", "P", (0, (3, 1, 1, 1)))]  # extra head-free series
CALIBRATED_MARKERS = ["h", "X", "p", "*"]  # one per calibration delta
CRF_LABELS = {"crf_exact": "CRF (exact MAC count)", "crf_paper": "CRF (paper block count)"}


def _valid(points: pd.DataFrame) -> pd.Series:
    return points["valid"].fillna(True).astype(bool) if "valid" in points else pd.Series(True, points.index)


def _errors(points: pd.DataFrame, metric: str):
    """Asymmetric error bars (2, n) from the interval columns, or None when the table has none."""
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in points or high not in points or points[low].isna().all():
        return None
    return [(points[metric] - points[low]).clip(lower=0).fillna(0).to_numpy(),
            (points[high] - points[metric]).clip(lower=0).fillna(0).to_numpy()]


def _series(ax, points: pd.DataFrame, crf: str, metric: str, colour, marker: str, line, label: str,
            size: float = 5.5) -> None:
    """One series: line through its points by CRF, interval bars, filled markers (hollow when invalid)."""
    points = points.dropna(subset=[crf, metric]).sort_values(crf)
    if points.empty:
        return
    ok = _valid(points).to_numpy()
    if line is not None:
        ax.plot(points[crf], points[metric], color=colour, ls=line, lw=1.2, zorder=2)
    errors = _errors(points, metric)
    ax.errorbar(points[crf], points[metric], yerr=errors, fmt="none", ecolor=colour, elinewidth=0.8, capsize=2,
                alpha=0.7, zorder=2)
    ax.plot(points[crf][ok], points[metric][ok], ls="none", marker=marker, ms=size, color=colour, mec="black",
            mew=0.4, zorder=3, label=label)
    if (~ok).any():
        ax.plot(points[crf][~ok], points[metric][~ok], ls="none", marker=marker, ms=size, mfc="none", mec=colour,
                mew=1.2, zorder=3, label=f"{label} (invalid: degenerate)")


def plot_task(grid: pd.DataFrame, backbone: str, task: str, crf: str = "crf_exact",
              heads: list[str] | None = None) -> plt.Figure:
    """The figure for one backbone and task from the tidy grid table (`heads`: the head columns, default all)."""
    points = grid[(grid["backbone"] == backbone) & (grid["task"] == task)]
    if points.empty:
        raise ValueError(f"no grid points for backbone {backbone!r} and task {task!r}")
    metrics = [m for m in HEADLINE_METRICS.get(task, []) if m in points and points[m].notna().any()]
    if not metrics:
        raise ValueError(f"no headline metric of task {task!r} in the records (columns: {list(points.columns)})")
    exits = points[points["method"] == "early_exit"]
    known = sorted(points.loc[points["method"].isin(["early_exit", "calibrated"]), "head"].dropna().unique())
    heads = heads or known
    missing = [h for h in heads if h not in known]
    if missing:
        raise ValueError(f"no early-exit points of head(s) {missing} for {backbone} / {task}; there are: {known}")
    baseline = points[points["method"] == "baseline"]
    oracle = points[points["method"] == "oracle"]
    calibrated = points[points["method"] == "calibrated"]
    deltas = sorted(calibrated["calibration.delta"].unique()) if len(calibrated) else []
    # the head-free series on every panel: the pruning; the speculative points, the full model's answers at a CRF in
    # MACs that says nothing of their time, are in the tables (speculation.paired_speedup) instead
    shared = points[~points["method"].isin(["early_exit", "baseline", "oracle", "calibrated", "speculative"])]
    # Head-free series by name; apply() on no rows gives a DataFrame, which groupby refuses (no pruning configured).
    shared = list(shared.groupby(shared.apply(series_name, axis=1), sort=True)) if len(shared) else []
    n = int(baseline["n_samples"].iloc[0]) if len(baseline) and "n_samples" in baseline else None

    fig, axes = plt.subplots(len(metrics), max(1, len(heads)), figsize=(4.3 * max(1, len(heads)), 3.5 * len(metrics)),
                             squeeze=False, sharex=True, sharey="row")
    for r, metric in enumerate(metrics):
        for c, head in enumerate(heads or [None]):
            ax = axes[r][c]
            if len(baseline):
                base = baseline.iloc[0]
                low, high = base.get(f"{metric}_ci_low"), base.get(f"{metric}_ci_high")
                if pd.notna(low) and pd.notna(high):
                    ax.axhspan(low, high, color="0.85", zorder=0, label="full model, 95% interval")
                ax.plot([base[crf]], [base[metric]], ls="none", marker="*", ms=13, color="red", mec="black",
                        mew=0.5, zorder=4, label="full model (exits off)")
            for i, (name, series) in enumerate(shared):
                colour, marker, line = ("black", "s", "--") if name == "layer pruning" else OTHER_STYLES[i % 3]
                _series(ax, series, crf, metric, colour, marker, line, name)
            # emission rules side by side: a policy's colour, the rule's line style and marker
            for (policy, rule), series in exits[exits["head"] == head].groupby(["policy", "emission"], sort=True):
                _series(ax, series, crf, metric, POLICY_COLOURS.get(policy, "tab:gray"), EMISSION_MARKERS.get(rule, "o"),
                        EMISSION_LINES.get(rule, "-"), f"early exit, {policy}{emission_suffix(rule)} (thresholds)")
            mine = calibrated[calibrated["head"] == head]  # no calibrated point: no calibration.delta column either
            for (policy, rule, delta), series in (mine.groupby(["policy", "emission", "calibration.delta"], sort=True)
                                                  if len(mine) else []):
                _series(ax, series, crf, metric, POLICY_COLOURS.get(policy, "tab:gray"),
                        CALIBRATED_MARKERS[deltas.index(delta) % len(CALIBRATED_MARKERS)], None,
                        f"calibrated, {policy}{emission_suffix(rule)}, delta={delta:g}", size=10)
            for (policy, rule), series in oracle.groupby(["policy", "emission"], sort=True):
                _series(ax, series, crf, metric, POLICY_COLOURS.get(policy, "tab:gray"), ORACLE_MARKERS.get(rule, "D"),
                        None, f"oracle, {policy}{emission_suffix(rule)}", size=7 if rule == "last_block" else 9)
            ax.set_title(f"head: {head}" if head else task, fontsize=10)
            ax.grid(alpha=0.3)
            if r == len(metrics) - 1:
                ax.set_xlabel(CRF_LABELS.get(crf, crf))
            if c == 0:
                ax.set_ylabel(metric)
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(f"{backbone}: {task}" + (f" (n = {n} questions; bars: 95% bootstrap intervals)" if n else ""),
                 fontsize=11)
    fig.tight_layout()
    # below the axes, outside them: the saved bounding box grows to hold it, whatever the number of rows
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(5, len(handles)), fontsize=8,
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    return fig


def save_figure(fig: plt.Figure, paths: list[str | Path]) -> None:
    """Write the figure in each format given by the paths' suffixes (png, pdf, svg)."""
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)
