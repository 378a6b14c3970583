"""Evaluate one (backbone, heads, policy, task) over a list of grid points with the model loaded once.

    python -m workflow_lib.cli.evaluate --backbone runs/backbones/tiny-mistral --heads runs/heads/tiny-mistral/calm \
        --policy recompute --task triviaqa --data data/triviaqa.jsonl --thresholds 0.5,0.9 --out-dir OUT

Grid points and where their records go (each folder: record.json + samples.jsonl, written atomically):
  --heads DIR --thresholds T1,T2,...   OUT/threshold~T/  (T spelled exactly as given on the command line)
  --no-heads                           OUT/              (exits disabled: the baseline)
  --no-heads --prune-series 0,1,2      OUT/prune~N/      (layer-pruning baseline)
  ... --prune-rule angular             OUT/prune_angular~N/  (the dropped blocks chosen by angular distance)
  --oracle [--exit-layers 2,3,4]       OUT/              (the oracle bound: each token exits at the earliest exit
                                                          whose emitted token is the full model's; no head)
--emission RULE (last_block, the default | lens | translator with --translators DIR) says how an exit turns its
hidden state into the token (docs/policies.md); the pipeline puts a non-default rule's records under a folder of
their own (emission~RULE), this command writes where --out-dir says. The rule is in every record.
A threshold above 1 disables the exits. Everything is checked (task, files, numbers) before the model loads;
heads built for another backbone are refused when they load, before any generation.

--reuse keeps a point whose record.json already exists, was made with the same settings (every option but the
lists of points, --threads and --reuse) and is newer than every input file (backbone, tokenizer, heads, data):
the pipeline evaluates a whole threshold list per job, and adding a threshold to it then computes only that one.
Settings compare as spelled: the same file named by another path counts as another setting (recomputed).
Delete a point's folder to have it recomputed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from workflow_lib.evaluation.records import RECORD, build_record, sample_lines, write_point
from workflow_lib.evaluation.tasks import TASK_DIR, TASKS
from workflow_lib.models.names import PRESET_PREFIX, check_local
from workflow_lib.choices import EMISSION_RULES, PRUNE_RULES


def number_list(text: str, kind=float) -> list[tuple[str, float | int]]:
    """'0.5,0.9' -> [('0.5', 0.5), ('0.9', 0.9)]: each item as spelled (it names the output folder) and parsed."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"empty list {text!r}")
    out = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not {'a number' if kind is float else 'an integer'}") from None
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value) or value < 0):
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not a finite non-negative number")
        if isinstance(value, int) and value < 0:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is negative")
        out.append((item, value))
    return out


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """The options of any run of a task: model, data, generation and lm-eval settings (evaluate and calibrate)."""
    p.add_argument("--backbone", required=True, help="backbone: local save_pretrained folder, hub id, or preset:NAME")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the backbone's)")
    p.add_argument("--policy", help="missing-state policy (transformers, i.e. mistral/llama/qwen2: recompute|copy|copy_prev; "
                                    "mamba2: recompute|skip); "
                                    "default: the architecture's default")
    p.add_argument("--emission", choices=EMISSION_RULES, default="last_block",
                   help="how an exit emits its token: last_block (the paper's: the last block runs on the exit state), "
                        "lens (final norm and LM head on it), translator (on its tuned-lens translation; needs "
                        "--translators)")
    p.add_argument("--translators", help="folder of tuned-lens translators (save_translators), for --emission translator")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", required=True, help="the task's data file (canonical format, or an original release format)")
    p.add_argument("--fewshot-data", help="triviaqa only: few-shot pool file (default: questions outside the subset)")
    p.add_argument("--triviaqa-n", type=int, default=1000, help="triviaqa only: size of the longest-answer subset")
    p.add_argument("--limit", type=int, help="evaluate only the first N documents")
    p.add_argument("--shots", type=int, help="few-shot examples (default: the task's: triviaqa 2, coqa 0, truthfulqa 1)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--degenerate-limit", type=float, default=0.2, help="largest valid share of degenerate generations")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234, help="lm-eval's python/numpy/torch/few-shot seeds")
    p.add_argument("--device", help="cpu, cuda, cuda:0 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=1,
                   help="requests decoded together (generation, each row exiting on its own decision, and "
                        "loglikelihood); the answers are those of batch size 1 (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's); batch-1 decoding of a small "
                                               "model is fastest on 1, and oversubscribed cores make it many times slower")


