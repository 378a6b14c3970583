"""Agreement of each exit's emitted token with the full model, per exit layer and emission rule (docs/evaluation.md).

  python -m workflow_lib.cli.agreement --backbone results/backbones/mistral --tokenizer results/tokenizer \
      --text results/world/corpus_valid.jsonl --task triviaqa:results/world/triviaqa.jsonl \
      --fewshot-data results/world/triviaqa_train.jsonl --translators results/translators/mistral \
      --out results/tables/agreement_mistral.csv

For every exit layer l and rule (last_block, lens, translator where --translators is given): top-1 agreement with
the full model and mean KL(full || emitted) when a token leaves at l with everything before it at full depth
(models/emission.py), each with a seeded 95% percentile-bootstrap interval over tokens, on two sources:
  text        held-out text, packed into --seq-len windows (every position)
  TASK        the full model's greedy answers to the task's prompts (built by lm-eval as evaluate builds them, with
              the task's shots: SHOTS, else its task file's, as evaluate's): the positions that read a generated
              token, i.e. the decode steps where an exit decides
One CSV row per (source, exit layer, rule), with what made it: run key, git commit, seed, package versions
(analysis/runs.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from ..arguments import layer_list, set_threads, task_spec
from ..defaults import AGREEMENT, EVALUATION, SEED
from ..evaluation.tasks import TASKS

MEASURES = ["source", "exit_layer", "rule", "tokens", "top1", "top1_low", "top1_high", "kl", "kl_low", "kl_high"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.agreement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="hub id, local save_pretrained folder, or preset:NAME")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the backbone's)")
    p.add_argument("--exit-layers", type=layer_list, help="0-based block indices (default: 4 in the second half)")
    p.add_argument("--translators", help="translators folder: adds the translator rule")
    p.add_argument("--text", help="held-out text (.txt a document per line, .jsonl 'text')")
    p.add_argument("--text-tokens", type=int, default=AGREEMENT["text_tokens"],
                   help=f"held-out tokens read (default {AGREEMENT['text_tokens']})")
    p.add_argument("--seq-len", type=int, default=256, help="held-out window length")
    p.add_argument("--task", action="append", default=[], metavar="NAME:DATA[:SHOTS]",
                   help=f"a task's prompts ({', '.join(sorted(TASKS))}), its data file, optionally its shots "
                        f"(default: the task file's, as evaluate's); repeatable")
    p.add_argument("--fewshot-data", help="triviaqa's few-shot pool (as evaluate's)")
    p.add_argument("--limit", type=int, default=AGREEMENT["limit"], help=f"prompts per task (default {AGREEMENT['limit']})")
    p.add_argument("--max-new-tokens", type=int, default=EVALUATION["max_new_tokens"],
                   help=f"greedy tokens per answer (default {EVALUATION['max_new_tokens']})")
    p.add_argument("--batch-size", type=int, default=8,
                   help="held-out windows per backbone pass; task prompts decoded together for the answers")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--out", required=True, help="the CSV table")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    if a.text is None and not a.task:
        p.error("give --text, --task or both: there is nothing to measure")
    try:
        a.task = [task_spec(spec) for spec in a.task]
    except ValueError as e:
        p.error(f"--task {e}")
    if a.text is not None and not Path(a.text).is_file():
        p.error(f"--text: no file {a.text!r}")
    for name in ("text_tokens", "seq_len", "limit", "max_new_tokens", "batch_size", "resamples"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    set_threads(p, a.threads)
    return a


@torch.no_grad()
def measure(model, sequences, exit_layers: list[int], rules: list[str], translators=None) -> dict:
    """sequences: list of ((1 or B), T) id tensors with the positions to count (a bool mask of the same shape) ->
    {(layer, rule): (agree (N,), kl (N,))} over every counted position."""
    from ..models.emission import emitted_logits, exit_states

    out: dict = {}
    for ids, counted in sequences:
        states = exit_states(model, ids, exit_layers, counted)  # logits at the counted positions only
        full = states.logits.log_softmax(-1)  # (N, V)
        top = states.logits.argmax(-1)  # (N,)
        for rule in rules:
            for layer, logits in emitted_logits(model, states, rule, translators, counted).items():  # (N, V)
                agree = (logits.argmax(-1) == top).float()  # (N,)
                kl = (full.exp() * (full - logits.log_softmax(-1))).sum(-1)  # (N,)
                a, k = out.setdefault((layer, rule), ([], []))
                a.append(agree.cpu())
                k.append(kl.cpu())
    return {key: (torch.cat(a), torch.cat(k)) for key, (a, k) in out.items()}


def rows(source: str, measured: dict, seed: int, resamples: int) -> list[dict]:
    from ..analysis.intervals import bootstrap_mean

    table = []
    for (layer, rule), (agree, kl) in sorted(measured.items()):
        if agree.numel() == 0:
            continue
        top1 = bootstrap_mean(agree.numpy(), seed, resamples)
        mean_kl = bootstrap_mean(kl.double().numpy(), seed, resamples)
        table.append(dict(zip(MEASURES, [source, layer, rule, agree.numel(), *top1, *mean_kl])))
    return table


def main(argv=None) -> None:
    a = parse_args(argv)
    from transformers import AutoTokenizer

    from ..analysis.runs import RUN_COLUMNS, run_columns
    from ..artifacts import atomic_path, provenance
    from ..decoding.answers import greedy_answers
    from ..evaluation.tasks import task_prompts
    from ..models.backbone import default_device, load_backbone, load_config, resolve_exit_layers
    from ..models.translators import load_translators
    from ..training.text import read_sequences

    try:
        config = load_config(a.backbone)
        layers = resolve_exit_layers(config, a.exit_layers)
        prompts = {task: task_prompts(task, data, shots, a.limit, a.fewshot_data, a.seed)
                   for task, data, shots in a.task}
        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer or a.backbone)
        device = torch.device(a.device) if a.device else default_device()
        model = load_backbone(a.backbone, device=device, seed=a.seed)
        translators = None
        if a.translators:
            translators, _ = load_translators(a.translators, model.config, device=device)
        rules = ["last_block", "lens"] + (["translator"] if translators is not None else [])
        table = []
        if a.text:
            windows = read_sequences(a.text, tokenizer, a.text_tokens, a.seq_len, "held-out text").to(device)  # (N, L)
            batches = [(w, torch.ones_like(w, dtype=torch.bool)) for w in windows.split(a.batch_size)]
            table += rows("text", measure(model, batches, layers, rules, translators), a.seed, a.resamples)
        for task, texts in prompts.items():
            sequences = greedy_answers(model, tokenizer, texts, a.max_new_tokens, a.batch_size)
            table += rows(task, measure(model, sequences, layers, rules, translators), a.seed, a.resamples)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"agreement: error: {e}")
    made_by = run_columns(provenance(None, a.seed))
    frame = pd.DataFrame([row | made_by for row in table], columns=MEASURES + RUN_COLUMNS)
    with atomic_path(a.out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    print(frame[MEASURES].to_string(index=False))


if __name__ == "__main__":
    main()
