"""Results pages generated from committed files (analysis/results_page.py, page_blocks.py, timings.py; rule
results_page): the committed pages are what their files make (the drift test), a page made from a run (copies,
timings.csv from benchmark files, manifest.json, blocks and values rewritten), and the pipeline target."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workflow_lib.analysis.page_blocks import duration, widen
from workflow_lib.analysis.results_page import PageError, check, collect, load_spec, loose_numbers, render
from workflow_lib.analysis.runs import run_columns
from workflow_lib.analysis.timings import OTHER, TOTAL, benchmark_jobs, pattern_regex, rule_of
from workflow_lib.cli import results_page

REPO = Path(__file__).resolve().parents[1]
# Every page under docs/results (each needs its folder's page.yaml), and the repository README.
PAGES = [(p.relative_to(REPO).as_posix(), None) for p in sorted((REPO / "docs/results").glob("*.md"))
         if p.name != "README.md"] + [("README.md", "docs/results/readme.yaml")]


@pytest.mark.parametrize("page, spec", PAGES, ids=[p for p, _ in PAGES])
def test_committed_pages_are_what_their_files_make(page, spec):
    """Every generated block and value equals what the generator makes from the committed files, and the prose
    quotes no measurement of its own (python -m workflow_lib.cli.results_page --page PAGE rewrites a page)."""
    problems = check(REPO / page, REPO / spec if spec else None)
    assert not problems, "\n".join(problems)


def copy_page(tmp_path: Path) -> Path:
    """The committed emission-rules page and its folder, in tmp_path."""
    page = tmp_path / "emission-rules.md"
    shutil.copy(REPO / "docs/results/emission-rules.md", page)
    shutil.copytree(REPO / "docs/results/emission-rules", tmp_path / "emission-rules")
    return page


def test_a_hand_edited_cell_a_typed_number_or_a_changed_file_fails_the_check(tmp_path):
    page = copy_page(tmp_path)
    assert check(page) == []
    text = page.read_text()
    edited = text.replace("| Mistral | CoQA | 1.330 | 1.607 | 1.603 |", "| Mistral | CoQA | 1.331 | 1.607 | 1.603 |")
    assert edited != text
    page.write_text(edited)
    (line,) = check(page)
    assert "generated text differs" in line and "1.331" in line and "1.330" in line
    page.write_text(text.replace("which is a sixth of", "which is 16.7% (2,275 s, 1.3x) of"))
    assert [p.split(": ", 1)[1].split(" is ")[0] for p in check(page)] == ["16.7%", "2,275 s", "1.3x"]
    page.write_text(text)
    no_loss = tmp_path / "emission-rules" / "no_loss.csv"
    table = pd.read_csv(no_loss)
    table.loc[(table.series == "oracle / recompute") & (table.backbone == "mistral"), "crf_exact"] = 1.5
    table.to_csv(no_loss, index=False)
    assert any("1.500" in p for p in check(page))


def test_loose_numbers_leave_code_integers_versions_and_constants_alone():
    text = ("Block 14 of 30, 2 shots, torch 2.13.0, top-1, `0.5 s` in code, [link](a/1.5.md), 95% intervals.\n"
            "<!-- value: v -->1.274<!-- /value --> then 1.28 and 53 min, 84%, 16,384 tokens, 1.33x, 7 s\n"
            "<!-- generated: b -->\n| 0.333 |\n<!-- /generated -->\n")
    assert loose_numbers(text, {"95%": "a setting"}) == ["2: 1.28", "2: 53 min", "2: 84%", "2: 16,384", "2: 1.33x",
                                                         "2: 7 s"]


def test_widen_levels_make_a_task_the_run_did_not_evaluate_an_empty_column():
    table = pd.DataFrame({"series": ["a", "a"], "task": ["triviaqa", "truthfulqa"], "crf": [1.1, 1.2]})
    spec = {"index": ["series"], "columns": "task", "values": ["crf"]}
    assert list(widen(table, spec).columns) == ["series", "crf_triviaqa", "crf_truthfulqa"]
    wide = widen(table, spec | {"levels": ["triviaqa", "coqa", "truthfulqa"]})
    assert wide.loc[0, "crf_truthfulqa"] == 1.2 and wide.loc[0, "crf_coqa"] is None


def test_duration():
    assert [duration(s) for s in (58.2, 2275, 3840, 7199)] == ["58 s", "37 min 55 s", "1 h 04 min", "1 h 59 min"]


# ---- a page made from a run -------------------------------------------------------------------------------------
PAGE = """# A page

