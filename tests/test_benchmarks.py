"""The speculative benchmarks end to end on tiny saved backbones with random heads (benchmarks/speculative.py,
benchmarks/speculative_7b.py): they run as a user runs them, their JSON holds what the docs read, and every lossless
variant's tokens equal exits off."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_setup import save_tiny_backbone, write_task_files

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), "--threads", "1", "--repeats", "1", "--warmup",
                           "0", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    vocab = root / "vocab.json"
    vocab.write_text(json.dumps({"token_ids": list(range(0, 512, 3))}))  # every third id: some drafts leave it
    return {"root": root, "tasks": write_task_files(root / "tasks"), "vocab": vocab,
            "mistral": save_tiny_backbone(root / "mistral", "tiny-mistral"),
            "mamba2": save_tiny_backbone(root / "mamba2", "tiny-mamba2")}


@pytest.fixture(scope="module")
def batch1(setup):
    """tiny-mistral at batch size 1 with every variant: exits off, lossy, a speculative grid, generate and
    assistant_early_exit."""
    out = setup["root"] / "b1.json"
    done = run("speculative.py", "--backbone", str(setup["mistral"]), "--task", "triviaqa", "--data",
               str(setup["tasks"]["triviaqa"]), "--n-prompts", "3", "--max-new-tokens", "6", "--exit-layers", "1,2",
               "--lossy-threshold", "0.5", "--thresholds", "0.3,0.5", "--max-drafts", "2",
               "--draft-vocabs", f"none,{setup['vocab']}", "--assistant-early-exit", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(out.read_text())


def check_speculative_rows(rows: list[dict]) -> None:
    for r in rows:
        assert r["prompts_differing"] == r["tokens_differing"] == 0
        assert 0 <= r["accepted"] <= r["drafted"] <= r["verified"] and r["rejected"] == r["drafted"] - r["accepted"]
        assert sum(r["accepted_per_cycle"].values()) == r["cycles"] > 0  # cycles read back from the exit layers
        assert r["kept"] == r["tokens"] and r["tokens_per_verification"] == pytest.approx(r["kept"] / r["cycles"])
        assert r["macs_draft"] > 0 and r["macs_verify"] > 0 and r["macs_full"] > 0 and r["crf_exact_macs"] > 0
        assert r["speedup"] > 0 and r["speedup_q1"] <= r["speedup_median"] <= r["speedup_q3"]
    assert sum(r["drafted"] for r in rows) > sum(r["accepted"] for r in rows) > 0  # drafts kept and rolled back


def test_speculative_batch1_every_variant(batch1):
    _, data = batch1
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"exits_off", "lossy@0.5", "spec@0.3/2/full", "spec@0.3/2/171", "spec@0.5/2/full",
                         "spec@0.5/2/171", "exits_off_call", "generate", "aee@2", "prefill"}
    check_speculative_rows([r for r in rows.values() if r["kind"] == "speculative"])
    for name in ("exits_off_call", "generate", "aee@2"):  # whole calls, prefill included, same tokens
        assert rows[name]["timed"] == "prefill+decode" and rows[name]["prompts_differing"] == 0
    assert rows["aee@2"]["verifications"] > 0 and 0 <= rows["aee@2"]["accepted"] <= rows["aee@2"]["drafted"]
    assert rows["exits_off"]["speedup"] == 1.0 and rows["exits_off"]["tokens"] == rows["spec@0.3/2/full"]["tokens"]
    assert data["best"] in rows and rows[data["best"]]["kind"] == "speculative"
    assert data["task"] == "triviaqa" and data["exit_layers"] == [1, 2] and "\n" in data["stop_strings"]


def test_speed_figure_from_the_benchmark_json(setup, batch1):
    """speed_figure.py draws the lossy and speculative rows of a speculative.py JSON and refuses other files."""
    path, _ = batch1
    out = setup["root"] / "speed.png"
    figure = [sys.executable, str(BENCHMARKS / "speed_figure.py")]
    done = subprocess.run([*figure, str(path), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = setup["root"] / "other.json"
    other.write_text(json.dumps({"benchmark": "realised_speedup", "rows": []}))
    done = subprocess.run([*figure, str(other), "--out", str(setup["root"] / "no.png")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "not a benchmarks/speculative.py result" in done.stderr
    assert not (setup["root"] / "no.png").exists()


def test_speculative_batched_mamba2(setup):
    """A padded batch of 2 on Mamba-2 (rollback re-runs kept tokens), the translator rule with zero translators."""
    out = setup["root"] / "b2.json"
    done = run("speculative.py", "--backbone", str(setup["mamba2"]), "--task", "coqa", "--data",
               str(setup["tasks"]["coqa"]), "--n-prompts", "4", "--max-new-tokens", "6", "--batch-size", "2",
               "--exit-layers", "1,2", "--emission", "translator", "--thresholds", "0.3,0.5", "--max-drafts", "3",
               "--draft-climbs", "deepest,shallowest", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["batch_size"] for r in rows} == {2}
    assert {r["draft_climb"] for r in rows if r["kind"] == "speculative"} == {"deepest", "shallowest"}
    assert "spec@0.3/3/full/shallowest" in {r["variant"] for r in rows}
    check_speculative_rows([r for r in rows if r["kind"] == "speculative"])


def test_speculative_refuses_bad_input_before_loading(setup):
    done = run("speculative.py", "--backbone", str(setup["mistral"]), "--task", "triviaqa", "--data",
               str(setup["tasks"]["triviaqa"]), "--batch-size", "8", "--assistant-early-exit", "2")
    assert done.returncode != 0 and "--batch-size 1 only" in done.stderr
    done = run("speculative.py", "--backbone", str(setup["mistral"]), "--task", "triviaqa", "--data",
               str(setup["tasks"]["triviaqa"]), "--draft-climbs", "deepest,highest")
    assert done.returncode != 0 and "--draft-climbs must list some of deepest, shallowest" in done.stderr


def test_timing_model_borrows_the_measured_rows(setup, batch1):
    """speculative_7b.py on a tiny preset (2 exits, as the borrowed run): one modelled row per speculative setting."""
    borrowed, data = batch1
    out = setup["root"] / "7b.json"
    done = run("speculative_7b.py", "--preset", "tiny-mistral", "--blocks", "4", "--exit-layers", "3,5", "--dtype",
               "float32", "--borrowed", str(borrowed), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    model = json.loads(out.read_text())
    spec = [r["variant"] for r in data["rows"] if r["kind"] == "speculative"]
    assert [r["setting"] for r in model["rows"]] == spec
    assert "BORROWED" in model["note"] and "BORROWED" in done.stdout
    for r in model["rows"]:
        assert r["expected_speedup"] > 0 and r["if_memory_bound"] > 0 and r["cycle_ms"] > r["verification_ms"] > 0
    pieces = {p["piece"] for p in model["pieces"]}
    assert {"block@1", "block@3", "lm_head@3", "draft_head@full", "draft_head@171", "fill", "step"} <= pieces


def test_cycles_read_from_exit_layers():
    """The per-cycle accepted lengths the timing model borrows, read from a row's exit layers (31 = full depth)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from speculative import cycles
    finally:
        sys.path.remove(str(BENCHMARKS))
    # prefill token; 2 accepted + full model's; capped at 3 accepted; 0 accepted + full model's; 1 accepted, stopped
    exits = [31, 14, 22, 31, 14, 14, 26, 31, 18]
    assert cycles(exits, 31, 3) == [(2, True), (3, False), (0, True), (1, False)]