def check_task_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks on `add_task_arguments`' options (p.error: one line, exit status 2, before any loading)."""
    for name in ("limit", "max_new_tokens", "triviaqa_n"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.shots is not None and args.shots < 0:
        p.error("--shots must be >= 0")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if not 0.0 <= args.degenerate_limit <= 1.0:
        p.error("--degenerate-limit must be in [0, 1]")
    for flag, path in (("--data", args.data), ("--fewshot-data", args.fewshot_data)):
        if path is not None and not Path(path).is_file():
            p.error(f"{flag}: file not found: {path}")
    if args.fewshot_data and args.task != "triviaqa":
        p.error("--fewshot-data is for --task triviaqa")
    if args.emission == "translator" and args.translators is None:
        p.error("--emission translator needs --translators DIR")
    if args.translators is not None and args.emission != "translator":
        p.error("--translators is for --emission translator")
    if args.translators is not None and not Path(args.translators).is_dir():
        p.error(f"--translators: folder not found: {args.translators}")
    if getattr(args, "heads", None) is not None and not Path(args.heads).is_dir():
        p.error(f"--heads: folder not found: {args.heads}")
    if not args.backbone.startswith(PRESET_PREFIX):
        try:
            check_local(args.backbone)
        except (FileNotFoundError, ValueError) as e:
            p.error(f"--backbone: {e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p)
    heads = p.add_mutually_exclusive_group(required=True)
    heads.add_argument("--heads", help="folder of trained exit heads (save_heads)")
    heads.add_argument("--no-heads", action="store_true", help="exits disabled: the baseline / pruning point")
    heads.add_argument("--oracle", action="store_true", help="the oracle bound at --exit-layers (see above)")
    p.add_argument("--exit-layers", type=lambda s: number_list(s, int),
                   help="--oracle's exit blocks (default: the heads' default, 4 spread over the second half)")
    p.add_argument("--thresholds", type=number_list, help="comma-separated exit thresholds (with --heads)")
    p.add_argument("--prune", type=int, default=0, help="blocks pruned before the last (default 0)")
    p.add_argument("--prune-series", type=lambda s: number_list(s, int),
                   help="comma-separated n: one pruning point each (with --no-heads)")
    p.add_argument("--prune-rule", choices=PRUNE_RULES, default="deepest",
                   help="which n blocks are dropped: deepest, the n just before the last (the paper); angular, the n "
                        "consecutive blocks whose input and output are closest in angle on --angular-text (Gromov "
                        "et al.)")
    p.add_argument("--angular-text", help="held-out text (.txt / .jsonl corpus) whose sequences choose the angular "
                                          "blocks, e.g. the heads' validation corpus")
    p.add_argument("--angular-sequences", type=int, default=16, help="documents of --angular-text used (default 16)")
    p.add_argument("--angular-tokens", type=int, default=128, help="tokens kept of each of them (default 128)")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--reuse", action="store_true", help="keep points already evaluated with the same settings and "
                                                         "inputs (see above)")
    args = p.parse_args(argv)

    if args.heads is not None and not args.thresholds:
        p.error("--heads needs --thresholds")
    if args.no_heads and args.thresholds:
        p.error("--thresholds needs --heads (--no-heads is the exits-disabled point)")
    if args.exit_layers and not args.oracle:
        p.error("--exit-layers is for --oracle (heads carry their own exit layers)")
    if args.oracle and args.prune:
        p.error("--oracle bounds the exits of the unpruned backbone: no --prune")
    if args.prune_series and not args.no_heads:
        p.error("--prune-series is the pruning baseline: use it with --no-heads")
    if args.prune_series and args.prune:
        p.error("give either --prune or --prune-series")
    if args.prune < 0:
        p.error("--prune must be >= 0")
    if args.prune_rule == "angular" and not (args.prune or args.prune_series):
        p.error("--prune-rule angular needs --prune N or --prune-series")
    if args.prune_rule == "angular" and args.angular_text is None:
        p.error("--prune-rule angular needs --angular-text (the text that chooses the blocks)")
    if args.angular_text is not None and not Path(args.angular_text).is_file():
        p.error(f"--angular-text: file not found: {args.angular_text}")
    for name in ("angular_sequences", "angular_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    check_task_arguments(p, args)
    return args



def angular_sequences(tokenizer, path: str, n: int, tokens: int, device) -> list:
    """The first n documents of a corpus file, each its first `tokens` tokens as a (1, T) tensor."""
    import torch

    from workflow_lib.data.schemas import read_corpus

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


def grid_points(args: argparse.Namespace) -> list[tuple[Path, dict]]:
    """(output folder, point) for every grid point this job evaluates."""
    if args.prune_series:
        name = "prune" if args.prune_rule == "deepest" else f"prune_{args.prune_rule}"
        return [(args.out_dir / f"{name}~{spelled}", {"threshold": None, "prune": n}) for spelled, n in args.prune_series]
    if args.no_heads or args.oracle:
        return [(args.out_dir, {"threshold": None, "prune": args.prune})]
    return [(args.out_dir / f"threshold~{spelled}", {"threshold": t, "prune": args.prune}) for spelled, t in args.thresholds]


# Options that change which points a job evaluates or how fast, not what a point's record holds (a batch decodes
# every row as batch size 1 would).
NOT_SETTINGS = ("thresholds", "prune_series", "threads", "batch_size", "reuse", "out_dir")


# Options added later, with the value a record made before them was made with: such a record is still reusable.
IMPLICIT_SETTINGS = {"emission": "last_block", "translators": None}


def settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NOT_SETTINGS
            and not (k in IMPLICIT_SETTINGS and v == IMPLICIT_SETTINGS[k])}


def newest_input(args: argparse.Namespace) -> float:
    """Latest modification time among the local files a point depends on (hub ids have none here)."""
    times = []
    for path in (args.backbone, args.tokenizer, args.heads, args.data, args.fewshot_data,
                 args.angular_text, args.translators):
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


def oracle_exits(args: argparse.Namespace) -> list[int] | None:
    """--oracle's exit blocks: --exit-layers, else the heads' default for the backbone's depth."""
    if not args.oracle:
        return None
    if args.exit_layers:
        return [n for _, n in args.exit_layers]
    from transformers import AutoConfig

    from workflow_lib.models.backbone import default_exit_layers, preset_config

    name = args.backbone
    config = preset_config(name.removeprefix("preset:")) if name.startswith("preset:") else AutoConfig.from_pretrained(name)
    return default_exit_layers(config.num_hidden_layers)


def check_data(args: argparse.Namespace, prog: str, *files: str) -> None:
    """The task's data files in their format, before the model loads (the task reads them again the same way)."""
    from workflow_lib.data.schemas import LOADERS, DataFormatError

    try:
        for path in (args.data, args.fewshot_data, *files):
            if path:
                LOADERS[args.task](path)
    except DataFormatError as e:
        sys.exit(f"{prog}: error: {e}")


def load_task(args: argparse.Namespace, data: str) -> tuple:
    """(lm-eval's task manager with the project's tasks reading `data` and the few-shot pool, the task built).

    Built once per job and given to every point's simple_evaluate: a task named by its name was built anew for each
    point, reading and validating its data files again (about a fifth of a point's CPU time at 64 questions). Reuse
    changes nothing: simple_evaluate sets the shots, generation settings and few-shot seed again on every call, and
    builds the requests afresh (each with its own copy of the generation settings)."""
    from lm_eval.tasks import TaskManager

    metadata = {TASKS[args.task][1]: str(Path(data).resolve()), "triviaqa_n": args.triviaqa_n}
    if args.fewshot_data:
        metadata["triviaqa_fewshot_file"] = str(Path(args.fewshot_data).resolve())
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=metadata)
    lm_task = TASKS[args.task][0]
    return manager, manager.load(lm_task)["tasks"][lm_task]


