"""The run record of one grid point, and lm-eval's per-sample log beside it.

A grid point (backbone, heads, policy, task, threshold or prune n) is one folder holding
  record.json    metrics; CRF exact and paper; decode tokens/s and wall time; exit-layer histogram;
                 degenerate count / share / validity; sample count; the head spec (name, type, constructor
                 options, training settings; as recorded with the heads); config, seed, provenance
  samples.jsonl  lm-eval's per-sample log (doc, prompt, response, per-sample metrics), each line with
                 the decoder's statistics for that sample under "dynamax"
written together, atomically (a killed job leaves the previous folder or none).
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from workflow_lib.artifacts import atomic_path, provenance
from workflow_lib.evaluation.degenerate import degenerate_summary, is_degenerate

RECORD = "record.json"
SAMPLES = "samples.jsonl"


def split_metrics(task_results: dict) -> tuple[dict, dict]:
    """lm-eval's 'metric,filter' keys -> ({metric: value}, {metric: stderr}); bookkeeping keys dropped."""
    values, stderr = {}, {}
    for key, value in task_results.items():
        if "," not in key:
            continue  # 'alias', 'name', 'sample_len'
        name = key.split(",")[0]
        if name.endswith("_stderr"):
            stderr[name[: -len("_stderr")]] = None if value == "N/A" else value
        else:
            values[name] = value
    return values, stderr


def generation_summary(generations: list[dict], degenerate_limit: float) -> dict:
    """Costs, speed, exit layers and degeneracy over the generations of one grid point.

    Decode steps are the tokens after the first (the first comes from the prefill at full depth): CRFs,
    tokens/s and the exit-layer histogram are over decode steps, as the decoder reports them.
    """
    from workflow_lib.decoding.accounting import summarize  # torch and transformers: not for `evaluate --reuse`

    costs = [c for g in generations for c in g["costs"]]
    decode_tokens = sum(len(g["token_ids"]) - 1 for g in generations)
    # Rows decoded together share their batch's time: count each batch once (a row's decode_seconds is its latency)
    batches = {g["batch_id"]: g for g in generations if g.get("batch_id") is not None}
    decode_seconds = (sum(g["batch_decode_seconds"] for g in batches.values())
                      + sum(g["decode_seconds"] for g in generations if g.get("batch_id") is None))
    prefill_seconds = (sum(g["prefill_seconds"] for g in batches.values())
                       + sum(g["prefill_seconds"] for g in generations if g.get("batch_id") is None))
    exits = Counter(layer for g in generations for layer in g["exit_layers"][1:])
    flags = [is_degenerate(g["token_ids"], g["stop_reason"]) for g in generations]
    cost = summarize(costs)
    extra = speculation_summary(generations, decode_seconds)
    return {
        **extra,
        "cost": cost,
        "crf_exact": cost["crf_exact"],
        "crf_paper": cost["crf_paper"],
        "speed": {
            "generated_tokens": sum(len(g["token_ids"]) for g in generations),
            "decode_tokens": decode_tokens,
            "decode_seconds": decode_seconds,
            "prefill_seconds": prefill_seconds,
            "batches": len(batches) or len(generations),
            "batch_size": max((g.get("batch_size", 1) for g in generations), default=1),
            "decode_tokens_per_second": decode_tokens / decode_seconds if decode_seconds > 0 else 0.0,
        },
        "exit_histogram": {str(layer): exits[layer] for layer in sorted(exits)},
        "stop_reasons": dict(Counter(g["stop_reason"] for g in generations)),
        "degenerate": degenerate_summary(flags, degenerate_limit),
    }


