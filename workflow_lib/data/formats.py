"""The local file formats that data rules write and evaluation reads, with validating readers, atomic
writers, and converters from the datasets' original release formats.

Canonical formats (one record per line, UTF-8 JSON Lines unless said otherwise):
  triviaqa.jsonl    HF `trivia_qa` rc.nocontext records: question, question_id, question_source,
                    answer{value, aliases, normalized_aliases, normalized_value, ...}
  coqa.json(l)      HF `stanfordnlp/coqa` records: source, story, questions[str],
                    answers{input_text[str], answer_start[int], answer_end[int]}, and, when the source has
                    them (the official dev JSON, HF `EleutherAI/coqa`), additional_answers{"0", "1", "2": the
                    same three lists}: the other annotators' answers that CoQA's scorer also counts; a `.json`
                    file holds one JSON array, a `.jsonl` file one record per line (both load with datasets' `json`)
  truthfulqa.jsonl  HF `truthful_qa` generation records: type, category, question, best_answer,
                    correct_answers[str], incorrect_answers[str], source
  corpus .txt/.jsonl training text: `.txt` one document per non-blank line; `.jsonl` one {"text": ...}
                    object per line (extra keys, e.g. FineWeb's id/url, are ignored)

`read_*` accept only the canonical format; `load_*` also accept the original release formats (TriviaQA as in
the llm-foundry sample, CoQA's original JSON and the HF arrow files, TruthfulQA's CSV) and convert them, so
real samples and synthetic sets go through the same validation.
"""
from __future__ import annotations

import csv
import json
import os
import re
import string
from pathlib import Path
from typing import Any, Iterable, Iterator

import jsonschema

from workflow_lib.artifacts import atomic_path


class DataFormatError(ValueError):
    """A data file exists but is not in the expected format; the message names the file and field."""


_STR = {"type": "string"}
_NONEMPTY_STR = {"type": "string", "minLength": 1}
_STR_LIST = {"type": "array", "items": _STR}

TRIVIAQA_SCHEMA = {
    "type": "object",
    "required": ["question", "question_id", "question_source", "answer"],
    "properties": {
        "question": _NONEMPTY_STR,
        "question_id": _NONEMPTY_STR,
        "question_source": _STR,
        "answer": {
            "type": "object",
            "required": ["value", "aliases", "normalized_aliases", "normalized_value"],
            "properties": {
                "value": _NONEMPTY_STR,
                "aliases": {**_STR_LIST, "minItems": 1},
                "normalized_aliases": {**_STR_LIST, "minItems": 1},
                "normalized_value": _STR,
            },
        },
    },
}

_COQA_ANSWERS = {  # one entry per question, in question order
    "type": "object",
    "required": ["input_text", "answer_start", "answer_end"],
    "properties": {
        "input_text": _STR_LIST,
        "answer_start": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        "answer_end": {"type": "array", "items": {"type": "integer", "minimum": -1}},
    },
}

COQA_SCHEMA = {
    "type": "object",
    "required": ["source", "story", "questions", "answers"],
    "properties": {
        "source": _STR,
        "story": _NONEMPTY_STR,
        "questions": {"type": "array", "items": _NONEMPTY_STR, "minItems": 1},
        "answers": _COQA_ANSWERS,
        "additional_answers": {"type": "object", "additionalProperties": _COQA_ANSWERS},
    },
}

TRUTHFULQA_SCHEMA = {
    "type": "object",
    "required": ["type", "category", "question", "best_answer", "correct_answers", "incorrect_answers", "source"],
    "properties": {
        "type": _STR,
        "category": _STR,
        "question": _NONEMPTY_STR,
        "best_answer": _NONEMPTY_STR,
        "correct_answers": {"type": "array", "items": _NONEMPTY_STR, "minItems": 1},
        "incorrect_answers": {"type": "array", "items": _NONEMPTY_STR, "minItems": 1},
        "source": _STR,
    },
}

TRUTHFULQA_CSV_COLUMNS = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers",
                          "Source")


def _coqa_extra_checks(rec: dict) -> str | None:
    """What JSON Schema cannot say: parallel lists of one length and spans inside the story."""
    n = len(rec["questions"])
    sets = {"answers": rec["answers"], **{f"additional_answers.{k}": a
                                          for k, a in rec.get("additional_answers", {}).items()}}
    for name, ans in sets.items():
        for key in ("input_text", "answer_start", "answer_end"):
            if len(ans[key]) != n:
                return f"{name}.{key}: {len(ans[key])} entries for {n} questions"
        for k, (s, e) in enumerate(zip(ans["answer_start"], ans["answer_end"])):
            if not (s == e == -1 or 0 <= s <= e <= len(rec["story"])):  # -1/-1 marks an unanswerable turn
                return f"{name} turn {k}: span [{s}, {e}) outside the story (length {len(rec['story'])})"
    return None


