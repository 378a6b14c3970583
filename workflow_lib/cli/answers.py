"""The full model's greedy answers to held-out task prompts, once per backbone: what the translators and the heads are
fitted on beside the text, the positions where an exit really decides (docs/training.md, "Answers").

  python -m workflow_lib.cli.answers --backbone results/backbones/smollm2 \
      --task coqa:results/answers/prompts/coqa.jsonl --task truthfulqa:results/answers/prompts/truthfulqa.jsonl \
      --prompts 64 --tokens 32 --out results/answers/smollm2/answers.safetensors

Each --task is NAME:DATA[:SHOTS] (SHOTS: by default the task file's, as evaluate's): its first --prompts prompts are
built by lm-eval as evaluate builds them (give
questions the evaluation and the calibration do not use: rule answer_prompts draws them). Writes one safetensors file
(decoding/answers.py): per prompt the sequence, prompt then answer, and the mask of its decode steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..arguments import set_threads, task_spec
from ..defaults import ANSWERS, EVALUATION, SEED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.answers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="hub id, local save_pretrained folder, or preset:NAME")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the backbone's)")
    p.add_argument("--task", action="append", required=True, metavar="NAME:DATA[:SHOTS]",
                   help="held-out prompts of a task (repeatable)")
    p.add_argument("--fewshot-data", help="triviaqa's few-shot pool (as evaluate's)")
    p.add_argument("--prompts", type=int, default=ANSWERS["prompts"],
                   help=f"prompts per task (default {ANSWERS['prompts']})")
    p.add_argument("--tokens", type=int, default=ANSWERS["tokens"],
                   help=f"greedy tokens generated per answer (default {ANSWERS['tokens']})")
    p.add_argument("--batch-size", type=int, default=EVALUATION["batch_size"],
                   help=f"prompts decoded together (the answers do not change; default {EVALUATION['batch_size']})")
    p.add_argument("--seed", type=int, default=SEED, help="few-shot draw; the backbone's seed (random presets)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--out", required=True, help="the answers file (.safetensors)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    set_threads(p, a.threads)
    try:
        a.task = [task_spec(spec) for spec in a.task]
    except ValueError as e:
        p.error(f"--task {e}")
    for name in ("prompts", "tokens", "batch_size"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not a.out.endswith(".safetensors"):
        p.error(f"--out must name a .safetensors file, got {a.out!r}")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from ..artifacts import provenance
    from ..decoding.answers import greedy_answers, save_answers
    from ..evaluation.tasks import task_prompts
    from ..models.backbone import default_device, load_backbone, signature

    try:
        prompts = [text for task, data, shots in a.task
                   for text in task_prompts(task, data, shots, a.prompts, a.fewshot_data, a.seed)]
        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer or a.backbone)
        device = torch.device(a.device) if a.device else default_device()
        model = load_backbone(a.backbone, device=device, seed=a.seed).eval()
        start = time.perf_counter()
        answers = greedy_answers(model, tokenizer, prompts, a.tokens, a.batch_size)
        seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, nothing written
        sys.exit(f"answers: error: {e}")
    # "model": the key answers files have always recorded the backbone under
    settings = {"model": a.backbone, "tasks": [list(t) for t in a.task], "fewshot_data": a.fewshot_data,
                "prompts": a.prompts, "tokens": a.tokens, "seed": a.seed}
    positions = sum(int(counted.sum()) for _, counted in answers)
    save_answers(a.out, answers, {"settings": settings, "backbone": signature(model.config),
                                  "run": {"answers": len(answers), "positions": positions, "seconds": seconds},
                                  "provenance": provenance(settings, a.seed)})
    print(json.dumps({"answers": len(answers), "positions": positions, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
