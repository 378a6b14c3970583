"""Real-data sampling: distillation text from FineWeb-Edu and the three evaluation sets, from the hub or
from local files, into the canonical local formats of `formats` so evaluation never touches the network.

Every function checks its arguments before loading anything, writes its output atomically, and writes
`<out>.meta.json` (config, seed, package versions, git commit, counts) beside it.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from workflow_lib.artifacts import provenance, write_json
from workflow_lib.choices import DEFAULT_TRIVIAQA_SELECTION, TRIVIAQA_SELECTIONS
from workflow_lib.data import formats
from workflow_lib.data.sources import is_local_file
from workflow_lib.defaults import CORPUS, TRIVIAQA

TEXT_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json"}  # datasets' packaged builders


def _check_out(out: str | os.PathLike, suffixes: tuple[str, ...]) -> None:
    if Path(out).suffix not in suffixes:
        raise ValueError(f"output {out}: suffix must be one of {list(suffixes)}")


def _check_source(source: str) -> None:
    if is_local_file(source) and not Path(source).is_file():
        raise FileNotFoundError(f"source file not found: {source}")


def _write_meta(out: str | os.PathLike, config: dict, seed: int, stats: dict) -> None:
    write_json(f"{out}.meta.json", {**provenance(config, seed), "stats": stats})


# ---------------------------------------------------------------- distillation text


def stream_documents(source: str, seed: int, shuffle_buffer: int, config: str | None = CORPUS["config"],
                     split: str = CORPUS["split"], text_field: str = "text") -> Iterator[str]:
    """Non-blank documents in a seeded shuffled order. A hub id is streamed; a local `.txt` (one document
    per line) or `.jsonl` goes through the same `datasets` streaming and shuffle-buffer code."""
    import datasets

    if is_local_file(source):
        ds = datasets.load_dataset(TEXT_BUILDERS[Path(source).suffix], data_files=str(source), split="train",
                                   streaming=True)
    else:
        ds = datasets.load_dataset(source, name=config, split=split, streaming=True)
    for row in ds.shuffle(seed=seed, buffer_size=shuffle_buffer):
        text = row.get(text_field)
        if not isinstance(text, str):
            raise formats.DataFormatError(f"{source}: document has no string field '{text_field}'")
        if text.strip():
            yield text


def token_counter(tokenizer: str | None) -> Callable[[str], int]:
    """Tokens of a document under a transformers tokenizer (folder or hub id), else whitespace words."""
    if tokenizer is None:
        return lambda text: len(text.split())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def sample_corpus(source: str, out: str | os.PathLike, token_budget: int, seed: int = 0, shuffle_buffer: int = 10_000,
                  config: str | None = CORPUS["config"], split: str = CORPUS["split"], tokenizer: str | None = None,
                  text_field: str = "text", valid_out: str | os.PathLike | None = None,
                  valid_budget: int | None = None) -> dict:
    """Whole documents, in seeded shuffled order, until `token_budget` tokens are reached (the last
    document may overshoot it); a source that runs out first gives all of it and says so in the meta.
    With `valid_out`, the documents that follow in the same stream, up to `valid_budget` tokens, go there:
    held-out text that shares no document with the training text (two draws of one source would)."""
    if token_budget < 1 or shuffle_buffer < 1:
        raise ValueError(f"token_budget ({token_budget}) and shuffle_buffer ({shuffle_buffer}) must be >= 1")
    if (valid_out is None) != (valid_budget is None) or (valid_budget is not None and valid_budget < 1):
        raise ValueError(f"valid_out and valid_budget go together, valid_budget >= 1 (got {valid_out}, {valid_budget})")
    for path in (out, valid_out):
        if path is not None:
            _check_out(path, (".txt", ".jsonl"))
    _check_source(source)
    if is_local_file(source) and Path(source).suffix not in TEXT_BUILDERS:
        raise ValueError(f"text source {source}: must be .txt (one document per line) or .jsonl ({{'text': ...}})")
    count = token_counter(tokenizer)
    budgets = [token_budget] + ([valid_budget] if valid_out is not None else [])
    draws = [([], 0) for _ in budgets]  # (documents, tokens) per output
    with tqdm(total=sum(budgets), unit="tok", desc="sampling text", disable=None) as bar:
        current = 0
        for text in stream_documents(source, seed, shuffle_buffer, config, split, text_field):
            n = count(text)
            docs, tokens = draws[current]
            docs.append(text)
            draws[current] = (docs, tokens + n)
            bar.update(n)
            if tokens + n >= budgets[current]:
                current += 1
                if current == len(budgets):
                    break
    if not draws[0][0]:
        raise formats.DataFormatError(f"{source}: no non-blank documents")
    if valid_out is not None and not draws[1][0]:
        raise formats.DataFormatError(f"{source}: no documents left for the held-out text after {draws[0][1]} "
                                      f"training tokens; lower the training budget")
    unit = tokenizer or "whitespace words"
    all_stats = [{"documents": len(docs), "tokens": tokens, "token_unit": unit,
                  "exhausted_before_budget": tokens < budget} for (docs, tokens), budget in zip(draws, budgets)]
    cfg = dict(source=source, config=config, split=split, token_budget=token_budget, shuffle_buffer=shuffle_buffer,
               tokenizer=tokenizer, text_field=text_field, valid_out=None if valid_out is None else str(valid_out),
               valid_budget=valid_budget)
    for path, (docs, _), stats in zip((out, valid_out), draws, all_stats):
        _write_meta(path, cfg, seed, stats)
        formats.write_corpus(path, docs)
    return {**all_stats[0], "valid": all_stats[1]} if valid_out is not None else all_stats[0]


# ---------------------------------------------------------------- evaluation sets


def _hub_rows(source: str, config: str | None, split: str) -> list[dict]:
    import datasets

    return list(datasets.load_dataset(source, name=config, split=split))


def load_eval_set(kind: str, source: str, config: str | None = None, split: str = "validation") -> list[dict]:
    """Canonical records of `kind` from a hub id or a local file in a canonical or original format."""
    _check_source(source)
    if is_local_file(source):
        return formats.LOADERS[kind](source)
    convert = {"triviaqa": formats.triviaqa_from_hf, "coqa": formats.coqa_from_hf,
               "truthfulqa": formats.truthfulqa_from_hf}[kind]
    return formats.validate_records([convert(r) for r in _hub_rows(source, config, split)], kind,
                                    f"{source}:{config}:{split}")


def answer_length(record: dict) -> int:
    """TriviaQA answer length: characters of `answer.value`, the answer's main (unnormalised) form."""
    return len(record["answer"]["value"])