<!-- generated: provenance -->
<!-- /generated -->

<!-- generated: best -->
old
<!-- /generated -->

The oracle reaches <!-- value: oracle -->?<!-- /value --> over <!-- value: points -->?<!-- /value --> points.

<!-- generated: timings -->
<!-- /generated -->

<!-- generated: figures -->
<!-- /generated -->

<!-- generated: later -->
<!-- /generated -->

<!-- generated: speed -->
<!-- /generated -->

<!-- generated: ideal -->
<!-- /generated -->
"""
SPEC = """
labels: {task: {coqa: CoQA, triviaqa: TriviaQA}}
order: {task: [triviaqa, coqa]}
keep: ["notes-*.txt", speed]
blocks:
  provenance: {kind: provenance}
  figures: {kind: figures}
  timings:
    csv: timings.csv
    columns: [{rule: "{rule}"}, {jobs: "{jobs}"}, {time: "{wall_seconds:duration}"}]
  best:
    csv: grid.csv
    query: "method == 'early_exit'"
    sort: [task, -crf_exact]
    unique: [task]
    columns:
      - task: "{task}"
      - series: "{series}"
      - CRF, change: "{crf_exact:.3f}, {headline_delta:+.3f}{flag}"
  later:
    csv: versus_rule.csv
    columns: [{x: "{x}"}]
  speed:
    csv: speed/coqa.json
    columns: [{task: "{task}"}, {variant: "{variant}"}, {"ms [q1]": "{ms.median:.1f} [{ms.q1:.1f}]"}]
  ideal:  # another list of the same JSON
    csv: speed/coqa.json
    records: ideal
    columns: [{task: "{task}"}, {drafts: "{drafts}"}, {speedup: "{expected_speedup:.2f}"}]
values:
  oracle: {csv: grid.csv, query: "method == 'oracle'", agg: max, column: crf_exact, format: "{value:.2f}"}
  points: {csv: grid.csv, agg: count}
