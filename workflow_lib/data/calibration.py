"""Held-out question sets: the calibration sets of the calibrated thresholds (evaluation/ltt.py) and the prompts
whose greedy answers the translators are fitted on (training/translators.py), questions of a task that the
evaluation does not use (and, for the answers, that the calibration and the few-shot examples do not use either),
and the check that a calibration set shares no question with the evaluated ones.

Which records a task evaluates, mirroring the task loaders (evaluation/tasks/helpers.py) and lm-eval's limit:
  triviaqa    the `triviaqa_n` longest-answer questions of the data file (sampling.longest_answers), then the first
              `limit` of them
  coqa        the first `limit` stories of the file (a story is one document)
  truthfulqa  the first `limit` questions of the file
A question counts as the same when its normalised text is (TriviaQA and TruthfulQA: the question; CoQA: the story),
whatever its id or file: the same question asked again must not be both calibrated on and evaluated.
"""
from __future__ import annotations

import random

from workflow_lib.data.sampling import longest_answers
from workflow_lib.defaults import TRIVIAQA_SUBSET


def question_key(task: str, record: dict) -> str:
    text = record["story"] if task == "coqa" else record["question"]
    return " ".join(text.lower().split())


def evaluated_records(task: str, records: list[dict], limit: int | None = None,
                      triviaqa_n: int = TRIVIAQA_SUBSET) -> list[dict]:
    """The records of a task's data file that an evaluation with this `limit` (None: all) scores."""
    if task == "triviaqa":
        records = longest_answers(records, min(triviaqa_n, len(records)))
    elif task not in ("coqa", "truthfulqa"):
        raise ValueError(f"unknown task {task!r}")
    return records if limit is None else records[:limit]


def overlap(task: str, calibration: list[dict], evaluated: list[dict]) -> list[str]:
    """Questions of the calibration set that are also evaluated (normalised text)."""
    asked = {question_key(task, r) for r in evaluated}
    return [question_key(task, r) for r in calibration if question_key(task, r) in asked]


def check_disjoint(task: str, calibration: list[dict], evaluated: list[dict]) -> None:
    shared = overlap(task, calibration, evaluated)
    if shared:
        raise ValueError(f"the calibration set shares {len(shared)} of its {len(calibration)} {task} questions with "
                         f"the {len(evaluated)} evaluated ones (e.g. {shared[0][:80]!r}); the guarantee needs "
                         f"questions the evaluation does not see")


def held_out_split(task: str, pool: list[dict], evaluated: list[dict], n: int, seed: int,
                   apart: list[dict] = ()) -> list[dict]:
    """n records of `pool` drawn with `seed` (in pool order) among those neither evaluated nor in `apart` (other
    held-out sets to keep clear of), duplicates counted once."""
    if n < 1:
        raise ValueError(f"a held-out set needs n >= 1 questions, got {n}")
    asked = {question_key(task, r) for r in [*evaluated, *apart]}
    free, seen = [], set()
    for record in pool:
        key = question_key(task, record)
        if key not in asked and key not in seen:
            free.append(record)
            seen.add(key)
    if len(free) < n:
        kept = f" and the {len(apart)} kept apart" if apart else ""
        raise ValueError(f"{task}: {len(free)} questions outside the {len(evaluated)} evaluated ones{kept}, fewer "
                         f"than the {n} asked for (ask fewer, lower the task's limit, or give a larger pool)")
    keep = sorted(random.Random(seed).sample(range(len(free)), n))
    return [free[i] for i in keep]
