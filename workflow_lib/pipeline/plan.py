"""The pipeline's plan: the config resolved into the grid it spans, every list and mapping the rules read.

resolve(config) checks the config (the schema, then the checks that span keys: checks.py), fills the schema's
defaults and returns a Plan; a refused config raises ConfigError naming the key. The plan's artifact paths, command
flags and record lists are plan.paths (paths.py), plan.flags (flags.py) and plan.records (records.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from ..data.sources import is_local_file
from ..training.head_specs import EXIT_LAYERS, registry, resolve_specs
from ..training.label_sharing import reads_label_cache
from . import checks
from .backbones import PRETRAIN, backbone_depth, is_gguf_model
from .config import SCHEMA, ConfigError, validated
from .flags import Flags
from .keys import emission_of, head_key, number_label, spec_name
from .paths import Paths
from .records import Records


@dataclass(frozen=True)
class Plan:
    config: dict  # the config checked, the schema's defaults filled in; its sections:
    seed: int
    world: dict | None  # the synthetic world (embedded setup), else None
    real: dict | None  # real_data (paper scale), else None
    tokenizer: dict  # the BPE tokenizer trained on the world's corpus (embedded setup)
    backbones: dict  # name -> its entry
    head_training: dict
    translators: dict
    answers: dict
    agreement: dict
    evaluation: dict
    calibration: dict | None  # None: no calibrated thresholds
    analysis: dict
    # what they resolve to
    depth: dict  # backbone -> blocks, where known before any job (backbones.backbone_depth)
    gguf_backbones: list  # converted once into results/backbones/NAME (rule convert_backbone)
    heads: list  # the head specs' names (`heads:`)
    head_specs: dict  # spec name -> {"type", "options", "training"} (training/head_specs.resolve_specs)
    untrained_heads: list  # specs of a type with nothing to train: a heads.json-only folder (rule untrained_heads)
    trained_heads: list  # the others: a train_heads job per backbone and head key
    tasks: list  # the evaluated tasks (evaluation.tasks but those with evaluate: false)
    thresholds: list  # evaluation.thresholds as their folders spell them (keys.number_label)
    calibrated_tasks: list
    deltas: list  # calibration.deltas as their folders spell them
    separate_pools: list  # tasks whose held-out questions come from a pool apart from the evaluated file
    answer_tasks: list  # tasks whose held-out prompts' greedy answers translators and heads fit (answers.tasks)

    @cached_property
    def paths(self) -> Paths:
        return Paths(self)

    @cached_property
    def flags(self) -> Flags:
        return Flags(self)

    @cached_property
    def records(self) -> Records:
        return Records(self)

    # ---- backbones ----
    def pretrained_here(self, backbone: str) -> bool:
        return self.backbones[backbone]["model"] == PRETRAIN

    def made_here(self, backbone: str) -> bool:
        """Pretrained here or converted here from a GGUF file: a folder under results/backbones."""
        return self.pretrained_here(backbone) or backbone in self.gguf_backbones

    def emissions(self, backbone: str) -> list[str]:
        return self.backbones[backbone]["emissions"]

    # ---- heads ----
    def spec(self, key: str) -> dict:
        """The resolved head spec of a head key (keys.py)."""
        return self.head_specs[spec_name(key)]

    def head_keys(self, backbone: str, specs: list[str] | None = None) -> list[str]:
        """Every head key this backbone runs among `specs` (default: all): under each of its emission rules, the specs
        listed for the rule in emission_heads (every spec when the rule is not listed)."""
        entry = self.backbones[backbone]
        return [head_key(h, rule) for rule in entry["emissions"] for h in (self.heads if specs is None else specs)
                if h in (entry["emission_heads"].get(rule) or self.heads)]

    def policies_under(self, backbone: str, emission: str) -> list[str]:
        """The policies a backbone's cells, oracle and calibration run under for one emission rule."""
        entry = self.backbones[backbone]
        return entry["emission_policies"].get(emission) or entry["policies"]

    def cells(self, backbones: list[str] | None = None, specs: list[str] | None = None):
        """(backbone, head key, policy) of every evaluation cell, before the task."""
        for b in self.backbones if backbones is None else backbones:
            for key in self.head_keys(b, specs):
                for policy in self.policies_under(b, emission_of(key)):
                    yield b, key, policy

    def speculative_cells(self, backbones: list[str] | None = None, specs: list[str] | None = None):
        """(backbone, head key, policy, max_draft) of every speculative series, before the task."""
        for b in self.backbones if backbones is None else backbones:
            speculative = self.backbones[b]["speculative"] or {"heads": {}, "max_draft": []}
            for rule, heads in speculative["heads"].items():
                for h in heads if specs is None else [h for h in heads if h in specs]:
                    for policy in self.policies_under(b, rule):
                        for k in speculative["max_draft"]:
                            yield b, head_key(h, rule), policy, k

    def speculative_thresholds(self, backbone: str) -> list[str]:
        """The drafting exits' thresholds of a backbone's speculative series, as their folders spell them."""
        return [number_label(t) for t in self.backbones[backbone]["speculative"]["thresholds"]
                or self.evaluation["thresholds"]]

    def exit_layers(self, backbone: str, key: str | None = None) -> list[int] | None:
        """The head key's own exit layers, else the backbone's (None: the entry points' default); key None: the
        backbone's (the oracle's, the translators', the label cache's)."""
        return (key and self.spec(key)["training"][EXIT_LAYERS]) or self.backbones[backbone]["exit_layers"]

    def reads_label_cache(self, key: str) -> bool:
        """Whether the head key's job trains on its backbone's stored labels (training/label_sharing.py)."""
        return reads_label_cache(self.spec(key)["training"], self.head_training, bool(self.answer_tasks))

    # ---- tasks ----
    def task_setting(self, task: str, key: str):
        """evaluation.tasks.TASK.KEY (shots, limit), None where not set."""
        return (self.evaluation["tasks"][task] or {}).get(key)

    def held_out_pool_n(self, task: str) -> int:
        """Questions a separate pool holds: the calibration set's and the answer prompts' (TriviaQA's few-shot
        examples come from the same train split, and the answer prompts must avoid them: room for them too)."""
        n = self.calibration["n"] if task in self.calibrated_tasks else 0
        if task in self.answer_tasks:
            fewshot = self.real["triviaqa"]["fewshot_n"] if self.real and task == "triviaqa" else 0
            n += self.answers["prompts"] + fewshot
        return n