KINDS = {  # kind -> (schema, extra check)
    "triviaqa": (TRIVIAQA_SCHEMA, None),
    "coqa": (COQA_SCHEMA, _coqa_extra_checks),
    "truthfulqa": (TRUTHFULQA_SCHEMA, None),
}
_VALIDATORS = {kind: jsonschema.Draft202012Validator(schema) for kind, (schema, _) in KINDS.items()}


def validate_records(records: list[dict], kind: str, where: str) -> list[dict]:
    """Raise DataFormatError '<where>: record i: <field>: <problem>' for the first bad record."""
    if not records:
        raise DataFormatError(f"{where}: no {kind} records")
    check = KINDS[kind][1]
    for i, rec in enumerate(records):
        err = jsonschema.exceptions.best_match(_VALIDATORS[kind].iter_errors(rec))
        if err is not None:
            field = ".".join(str(p) for p in err.absolute_path) or "<record>"
            raise DataFormatError(f"{where}: {kind} record {i}: {field}: {err.message}")
        problem = check(rec) if check else None
        if problem:
            raise DataFormatError(f"{where}: {kind} record {i}: {problem}")
    return records


# ---------------------------------------------------------------- raw file access


def _existing(path: str | os.PathLike, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    return path


def read_json_records(path: str | os.PathLike, kind: str = "data") -> list[Any]:
    """Records of a JSON Lines file, or of a `.json` file holding one array (or JSON Lines)."""
    path = _existing(path, kind)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            obj = json.loads(text)
            return obj if isinstance(obj, list) else [obj]
        except json.JSONDecodeError:
            pass  # not one document: fall through to JSON Lines (datasets' json loader reads both)
    records = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
    return records


def write_json_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Atomically write JSON Lines (`.json`: one JSON array), non-ASCII kept, key order kept."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        if path.suffix == ".json":
            f.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n")
        else:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- canonical readers and writers


def read_triviaqa(path: str | os.PathLike) -> list[dict]:
    return validate_records(read_json_records(path, "triviaqa"), "triviaqa", str(path))


def read_coqa(path: str | os.PathLike) -> list[dict]:
    return validate_records(read_json_records(path, "coqa"), "coqa", str(path))


def read_truthfulqa(path: str | os.PathLike) -> list[dict]:
    return validate_records(read_json_records(path, "truthfulqa"), "truthfulqa", str(path))


def _write(kind: str, path: str | os.PathLike, records: Iterable[dict]) -> None:
    records = validate_records(list(records), kind, f"records for {path}")  # before anything is written
    write_json_records(path, records)


def write_triviaqa(path: str | os.PathLike, records: Iterable[dict]) -> None:
    _write("triviaqa", path, records)


def write_coqa(path: str | os.PathLike, records: Iterable[dict]) -> None:
    _write("coqa", path, records)


def write_truthfulqa(path: str | os.PathLike, records: Iterable[dict]) -> None:
    _write("truthfulqa", path, records)


# ---------------------------------------------------------------- record builders (synthetic sets use these)


def normalize_triviaqa_answer(s: str) -> str:
    """TriviaQA's own answer normalisation (triviaqa_evaluation.normalize_answer), which produced the
    dataset's normalized_value / normalized_aliases: lower case, punctuation to spaces, no articles."""
    s = s.replace("_", " ").lower()
    s = "".join(" " if ch in _TRIVIAQA_PUNCT else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split()).strip()


_TRIVIAQA_PUNCT = set(string.punctuation + "\u2018\u2019\u00b4`")


def triviaqa_record(question: str, question_id: str, value: str, aliases: Iterable[str] = (),
                    question_source: str = "") -> dict:
    """A canonical TriviaQA record; `value` is added to the aliases if absent; normalised fields derived."""
    aliases = list(aliases) + ([] if value in aliases else [value])  # source order kept; value always in
    return {
        "question": question,
        "question_id": question_id,
        "question_source": question_source,
        "answer": {
            "value": value,
            "aliases": aliases,
            "normalized_aliases": list(dict.fromkeys(normalize_triviaqa_answer(a) for a in aliases)),
            "normalized_value": normalize_triviaqa_answer(value),
        },
    }


def coqa_record(source: str, story: str, turns: Iterable[tuple[str, str, int, int]]) -> dict:
    """A canonical CoQA record from (question, answer text, span start, span end) turns."""
    turns = list(turns)
    return {
        "source": source,
        "story": story,
        "questions": [q for q, _, _, _ in turns],
        "answers": {"input_text": [a for _, a, _, _ in turns],
                    "answer_start": [s for _, _, s, _ in turns],
                    "answer_end": [e for _, _, _, e in turns]},
    }


def truthfulqa_record(question: str, best_answer: str, correct_answers: Iterable[str],
                      incorrect_answers: Iterable[str], type: str = "", category: str = "",
                      source: str = "") -> dict:
    return {"type": type, "category": category, "question": question, "best_answer": best_answer,
            "correct_answers": list(correct_answers), "incorrect_answers": list(incorrect_answers),
            "source": source}


# ---------------------------------------------------------------- converters from original formats


def triviaqa_from_hf(row: dict) -> dict:
    """A hub `trivia_qa` rc.nocontext row: drop the (empty, in nocontext) evidence fields."""
    return {k: row[k] for k in ("question", "question_id", "question_source", "answer") if k in row}


def triviaqa_from_flat(row: dict, question_id: str, question_source: str) -> dict:
    """An lm-eval-style flat row ({context: 'Question: ...\\nAnswer:' | question, answer, aliases}),
    the layout of the llm-foundry sample, which has no question ids: the caller assigns them."""
    question = row.get("question")
    if question is None and "context" in row:
        question = re.sub(r"^Question:\s*|\s*Answer:\s*$", "", row["context"])
    return triviaqa_record(question, question_id, row["answer"], row.get("aliases", ()), question_source)


def _coqa_answer_lists(answers: list[dict], turn_ids: list[int], where: str) -> dict:
    """Original-layout answers ([{input_text, span_start, span_end, turn_id}]) as the canonical parallel
    lists, in the order of `turn_ids`."""
    by_turn = {a["turn_id"]: a for a in answers}
    missing = [t for t in turn_ids if t not in by_turn]
    if missing:
        raise DataFormatError(f"{where}: no answer for turn(s) {missing}")
    return {"input_text": [by_turn[t]["input_text"] for t in turn_ids],
            "answer_start": [by_turn[t]["span_start"] for t in turn_ids],
            "answer_end": [by_turn[t]["span_end"] for t in turn_ids]}


def coqa_from_original(story: dict) -> dict:
    """One story of the original CoQA JSON (questions[{input_text, turn_id}], answers[{input_text,
    span_start, span_end, ...}], and in the dev set additional_answers{"0": [...], ...}) in HF layout."""
    qs = sorted(story["questions"], key=lambda q: q["turn_id"])
    turns = [q["turn_id"] for q in qs]
    where = f"coqa story {story.get('id', '?')}"
    record = {"source": story["source"], "story": story["story"], "questions": [q["input_text"] for q in qs],
              "answers": _coqa_answer_lists(story["answers"], turns, where)}
    if story.get("additional_answers"):
        record["additional_answers"] = {k: _coqa_answer_lists(a, turns, f"{where} additional_answers.{k}")
                                        for k, a in story["additional_answers"].items()}
    return record


def _coqa_hf_answers(a: dict) -> dict:
    # stanfordnlp/coqa names the span answer_start/answer_end, EleutherAI/coqa span_start/span_end.
    start, end = ("answer_start", "answer_end") if "answer_start" in a else ("span_start", "span_end")
    return {"input_text": list(a["input_text"]), "answer_start": [int(x) for x in a[start]],
            "answer_end": [int(x) for x in a[end]]}


def coqa_from_hf(row: dict) -> dict:
    """A hub row of `stanfordnlp/coqa` (questions[str], main answers only) or `EleutherAI/coqa` (lm-eval's
    source: questions{input_text, turn_id}, and additional_answers in the validation split)."""
    qs = row["questions"]
    record = {"source": row["source"], "story": row["story"],
              "questions": list(qs["input_text"] if isinstance(qs, dict) else qs),
              "answers": _coqa_hf_answers(row["answers"])}
    extra = row.get("additional_answers") or {}
    # EleutherAI's train split carries a one-entry placeholder (turn_id -1) instead of additional answers.
    if extra and all(-1 not in a.get("turn_id", ()) for a in extra.values()):
        record["additional_answers"] = {k: _coqa_hf_answers(a) for k, a in extra.items()}
    return record


def split_truthfulqa_answers(field: str) -> list[str]:
    """HF `truthful_qa`'s rule (split on ';', strip) minus the empty items that trailing ';' leave."""
    return [s.strip() for s in field.split(";") if s.strip()]


def truthfulqa_from_csv(path: str | os.PathLike) -> list[dict]:
    """The original TruthfulQA.csv (Type, Category, Question, Best Answer, Correct Answers, Incorrect
    Answers, Source) as canonical records."""
    path = _existing(path, "truthfulqa")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in TRUTHFULQA_CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(f"{path}: TruthfulQA CSV lacks column(s) {missing}; header is {reader.fieldnames}")
        return [truthfulqa_record(r["Question"], r["Best Answer"], split_truthfulqa_answers(r["Correct Answers"]),
                                  split_truthfulqa_answers(r["Incorrect Answers"]), r["Type"], r["Category"],
                                  r["Source"]) for r in reader]


def truthfulqa_from_hf(row: dict) -> dict:
    """A hub `truthful_qa` generation row (already canonical), with any empty answer strings dropped."""
    return truthfulqa_record(row["question"], row["best_answer"], [a for a in row["correct_answers"] if a.strip()],
                             [a for a in row["incorrect_answers"] if a.strip()], row["type"], row["category"],
                             row["source"])


# ---------------------------------------------------------------- format-detecting loaders


def load_triviaqa(path: str | os.PathLike) -> list[dict]:
    """Canonical TriviaQA JSONL, or a flat lm-eval-style sample (question ids '<file stem>-<row>')."""
    rows = read_json_records(path, "triviaqa")
    if rows and isinstance(rows[0], dict) and isinstance(rows[0].get("answer"), str):
        stem = Path(path).name.split(".")[0]
        try:
            rows = [triviaqa_from_flat(r, f"{stem}-{i:05d}", Path(path).name) for i, r in enumerate(rows)]
        except (KeyError, TypeError, AttributeError) as e:
            raise DataFormatError(f"{path}: flat TriviaQA row lacks or mistypes field {e}") from None
    return validate_records(rows, "triviaqa", str(path))


def load_coqa(path: str | os.PathLike) -> list[dict]:
    """Canonical CoQA JSON(L), the original CoQA JSON ({version, data} or a bare list of stories), or an
    HF arrow file (datasets.save_to_disk / cache)."""
    path = _existing(path, "coqa")
    if path.suffix == ".arrow":
        import datasets

        try:
            rows = [coqa_from_hf(r) for r in datasets.Dataset.from_file(str(path))]
        except (KeyError, TypeError) as e:
            raise DataFormatError(f"{path}: HF CoQA row lacks or mistypes field {e}") from None
    else:
        rows = read_json_records(path, "coqa")
        if len(rows) == 1 and isinstance(rows[0], dict) and "data" in rows[0]:
            rows = rows[0]["data"]  # the official {"version": ..., "data": [...]} wrapper
        first = rows[0] if rows and isinstance(rows[0], dict) else {}
        qs = first.get("questions")
        if isinstance(qs, list) and qs and isinstance(qs[0], dict):  # original layout: turn dicts
            try:
                rows = [coqa_from_original(r) for r in rows]
            except (KeyError, TypeError) as e:
                raise DataFormatError(f"{path}: original CoQA story lacks or mistypes field {e}") from None
    return validate_records(rows, "coqa", str(path))


def load_truthfulqa(path: str | os.PathLike) -> list[dict]:
    """Canonical TruthfulQA JSONL, or the original CSV."""
    if Path(path).suffix == ".csv":
        return validate_records(truthfulqa_from_csv(path), "truthfulqa", str(path))
    return read_truthfulqa(path)


LOADERS = {"triviaqa": load_triviaqa, "coqa": load_coqa, "truthfulqa": load_truthfulqa}
WRITERS = {"triviaqa": write_triviaqa, "coqa": write_coqa, "truthfulqa": write_truthfulqa}


# ---------------------------------------------------------------- training text


def read_corpus(path: str | os.PathLike) -> Iterator[str]:
    """Documents of a training corpus: `.txt` one per non-blank line, `.jsonl`/`.json` the `text` field.
    The file and its suffix are checked now; documents stream as they are read."""
    path = _existing(path, "corpus")
    if path.suffix not in (".txt", ".jsonl", ".json"):
        raise DataFormatError(f"{path}: corpus must be .txt or .jsonl, not '{path.suffix}'")
    return _corpus_docs(path)


def _corpus_docs(path: Path) -> Iterator[str]:
    if path.suffix == ".txt":
        with open(path, encoding="utf-8") as f:
            yield from (line.rstrip("\n") for line in f if line.strip())
        return
    for i, rec in enumerate(read_json_records(path, "corpus")):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataFormatError(f"{path}: corpus record {i}: text: missing or not a string")
        yield rec["text"]


def write_corpus(path: str | os.PathLike, docs: Iterable[str]) -> None:
    """Atomically write documents: `.jsonl` as {"text"} lines; `.txt` one per line (newlines inside a
    document become spaces, since a line is a document there)."""
    path = Path(path)
    if path.suffix == ".txt":
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(" ".join(d.splitlines()) + "\n")
    elif path.suffix == ".jsonl":
        write_json_records(path, ({"text": d} for d in docs))
    else:
        raise DataFormatError(f"{path}: corpus must be .txt or .jsonl, not '{path.suffix}'")