def test_speedup_is_per_token_and_skips_batches_whose_answers_changed():
    """A lossy variant that answers in fewer tokens at the same time per token is no faster (the pooled ratio of
    times once counted shorter answers as speed): a batch whose answers changed is left out, of the speedup and of
    the CRF beside it, and a round the machine disturbed does not move the speedup."""
    from types import SimpleNamespace
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from speculative import summarise
    finally:
        sys.path.remove(str(BENCHMARKS))

    def record(answers):  # one result per prompt: its tokens and one cost per token (the short answer exits early)
        results = [SimpleNamespace(token_ids=t, costs=[SimpleNamespace(macs_spent=1 if t is long else 0.5,
                                                                       macs_full=1)] * len(t)) for t in answers]
        return {"results": results, "batch_tokens": [len(answers[0]) + len(answers[1]),
                                                     len(answers[2]) + len(answers[3])]}

    long, short = [1] * 8, [2] * 4
    records = {"exits_off": record([long] * 4), "lossy@0.5": record([short, short, long, long])}
    meta = {n: {"variant": n, "kind": "exits_off" if n == "exits_off" else "speculative_like", "timed": "decode"}
            for n in records}
    # 1 s per token everywhere, two batches of two prompts; in the second round exits off is slowed down twice
    # (the machine, not the decoder): each batch's fastest round is what counts
    samples = {"exits_off": [[16.0, 16.0], [32.0, 32.0]], "lossy@0.5": [[8.0, 16.0], [8.0, 16.0]],
               "prefill": [[1.0, 1.0], [1.0, 1.0]]}
    rows = {r["variant"]: r for r in summarise(samples, records, meta, [[0, 1], [2, 3]], 3, 2, [1])}
    lossy = rows["lossy@0.5"]
    assert lossy["prompts_differing"] == 2 and lossy["speedup_batches"] == 1  # the changed batch is left out
    assert lossy["speedup"] == pytest.approx(1.0) and lossy["speedup_median"] == pytest.approx(1.0)
    assert lossy["speedup_whole_call"] == pytest.approx(1.0)
    assert lossy["seconds"] == [[8.0, 16.0], [8.0, 16.0]] and lossy["batch_tokens"] == [8, 16]
    assert lossy["crf_exact_macs"] == 1.0 and lossy["crf_exact_macs_all"] == pytest.approx(24 / 20)  # compared only
    # batch size 1, prompt 0 alone: its answer changed, nothing to compare
    records1 = {n: {"results": records[n]["results"][:1], "batch_tokens": [len(records[n]["results"][0].token_ids)]}
                for n in records}
    rows = {r["variant"]: r for r in summarise({"exits_off": [[8.0]], "lossy@0.5": [[4.0]], "prefill": [[1.0]]},
                                               records1, meta, [[0]], 3, 1, [1])}
    assert rows["lossy@0.5"]["speedup_batches"] == 0
    assert rows["lossy@0.5"]["speedup"] is None and rows["lossy@0.5"]["crf_exact_macs"] is None
