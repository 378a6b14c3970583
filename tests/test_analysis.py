"""Tables and figures from run records: identity from paths, tidy rows, Pareto frontier, figure files."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workflow_lib.analysis.tables import grid_point, grid_table, pareto_table, series_name

REPO = Path(__file__).resolve().parents[1]


def write_record(root: Path, rel: str, metric: float, crf: float, tps: float = 100.0, valid: bool = True,
                 metric_name: str = "exact_match,remove_whitespace") -> Path:
    path = root / rel / "record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    base, _, filt = metric_name.partition(",")
    stderr = f"{base}_stderr,{filt}" if filt else f"{base}_stderr"  # lm-eval's spelling
    record = {"metrics": {metric_name: metric, stderr: 0.1}, "crf_exact": crf,
              "crf_paper": crf * 1.1, "valid": valid, "degenerate": {"share": 0.0 if valid else 0.9},
              "speed": {"decode_tokens_per_second": tps}, "n_samples": 10, "provenance": {"seed": 0}}
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def records(tmp_path):
    root = tmp_path / "results" / "eval"
    paths = [
        write_record(root, "mistral/baseline/task~triviaqa", 0.80, 1.0, tps=100.0),
        write_record(root, "mistral/prune~1/task~triviaqa", 0.50, 1.2, tps=120.0),
        write_record(root, "mistral/prune~2/task~triviaqa", 0.20, 1.5, tps=150.0),
        write_record(root, "mistral/prune_angular~2/task~triviaqa", 0.30, 1.5, tps=150.0),
        write_record(root, "mistral/head~calm/policy~copy/task~triviaqa/threshold~0.9", 0.79, 1.1, tps=105.0),
        write_record(root, "mistral/head~calm/policy~copy/task~triviaqa/threshold~0.5", 0.60, 1.4, tps=130.0),
        write_record(root, "mistral/head~calm/policy~copy/task~triviaqa/threshold~0.2", 0.90, 2.0, valid=False),
        write_record(root, "mistral/head~mamba/policy~recompute/task~triviaqa/threshold~0.5", 0.55, 1.3),
        write_record(root, "mistral/oracle/policy~copy/task~triviaqa", 0.78, 1.6),
    ]
    return root, paths


def test_grid_point_reads_identity_from_path(tmp_path):
    root = tmp_path / "eval"
    exit_point = grid_point(root / "m/head~ffn/policy~copy_prev/task~coqa/threshold~0.45/record.json", root)
    assert exit_point == {"backbone": "m", "method": "early_exit", "head": "ffn", "policy": "copy_prev",
                          "emission": "last_block", "task": "coqa", "threshold": 0.45, "prune": 0, "max_draft": None}
    lens = grid_point(root / "m/head~ffn/emission~lens/policy~copy/task~coqa/threshold~0.45/record.json", root)
    assert (lens["head"], lens["emission"], lens["policy"]) == ("ffn", "lens", "copy")
    assert series_name(pd.Series({**lens, "method": "early_exit"})) == "ffn / copy / lens"
    assert series_name(pd.Series(exit_point)) == "ffn / copy_prev"  # the default rule's names stay as they were
    translated = grid_point(root / "m/oracle/emission~translator/policy~skip/task~coqa/record.json", root)
    assert series_name(pd.Series(translated)) == "oracle / skip / translator"
    assert grid_point(root / "m/prune~3/task~coqa/record.json", root)["prune"] == 3
    angular = grid_point(root / "m/prune_angular~3/task~coqa/record.json", root)
    assert angular["method"] == "prune_angular" and angular["prune"] == 3
    assert grid_point(root / "m/baseline/task~coqa/record.json", root)["method"] == "baseline"
    oracle = grid_point(root / "m/oracle/policy~skip/task~coqa/record.json", root)
    assert (oracle["method"], oracle["policy"], oracle["head"]) == ("oracle", "skip", None)
    speculative = grid_point(root / "m/head~calm/emission~translator/policy~recompute/speculative~4/task~coqa/"
                                    "threshold~0.8/record.json", root)
    assert (speculative["method"], speculative["max_draft"], speculative["threshold"]) == ("speculative", 4, 0.8)
    assert series_name(pd.Series(speculative)) == "calm / recompute / translator speculative k=4"
    with pytest.raises(ValueError, match="unexpected path component"):
        grid_point(root / "m/bogus~1/task~coqa/record.json", root)


def test_grid_table_one_row_per_point(records):
    root, paths = records
    grid = grid_table(paths, root)
    assert len(grid) == len(paths)
    assert list(grid.columns[:9]) == ["backbone", "method", "head", "policy", "emission", "task", "threshold", "prune",
                                      "exact_match"]
    assert set(grid["emission"]) == {"last_block"}  # records under the default rule's paths
    assert "exact_match_stderr" not in grid and "provenance.seed" not in grid
    exit_row = grid[(grid["head"] == "calm") & (grid["threshold"] == 0.5)].iloc[0]
    assert exit_row["exact_match"] == pytest.approx(0.60)
    assert exit_row["speedup_indicative"] == pytest.approx(1.3)  # 130 tokens/s against the baseline's 100
    assert grid["degenerate.share"].notna().all()


def test_pareto_keeps_only_undominated_valid_points(records):
    root, paths = records
    pareto = pareto_table(grid_table(paths, root))
    front = list(zip(pareto["crf"], pareto["value"], pareto["series"]))
    # The invalid (0.90 at CRF 2.0) point would dominate everything; it must not count.
    assert front == [(1.0, 0.80, "full model"), (1.1, 0.79, "calm / copy"), (1.4, 0.60, "calm / copy"),
                     (1.5, 0.30, "pruning (angular)")]
    assert (pareto["task"] == "triviaqa").all() and (pareto["metric"] == "exact_match").all()


def test_entry_points_write_tables_and_figures(records, tmp_path):
    root, paths = records
    grid, pareto, no_loss, versus, rules = (tmp_path / "tables" / f"{n}.csv"
                                            for n in ("grid", "pareto", "no_loss", "versus", "rules"))
    subprocess.run([sys.executable, "-m", "workflow_lib.cli.make_tables", "--records", *map(str, paths),
                    "--results-root", str(root), "--grid", str(grid), "--pareto", str(pareto), "--no-loss",
                    str(no_loss), "--versus-pruning", str(versus), "--versus-rule", str(rules)], check=True)
    assert len(pd.read_csv(grid)) == len(paths)
    assert pd.read_csv(versus).empty and pd.read_csv(rules).empty  # no per-question scores; one emission rule
    assert list(pd.read_csv(no_loss).columns)[:4] == ["backbone", "task", "metric", "series"]
    figures = [tmp_path / "fig" / "triviaqa.png", tmp_path / "fig" / "triviaqa.pdf"]
    subprocess.run([sys.executable, "-m", "workflow_lib.cli.make_figures", "--grid", str(grid), "--backbone",
                    "mistral", "--task", "triviaqa", "--crf", "paper", "--out", *map(str, figures)], check=True)
    assert figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures[1].read_bytes()[:5] == b"%PDF-"
    assert not list((tmp_path / "fig").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_figure_without_pruning_points(records, tmp_path):
    """prune: [] (the schema's default) leaves the figures without a layer-pruning series."""
    from workflow_lib.analysis.figures import plot_task

    root, paths = records
    fig = plot_task(grid_table([p for p in paths if "prune~" not in str(p)], root), "mistral", "triviaqa")
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert "layer pruning" not in legend and {"full model (exits off)", "oracle, copy"} <= legend
    for ax in fig.axes:  # a head-free series, like the full model, on every head's panel
        assert "pruning (angular)" in ax.get_legend_handles_labels()[1]


def test_figure_errors_name_the_missing_point(records, tmp_path):
    root, paths = records
    grid = tmp_path / "grid.csv"
    grid_table(paths, root).to_csv(grid, index=False)
    result = subprocess.run([sys.executable, "-m", "workflow_lib.cli.make_figures", "--grid", str(grid), "--backbone",
                             "mamba2", "--task", "triviaqa", "--out", str(tmp_path / "x.png")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "no grid points for backbone 'mamba2'" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_figure_heads_filter_keeps_only_those_heads(records, tmp_path, monkeypatch):
    import workflow_lib.cli.make_figures as make_figures

    root, paths = records
    grid = tmp_path / "grid.csv"
    grid_table(paths, root).to_csv(grid, index=False)
    drawn = []
    monkeypatch.setattr(make_figures, "save_figure", lambda fig, out: drawn.append(fig))
    args = ["--grid", str(grid), "--backbone", "mistral", "--task", "triviaqa", "--out", str(tmp_path / "x.png")]
    make_figures.main(args)
    make_figures.main([*args, "--heads", "calm"])
    (every, every_legend), (calm, calm_legend) = (({ax.get_title() for ax in fig.axes},
                                                   {t.get_text() for t in fig.legends[0].get_texts()}) for fig in drawn)
    assert every == {"head: calm", "head: mamba"} and calm == {"head: calm"}  # one panel per head
    assert {"layer pruning", "full model (exits off)", "oracle, copy"} <= calm_legend  # the references stay
    assert every_legend - calm_legend == {"early exit, recompute (thresholds)"}  # only mamba ran recompute
    with pytest.raises(SystemExit, match="--heads: no grid points of head ffn"):
        make_figures.main([*args, "--heads", "calm,ffn"])


def test_analysis_does_not_import_torch():
    code = ("import sys, workflow_lib.analysis.tables, workflow_lib.analysis.figures, "
            "workflow_lib.analysis.results_page, workflow_lib.cli.make_tables, workflow_lib.cli.make_figures, "
            "workflow_lib.cli.results_page; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def write_samples(record: Path, answers: list[str], em: list[float]) -> None:
    lines = [{"doc_id": i, "resps": [[f" {a}\n"]], "exact_match": e} for i, (a, e) in enumerate(zip(answers, em))]
    record.with_name("samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_calibrated_points_carry_their_threshold_and_measured_risk(tmp_path):
    """Inconsistency: the share of questions whose stripped answer differs from the full model's; a calibrated point's
    measured risk is the one it was calibrated for (consistency, or the metric drop), next to its delta."""
    root = tmp_path / "eval"
    cell = "mistral/head~calm/policy~copy/task~triviaqa"
    base = write_record(root, "mistral/baseline/task~triviaqa", 0.5, 1.0)
    write_samples(base, ["Holt", "red", "a mason", "Brora"], [1, 1, 0, 0])
    paths = [base]
    for delta, risk, answers, em, crf in ((0.05, "consistency", ["Holt", "red", "a mason", "Bro"], [1, 1, 0, 0], 1.2),
                                          (0.1, "metric", ["Holt", "blue", "a maso", "Brora"], [1, 0, 1, 0], 1.4)):
        path = write_record(root, f"{cell}/calibrated~{delta}", sum(em) / 4, crf)
        record = json.loads(path.read_text())
        record.update(threshold=0.8, calibration={"delta": delta, "epsilon": 0.05, "risk": risk,
                                                  "metric": "exact_match" if risk == "metric" else None})
        path.write_text(json.dumps(record))
        write_samples(path, answers, em)
        paths.append(path)
    grid = grid_table(paths, root)
    cal = grid[grid["method"] == "calibrated"].set_index("calibration.delta")
    assert list(cal["threshold"]) == [0.8, 0.8] and list(cal["inconsistency"]) == [0.25, 0.5]
    assert cal.loc[0.05, "measured_risk"] == 0.25  # 1 of 4 answers differs
    assert cal.loc[0.1, "measured_risk"] == 0.25  # exact match lost on 1 of 4 (a gain elsewhere does not offset it)
    assert sorted(grid.apply(series_name, axis=1)) == ["calm / copy calibrated delta=0.05",
                                                       "calm / copy calibrated delta=0.1", "full model"]
    from workflow_lib.analysis.figures import plot_task
    figure = plot_task(grid, "mistral", "triviaqa")
    assert [ax.get_title() for ax in figure.axes] == ["head: calm"]  # calibrated points are their head's
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "calibrated, copy, delta=0.05" in labels and "calibrated, copy, delta=0.1" in labels


def test_rows_say_which_run_made_them(tmp_path):
    """A grid row carries its record's run (a key of commit, seed and package versions, and the three); a derived row
    the run of each point it reads, joined where they differ; early_exit_share comes from the exit histogram."""
    from workflow_lib.analysis.runs import run_columns
    from workflow_lib.analysis.tables import no_loss_table, versus_pruning_table

    root = tmp_path / "eval"
    made = {"a": {"git_commit": "aaa", "seed": 3, "packages": {"python": "3.11.7", "torch": "2.13.0", "x": None}},
            "b": {"git_commit": "bbb+dirty", "seed": 3, "packages": {"python": "3.11.7", "torch": "2.13.0"}}}
    paths = []
    for rel, em, crf, run in (("m/baseline/task~triviaqa", [1, 1, 0, 0], 1.0, "a"),
                              ("m/prune~1/task~triviaqa", [0, 0, 0, 0], 1.2, "a"),
                              ("m/head~calm/policy~copy/task~triviaqa/threshold~0.5", [1, 1, 0, 0], 1.3, "b")):
        path = write_record(root, rel, sum(em) / 4, crf)
        record = json.loads(path.read_text())
        record.update(provenance=made[run], n_layers=6, exit_histogram={"2": 3, "5": 1})
        path.write_text(json.dumps(record))
        write_samples(path, ["x"] * 4, em)
        paths.append(path)
    grid = grid_table(paths, root, resamples=200)
    keys = {name: run_columns(p)["run"] for name, p in made.items()}
    assert list(grid.columns[-4:]) == ["run", "git_commit", "seed", "packages"]
    assert list(grid["run"]) == [keys["a"], keys["b"], keys["a"]]  # sorted: baseline, early exit, prune
    assert grid["packages"].iloc[0] == "python=3.11.7 torch=2.13.0" and grid["git_commit"].iloc[1] == "bbb+dirty"
    in_memory = {**made["a"], "packages": dict(reversed(made["a"]["packages"].items()))}  # records store them sorted
    assert len(set(keys.values())) == 2 and run_columns(in_memory)["run"] == keys["a"]  # one run, one key
    assert (grid["early_exit_share"] == 0.75).all()
    assert no_loss_table(grid).set_index("series").loc["calm / copy", "run"] == keys["b"]
    (versus,) = versus_pruning_table(grid, root, resamples=200)["run"]
    assert versus == "+".join(sorted(keys.values()))