def load_model(args: argparse.Namespace, prog: str, prune: int = 0, oracle: list[int] | None = None):
    """The backbone (and --heads, or the oracle at these exits) as the `dynamax` lm-eval model, exits off; a clear
    exit on bad heads or policy."""
    import torch

    from workflow_lib.evaluation.lm_model import DynamaxLM

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return DynamaxLM(backbone=args.backbone, heads=args.heads, threshold=2.0, policy=args.policy, prune=prune,
                         tokenizer=args.tokenizer, repetition_penalty=args.repetition_penalty, device=args.device,
                         dtype=args.dtype, seed=args.seed, batch_size=args.batch_size, oracle_exits=oracle,
                         emission=args.emission, translators=args.translators)
    except (ValueError, FileNotFoundError) as e:  # heads / translators for another backbone, unknown policy ...
        sys.exit(f"{prog}: error: {e}")


def run_point(lm, task: tuple, args: argparse.Namespace, limit: int | None) -> tuple[dict, float]:
    """lm-eval on the task (load_task's pair) at the model's current point: (simple_evaluate's results with samples,
    wall seconds)."""
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
            model=lm, tasks=[built], task_manager=manager, num_fewshot=args.shots, limit=limit,
            gen_kwargs=f"max_gen_toks={args.max_new_tokens}", log_samples=True, random_seed=args.seed,
            numpy_random_seed=args.seed, torch_random_seed=args.seed, fewshot_random_seed=args.seed)
    finally:
        lm_eval.evaluator.add_env_info = env_info
    return results, time.perf_counter() - start


