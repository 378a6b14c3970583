"""Calibration sets and calibrated thresholds: which questions a task evaluates (as its lm-eval task loads them),
the split that avoids them, the refusal of a calibration set that overlaps them, and the calibrate entry end to end
on a tiny backbone (Learn-then-Test itself: test_ltt.py)."""
import json

import pytest
from eval_setup import save_calm_heads, save_tiny_backbone, task_files  # noqa: F401  (fixture)

from workflow_lib.cli.calibrate import main
from workflow_lib.cli.held_out_split import main as split_main
from workflow_lib.data.calibration import check_disjoint, evaluated_records, held_out_split, question_key
from workflow_lib.data.formats import LOADERS, read_triviaqa, write_triviaqa
from workflow_lib.cli.evaluate import main as evaluate_main


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("mistral"), "tiny-mistral")


@pytest.mark.parametrize("task", ["triviaqa", "coqa", "truthfulqa"])
def test_evaluated_records_are_the_documents_the_task_scores(task_files, task):
    from workflow_lib.evaluation.tasks import helpers

    loader = {"triviaqa": helpers.load_triviaqa, "coqa": helpers.load_coqa, "truthfulqa": helpers.load_truthfulqa}
    docs = loader[task](**{f"{task}_file": str(task_files[task]), "triviaqa_n": 5})["validation"]
    got = evaluated_records(task, LOADERS[task](task_files[task]), limit=3, triviaqa_n=5)
    assert [question_key(task, r) for r in got] == [question_key(task, d) for d in docs.select(range(3))]


def test_split_avoids_the_evaluated_questions_and_refuses_overlap(task_files, tmp_path):
    records = read_triviaqa(task_files["triviaqa"])
    evaluated = evaluated_records("triviaqa", records, limit=3)
    cal = held_out_split("triviaqa", records, evaluated, n=4, seed=0)
    assert len(cal) == 4 and not {r["question_id"] for r in cal} & {r["question_id"] for r in evaluated}
    assert cal == held_out_split("triviaqa", records, evaluated, n=4, seed=0)  # seeded
    check_disjoint("triviaqa", cal, evaluated)
    with pytest.raises(ValueError, match="shares 1 of its 5 triviaqa questions"):
        check_disjoint("triviaqa", cal + evaluated[:1], evaluated)
    with pytest.raises(ValueError, match="5 questions outside the 3 evaluated ones, fewer than the 6"):
        held_out_split("triviaqa", records, evaluated, n=6, seed=0)
    split_main(["--task", "triviaqa", "--data", str(task_files["triviaqa"]), "--limit", "3", "--n", "4",
                "--out", str(tmp_path / "cal.jsonl")])
    assert read_triviaqa(tmp_path / "cal.jsonl") == cal
    # the translators' answer prompts: clear of the evaluated questions and of the calibration set
    split_main(["--task", "triviaqa", "--data", str(task_files["triviaqa"]), "--limit", "3", "--n", "1",
                "--exclude", str(tmp_path / "cal.jsonl"), "--out", str(tmp_path / "answers.jsonl")])
    answers = read_triviaqa(tmp_path / "answers.jsonl")
    assert len(answers) == 1 and not {question_key("triviaqa", r) for r in answers} & {
        question_key("triviaqa", r) for r in cal + evaluated}
    with pytest.raises(ValueError, match="1 questions outside the 3 evaluated ones and the 4 kept apart, fewer than the 2"):
        held_out_split("triviaqa", records, evaluated, n=2, seed=0, apart=cal)


@pytest.fixture(scope="module")
def calibration_setup(mistral_dir, task_files, tmp_path_factory):
    """4 calibration questions outside the 3 evaluated ones, and the full model's answers on them."""
    root = tmp_path_factory.mktemp("calibration")
    cal = root / "cal.jsonl"
    split_main(["--task", "triviaqa", "--data", str(task_files["triviaqa"]), "--limit", "3", "--n", "4",
                "--out", str(cal)])
    common = ["--backbone", str(mistral_dir), "--task", "triviaqa", "--max-new-tokens", "6", "--batch-size", "2"]
    evaluate_main([*common, "--no-heads", "--data", str(cal), "--out-dir", str(root / "reference")])
    heads = save_calm_heads(root / "heads", mistral_dir, exit_layers=(1, 2))
    run = [*common, "--heads", str(heads), "--data", str(task_files["triviaqa"]), "--limit", "3",
           "--reference", str(root / "reference")]
    return root, cal, run


