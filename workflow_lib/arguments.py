"""Command-line pieces that several entry points (workflow_lib/cli/*) share: list parsers, --threads, the options of
any run of a task with their checks, and NAME:DATA[:SHOTS] task specs.

Not an entry point, and not in cli/: there every module is one, and none imports another (tests/test_structure.py),
so what two of them share lives here, beside choices.py and defaults.py, which it reads its defaults from. Torch-free,
so that an entry point checks its arguments before any expensive import.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from workflow_lib.choices import DEFAULT_EMISSION, DTYPES, EMISSION_RULES
from workflow_lib.defaults import EVALUATION, SEED, TRIVIAQA_SUBSET
from workflow_lib.evaluation.tasks import TASKS, default_shots
from workflow_lib.models.names import PRESET_PREFIX, check_local


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


def layer_list(text: str) -> list[int]:
    """'3,4,5' -> [3, 4, 5]: exit layers (0-based block indices)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"exit layers must be comma-separated integers, got {text!r}") from None


def set_threads(p: argparse.ArgumentParser, threads: int | None) -> None:
    """--threads: torch's CPU threads for this process (None: torch's choice)."""
    if threads is not None:
        if threads < 1:
            p.error("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)


def paired_default(value, partner, default, absent=None):
    """An option that goes with another (--answers-weight with --answers): as given, else `default` when its partner
    is given (the pipeline's config default), else `absent`."""
    if value is not None:
        return value
    return default if partner is not None else absent


def task_spec(spec: str) -> tuple[str, str, int]:
    """NAME:DATA[:SHOTS] -> (task, data file, shots), the task file's shots if none; ValueError names what is off."""
    name, _, rest = spec.partition(":")
    data, _, shots = rest.partition(":")
    if name not in TASKS or not data:
        raise ValueError(f"{spec!r}: expected NAME:DATA[:SHOTS] with NAME one of {', '.join(sorted(TASKS))}")
    if not Path(data).is_file():
        raise ValueError(f"{spec!r}: no file {data!r}")
    if shots and not shots.isdigit():
        raise ValueError(f"{spec!r}: SHOTS must be a whole number, got {shots!r}")
    return name, data, int(shots) if shots else default_shots(name)


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """The options of any run of a task: model, data, generation and lm-eval settings (evaluate and calibrate)."""
    p.add_argument("--backbone", required=True, help="backbone: local save_pretrained folder, hub id, or preset:NAME")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the backbone's)")
    p.add_argument("--policy", help="missing-state policy (transformers, i.e. mistral/llama/qwen2: recompute|copy|copy_prev; "
                                    "mamba2: recompute|skip); "
                                    "default: the architecture's default")
    p.add_argument("--emission", choices=EMISSION_RULES, default=DEFAULT_EMISSION,
                   help="how an exit emits its token: last_block (the paper's: the last block runs on the exit state), "
                        "lens (final norm and LM head on it), translator (on its tuned-lens translation; needs "
                        "--translators)")
    p.add_argument("--translators", help="folder of tuned-lens translators (save_translators), for --emission translator")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", required=True, help="the task's data file (canonical format, or an original release format)")
    p.add_argument("--fewshot-data", help="triviaqa only: few-shot pool file (default: questions outside the subset)")
    p.add_argument("--triviaqa-n", type=int, default=TRIVIAQA_SUBSET,
                   help=f"triviaqa only: size of the longest-answer subset (default {TRIVIAQA_SUBSET})")
    p.add_argument("--limit", type=int, help="evaluate only the first N documents")
    p.add_argument("--shots", type=int, help="few-shot examples (default: the task file's num_fewshot, "
                                             "workflow_lib/evaluation/tasks/TASK.yaml)")
    p.add_argument("--max-new-tokens", type=int, default=EVALUATION["max_new_tokens"],
                   help=f"(default {EVALUATION['max_new_tokens']})")
    p.add_argument("--degenerate-limit", type=float, default=EVALUATION["degenerate_limit"],
                   help=f"largest valid share of degenerate generations (default {EVALUATION['degenerate_limit']})")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=SEED, help=f"lm-eval's python/numpy/torch/few-shot seeds (default {SEED})")
    p.add_argument("--device", help="cpu, cuda, cuda:0 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=DTYPES, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=EVALUATION["batch_size"],
                   help="requests decoded together (generation, each row exiting on its own decision, and "
                        f"loglikelihood); the answers are those of batch size 1 (default {EVALUATION['batch_size']})")
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


def model_options(args: argparse.Namespace) -> dict:
    """`add_task_arguments`' model options (and --heads where the entry point has it) as evaluation/points.load_model's
    keyword arguments."""
    return {"backbone": args.backbone, "heads": getattr(args, "heads", None), "policy": args.policy,
            "tokenizer": args.tokenizer, "repetition_penalty": args.repetition_penalty, "device": args.device,
            "dtype": args.dtype, "batch_size": args.batch_size, "emission": args.emission,
            "translators": args.translators, "seed": args.seed, "threads": args.threads}
