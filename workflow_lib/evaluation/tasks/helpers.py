"""Python side of the project's lm-eval tasks: local-file datasets, CoQA prompt and scorer, TruthfulQA metrics.

The YAML files beside this module reference these functions with `!function helpers.<name>`. lm-eval
loads this file by path, so it imports only absolute package names.

Where the data comes from: lm-eval calls a task's `custom_dataset` with the run's metadata (the CLI's
`--metadata '{"triviaqa_file": ...}'` or `TaskManager(metadata=...)`), so one task definition serves
the real samples and the synthetic world's sets; the file is read through the data engineer's format-
detecting loaders (workflow_lib.data.formats), which also validate it.
"""
from __future__ import annotations

import functools
import re
import string
from collections import Counter

import datasets
import numpy as np

from workflow_lib.data.formats import LOADERS
from workflow_lib.data.sampling import longest_answers
from workflow_lib.defaults import TRIVIAQA_SUBSET
from workflow_lib.data.world import TRUTHFULQA_PRIMER  # lm-eval truthfulqa_gen's six-pair primer


def data_file(kind: str, metadata: dict) -> str:
    """The data file a task reads, from the run's metadata key `<kind>_file`."""
    path = metadata.get(f"{kind}_file")
    if not path:
        raise ValueError(f"no {kind} data file: pass metadata {{'{kind}_file': PATH}} "
                         f"(lm_eval --metadata, or TaskManager(metadata=...))")
    return str(path)


# ---------------------------------------------------------------- TriviaQA


def _triviaqa_doc(rec: dict) -> dict:
    # Only the fields the prompt and metric use: the synthetic and real files carry different extras,
    # and empty evidence lists would make datasets infer a null column type.
    a = rec["answer"]
    return {"question": rec["question"], "question_id": rec["question_id"],
            "answer": {"value": a["value"], "aliases": list(a["aliases"]),
                       "normalized_aliases": list(a["normalized_aliases"])}}


def load_triviaqa(**metadata) -> datasets.DatasetDict:
    """validation: the `triviaqa_n` (default 1000) longest-answer questions; train (few-shot pool): the
    `triviaqa_fewshot_file` when given, else the questions left over, else the validation questions
    themselves (lm-eval's sampler never shows a question as its own example)."""
    records = LOADERS["triviaqa"](data_file("triviaqa", metadata))
    n = int(metadata.get("triviaqa_n") or TRIVIAQA_SUBSET)
    chosen = longest_answers(records, min(n, len(records)))  # the data rules' ranking (ties by question_id)
    if metadata.get("triviaqa_fewshot_file"):
        pool = LOADERS["triviaqa"](metadata["triviaqa_fewshot_file"])
    else:
        ids = {r["question_id"] for r in chosen}
        pool = [r for r in records if r["question_id"] not in ids] or chosen
    return datasets.DatasetDict({
        "validation": datasets.Dataset.from_list([_triviaqa_doc(r) for r in chosen]),
        "train": datasets.Dataset.from_list([_triviaqa_doc(r) for r in pool]),
    })


# The prompts of lm-eval's `triviaqa` and `truthfulqa_gen` as functions, not as their YAML's jinja templates: lm-eval
# compiles a template anew on every call (lm_eval.utils.apply_template keeps no cache), once per question and per
# few-shot example at every grid point, about a fifth of a TriviaQA point's CPU time. tests/test_tasks.py checks
# that these give exactly what lm-eval's own templates render.


def triviaqa_doc_to_text(doc: dict) -> str:
    return f"Question: {doc['question']}?\nAnswer:"  # lm-eval: "Question: {{question}}?\nAnswer:"


def triviaqa_doc_to_target(doc: dict) -> list[str]:
    return list(doc["answer"]["aliases"])  # lm-eval: "{{answer.aliases}}", read back as a list


# ---------------------------------------------------------------- CoQA


def load_coqa(**metadata) -> datasets.DatasetDict:
    """One document per story, as lm-eval's coqa: the whole conversation is the context and its last
    turn is the question asked. `additional_answers` holds the other annotators' answers per turn, one
    list per annotator (empty when the source has none)."""
    records = LOADERS["coqa"](data_file("coqa", metadata))
    docs = [{"source": r["source"], "story": r["story"], "questions": list(r["questions"]),
             "answers": list(r["answers"]["input_text"]),
             "additional_answers": [list(a["input_text"]) for a in r.get("additional_answers", {}).values()]}
            for r in records]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})


def coqa_doc_to_text(doc: dict) -> str:
    """lm-eval's coqa prompt: story, then every earlier turn answered, then the last question."""
    text = doc["story"] + "\n\n"
    for q, a in zip(doc["questions"][:-1], doc["answers"][:-1]):
        text += f"Q: {q}\n\nA: {a}\n\n"
    return text + f"Q: {doc['questions'][-1]}\n\nA:"