def separate_pools(real: dict | None) -> list[str]:
    """Tasks with held-out questions of their own, apart from the evaluated file: at paper scale the hub's train splits
    (TruthfulQA has only its validation split; a local file has no train split either, so a task read from one
    calibrates on its questions beyond the evaluation's limit); embedded, CoQA stories the world draws apart
    (rule world_calibration_pool). Every world TriviaQA / TruthfulQA question is about a held-out fact and all are
    evaluated: new ones would need new facts stated in the corpus, i.e. another world."""
    if real is None:
        return ["coqa"]
    return [t for t in ("triviaqa", "coqa") if t in real and not is_local_file(real[t]["source"])]


@cache
def _head_registry():
    return registry()  # read from workflow_lib/models/heads.py without importing torch


def resolve(config: dict, schema: str | Path = SCHEMA) -> Plan:
    """The plan of a config (as Snakemake loads it), or ConfigError naming the first key it refuses."""
    config = validated(config, schema)
    evaluation, calibration, real = config["evaluation"], config["calibration"], config["real_data"]
    tasks = [t for t, setting in evaluation["tasks"].items() if (setting or {}).get("evaluate", True)]
    if not tasks:
        raise ConfigError("evaluation.tasks", "every task says evaluate: false; this run would evaluate nothing")
    checks.check_setup(config, list(evaluation["tasks"]))
    calibrated = [] if calibration is None else calibration["tasks"] or tasks
    pools = separate_pools(real)
    checks.check_calibrated_tasks(calibrated, tasks, evaluation, pools)
    backbones = config["backbones"]
    depth = {name: backbone_depth(name, spec, real is None) for name, spec in backbones.items()}
    types = _head_registry()
    try:
        specs = resolve_specs(config["heads"], config["head_training"], types)
    except ValueError as e:  # its messages begin with the key: heads.NAME.KEY: ...
        raise ConfigError(*str(e).split(": ", 1)) from None
    untrained = [name for name, spec in specs.items() if not types[spec["type"]].trainable]
    checks.check_untrained_heads(config["heads"], untrained, specs)
    checks.check_exit_layers(backbones, depth, specs)
    checks.check_emission_lists(backbones, specs)
    checks.check_comparisons(config["analysis"]["comparisons"], specs)
    if calibration is not None and calibration["heads"]:
        checks.check_heads("calibration.heads", calibration["heads"], specs)
    if calibration is not None and calibration["emissions"]:
        checks.check_calibrated_emissions(calibration["emissions"], backbones)
    checks.check_answer_tasks(config["answers"]["tasks"], list(evaluation["tasks"]), real is None, pools)
    checks.check_speculative(backbones, specs, types, config["answers"]["tasks"])
    return Plan(
        config=config, seed=config["seed"], world=config["world"], real=real, tokenizer=config["tokenizer"],
        backbones=backbones,
        head_training=config["head_training"], translators=config["translators"], answers=config["answers"],
        agreement=config["agreement"], evaluation=evaluation, calibration=calibration, analysis=config["analysis"],
        depth={name: n for name, n in depth.items() if n is not None},
        gguf_backbones=[name for name, spec in backbones.items() if is_gguf_model(spec["model"])],
        heads=list(config["heads"]), head_specs=specs, untrained_heads=untrained,
        trained_heads=[name for name in config["heads"] if name not in untrained],
        tasks=tasks, thresholds=[number_label(t) for t in evaluation["thresholds"]], calibrated_tasks=calibrated,
        deltas=[] if calibration is None else [number_label(d) for d in calibration["deltas"]],
        separate_pools=pools, answer_tasks=config["answers"]["tasks"])
