"""Grid points of an evaluation job (cli/evaluate.py, cli/calibrate.py): which points a job evaluates and where their
records go, whether a point's record can be kept (--reuse), the model loaded once for them all, and one point's run
through lm-eval and its record.

Torch-free at import, so that a job whose points are all kept costs a fraction of a second: the model, lm-eval and
the decoder are imported by the functions that need them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from workflow_lib.defaults import EXITS_OFF

MAIN = "main"  # the series of points a job's model is loaded with (lm_model.DynamaxLM's model_args)
from workflow_lib.evaluation.records import RECORD, build_record, sample_lines, write_point
from workflow_lib.evaluation.tasks import TASKS



def grid_points(out_dir: Path, thresholds: list[tuple[str, float]] | None, prune: int,
                prune_series: list[tuple[str, int]] | None, prune_rule: str) -> list[tuple[Path, dict]]:
    """(output folder, point) for every grid point of a job: a threshold each (threshold~T/, T as spelled), a pruning
    depth each (prune~N/ or prune_RULE~N/), else the one point exits-off or oracle (out_dir itself)."""
    if prune_series:
        name = "prune" if prune_rule == "deepest" else f"prune_{prune_rule}"
        return [(out_dir / f"{name}~{spelled}", {"threshold": None, "prune": n}) for spelled, n in prune_series]
    if not thresholds:
        return [(out_dir, {"threshold": None, "prune": prune})]
    return [(out_dir / f"threshold~{spelled}", {"threshold": t, "prune": prune}) for spelled, t in thresholds]


# Options that change which points a job evaluates or how fast, not what a point's record holds (a batch decodes
# every row as batch size 1 would).
NOT_SETTINGS = ("thresholds", "prune_series", "threads", "batch_size", "reuse", "out_dir")


# Options added later, with the value a record made before them was made with: such a record is still reusable.
IMPLICIT_SETTINGS = {"emission": "last_block", "translators": None, "max_draft": None, "draft_vocab": None}


def settings(config: dict) -> dict:
    """The options (evaluate's, as recorded) that decide what a point's record holds."""
    return {k: v for k, v in config.items() if k not in NOT_SETTINGS
            and not (k in IMPLICIT_SETTINGS and v == IMPLICIT_SETTINGS[k])}


def newest_input(paths: list[str | None]) -> float:
    """Latest modification time among the local files a point depends on (hub ids and None have none here)."""
    times = []
    for path in paths:
        if path is None or not Path(path).exists():
            continue
        # a heads folder holds the heads of other emission rules in emission~RULE/ below it: not this point's input
        files = [Path(path)] if Path(path).is_file() else [
            f for f in Path(path).rglob("*")
            if f.is_file() and not any(part.startswith("emission~") for part in f.relative_to(path).parts)]
        times.extend(f.stat().st_mtime for f in files)
    return max(times, default=0.0)


def reusable(out_dir: Path, point: dict, config: dict, inputs_mtime: float) -> bool:
    """Whether out_dir already holds this point's record, made with these settings after the inputs last changed."""
    path = out_dir / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    same_point = record.get("threshold") == point["threshold"] and record.get("prune") == point["prune"]
    same_settings = settings(record.get("provenance", {}).get("config") or {}) == settings(config)
    return same_point and same_settings and path.stat().st_mtime >= inputs_mtime


def oracle_exits(backbone: str, exit_layers: list[int] | None) -> list[int]:
    """The oracle's exit blocks: `exit_layers`, else the heads' default for the backbone's depth (its config read
    without weights, as for any backbone name: a GGUF file's from its header)."""
    if exit_layers:
        return list(exit_layers)
    from workflow_lib.models.backbone import default_exit_layers, load_config

    return default_exit_layers(load_config(backbone).num_hidden_layers)


def angular_sequences(tokenizer, path: str, n: int, tokens: int, device) -> list:
    """The first n documents of a corpus file, each its first `tokens` tokens as a (1, T) tensor."""
    import torch

    from workflow_lib.data.formats import read_corpus

    sequences = []
    for doc in read_corpus(path):
        ids = tokenizer(doc).input_ids[:tokens]
        if ids:
            sequences.append(torch.tensor([ids], device=device))  # (1, T)
        if len(sequences) == n:
            break
    if not sequences:
        raise ValueError(f"--angular-text {path} holds no document")
    return sequences


def load_model(seed: int, threads: int | None = None, **options):
    """The backbone as the `dynamax` lm-eval model (evaluation/lm_model.DynamaxLM with `options`: backbone, heads,
    policy, prune, oracle_exits, emission ...), exits off, after seeding torch and setting its CPU threads.
    ValueError / FileNotFoundError for heads or translators of another backbone, an unknown policy ..."""
    import torch

    from workflow_lib.evaluation.lm_model import DynamaxLM

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    return DynamaxLM(threshold=EXITS_OFF, seed=seed, **options)


def run_point(lm, task: tuple, shots: int | None, max_new_tokens: int, seed: int,
              limit: int | None) -> tuple[dict, float]:
    """lm-eval on the task (tasks.load_task's pair) at the model's current point, `shots` (None: the task's own) and
    `seed` for every random source: (simple_evaluate's results with samples, wall seconds)."""
    import lm_eval
    import lm_eval.evaluator

    manager, built = task
    lm.warm_up()
    start = time.perf_counter()
    # lm-eval ends every simple_evaluate with add_env_info: torch's collect_env, which runs pip, lscpu, nvidia-smi
    # and more in subprocesses (about 0.7 CPU s, as much as decoding a whole small grid point here) for a report
    # no record keeps (records carry their own provenance). Skipped for this call only.
    env_info, lm_eval.evaluator.add_env_info = lm_eval.evaluator.add_env_info, lambda storage: None
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[built], task_manager=manager, num_fewshot=shots, limit=limit,
            gen_kwargs=f"max_gen_toks={max_new_tokens}", log_samples=True, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    finally:
        lm_eval.evaluator.add_env_info = env_info
    return results, time.perf_counter() - start


def save_point(out_dir: Path, lm, results: dict, wall: float, point: dict, task: str, backbone: str,
               heads: str | None, degenerate_limit: float, config: dict, seed: int) -> dict:
    """The point's record (with `config`, the job's options, in its provenance) and samples, written atomically into
    out_dir; one summary line printed."""
    lm_task = TASKS[task][0]
    point = {**point, "policy": lm.decoder.policy, "emission": lm.decoder.emission,
             "exits_enabled": lm.decoder.exits_enabled,
             **({"max_draft": lm.decoder.max_draft} if lm.decoder.max_draft is not None else {}),
             "oracle_exits": lm.decoder.oracle_exits or None, "heads": heads, "backbone": backbone,
             "n_layers": lm.decoder.parts.n_layers}
    if lm.heads_meta is not None:  # the head spec (name, type, options, training) that train_heads recorded
        point["head_spec"] = lm.heads_meta.get("spec")
    record = build_record(task, results, lm.generations, point, wall, degenerate_limit, config, seed)
    path = write_point(out_dir, record, sample_lines(results["samples"][lm_task], lm.generations))
    print(f"{path}: {record['metrics']} crf_exact={record['crf_exact']:.3f} crf_paper={record['crf_paper']:.3f} "
          f"tok/s={record['speed']['decode_tokens_per_second']:.1f} degenerate={record['degenerate']['share']:.2f}"
          f"{'' if record['valid'] else ' INVALID'}")
    return record