def save_point(out_dir: Path, lm, results: dict, wall: float, point: dict, args: argparse.Namespace,
               config: dict) -> dict:
    """The point's record and samples, written atomically into out_dir; one summary line printed."""
    lm_task = TASKS[args.task][0]
    point = {**point, "policy": lm.decoder.policy, "emission": lm.decoder.emission,
             "exits_enabled": lm.decoder.exits_enabled,
             "oracle_exits": lm.decoder.oracle_exits or None, "heads": args.heads, "backbone": args.backbone,
             "n_layers": lm.decoder.parts.n_layers}
    if lm.heads_meta is not None:  # the head spec (name, type, options, training) that train_heads recorded
        point["head_spec"] = lm.heads_meta.get("spec")
    record = build_record(args.task, results, lm.generations, point, wall, args.degenerate_limit, config, args.seed)
    path = write_point(out_dir, record, sample_lines(results["samples"][lm_task], lm.generations))
    print(f"{path}: {record['metrics']} crf_exact={record['crf_exact']:.3f} crf_paper={record['crf_paper']:.3f} "
          f"tok/s={record['speed']['decode_tokens_per_second']:.1f} degenerate={record['degenerate']['share']:.2f}"
          f"{'' if record['valid'] else ' INVALID'}")
    return record


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    points = grid_points(args)
    if args.reuse:  # before the expensive imports: a job with every point done costs a fraction of a second
        inputs_mtime = newest_input(args)
        kept = [out_dir for out_dir, point in points if reusable(out_dir, point, config, inputs_mtime)]
        for out_dir in kept:
            print(f"{out_dir}: kept (evaluated before with the same settings and inputs)")
        points = [(out_dir, point) for out_dir, point in points if out_dir not in kept]
        if not points:
            return 0

    check_data(args, "evaluate")
    if args.angular_text:
        from workflow_lib.data.schemas import DataFormatError, read_corpus

        try:
            read_corpus(args.angular_text)  # checks the suffix now; documents are read once the tokenizer is there
        except DataFormatError as e:
            sys.exit(f"evaluate: error: {e}")

    from workflow_lib.decoding.pruning import angular_distance_start

    task = load_task(args, args.data)
    lm = load_model(args, "evaluate", prune=points[0][1]["prune"], oracle=oracle_exits(args))
    try:
        angular = (angular_sequences(lm.tokenizer, args.angular_text, args.angular_sequences, args.angular_tokens,
                                     lm.model.device) if args.prune_rule == "angular" else None)
    except ValueError as e:  # no document in the text
        sys.exit(f"evaluate: error: {e}")
    if args.heads:  # each batch's prefill serves every threshold of the job (lm_model.share_thresholds)
        lm.share_thresholds([point["threshold"] for _, point in points if point["threshold"] is not None])
    setup_seconds = time.perf_counter() - started  # imports, data check, model and heads load: paid once per job
    for out_dir, point in points:
        threshold = point["threshold"] if point["threshold"] is not None else 2.0
        try:
            start = (angular_distance_start(lm.model, angular, point["prune"])
                     if angular is not None and point["prune"] else None)
            lm.set_point(threshold, point["prune"], start)
        except ValueError as e:  # a prune n the backbone cannot take, an exit among the pruned blocks
            sys.exit(f"evaluate: error: {e}")
        results, wall = run_point(lm, task, args, args.limit)
        point = {**point, "prune_rule": args.prune_rule, "prune_start": lm.prune_start if point["prune"] else None,
                 "setup_seconds": setup_seconds}
        save_point(out_dir, lm, results, wall, point, args, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
