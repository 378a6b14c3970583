"""Sample real data into local files: `python -m workflow_lib.cli.sample_data {fineweb,triviaqa,coqa,truthfulqa} ...`

Sources are hub ids (streamed or downloaded; needs internet) or local files, so the same commands run
offline on local copies of the original releases. Each output gets a `<out>.meta.json` provenance record.
"""
from __future__ import annotations

import argparse
import json

from workflow_lib.arguments import paired_default
from workflow_lib.choices import TRIVIAQA_SELECTIONS
from workflow_lib.data import sampling
from workflow_lib.defaults import COQA, CORPUS, SEED, TRIVIAQA, TRUTHFULQA


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.sample_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, hub, out_help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--source", default=hub["source"], help=f"hub id or local file (default {hub['source']})")
        c.add_argument("--config", default=hub["config"], type=lambda s: s or None,
                       help=f"hub config name (default {hub['config']}; '' for none)")
        c.add_argument("--split", default=hub["split"], help=f"hub split (default {hub['split']})")
        c.add_argument("--out", required=True, help=out_help)
        c.add_argument("--seed", type=int, default=SEED)
        return c

    c = command("fineweb", "distillation text: seeded shuffle-buffer stream of whole documents up to a token budget",
                CORPUS, ".jsonl ({'text'} per line) or .txt (one document per line)")
    c.add_argument("--tokens", type=int, default=CORPUS["tokens"], help=f"token budget (default {CORPUS['tokens']})")
    c.add_argument("--valid-out", default=None, help="held-out text: the documents that follow the training ones in "
                   "the same stream (never a training document)")
    c.add_argument("--valid-tokens", type=int, help="token budget of --valid-out (default: "
                                                    f"{CORPUS['valid_tokens']}); needs --valid-out")
    c.add_argument("--tokenizer", default=None, help="count tokens with this transformers tokenizer (folder or "
                   "hub id); default: whitespace words")
    c.add_argument("--shuffle-buffer", type=int, default=10_000, help="datasets shuffle buffer (documents)")
    c.add_argument("--text-field", default="text", help="document field of a hub / .jsonl source")

    c = command("triviaqa", "TriviaQA rc.nocontext: the --n questions with the longest answers (characters of "
                "answer.value; ties by question_id), or --n drawn with --seed", TRIVIAQA,
                "canonical TriviaQA .jsonl")
    c.add_argument("--selection", choices=TRIVIAQA_SELECTIONS, default=TRIVIAQA["selection"],
                   help="longest: the paper's longest-answer subset; seeded: --n drawn with --seed (every answer length)")
    c.add_argument("--n", type=lambda s: None if s == "all" else int(s), default=TRIVIAQA["n"],
                   help=f"questions to select, or 'all' (default {TRIVIAQA['n']})")
    c.add_argument("--offset", type=int, default=0, help="skip this many longest first (1000 reproduces the "
                   "authors' ranks 1001-2000)")
    c.add_argument("--fewshot-out", default=None, help="also write few-shot examples here (hub: train split; "
                   "local: unselected questions)")
    c.add_argument("--fewshot-n", type=int, default=TRIVIAQA["fewshot_n"],
                   help=f"few-shot examples written to --fewshot-out (default {TRIVIAQA['fewshot_n']})")
    c.add_argument("--fewshot-split", default="train")

    for name, hub, what in (("coqa", COQA, "CoQA"), ("truthfulqa", TRUTHFULQA, "TruthfulQA generation")):
        c = command(name, f"{what}: all records, or --n drawn with --seed (source order kept)", hub,
                    f"canonical {what} .jsonl (or .json: one array)")
        c.add_argument("--n", type=int, default=hub["n"])
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    if a.command == "fineweb":
        if a.valid_out is None and a.valid_tokens is not None:
            p.error("--valid-tokens is the budget of --valid-out")
        a.valid_tokens = paired_default(a.valid_tokens, a.valid_out, CORPUS["valid_tokens"])
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.command == "fineweb":
        stats = sampling.sample_corpus(a.source, a.out, a.tokens, a.seed, a.shuffle_buffer, a.config, a.split,
                                       a.tokenizer, a.text_field, a.valid_out, a.valid_tokens)
    elif a.command == "triviaqa":
        stats = sampling.sample_triviaqa(a.source, a.out, a.n, a.offset, a.seed, a.config, a.split, a.fewshot_out,
                                         a.fewshot_n, a.fewshot_split, a.selection)
    else:
        stats = sampling.sample_eval_set(a.command, a.source, a.out, a.n, a.seed, a.config, a.split)
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