def coqa_doc_to_target(doc: dict) -> list[str]:
    """lm-eval's coqa references: the last turn's answer, then each additional answer to it that differs
    from those already taken (case ignored)."""
    golds = [doc["answers"][-1]]
    for answers in doc.get("additional_answers") or []:
        if answers[-1].lower() not in map(str.lower, golds):
            golds.append(answers[-1])
    return golds


# Hand-written: CoQA's official evaluate-v1.0.py scorer. lm-eval's coqa used transformers'
# squad_metrics for it, which transformers 5 removed (that is why the built-in task breaks).
def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (official CoQA/SQuAD rule)."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def coqa_exact(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def coqa_f1(gold: str, pred: str) -> float:
    gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)  # both empty (an unanswerable turn answered as such) counts 1
    same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def coqa_scores(golds: list[str], pred: str) -> dict[str, float]:
    """The official multi-reference rule: with n > 1 references, average over the n leave-one-out
    maxima; with one reference, its score."""
    if len(golds) == 1:
        return {"em": coqa_exact(golds[0], pred), "f1": coqa_f1(golds[0], pred)}
    rest = [golds[:i] + golds[i + 1:] for i in range(len(golds))]
    return {"em": sum(max(coqa_exact(g, pred) for g in r) for r in rest) / len(golds),
            "f1": sum(max(coqa_f1(g, pred) for g in r) for r in rest) / len(golds)}


def coqa_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval's coqa: the answer is the first line of the generation."""
    return coqa_scores(coqa_doc_to_target(doc), results[0].strip().split("\n")[0])


# ---------------------------------------------------------------- TruthfulQA (generation)


def truthfulqa_doc_to_text(doc: dict) -> str:
    return TRUTHFULQA_PRIMER + "\n\nQ: " + doc["question"]  # lm-eval: {{prompt_qa + '\n\nQ: ' + question}}


def truthfulqa_doc_to_target(doc: dict) -> str:
    return " "  # lm-eval's target: no reference answer in the prompt (the metrics read the doc's answer lists)


def load_truthfulqa(**metadata) -> datasets.DatasetDict:
    records = LOADERS["truthfulqa"](data_file("truthfulqa", metadata))
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(records)})


def truthfulqa_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """lm-eval's truthfulqa_gen preprocessing (periods added, 'I have no comment.' among the correct)."""
    from lm_eval.tasks.truthfulqa.utils import process_docs_gen

    return process_docs_gen(dataset)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
_ROUGE_SCORER = []  # built on first use: one RougeScorer for the whole run, as lm-eval keeps it


def _rouge(ref: str, pred: str) -> dict[str, float]:
    """lm-eval's truthfulqa `rouge` for one reference: the same RougeScorer on the same sentence-split text.
    lm-eval passes the single score through a 1000-sample BootstrapAggregator whose median is that score
    itself; skipping it gives identical values about 300x faster (0.12 s per reference otherwise)."""
    from rouge_score import rouge_scorer

    if not _ROUGE_SCORER:
        _ROUGE_SCORER.append(rouge_scorer.RougeScorer(list(ROUGE_TYPES)))
    scores = _ROUGE_SCORER[0].score(ref.replace(" . ", ".\n"), pred.replace(" . ", ".\n"))
    return {t: scores[t].fmeasure * 100 for t in ROUGE_TYPES}


def truthfulqa_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval's truthfulqa_gen metrics (process_results_gen): BLEU and ROUGE-1/2/L, each max (best
    similarity to a correct answer), diff (that minus the best over incorrect answers) and acc (diff > 0)."""
    return dict(_truthfulqa_scores(results[0], tuple(doc["correct_answers"]), tuple(doc["incorrect_answers"])))


@functools.cache  # a job scores each question at every threshold, mostly with the same answer: score it once
def _truthfulqa_scores(completion: str, true_refs: tuple[str, ...], false_refs: tuple[str, ...]) -> tuple:
    from lm_eval.tasks.truthfulqa.utils import bleu

    refs = true_refs + false_refs
    n_true = len(true_refs)
    per_ref = [{"bleu": bleu([[ref]], [completion]), **_rouge(ref, completion)} for ref in refs]
    out = {}
    for name, key in (("bleu", "bleu"), ("rouge1", "rouge1"), ("rouge2", "rouge2"), ("rougeL", "rougeLsum")):
        scores = [s[key] for s in per_ref]
        correct, incorrect = float(np.nanmax(scores[:n_true])), float(np.nanmax(scores[n_true:]))
        out.update({f"{name}_max": correct, f"{name}_diff": correct - incorrect, f"{name}_acc": int(correct > incorrect)})
    return tuple(out.items())