def speculation_summary(generations: list[dict], decode_seconds: float) -> dict:
    """Speculative decoding's totals over a point's generations (nothing for any other point): drafts made, accepted
    and rejected, tokens kept per verification, where the MACs went; and the measured speedup over exits off decoded
    from the same prefills (`paired_speedup`: exits-off decode seconds over speculative ones, over the whole point,
    with the quartiles of the per-batch ratios), which is time, beside the CRFs, which count MACs."""
    rows = [g for g in generations if g.get("speculation") is not None]
    if not rows:
        return {}
    totals = Counter()
    for g in rows:
        totals.update(g["speculation"])
    batches = {g["batch_id"]: g for g in rows if g.get("exits_off")}
    ratios = sorted(g["exits_off"]["batch_decode_seconds"] / g["batch_decode_seconds"]
                    for g in batches.values() if g["batch_decode_seconds"])
    off = sum(g["exits_off"]["batch_decode_seconds"] for g in batches.values())
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"speculation": {
        **dict(totals),
        "acceptance": totals["accepted"] / totals["drafted"] if totals["drafted"] else None,
        "tokens_per_verification": totals["kept"] / totals["cycles"] if totals["cycles"] else None,
        "exits_off_decode_seconds": off,
        "paired_speedup": off / decode_seconds if decode_seconds > 0 and batches else None,
        "paired_speedup_batches": {"n": len(ratios), "q1": quartiles[0] if ratios else None,
                                   "median": quartiles[1] if ratios else None,
                                   "q3": quartiles[2] if ratios else None},
    }}


def sample_lines(samples: list[dict], generations: list[dict]) -> list[dict]:
    """lm-eval's per-sample log entries, each joined (by doc id) with the decoder's statistics."""
    by_doc = {g["doc_id"]: g for g in generations}
    lines = []
    for s in samples:
        g = by_doc.get(s["doc_id"])
        if g is not None:
            s = {**s, "dynamax": {
                "prompt_tokens": g["prompt_tokens"], "token_ids": g["token_ids"], "exit_layers": g["exit_layers"],
                "stop_reason": g["stop_reason"], "degenerate": is_degenerate(g["token_ids"], g["stop_reason"]),
                "crf_exact": g["crf_exact"], "crf_paper": g["crf_paper"],
                "decode_seconds": g["decode_seconds"], "prefill_seconds": g["prefill_seconds"],
                "batch_id": g.get("batch_id"), "batch_size": g.get("batch_size", 1),
                "prefill_shared_by": g.get("prefill_shared_by", 1),  # thresholds decoded from this prefill
                **({"speculation": g["speculation"], "exits_off": g["exits_off"]} if g.get("speculation") else {})}}
        lines.append(s)
    return lines


def build_record(task: str, lm_results: dict, generations: list[dict], point: dict, wall_seconds: float,
                 degenerate_limit: float, config: dict, seed: int) -> dict:
    """The record of one grid point from simple_evaluate's output and the model's generation log."""
    lm_task = next(iter(lm_results["results"]))
    metrics, stderr = split_metrics(lm_results["results"][lm_task])
    gen = generation_summary(generations, degenerate_limit)
    return {
        "task": task,
        "lm_eval_task": lm_task,
        **point,
        "metrics": metrics,
        "metrics_stderr": stderr,
        "n_samples": lm_results["n-samples"][lm_task]["effective"],
        **gen,
        "wall_seconds": wall_seconds,
        "valid": gen["degenerate"]["valid"],
        "lm_eval": {"n_shot": lm_results["n-shot"][lm_task],
                    "generation_kwargs": lm_results["configs"][lm_task].get("generation_kwargs"),
                    "version": lm_results["versions"][lm_task]},
        "provenance": provenance(config, seed),
    }


def write_point(out_dir: str | Path, record: dict, samples: list[dict]) -> Path:
    """Write record.json and samples.jsonl into `out_dir` as one atomic folder."""
    from lm_eval.utils import handle_non_serializable  # numpy scalars and the like in lm-eval's log

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True, default=handle_non_serializable) + "\n")
        with open(tmp / SAMPLES, "w", encoding="utf-8") as f:
            for line in samples:
                f.write(json.dumps(line, ensure_ascii=False, default=handle_non_serializable) + "\n")
    return out_dir / RECORD