def test_calibrate_end_to_end(calibration_setup):
    """Threshold 1.0 (untrained heads never reach it) gives the full model's answers: no inconsistency, certified
    for delta 0.6 with 4 questions (0.4^4 < 0.05); no threshold can be certified for 0.1 with 4 questions, so that
    point is the full model. Each calibrated point is evaluated on the evaluation set with its calibration."""
    root, cal, run = calibration_setup
    main([*run, "--calibration-data", str(cal), "--thresholds", "1.0,0.0", "--deltas", "0.6,0.1",
          "--calibration-out", str(root / "calibration.json"), "--out-dir", str(root / "cell")])
    result = json.loads((root / "calibration.json").read_text())
    strict, loose = result["deltas"]["0.1"], result["deltas"]["0.6"]
    assert strict["threshold"] is None and [t["threshold"] for t in strict["tests"]] == [1.0]
    first = loose["tests"][0]
    assert first == {**first, "threshold": 1.0, "n": 4, "risk": 0.0, "rejected": True}
    assert 0.99 < first["crf_exact"] < 1.0  # every head evaluated and paid for, none exits
    assert first["p_value"] == pytest.approx(0.4 ** 4)
    assert loose["threshold"] == (0.0 if loose["tests"][-1]["rejected"] else 1.0)
    off = json.loads((root / "cell" / "calibrated~0.1" / "record.json").read_text())
    assert off["threshold"] is None and not off["exits_enabled"] and off["n_samples"] == 3
    assert off["calibration"] == {**off["calibration"], "delta": 0.1, "certified": False, "n": 4, "risk": "consistency"}
    point = json.loads((root / "cell" / "calibrated~0.6" / "record.json").read_text())
    assert point["threshold"] == loose["threshold"] and point["exits_enabled"]
    assert point["calibration"]["certified"] and point["calibration"]["calibration_risk"] == loose["tests"][
        [t["threshold"] for t in loose["tests"]].index(loose["threshold"])]["risk"]


def test_calibrate_refuses_overlap_and_a_foreign_reference(calibration_setup, task_files, tmp_path):
    root, cal, run = calibration_setup
    overlapping = tmp_path / "overlap.jsonl"
    evaluated = evaluated_records("triviaqa", read_triviaqa(task_files["triviaqa"]), limit=3)
    write_triviaqa(overlapping, read_triviaqa(cal) + evaluated[:2])
    out = ["--thresholds", "0.5", "--deltas", "0.1", "--calibration-out", str(tmp_path / "c.json"),
           "--out-dir", str(tmp_path / "cell")]
    with pytest.raises(SystemExit, match="shares 2 of its 6 triviaqa questions with the 3 evaluated ones"):
        main([*run, "--calibration-data", str(overlapping), *out])
    other = tmp_path / "other.jsonl"  # a disjoint calibration set, but not the one the reference decoded
    other.write_text(cal.read_text())
    with pytest.raises(SystemExit, match="not made on --calibration-data with these settings .*data"):
        main([*run, "--calibration-data", str(other), *out])
    with pytest.raises(SystemExit, match="not made on --calibration-data .*max_new_tokens"):
        main([*run, "--calibration-data", str(cal), "--max-new-tokens", "5", *out])
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "cell").exists()


def test_split_on_the_real_samples(shared_data, tmp_path):
    """Real TriviaQA: the 1000 longest-answer questions are evaluated, the calibration set comes from the others;
    real TruthfulQA evaluated whole leaves nothing to calibrate on, and says so."""
    trivia = LOADERS["triviaqa"](shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl")
    evaluated = evaluated_records("triviaqa", trivia)
    cal = held_out_split("triviaqa", trivia, evaluated, n=100, seed=0)
    assert len(evaluated) == 1000 and len(cal) == 100
    check_disjoint("triviaqa", cal, evaluated)
    truthful = LOADERS["truthfulqa"](next((shared_data / "truthfulqa").glob("*.csv")))
    with pytest.raises(ValueError, match="0 questions outside the 817 evaluated ones"):
        held_out_split("truthfulqa", truthful, evaluated_records("truthfulqa", truthful), n=10, seed=0)
