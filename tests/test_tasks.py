"""The project's lm-eval tasks: the paper's TriviaQA subset, lm-eval's prompts and metrics on the real data
samples in ../shared/data, CoQA's official scorer, and a clear error when the data file is missing."""
import ast

import pytest
from eval_setup import task_files, task_metadata  # noqa: F401  (fixture)
from lm_eval.tasks import TaskManager

from workflow_lib.data.formats import load_coqa, load_triviaqa, write_coqa
from workflow_lib.evaluation.tasks import TASK_DIR
from workflow_lib.evaluation.tasks.helpers import coqa_doc_to_text, coqa_scores


def _task(name: str, **metadata):
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=metadata)
    return tm.load([name])["tasks"][name]


@pytest.fixture(scope="module")
def real_triviaqa(shared_data):
    return _task("dynamax_triviaqa", triviaqa_file=str(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl"))


@pytest.fixture(scope="module")
def real_truthfulqa(shared_data):
    return _task("dynamax_truthfulqa_gen", truthfulqa_file=str(shared_data / "truthfulqa" / "TruthfulQA.csv"))


def test_triviaqa_subset_is_the_1000_longest_answers(real_triviaqa, shared_data):
    records = load_triviaqa(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl")
    docs = list(real_triviaqa.eval_docs)
    assert len(docs) == 1000 and len(records) == 3000
    chosen = {d["question_id"] for d in docs}
    shortest_in = min(len(d["answer"]["value"]) for d in docs)
    longest_out = max(len(r["answer"]["value"]) for r in records if r["question_id"] not in chosen)
    assert shortest_in >= longest_out
    lengths = [len(d["answer"]["value"]) for d in docs]
    assert lengths == sorted(lengths, reverse=True)
    # the few-shot pool is the other 2000 questions, so no example is an evaluated question
    assert not chosen & {d["question_id"] for d in real_triviaqa.fewshot_docs()}


def test_triviaqa_gold_alias_scores_one(real_triviaqa):
    docs = list(real_triviaqa.eval_docs)[:50]
    for doc in docs:
        for alias in doc["answer"]["aliases"][:3]:
            assert real_triviaqa.process_results(doc, [alias])["exact_match"] == 1.0
        # lm-eval's normalisation: case and punctuation ignored
        assert real_triviaqa.process_results(doc, [doc["answer"]["value"].upper() + "."])["exact_match"] == 1.0
    assert real_triviaqa.process_results(docs[0], ["zzz not an answer"])["exact_match"] == 0.0


def test_triviaqa_prompt_is_lm_evals(real_triviaqa):
    doc = real_triviaqa.eval_docs[0]
    assert real_triviaqa.doc_to_text(doc) == f"Question: {doc['question']}?\nAnswer:"
    assert real_triviaqa.config.num_fewshot == 2
    assert real_triviaqa.config.generation_kwargs["until"] == ["\n", ".", ","]


@pytest.mark.parametrize("question, aliases", [
    ("Who is X", ["X"]), ("What's \"it\" {{ here }}", ["it's", 'say "b"', "back\\slash", "é ü 1,000"]),
    ("Line\nbreak and trailing space ", ["a", "a"]),
])
def test_prompt_functions_render_as_lm_evals_templates(question, aliases):
    """The triviaqa and truthfulqa prompts are functions (lm-eval recompiles templates per call): they must give what
    lm-eval's own triviaqa and truthfulqa_gen templates render, target lists included."""
    from pathlib import Path

    import lm_eval
    import yaml
    from lm_eval.utils import apply_template

    from workflow_lib.evaluation.tasks import helpers

    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda *_: None)  # !function tags: only the templates are read
    tasks = Path(lm_eval.__file__).parent / "tasks"
    trivia = yaml.load((tasks / "triviaqa/default.yaml").read_text(), Loader=loader)
    truthful = yaml.load((tasks / "truthfulqa/truthfulqa_gen.yaml").read_text(), Loader=loader)
    doc = {"question": question, "answer": {"value": aliases[0], "aliases": aliases}}
    assert helpers.triviaqa_doc_to_text(doc) == apply_template(trivia["doc_to_text"], doc)
    assert helpers.triviaqa_doc_to_target(doc) == ast.literal_eval(apply_template(trivia["doc_to_target"], doc))
    assert helpers.truthfulqa_doc_to_text(doc) == apply_template(truthful["doc_to_text"], doc)
    assert helpers.truthfulqa_doc_to_target(doc) == apply_template(truthful["doc_to_target"], doc)


def test_truthfulqa_best_answer_wins_incorrect_loses(real_truthfulqa):
    task = real_truthfulqa
    docs = list(task.eval_docs)
    assert len(docs) == 817 and task.config.num_fewshot == 1
    acc = ["bleu_acc", "rouge1_acc", "rouge2_acc", "rougeL_acc"]
    for doc in docs[:5]:
        best = task.process_results(doc, [doc["best_answer"]])
        assert [best[k] for k in acc] == [1, 1, 1, 1]
        assert best["bleu_diff"] > 0 and best["rougeL_diff"] > 0
        wrong = task.process_results(doc, [doc["incorrect_answers"][0]])
        assert [wrong[k] for k in acc] == [0, 0, 0, 0]
        assert wrong["bleu_diff"] < 0
    assert "I have no comment." in docs[0]["correct_answers"]  # lm-eval's preprocessing


def test_coqa_gold_answer_scores_one(shared_data):
    task = _task("dynamax_coqa", coqa_file=str(shared_data / "coqa" / "coqa_dev_500.json"))
    docs = list(task.eval_docs)
    assert len(docs) == 500  # one document per story, its last turn asked (lm-eval's coqa)
    for doc in docs:
        scores = task.process_results(doc, [" " + doc["answers"][-1] + "\n\nQ: next"])
        assert scores == {"em": 1.0, "f1": 1.0}


def test_coqa_scores_against_the_additional_answers(shared_data, tmp_path):
    """lm-eval's coqa: the references are the main answer plus the other annotators' answers that differ from
    it (case ignored), scored with the leave-one-out rule. The real dev story 0, asked up to its 5th turn."""
    story = load_coqa(shared_data / "coqa" / "coqa_dev_story0_full.json")[0]
    turns = 5

    def cut(answers):
        return {k: v[:turns] for k, v in answers.items()}

    short = {**story, "questions": story["questions"][:turns], "answers": cut(story["answers"]),
             "additional_answers": {k: cut(a) for k, a in story["additional_answers"].items()}}
    path = tmp_path / "coqa.json"
    write_coqa(path, [short])
    task = _task("dynamax_coqa", coqa_file=str(path))
    doc = task.eval_docs[0]
    assert task.doc_to_text(doc).endswith("Q: What color were her sisters?\n\nA:")
    # "orange" twice among the additional answers: kept once
    assert task.doc_to_target(doc) == ["orange and white", "orange with white tiger stripes", "orange"]
    # left out in turn: "orange and white" -> 1, "orange with ..." -> 1, "orange" -> 0; the main answer alone gives 0
    assert task.process_results(doc, ["orange"])["em"] == pytest.approx(2 / 3)
    assert task.process_results(doc, ["orange and white"])["em"] == pytest.approx(2 / 3)
    # a story without additional answers keeps the single-reference score
    plain = {k: v for k, v in short.items() if k != "additional_answers"}
    write_coqa(path, [plain])
    task = _task("dynamax_coqa", coqa_file=str(path))
    assert task.doc_to_target(task.eval_docs[0]) == ["orange and white"]
    assert task.process_results(task.eval_docs[0], ["orange"]) == {"em": 0.0, "f1": 0.5}


def test_coqa_prompt_and_official_scorer():
    doc = {"story": "S.", "questions": ["Q1?", "Q2?"], "answers": ["a1", "a2"]}
    assert coqa_doc_to_text(doc) == "S.\n\nQ: Q1?\n\nA: a1\n\nQ: Q2?\n\nA:"
    assert coqa_scores(["The white kitten."], "white kitten") == {"em": 1.0, "f1": 1.0}  # articles, case, punctuation
    assert coqa_scores(["in a barn"], "barn")["f1"] == pytest.approx(2 / 3)  # P 1, R 1/2
    assert coqa_scores(["in a barn"], "barn")["em"] == 0.0
    # several references: the mean of the leave-one-out maxima (CoQA's evaluate-v1.0.py)
    assert coqa_scores(["white", "white", "grey"], "grey")["em"] == pytest.approx(2 / 3)


def test_synthetic_files_load_with_the_same_tasks(task_files):
    meta = task_metadata(task_files)
    assert len(_task("dynamax_triviaqa", **meta).eval_docs) == 8
    assert len(_task("dynamax_coqa", **meta).eval_docs) == 4
    assert len(_task("dynamax_truthfulqa_gen", **meta).eval_docs) == 4
    small = _task("dynamax_triviaqa", triviaqa_n=3, **meta)
    assert len(small.eval_docs) == 3 and len(small.fewshot_docs()) == 5


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="triviaqa file not found"):
        _task("dynamax_triviaqa", triviaqa_file=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="no coqa data file"):
        _task("dynamax_coqa")


def test_truthfulqa_metrics_equal_lm_evals(real_truthfulqa):
    from lm_eval.tasks.truthfulqa.utils import process_results_gen

    from workflow_lib.evaluation.tasks.helpers import truthfulqa_process_results

    task = real_truthfulqa
    for doc, answer in zip(list(task.eval_docs)[:2], ["Nothing . You eat them.", "It came from China, I think."]):
        ref = process_results_gen(doc, [answer])
        scores = truthfulqa_process_results(doc, [answer])
        assert scores == pytest.approx({k: float(v) for k, v in ref.items()})
        scores["bleu_max"] = -1.0  # each call gets its own dict: lm-eval's aggregation cannot touch the memo
        assert truthfulqa_process_results(doc, [answer]) == pytest.approx({k: float(v) for k, v in ref.items()})
