"""Exits-off fidelity on a real model: the `dynamax` lm-eval model (exits disabled) against lm-eval's own `hf` model on
the same backbone, the project's tasks and the same questions; counts the questions compared and every difference
(generation, prompt, or per-question metric) and compares the aggregate metrics (issue 22).

Data: the real samples (TriviaQA's longest answers with few-shot examples from the other questions, CoQA stories,
TruthfulQA), drawn by the pipeline's own sampling functions. Not a test: tests/test_smollm2.py runs a few questions.

  python benchmarks/hf_fidelity.py --backbone results/backbones/smollm2 --data-dir DATA --limit 20 --threads 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from timing import save

SHOTS = {"triviaqa": 2, "coqa": 0, "truthfulqa": 1}  # the paper's protocol (configs/paper.yaml)


def write_task_files(data_dir: Path, out: Path, triviaqa_n: int) -> dict[str, Path]:
    """The evaluated files from the real samples, as the pipeline's data rules write them."""
    from workflow_lib.data.sampling import sample_eval_set, sample_triviaqa

    out.mkdir(parents=True, exist_ok=True)
    files = {"triviaqa": out / "triviaqa.jsonl", "triviaqa_fewshot": out / "triviaqa_fewshot.jsonl",
             "coqa": out / "coqa.json", "truthfulqa": out / "truthfulqa.jsonl"}
    sample_triviaqa(str(data_dir / "triviaqa" / "triviaqa_sm_sub.jsonl"), files["triviaqa"], n=triviaqa_n,
                    fewshot_out=str(files["triviaqa_fewshot"]), fewshot_n=20)
    sample_eval_set("coqa", str(data_dir / "coqa" / "coqa_dev_500.json"), files["coqa"], n=None)
    sample_eval_set("truthfulqa", str(data_dir / "truthfulqa" / "TruthfulQA.csv"), files["truthfulqa"], n=None)
    return files


def models(backbone: str):
    """Ours with exits off, and lm-eval's own `hf` model, on the same folder, both fp32 on the CPU, batch size 1."""
    from lm_eval.models.huggingface import HFLM

    from workflow_lib.evaluation.lm_model import DynamaxLM

    return DynamaxLM(backbone=backbone, device="cpu"), HFLM(pretrained=backbone, device="cpu", dtype="float32")


def evaluate(lm, task: str, files: dict[str, Path], limit: int, max_new_tokens: int, triviaqa_n: int,
             seed: int = 0) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from workflow_lib.evaluation.tasks import TASK_DIR, TASKS

    metadata = {"triviaqa_file": str(files["triviaqa"]), "triviaqa_fewshot_file": str(files["triviaqa_fewshot"]),
                "coqa_file": str(files["coqa"]), "truthfulqa_file": str(files["truthfulqa"]), "triviaqa_n": triviaqa_n}
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=metadata)
    return lm_eval.simple_evaluate(model=lm, tasks=[TASKS[task][0]], task_manager=tm,
                                   num_fewshot=SHOTS[task], limit=limit, gen_kwargs=f"max_gen_toks={max_new_tokens}",
                                   log_samples=True, random_seed=seed, numpy_random_seed=seed,
                                   torch_random_seed=seed, fewshot_random_seed=seed)


def compare(ours: dict, ref: dict, task: str) -> dict:
    """Questions compared and the differences: generations, prompts, per-question metrics, aggregate metrics."""
    from workflow_lib.evaluation.tasks import TASKS

    name = TASKS[task][0]
    a, b = ours["samples"][name], ref["samples"][name]
    skip = ("resps", "filtered_resps", "arguments", "doc", "target", "doc_id", "doc_hash", "prompt_hash",
            "target_hash")
    per_question = [i for i, (x, y) in enumerate(zip(a, b))
                    if x["resps"] != y["resps"] or x["arguments"] != y["arguments"]
                    or {k: v for k, v in x.items() if k not in skip} != {k: v for k, v in y.items() if k not in skip}]
    metrics = {k: (v, ref["results"][name].get(k)) for k, v in ours["results"][name].items()
               if v != ref["results"][name].get(k)}
    return {"task": task, "questions": len(a), "differing_questions": per_question, "differing_metrics": metrics,
            "empty_generations": sum(not x["resps"][0][0].strip() for x in a)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", required=True, help="save_pretrained folder (e.g. the converted SmolLM2)")
    p.add_argument("--data-dir", required=True, type=Path, help="the real samples (triviaqa/, coqa/, truthfulqa/)")
    p.add_argument("--tasks", default="triviaqa,coqa,truthfulqa")
    p.add_argument("--limit", type=int, default=10, help="questions per task (CoQA: stories, each all its turns)")
    p.add_argument("--triviaqa-n", type=int, default=1000, help="longest-answer TriviaQA subset to draw from")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("results/hf_fidelity"), help="the task files drawn")
    p.add_argument("--out", default="results/benchmarks/hf_fidelity.json")
    p.add_argument("--seed", type=int, default=0, help="lm-eval's seeds (greedy decoding: only the few-shot draw)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    files = write_task_files(args.data_dir, args.work / "data", args.triviaqa_n)
    rows = []
    dynamax, hf = models(args.backbone)
    for task in args.tasks.split(","):
        start = time.perf_counter()
        ours = evaluate(dynamax, task, files, args.limit, args.max_new_tokens, args.triviaqa_n, args.seed)
        ref = evaluate(hf, task, files, args.limit, args.max_new_tokens, args.triviaqa_n, args.seed)
        row = {**compare(ours, ref, task), "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = sum(r["questions"] for r in rows)
    diffs = sum(len(r["differing_questions"]) + len(r["differing_metrics"]) for r in rows)
    per_task = ", ".join(f"{r['task']} {r['questions']}" for r in rows)
    print(f"questions compared: {total} ({per_task}); differences: {diffs}")
    save(args.out, "hf_fidelity", args, rows, questions=total, differences=diffs)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