"""


def grid_rows(run: dict) -> pd.DataFrame:
    rows = [
        dict(method="baseline", task="coqa", em=0.5, crf_exact=1.0, valid=True),
        dict(method="early_exit", head="calm", policy="copy", task="coqa", threshold=0.9, em=0.5, em_delta=0.0,
             crf_exact=1.1, valid=True),
        dict(method="early_exit", head="calm", policy="copy", task="coqa", threshold=0.5, em=0.3, em_delta=-0.2,
             crf_exact=1.6, valid=False),
        dict(method="early_exit", head="calm", policy="copy", task="triviaqa", threshold=0.5, exact_match=0.4,
             exact_match_delta=-0.1, crf_exact=1.3, valid=True),
        dict(method="oracle", policy="copy", task="coqa", em=0.5, crf_exact=1.912, valid=True),
    ]
    return pd.DataFrame([{"backbone": "m", "emission": "last_block", "prune": 0, **r, **run} for r in rows])


def write_benchmark(path: Path, seconds: float, end: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{seconds}\t0:00:01\t10\t{seconds / 2}\n")
    os.utime(path, (end, end))


@pytest.fixture
def run(tmp_path):
    """A finished run's tables, figures and benchmark files, and a page with its spec and an earlier run's files."""
    made = run_columns({"git_commit": "abc123", "seed": 7, "packages": {"python": "3.11.7", "torch": "2.13.0"}})
    tables = tmp_path / "results" / "tables"
    tables.mkdir(parents=True)
    grid_rows(made).to_csv(tables / "grid.csv", index=False)
    pd.DataFrame({"task": ["coqa"], "series": ["calm / copy"], "crf_exact": [1.1], "run": [made["run"]]}).to_csv(
        tables / "no_loss.csv", index=False)
    figures = tmp_path / "results" / "figures"
    (figures / "m").mkdir(parents=True)
    (figures / "m" / "coqa.png").write_bytes(b"png")
    (figures / "m" / "coqa.pdf").write_bytes(b"pdf")
    bench = tmp_path / "results" / "benchmarks"
    write_benchmark(bench / "evaluate" / "m" / "calm" / "copy" / "coqa.tsv", 100.0, 1000.0)
    write_benchmark(bench / "evaluate" / "m" / "oracle" / "copy" / "coqa.tsv", 50.0, 1200.0)
    write_benchmark(bench / "tables.tsv", 5.0, 1300.0)
    write_benchmark(bench / "stale" / "gone.tsv", 1.0, 1250.0)
    write_benchmark(bench / "results_page.tsv", 9.0, 1400.0)
    patterns = {"evaluate_exits": "results/benchmarks/evaluate/{backbone,m}/{head,[A-Za-z0-9_]+}/{policy,[a-z_]+}/"
                                  "{task,coqa|triviaqa}.tsv",
                "evaluate_oracle": "results/benchmarks/evaluate/{backbone,m}/{oracle,oracle}/{policy,[a-z_]+}/"
                                   "{task,coqa|triviaqa}.tsv",
                "tables": "results/benchmarks/tables.tsv"}
    page = tmp_path / "docs" / "page.md"
    folder = tmp_path / "docs" / "page"
    folder.mkdir(parents=True)
    page.write_text(PAGE)
    (folder / "page.yaml").write_text(SPEC)
    (folder / "old.csv").write_text("a\n1\n")  # an earlier run's table: goes
    (folder / "notes-1.txt").write_text("kept")  # named by keep: stays
    (folder / "speed").mkdir()  # a kept folder: a benchmark's JSON, its rows with its scalar fields beside
    (folder / "speed" / "coqa.json").write_text(json.dumps(
        {"benchmark": "speculative", "task": "coqa", "environment": {"torch_threads": 2},
         "rows": [{"variant": "exits_off", "ms": {"median": 20.0, "q1": 19.5}},
                  {"variant": "spec@0.9/4/full", "ms": {"median": 15.0, "q1": 14.25}}],
         "ideal": [{"drafts": 2, "expected_speedup": 1.25}]}))
    config = tmp_path / "run.yaml"
    config.write_text("seed: 7\n")
    return tmp_path, made, patterns, page, folder, config


def test_a_page_made_from_a_run(run, monkeypatch):
    root, made, patterns, page, folder, config = run
    monkeypatch.chdir(root)
    tables = sorted(Path("results/tables").glob("*.csv"))
    figures = sorted(Path("results/figures").rglob("*.*"))
    text = collect(Path("docs/page.md"), tables, figures, Path("results/figures"), Path("results/benchmarks"),
                   patterns, [Path("run.yaml")], ("results/benchmarks/results_page.tsv",))
    assert page.read_text() == text
    assert sorted(p.name for p in folder.iterdir()) == ["grid.csv", "m-coqa.png", "manifest.json", "no_loss.csv",
                                                        "notes-1.txt", "page.yaml", "speed", "timings.csv"]
    timings = pd.read_csv(folder / "timings.csv").set_index("rule")
    assert timings.loc["evaluate_exits", "jobs"] == 1 and timings.loc["evaluate_oracle", "wall_seconds"] == 50
    assert timings.loc[OTHER, "jobs"] == 1 and "results_page" not in timings.index
    assert timings.loc[TOTAL, "jobs"] == 4 and timings.loc[TOTAL, "wall_seconds"] == 156
    assert timings.loc[TOTAL, "elapsed_seconds"] == 1300 - 900  # the first job started at 1000 - 100
    assert timings.loc[TOTAL, "cpu_seconds"] == 78
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["command"] == "snakemake --cores all --configfile run.yaml"
    assert manifest["configfiles"][0]["sha256"] == __import__("hashlib").sha256(b"seed: 7\n").hexdigest()
    assert manifest["runs"] == {made["run"]: {"git_commit": "abc123", "seed": 7, "rows": 5,
                                              "packages": "python=3.11.7 torch=2.13.0"}}
    assert set(manifest["files"]) == {"grid.csv", "no_loss.csv", "m-coqa.png", "timings.csv", "notes-1.txt"}
    assert f"**Run `{made['run']}`** (5 rows of the tables): commit `abc123`, seed 7" in text
    assert "- **Time:** 4 jobs, 6 min 40 s from the first job's start" in text
    # the best point per task, invalid ones flagged; TriviaQA first (the spec's order), labels applied
    assert ("| TriviaQA | calm / copy | 1.300, -0.100 |\n"
            "| CoQA | calm / copy | 1.600, -0.200, invalid (degenerate) |") in text
    assert "The oracle reaches <!-- value: oracle -->1.91<!-- /value --> over <!-- value: points -->5<!-- /value -->" \
           in text
    assert "- [`m-coqa.png`](page/m-coqa.png)" in text
    assert "| CoQA | exits_off | 20.0 [19.5] |\n| CoQA | spec@0.9/4/full | 15.0 [14.2] |" in text
    assert "| task | drafts | speedup |\n| --- | --- | --- |\n| CoQA | 2 | 1.25 |\n" in text  # `records: ideal`
    assert "*Waiting for the run: `versus_rule.csv` is not committed beside this page yet.*" in text
    assert check(Path("docs/page.md")) == []
    grid = pd.read_csv(folder / "grid.csv")
    grid.loc[0, "run"] = "0000000000"
    grid.to_csv(folder / "grid.csv", index=False)
    problems = check(Path("docs/page.md"))
    assert any("grid.csv: differs from the run's copy" in p for p in problems)
    assert any("run 0000000000 is not in manifest.json" in p for p in problems)


def test_a_run_that_does_not_fit_the_spec_changes_nothing(run, monkeypatch):
    root, made, patterns, page, folder, config = run
    monkeypatch.chdir(root)
    (folder / "page.yaml").write_text(SPEC.replace('"{crf_exact:.3f}, ', '"{crf_exct:.3f}, '))
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(PageError, match="block best: template .*no column 'crf_exct'"):
        collect(Path("docs/page.md"), [Path("results/tables/grid.csv")], [], Path("results/figures"),
                Path("results/benchmarks"), patterns, [Path("run.yaml")])
    assert sorted(p.name for p in folder.iterdir()) == before and page.read_text() == PAGE


def test_spec_and_page_must_agree(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "page.yaml").write_text("blocks: {a: {csv: x.csv, columns: [{x: '{x}'}], colour: red}}\n")
    with pytest.raises(PageError, match="block a: unknown key colour"):
        load_spec(folder / "page.yaml")
    spec = {"blocks": {"a": {"csv": "x.csv", "columns": [{"x": "{x}"}]}}}
    with pytest.raises(PageError, match=r"marks but its spec does not declare: \['b'\]; declared but not on the page: "
                                        r"\['a'\]"):
        render("<!-- generated: b -->\n<!-- /generated -->\n", spec, folder)
    with pytest.raises(PageError, match="value v: 2 rows match where one is expected"):
        pd.DataFrame({"x": [1, 2]}).to_csv(folder / "x.csv", index=False)
        render("<!-- value: v -->1<!-- /value -->", {"values": {"v": {"csv": "x.csv", "format": "{x}"}}}, folder)
    (folder / "b.json").write_text('{"rows": []}')
    with pytest.raises(PageError, match="holds no list under 'ideal'"):
        render("<!-- generated: a -->\n<!-- /generated -->\n",
               {"blocks": {"a": {"csv": "b.json", "records": "ideal", "columns": [{"x": "{x}"}]}}}, folder)


def test_timings_patterns_pick_the_most_specific_rule():
    patterns = {"exits": pattern_regex("b/{backbone,m|n}/{head,[A-Za-z0-9_]+(/emission~(lens))?}/{policy,[a-z_]+}.tsv"),
                "oracle": pattern_regex("b/{backbone,m|n}/{oracle,oracle(/emission~(lens))?}/{policy,[a-z_]+}.tsv"),
                "prune": pattern_regex("b/{backbone}/prune~{n,[0-9]{1,2}}.tsv")}
    assert rule_of("b/m/calm/emission~lens/copy.tsv", patterns) == "exits"
    assert rule_of("b/m/oracle/emission~lens/copy.tsv", patterns) == "oracle"
    assert rule_of("b/n/prune~12.tsv", patterns) == "prune" and rule_of("b/n/prune~123.tsv", patterns) == OTHER


def test_timings_need_benchmark_files(tmp_path):
    with pytest.raises(ValueError, match="no benchmark files under"):
        benchmark_jobs(tmp_path, {})


def test_a_second_run_keeps_the_first_runs_time(run, monkeypatch):
    """A run that extends the first (one more config file) reruns the tables job, overwriting its benchmark file:
    the page job after the first run recorded that run's time, and the second one keeps it and counts its own jobs,
    those that started after the first run ended."""
    root, made, patterns, page, folder, config = run
    monkeypatch.chdir(root)
    (root / "extra.yaml").write_text("more: 1\n")
    tables = sorted(Path("results/tables").glob("*.csv"))
    args = (tables, [], Path("results/figures"), Path("results/benchmarks"), patterns)
    skip = ("results/benchmarks/results_page.tsv",)
    collect(Path("docs/page.md"), *args, [Path("run.yaml")], skip)
    first = pd.read_csv(folder / "timings.csv")
    assert set(first["run_order"]) == {1} and set(first["configfiles"]) == {"run.yaml"}
    write_benchmark(Path("results/benchmarks/evaluate/m/calm/copy/triviaqa.tsv"), 300.0, 2000.0)
    write_benchmark(Path("results/benchmarks/tables.tsv"), 7.0, 2100.0)  # the first run's tables job, overwritten
    text = collect(Path("docs/page.md"), *args, [Path("run.yaml"), Path("extra.yaml")], skip)
    both = pd.read_csv(folder / "timings.csv")
    pd.testing.assert_frame_equal(both[both["run_order"] == 1].reset_index(drop=True), first)
    second = both[both["run_order"] == 2].set_index("rule")
    assert set(second["configfiles"]) == {"run.yaml extra.yaml"}
    assert second.loc[TOTAL, "jobs"] == 2 and second.loc[TOTAL, "wall_seconds"] == 307
    assert second.loc[TOTAL, "elapsed_seconds"] == 2100 - 1700
    assert "- **Time of the run with `run.yaml`:** 4 jobs, 6 min 40 s" in text
    assert "- **Time of the run with `run.yaml extra.yaml`:** 2 jobs, 6 min 40 s" in text
    # the second run's page again: its own earlier rows are replaced, not kept; a run whose window no benchmark file
    # ends in any more (another results/, here every file rewritten later) is dropped
    collect(Path("docs/page.md"), *args, [Path("run.yaml"), Path("extra.yaml")], skip)
    assert pd.read_csv(folder / "timings.csv").equals(both)
    for path in Path("results/benchmarks").rglob("*.tsv"):
        os.utime(path, (5000.0, 5000.0))
    collect(Path("docs/page.md"), *args, [Path("run.yaml"), Path("extra.yaml")], skip)
    assert set(pd.read_csv(folder / "timings.csv")["run_order"]) == {1}


def test_cli_from_committed_files_and_its_refusals(tmp_path, capsys):
    page = copy_page(tmp_path)
    results_page.main(["--page", str(page), "--check"])
    page.write_text(page.read_text().replace("| Mamba-2 | CoQA | 1.188 |", "| Mamba-2 | CoQA | 1.1 |"))
    with pytest.raises(SystemExit, match="generated text differs"):
        results_page.main(["--page", str(page), "--check"])
    results_page.main(["--page", str(page)])
    assert "| Mamba-2 | CoQA | 1.188 |" in page.read_text()
    with pytest.raises(SystemExit) as refused:
        results_page.main(["--page", str(page), "--tables", "x.csv"])
    assert refused.value.code == 2
    assert "give --tables, --benchmarks and --configfile together" in capsys.readouterr().err


# ---- the pipeline target ----------------------------------------------------------------------------------------
def snakemake(workdir: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p",
                           "--directory", str(workdir), *args], capture_output=True, text=True)


def test_results_page_target(tmp_path):
    """The config's results_page.page names the page: the target plans one job after every table and figure, with
    every other rule's benchmark pattern; a config naming no page refuses the target, saying what to add."""
    spec = tmp_path / "docs" / "results" / "emission-rules" / "page.yaml"
    spec.parent.mkdir(parents=True)
    shutil.copy(REPO / "docs/results/emission-rules/page.yaml", spec)
    planned = snakemake(tmp_path, "results_page", "--configfile", str(REPO / "config.yaml"),
                        str(REPO / "configs/emission-rules.yaml"))
    out = planned.stdout + planned.stderr
    assert planned.returncode == 0, out
    assert "output: docs/results/emission-rules/manifest.json" in out
    assert "--page docs/results/emission-rules.md" in out and "results/tables/agreement_mamba2.csv" in out
    for part in ("heads", "reference"):
        assert (f"--rule-benchmark 'evaluate_mamba2_{part}=results/benchmarks/evaluate/mamba2/{part}/"
                "{task,triviaqa|coqa|truthfulqa}.tsv'") in out
    assert "--rule-benchmark 'results_page=" not in out
    refused = snakemake(tmp_path / "none", "results_page")
    assert refused.returncode != 0
    assert "results_page: this config names no page" in refused.stdout + refused.stderr
