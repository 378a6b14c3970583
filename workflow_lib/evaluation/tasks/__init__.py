"""The project's lm-eval task definitions (YAML here, Python in helpers.py), found with
`TaskManager(include_path=TASK_DIR)` or `lm_eval --include_path TASK_DIR`; and how every entry point that runs a task
or builds its prompts loads it (evaluate, calibrate, answers, agreement), so their prompts are the same.

Torch-free at import: lm-eval is imported by the functions that need it.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from workflow_lib.defaults import TRIVIAQA_SUBSET

TASK_DIR = Path(__file__).resolve().parent

# evaluate's --task name (its YAML file's name here) -> (lm-eval task name, metadata key of its data file)
TASKS = {
    "triviaqa": ("dynamax_triviaqa", "triviaqa_file"),
    "coqa": ("dynamax_coqa", "coqa_file"),
    "truthfulqa": ("dynamax_truthfulqa_gen", "truthfulqa_file"),
}


class _TaskFileLoader(yaml.SafeLoader):
    """Reads a task file's plain keys; lm-eval's `!function` tags (resolved by lm-eval itself) read as None."""


_TaskFileLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def default_shots(task: str) -> int:
    """The task's few-shot examples when none are asked for: its file's `num_fewshot`, as lm-eval reads it."""
    return yaml.load((TASK_DIR / f"{task}.yaml").read_text(encoding="utf-8"), Loader=_TaskFileLoader)["num_fewshot"]


def check_task_data(task: str, *paths: str | None) -> None:
    """The task's data files in their format (DataFormatError naming what is wrong), before any model loads; the task
    reads them again the same way."""
    from workflow_lib.data.formats import LOADERS

    for path in paths:
        if path:
            LOADERS[task](path)


def load_task(task: str, data: str, triviaqa_n: int = TRIVIAQA_SUBSET, fewshot_data: str | None = None) -> tuple:
    """(lm-eval's task manager with the project's tasks reading `data` and the few-shot pool, the task built).

    Built once per job and given to every point's simple_evaluate: a task named by its name was built anew for each
    point, reading and validating its data files again (about a fifth of a point's CPU time at 64 questions). Reuse
    changes nothing: simple_evaluate sets the shots, generation settings and few-shot seed again on every call, and
    builds the requests afresh (each with its own copy of the generation settings)."""
    from lm_eval.tasks import TaskManager

    metadata = {TASKS[task][1]: str(Path(data).resolve()), "triviaqa_n": triviaqa_n}
    if fewshot_data:
        metadata["triviaqa_fewshot_file"] = str(Path(fewshot_data).resolve())
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=metadata)
    lm_task = TASKS[task][0]
    return manager, manager.load(lm_task)["tasks"][lm_task]


def task_prompts(task: str, data: str, shots: int | None, limit: int, fewshot_data: str | None, seed: int,
                 triviaqa_n: int = TRIVIAQA_SUBSET) -> list[str]:
    """The task's first `limit` prompts as lm-eval builds them for evaluate with these shots (None: the task's own)
    and few-shot seed. As simple_evaluate does, asked-for shots do not override a task whose file says 0."""
    _, built = load_task(task, data, triviaqa_n, fewshot_data)
    if shots is not None and built.get_config("num_fewshot") != 0:
        built.set_config(key="num_fewshot", value=shots)
    built.set_fewshot_seed(seed)
    built.build_all_requests(limit=limit, rank=0, world_size=1)
    return [instance.args[0] for instance in built.instances]
