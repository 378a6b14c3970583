"""The command-line flags of the pipeline's jobs, from the plan: each builder gives a piece of a rule's shell command
(quoted, '' where the piece is absent, so a job's command stays what it was before the option existed)."""
from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

from ..choices import DEFAULT_EMISSION
from ..training.head_specs import EXIT_LAYERS
from .keys import ORACLE, emission_of, head_key, number_label
from .paths import PRUNE_FOLDERS

if TYPE_CHECKING:
    from .plan import Plan


def flags(options: dict) -> str:
    """{'n_people': 200, 'qa_per_doc': [3, 8], 'class_balance': True} -> '--class-balance --n-people 200 ...'

    Config keys are the entry points' flags with underscores; False and None leave a flag out.
    """
    words = []
    # Sorted: the same settings give the same command whatever order the config file lists them in, so
    # rewriting a config does not make Snakemake rerun jobs for a changed parameter.
    for key, value in sorted(options.items()):
        flag = f"--{key.replace('_', '-')}"
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words.extend([flag, *map(str, value)])
        else:
            words.extend([flag, str(value)])
    return shlex.join(words)


def sample_options(spec: dict) -> str:
    """A real_data entry as sample_data flags. `config: null` (the dataset has no config) goes as '': flags() would
    leave it out, and sample_data would then use its own default config (e.g. sample-10BT)."""
    return flags({**spec, "config": spec.get("config") or ""})


