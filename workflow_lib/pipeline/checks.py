"""The config checks that span keys (the schema checks each key alone): each raises ConfigError naming the key.

A new check goes here, called from plan.resolve once what it needs is resolved, with a unit test in
tests/test_plan.py."""
from __future__ import annotations

from ..training.head_specs import EXIT_LAYERS, TRAINING_KEYS
from .config import ConfigError


def check_setup(config: dict, tasks: list[str]) -> None:
    """Exactly one of the synthetic world and real data; real data says where every evaluated task comes from."""
    world, real = config["world"], config["real_data"]
    if (world is None) == (real is None):
        raise ConfigError("world", "set exactly one of 'world' (embedded setup) and 'real_data' (paper scale)")
    for task in tasks if real is not None else []:
        if task not in real:
            raise ConfigError(f"evaluation.tasks.{task}", f"needs real_data.{task} (where its data comes from)")


def check_calibrated_tasks(calibrated: list[str], tasks: list[str], evaluation: dict, pools: list[str]) -> None:
    """Each calibrated task is evaluated (`tasks`) and has questions its evaluation leaves out: a pool of its own or a
    limit (refused here rather than in the calibration_split job)."""
    for task in calibrated:
        if task not in tasks:
            raise ConfigError("calibration.tasks", f"{task} is not among the evaluated evaluation.tasks")
    for task in calibrated:
        if task not in pools and (evaluation["tasks"][task] or {}).get("limit") is None:
            raise ConfigError("calibration.tasks", f"{task} has no calibration questions: every one of its questions "
                                                   f"is evaluated (evaluation.tasks.{task}.limit: null) and it has no "
                                                   f"separate pool here (tasks that do: {', '.join(pools)}); set "
                                                   f"calibration.tasks, or a limit")


def check_untrained_heads(heads: dict, untrained: list[str], specs: dict) -> None:
    """A head type with nothing to train takes no training setting (it would be ignored)."""
    for name in untrained:
        for key in TRAINING_KEYS:
            if key in heads[name]:
                raise ConfigError(f"heads.{name}.{key}", f"head type {specs[name]['type']!r} is a zero-parameter "
                                                         f"exit rule, it has nothing to train (exit_layers is its one "
                                                         f"setting)")


def check_exit_layers(backbones: dict, depth: dict, specs: dict) -> None:
    """Every exit leaves the last block to run, wherever the backbone's depth is known before any job."""
    for name, spec in backbones.items():
        n = depth.get(name)
        if n is None:
            continue
        for where, layers in [(f"backbones.{name}.exit_layers", spec["exit_layers"]),
                              *((f"heads.{h}.exit_layers", s["training"][EXIT_LAYERS]) for h, s in specs.items())]:
            if any(layer > n - 2 for layer in layers or []):
                raise ConfigError(where, f"{layers} for backbone {name!r} of {n} blocks: each must be a block index "
                                         f"in 0..{n - 2} (the last block always runs)")


def check_heads(where: str, heads: list[str], specs: dict) -> None:
    for i, head in enumerate(heads):
        if head not in specs:
            raise ConfigError(f"{where}[{i}]", f"no head named {head!r} (heads: {', '.join(specs)})")


def check_calibrated_emissions(emissions: list[str], backbones: dict) -> None:
    """calibration.emissions lists rules some backbone evaluates."""
    evaluated = sorted({e for spec in backbones.values() for e in spec["emissions"]})
    for i, emission in enumerate(emissions):
        if emission not in evaluated:
            raise ConfigError(f"calibration.emissions[{i}]",
                              f"{emission!r} is not among the backbones' emissions {evaluated}")


def _check_listed_rule(where: str, emission: str, backbone: str, emissions: list[str]) -> None:
    if emission not in emissions:
        raise ConfigError(where, f"{emission!r} is not among backbones.{backbone}.emissions {emissions}")


def check_emission_lists(backbones: dict, specs: dict) -> None:
    """emission_heads and emission_policies list rules the backbone runs, heads that exist and its own policies."""
    for name, spec in backbones.items():
        for emission, heads in spec["emission_heads"].items():
            where = f"backbones.{name}.emission_heads.{emission}"
            _check_listed_rule(where, emission, name, spec["emissions"])
            check_heads(where, heads, specs)
        for emission, policies in spec["emission_policies"].items():
            where = f"backbones.{name}.emission_policies.{emission}"
            _check_listed_rule(where, emission, name, spec["emissions"])
            for i, policy in enumerate(policies):
                if policy not in spec["policies"]:
                    raise ConfigError(f"{where}[{i}]", f"{policy!r} is not among backbones.{name}.policies "
                                                       f"{spec['policies']}")


def check_comparisons(comparisons: dict, specs: dict) -> None:
    for name, heads in comparisons.items():
        check_heads(f"analysis.comparisons.{name}", heads, specs)


def check_answer_tasks(answer_tasks: list[str], tasks: list[str], embedded: bool, pools: list[str]) -> None:
    """Answer prompts are built as the task's evaluation builds them (its settings, evaluated in this run or not),
    from questions nobody evaluates."""
    for task in answer_tasks:
        if task not in tasks:
            raise ConfigError("answers.tasks", f"{task} is not among evaluation.tasks (its prompts are built as its "
                                               f"evaluation builds them)")
        if embedded and task not in pools:
            raise ConfigError("answers.tasks", f"{task} has no held-out prompts in the world: every one of its "
                                               f"questions is about a held-out fact and is evaluated (tasks that "
                                               f"have some: {', '.join(pools)})")


def check_speculative(backbones: dict, specs: dict, types: dict, answer_tasks: list[str]) -> None:
    """A speculative series drafts with heads its backbone runs under that rule, heads with no recurrent state (its
    state would have to roll back with the rejected drafts), and a draft vocabulary needs the backbone's answers."""
    for name, spec in backbones.items():
        speculative = spec["speculative"]
        if speculative is None:
            continue
        for emission, heads in speculative["heads"].items():
            where = f"backbones.{name}.speculative.heads.{emission}"
            _check_listed_rule(where, emission, name, spec["emissions"])
            check_heads(where, heads, specs)
            runs = spec["emission_heads"].get(emission)
            for i, head in enumerate(heads):
                if runs and head not in runs:
                    raise ConfigError(f"{where}[{i}]", f"{head!r} does not run under {emission} on this backbone "
                                                       f"(backbones.{name}.emission_heads.{emission}: {runs})")
                if types[specs[head]["type"]].stateful:
                    raise ConfigError(f"{where}[{i}]", f"head type {specs[head]['type']!r} carries a recurrent state, "
                                                       f"which would have to roll back with the rejected drafts")
        if speculative["draft_vocab"] is not None and not answer_tasks:
            raise ConfigError(f"backbones.{name}.speculative.draft_vocab", "a draft vocabulary is made from the "
                                                                           "backbone's greedy answers: set answers.tasks")