def longest_answers(records: list[dict], n: int, offset: int = 0) -> list[dict]:
    """Ranks offset+1 .. offset+n by answer length, longest first; ties broken by question_id then
    question, so the selection does not depend on input order. offset=1000 reproduces the authors'
    code, which took ranks 1001-2000 by mistake (docs/evaluation.md)."""
    if n + offset > len(records):
        raise ValueError(f"asked for ranks {offset + 1}-{offset + n} but the source has {len(records)} questions")
    ranked = sorted(records, key=lambda r: (-answer_length(r), r["question_id"], r["question"]))
    return ranked[offset:offset + n]


def _seeded_subset(records: list[dict], n: int | None, seed: int) -> list[dict]:
    """n records drawn with `seed`, kept in source order; all records when n is None."""
    if n is None:
        return records
    if n > len(records):
        raise ValueError(f"asked for {n} records but the source has {len(records)}")
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def sample_triviaqa(source: str, out: str | os.PathLike, n: int | None = TRIVIAQA["n"], offset: int = 0,
                    seed: int = 0, config: str | None = TRIVIAQA["config"], split: str = TRIVIAQA["split"],
                    fewshot_out: str | None = None, fewshot_n: int = TRIVIAQA["fewshot_n"],
                    fewshot_split: str = "train", selection: str = DEFAULT_TRIVIAQA_SELECTION) -> dict:
    """The n questions with the longest answers (`selection="longest"`, the paper's subset) or n drawn with `seed`
    (`"seeded"`: answers of every length, for a small model that scores nothing on the longest); optionally
    `fewshot_n` seeded few-shot examples from the train split (hub) or, for a local file, from the questions not
    selected (never the evaluated ones). n None: every question (a pool to draw held-out questions from)."""
    if (n is not None and n < 1) or offset < 0 or fewshot_n < 1:
        raise ValueError(f"need n >= 1 ({n}), offset >= 0 ({offset}), fewshot_n >= 1 ({fewshot_n})")
    if selection not in TRIVIAQA_SELECTIONS:
        raise ValueError(f"unknown TriviaQA selection {selection!r}; known: {', '.join(TRIVIAQA_SELECTIONS)}")
    if selection == "seeded" and offset:
        raise ValueError("offset ranks the longest answers: it goes with selection 'longest' only")
    _check_out(out, (".jsonl", ".json"))
    if fewshot_out is not None:
        _check_out(fewshot_out, (".jsonl", ".json"))
    records = load_eval_set("triviaqa", source, config, split)
    if selection == "longest":
        chosen = longest_answers(records, len(records) - offset if n is None else n, offset)
    else:
        chosen = _seeded_subset(records, n, seed)
    lengths = [answer_length(r) for r in chosen]
    stats = {"source_questions": len(records), "selected": len(chosen), "selection": selection,
             "answer_length_unit": "characters of answer.value", "answer_length_range": [min(lengths), max(lengths)]}
    if selection == "longest":
        stats["ranks"] = [offset + 1, offset + len(chosen)]
    fewshot = None
    if fewshot_out is not None:
        if is_local_file(source):
            ids = {r["question_id"] for r in chosen}
            pool = [r for r in records if r["question_id"] not in ids]
        else:
            pool = load_eval_set("triviaqa", source, config, fewshot_split)
        fewshot = _seeded_subset(pool, fewshot_n, seed)
        stats["fewshot"] = len(fewshot)
    cfg = dict(source=source, config=config, split=split, n=n, offset=offset, fewshot_out=fewshot_out,
               fewshot_n=fewshot_n, fewshot_split=fewshot_split, selection=selection)
    _write_meta(out, cfg, seed, stats)
    if fewshot is not None:
        formats.write_triviaqa(fewshot_out, fewshot)
    formats.write_triviaqa(out, chosen)
    return stats


def sample_eval_set(kind: str, source: str, out: str | os.PathLike, n: int | None = None, seed: int = 0,
                    config: str | None = None, split: str = "validation") -> dict:
    """CoQA or TruthfulQA: all records, or n drawn with `seed` (kept in source order)."""
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_out(out, (".jsonl", ".json"))
    records = _seeded_subset(load_eval_set(kind, source, config, split), n, seed)
    stats = {"records": len(records)}
    if kind == "coqa":
        stats["questions"] = sum(len(r["questions"]) for r in records)
    _write_meta(out, dict(kind=kind, source=source, config=config, split=split, n=n), seed, stats)
    formats.WRITERS[kind](out, records)
    return stats