class Flags:
    def __init__(self, plan: Plan):
        self.plan, self.paths = plan, plan.paths

    def tokenizer(self, backbone: str) -> str:
        """The BPE tokenizer trained here, for a backbone pretrained here (others bring their own)."""
        return f"--tokenizer {self.paths.tokenizer}" if self.plan.pretrained_here(backbone) else ""

    def exit_layers(self, backbone: str, key: str | None = None) -> str:
        """plan.exit_layers as --exit-layers (none: the entry points' default)."""
        layers = self.plan.exit_layers(backbone, key)
        return shlex.join(["--exit-layers", ",".join(map(str, layers))]) if layers else ""

    def emission(self, backbone: str, emission: str) -> str:
        """--emission (and --translators) for a rule other than last_block; nothing for it."""
        if emission == DEFAULT_EMISSION:
            return ""
        translators = ["--translators", self.paths.translators_dir(backbone)] if emission == "translator" else []
        return shlex.join(["--emission", emission, *translators])

    def head_options(self, key: str) -> str:
        """The head spec's constructor options as train_heads' --head-options (sorted: the same spec, the same
        command)."""
        options = self.plan.spec(key)["options"]
        return shlex.join(["--head-options", json.dumps(options, sort_keys=True)]) if options else ""

    def answers(self, backbone: str, weight: float) -> str:
        """--answers FILE --answers-weight W for a fit with this weight on the answers, or nothing (text alone)."""
        return f"--answers {self.paths.answers_file(backbone)} --answers-weight {weight}" if (
            self.paths.answers_input(backbone, weight)) else ""

    def label_cache_options(self) -> str:
        """The label cache's settings: head_training's, and as much text as its steps read."""
        t = self.plan.head_training
        return flags({"label_source": t["label_source"], "seq_len": t["seq_len"], "batch_size": t["batch_size"],
                      "train_tokens": t["steps"] * t["batch_size"] * t["seq_len"], "store_inputs": t["store_inputs"]})

    def training_options(self, key: str) -> str:
        """The head key's training settings as train_heads flags (its exit layers and answers: their own flags)."""
        training = self.plan.spec(key)["training"]
        return flags({k: v for k, v in training.items() if k not in (EXIT_LAYERS, "answers_weight")})

    def task_options(self, tasks: list[str], file_of) -> str:
        """--task TASK:FILE[:SHOTS] per task: the prompts in file_of(task), built with its evaluation's shots."""
        words = []
        for task in tasks:
            shots = self.plan.task_setting(task, "shots")
            words += ["--task", f"{task}:{file_of(task)}" + ("" if shots is None else f":{shots}")]
        return shlex.join(words)

    def fewshot(self, tasks: list[str]) -> str:
        """TriviaQA's few-shot pool, when among the tasks."""
        return shlex.join(["--fewshot-data", self.paths.fewshot_file("triviaqa")]) if "triviaqa" in tasks else ""

    def prompts(self, tasks: list[str], file_of) -> str:
        """task_options and, with TriviaQA, its few-shot pool: every prompt set of a job over several tasks."""
        return " ".join(filter(None, [self.task_options(tasks, file_of), self.fewshot(tasks)]))

    def run(self, backbone: str, task: str, data: str, limit: int | None) -> str:
        """Flags of any run of a task on `data` scoring its first `limit` documents (None: all): the backbone, its
        tokenizer and the task's settings."""
        words = ["--backbone", self.paths.backbone_path(backbone), "--task", task, "--data", data]
        if self.plan.pretrained_here(backbone):
            words.extend(["--tokenizer", self.paths.tokenizer])
        if self.paths.fewshot_file(task):
            words.extend(["--fewshot-data", self.paths.fewshot_file(task)])
        e = self.plan.evaluation
        options = {"shots": self.plan.task_setting(task, "shots"), "limit": limit,
                   "max_new_tokens": e["max_new_tokens"], "degenerate_limit": e["degenerate_limit"],
                   "batch_size": e["batch_size"], "seed": self.plan.seed}
        return f"{shlex.join(words)} {flags(options)}"

    def evaluate(self, backbone: str, task: str) -> str:
        """Flags every evaluation job shares: the task's evaluation data with its limit."""
        return self.run(backbone, task, self.paths.task_file(task), self.plan.task_setting(task, "limit"))

    def series(self, backbone: str, task: str, part: str) -> str:
        """Every series of points one part (paths.EVALUATION_PARTS) of a backbone's evaluation of a task runs, each a
        `--series` of evaluate: `heads` the exit cells and the speculative series, `reference` the baseline, the
        oracle and each pruning depth."""
        plan, paths = self.plan, self.paths
        words = lambda *parts: " ".join(filter(None, parts))  # noqa: E731
        series = []
        if part == "heads":
            thresholds = ",".join(plan.thresholds)
            series += [words(f"--heads {paths.heads_dir(b, key)} --thresholds {thresholds} --policy {policy}",
                             self.emission(b, emission_of(key)), f"--out-dir {paths.exit_cell(b, key, policy, task)}")
                       for b, key, policy in plan.cells([backbone])]
            speculative = plan.backbones[backbone]["speculative"]
            for b, key, policy, k in plan.speculative_cells([backbone]):
                vocab = f"--draft-vocab {paths.draft_vocab_file(b)}" if speculative["draft_vocab"] else ""
                series.append(words(f"--heads {paths.heads_dir(b, key)} --policy {policy}",
                                    f"--thresholds {','.join(plan.speculative_thresholds(b))} --max-draft {k}", vocab,
                                    self.emission(b, emission_of(key)),
                                    f"--out-dir {paths.speculative_cell(b, key, policy, k, task)}"))
        else:
            series.append(f"--no-heads --out-dir {paths.baseline_dir(backbone, task)}")
            if plan.evaluation["oracle"]:
                series += [words("--oracle", self.exit_layers(backbone), f"--policy {policy}",
                                 self.emission(backbone, e),
                                 f"--out-dir {paths.oracle_dir(backbone, head_key(ORACLE, e), policy, task)}")
                           for e in plan.emissions(backbone) for policy in plan.policies_under(backbone, e)]
            series += [words(f"--no-heads --prune {n}", self.prune(folder),
                             f"--out-dir {paths.prune_dir(backbone, folder, n, task)}")
                       for folder in PRUNE_FOLDERS.values() for n in plan.backbones[backbone]["prune"]]
        return " ".join(shlex.join(["--series", one]) for one in series)

    def prune(self, folder: str) -> str:
        """The pruning rule of a pruning point's folder (PRUNE_FOLDERS), with the text that chooses angular blocks."""
        rule = next(rule for rule, name in PRUNE_FOLDERS.items() if name == folder)
        angular = ["--angular-text", self.paths.corpus_file("valid")] if rule == "angular" else []
        return shlex.join(["--prune-rule", rule, *angular])

    def comparison(self, name: str) -> str:
        """The heads of analysis.comparisons.NAME, for its figure."""
        return shlex.join(["--heads", ",".join(self.plan.analysis["comparisons"][name])])

    def calibrate_options(self) -> str:
        c = self.plan.calibration
        return flags({"thresholds": ",".join(number_label(t) for t in c["thresholds"]),
                      "deltas": ",".join(self.plan.deltas), "epsilon": c["epsilon"], "risk": c["risk"],
                      "metric": c["metric"], "bound": c["bound"]})
