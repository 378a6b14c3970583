"""Every artifact path of the pipeline, relative to its working directory, and the input sets of the jobs that read
them. Each builder also makes a Snakemake pattern when given wildcards: exit_cell("{backbone}", "{head}", ...)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ConfigError
from .keys import emission_of

if TYPE_CHECKING:
    from .plan import Plan

RESULTS = "results"
TASK_FILES = {"triviaqa": "triviaqa.jsonl", "coqa": "coqa.json", "truthfulqa": "truthfulqa.jsonl"}
# Layer pruning: which n blocks are dropped (choices.PRUNE_RULES) -> the folder of its points. deepest: the n before
# the last (the paper); angular: the n consecutive blocks closest in angle on the held-out text (Gromov et al.).
PRUNE_FOLDERS = {"deepest": "prune", "angular": "prune_angular"}
PAGE_SPEC, PAGE_MANIFEST = "page.yaml", "manifest.json"
# A task's evaluation runs as two jobs, each with its own prefill, so that two cores share a task: the points that read
# trained heads (exit cells, speculative series) and the reference points that read none (baseline, oracle, pruning),
# which can start before any head is trained.
EVALUATION_PARTS = ("heads", "reference")


def page_folder(page: str) -> str:
    """A results page's committed files (its spec, tables, figures, timings.csv, manifest.json): docs/results/X.md ->
    docs/results/X (rule results_page, analysis/results_page.py)."""
    return page[: -len(".md")] if page.endswith(".md") else page


class Paths:
    logs = f"{RESULTS}/logs"
    benchmarks = f"{RESULTS}/benchmarks"
    tokenizer = f"{RESULTS}/tokenizer"
    labels_root = f"{RESULTS}/labels"
    eval_root = f"{RESULTS}/eval"
    calibration_root = f"{RESULTS}/calibration"
    grid_table = f"{RESULTS}/tables/grid.csv"
    pareto_table = f"{RESULTS}/tables/pareto.csv"
    no_loss_table = f"{RESULTS}/tables/no_loss.csv"
    versus_pruning_table = f"{RESULTS}/tables/versus_pruning.csv"
    versus_rule_table = f"{RESULTS}/tables/versus_rule.csv"

    def __init__(self, plan: Plan):
        self.plan = plan
        # the world's files (embedded) or the real data sampled from the hub, under the same names
        self.data = f"{RESULTS}/world" if plan.world is not None else f"{RESULTS}/data"
        self.world_meta = f"{self.data}/world.json"  # the world's settings, read by the backbones pretrained on it

    # ---- data ----
    def corpus_file(self, split: str) -> str:
        """Head-distillation (and, embedded, pretraining) text: split is train or valid."""
        return f"{self.data}/corpus_{split}.jsonl"

    def task_file(self, task: str) -> str:
        return f"{self.data}/{TASK_FILES[task]}"

    def fewshot_file(self, task: str) -> str | None:
        """TriviaQA draws its 2 shots from questions outside the evaluated set."""
        return f"{self.data}/triviaqa_train.jsonl" if task == "triviaqa" else None

    def task_inputs(self, task: str) -> dict:
        fewshot = self.fewshot_file(task)
        return {"data": self.task_file(task)} | ({"fewshot": fewshot} if fewshot else {})

    # ---- backbones, heads, translators, labels ----
    def backbone_dir(self, backbone: str) -> str:
        """A backbone pretrained or converted here."""
        return f"{RESULTS}/backbones/{backbone}"

    def backbone_path(self, backbone: str) -> str:
        """What the entry points load: the folder pretrained or converted here, or the configured hub id / folder. A
        converted folder holds the GGUF file's own tokenizer, which the entry points take by default."""
        return self.backbone_dir(backbone) if self.plan.made_here(backbone) else self.plan.backbones[backbone]["model"]

    def backbone_input(self, backbone: str) -> list[str]:
        return [self.backbone_path(backbone)] if self.plan.made_here(backbone) else []

    def tokenizer_input(self, backbone: str) -> list[str]:
        return [self.tokenizer] if self.plan.pretrained_here(backbone) else []

    def heads_dir(self, backbone: str, key: str) -> str:
        """The heads of a head key: results/heads/B/head~SPEC, plus /emission~RULE for a rule other than last_block."""
        return f"{RESULTS}/heads/{backbone}/head~{key}"

    def translators_dir(self, backbone: str) -> str:
        """The backbone's tuned-lens translators (rule train_translators)."""
        return f"{RESULTS}/translators/{backbone}"

    def translators_file(self, backbone: str) -> str:
        return f"{self.translators_dir(backbone)}/translators.json"

    def translators_input(self, backbone: str, emission: str) -> list[str]:
        """The translators a job under this emission rule reads."""
        return [self.translators_file(backbone)] if emission == "translator" else []

    def label_cache(self, backbone: str, emission: str) -> str:
        """The backbone's stored labels under an emission rule (rule label_cache)."""
        return f"{self.labels_root}/{backbone}/emission~{emission}"

    def label_cache_input(self, backbone: str, key: str) -> list[str]:
        """The stored labels a head key's job trains on (plan.reads_label_cache), else none: it labels its batches."""
        return ([f"{self.label_cache(backbone, emission_of(key))}/labels.safetensors"]
                if self.plan.reads_label_cache(key) else [])

    # ---- answers ----
    def answer_prompts_file(self, task: str) -> str:
        """The task's held-out prompts whose greedy answers translators and heads fit (rule answer_prompts)."""
        return f"{RESULTS}/answers/prompts/{task}.jsonl"

    def answers_file(self, backbone: str) -> str:
        """The backbone's greedy answers to every answer task's prompts (rule greedy_answers)."""
        return f"{RESULTS}/answers/{backbone}/answers.safetensors"

    def answers_input(self, backbone: str, weight: float) -> list[str]:
        """The answers a fit with this weight on them reads (none: text alone)."""
        return [self.answers_file(backbone)] if self.plan.answer_tasks and weight > 0 else []

    def answers_pool(self, task: str) -> str:
        """Where the answer prompts are drawn from: the task's separate held-out pool (shared with the calibration set,
        sized for both), else every question of its source (rule sample_answers_pool; the evaluated ones, the
        calibration set and the few-shot examples are then left out by question text)."""
        return self.calibration_pool(task) if task in self.plan.separate_pools else self.answers_pool_file(task)

    def answers_pool_file(self, task: str) -> str:
        """Every question of the task's source (rule sample_answers_pool)."""
        return f"{self.data}/answers_pool/{task}.jsonl"

    def agreement_table(self, backbone: str) -> str:
        return f"{RESULTS}/tables/agreement_{backbone}.csv"

    # ---- evaluation and calibration ----
    def exit_cell(self, backbone: str, key: str, policy: str, task: str) -> str:
        """One evaluation job's folder; its points are threshold~X/ (and calibrated~D/) inside."""
        return f"{self.eval_root}/{backbone}/head~{key}/policy~{policy}/task~{task}"

    @staticmethod
    def threshold_record(cell: str, threshold: str) -> str:
        return f"{cell}/threshold~{threshold}/record.json"

    @staticmethod
    def calibrated_record(cell: str, delta: str) -> str:
        return f"{cell}/calibrated~{delta}/record.json"

    def speculative_cell(self, backbone: str, key: str, policy: str, max_draft, task: str) -> str:
        """A speculative series' folder; its points are threshold~X/ inside."""
        return f"{self.eval_root}/{backbone}/head~{key}/policy~{policy}/speculative~{max_draft}/task~{task}"

    def draft_vocab_file(self, backbone: str) -> str:
        """The backbone's draft vocabulary (rule draft_vocab), for its speculative series."""
        return f"{RESULTS}/draft_vocab/{backbone}/draft_vocab.json"

    def baseline_dir(self, backbone: str, task: str) -> str:
        return f"{self.eval_root}/{backbone}/baseline/task~{task}"

    def oracle_dir(self, backbone: str, oracle: str, policy: str, task: str) -> str:
        """oracle is the oracle's folder, keyed by emission rule as a head is (keys.head_key(ORACLE, rule))."""
        return f"{self.eval_root}/{backbone}/{oracle}/policy~{policy}/task~{task}"

    def prune_dir(self, backbone: str, folder: str, n, task: str) -> str:
        """folder: a pruning rule's (PRUNE_FOLDERS)."""
        return f"{self.eval_root}/{backbone}/{folder}~{n}/task~{task}"

    def calibration_cell(self, backbone: str, key: str, policy: str, task: str) -> str:
        """One calibration job's folder; its calibrated points go to the exit cell."""
        return f"{self.calibration_root}/{backbone}/head~{key}/policy~{policy}/task~{task}"

    def calibration_file(self, task: str) -> str:
        """The task's calibration questions, outside the evaluated ones (CoQA's canonical format is .jsonl too)."""
        return f"{self.calibration_root}/data/{task}.jsonl"

    def calibration_pool(self, task: str) -> str:
        """Where the calibration questions are drawn from: the task's separate pool, else its own file (its questions
        beyond the evaluation's limit)."""
        return self.separate_pool_file(task) if task in self.plan.separate_pools else self.task_file(task)

    def separate_pool_file(self, task: str) -> str:
        """A task's separate pool (plan.separate_pools): the hub's train split (rule sample_calibration_pool), or the
        world's extra CoQA stories (rule world_calibration_pool)."""
        if self.plan.real:
            return f"{self.data}/calibration_pool/{task}.jsonl"
        return f"{self.calibration_root}/pool/{task}.jsonl"

    def calibration_reference(self, backbone: str, task: str) -> str:
        """The full model's answers on the calibration set, shared by every head and policy."""
        return f"{self.calibration_root}/{backbone}/reference/task~{task}"

    def evaluate_inputs(self, backbone: str, task: str) -> dict:
        """What every run of a task reads: its data, the backbone and its tokenizer."""
        inputs = self.task_inputs(task) | {"backbone": self.backbone_input(backbone)}
        return inputs | ({"tokenizer": self.tokenizer} if self.plan.pretrained_here(backbone) else {})

    def exit_inputs(self, backbone: str, key: str, task: str) -> dict:
        """evaluate_inputs, and the translators for a head key under the translator rule."""
        translators = self.translators_input(backbone, emission_of(key))
        return self.evaluate_inputs(backbone, task) | {"translators": translators}

    def task_inputs_all(self, backbone: str, task: str, part: str) -> dict:
        """What one part (EVALUATION_PARTS) of a backbone's evaluation of a task reads (rules evaluate_BACKBONE_PART):
        its data, backbone and tokenizer, the translators of its rules; `heads` every head key's heads and the draft
        vocabulary, `reference` the text that chooses angular blocks."""
        plan = self.plan
        inputs = self.evaluate_inputs(backbone, task) | {
            "translators": self.translators_input(backbone, "translator") if "translator" in plan.emissions(backbone)
            else []}
        if part == "reference":
            return inputs | {"angular_text": [self.corpus_file("valid")] if plan.backbones[backbone]["prune"] else []}
        keys = {key for b, key, _ in plan.cells([backbone])} | {key for _, key, _, _ in plan.speculative_cells([backbone])}
        speculative = plan.backbones[backbone]["speculative"]
        return inputs | {
            "heads": sorted(f"{self.heads_dir(backbone, key)}/heads.json" for key in keys),
            "draft_vocab": [self.draft_vocab_file(backbone)] if speculative and speculative["draft_vocab"] else []}

    def calibration_inputs(self, backbone: str, task: str) -> dict:
        return self.evaluate_inputs(backbone, task) | {"calibration": self.calibration_file(task)}

    def prune_inputs(self, backbone: str, task: str, folder: str) -> dict:
        """evaluate_inputs, and for angular pruning the held-out text that chooses the blocks."""
        angular = folder == PRUNE_FOLDERS["angular"]
        return self.evaluate_inputs(backbone, task) | ({"angular_text": self.corpus_file("valid")} if angular else {})

    # ---- the results page (rule results_page) ----
    def results_page(self) -> str:
        """The page results_page.page names; ConfigError where the config names none."""
        if self.plan.config.get("results_page") is None:
            raise ConfigError("results_page", "this config names no page; `snakemake results_page` needs "
                                              "results_page: {page: docs/results/NAME.md} (docs/results/README.md)")
        return self.plan.config["results_page"]["page"]

    def results_page_file(self, name: str) -> str:
        """A file of the page's folder: its spec (PAGE_SPEC), its manifest (PAGE_MANIFEST)."""
        return f"{page_folder(self.results_page())}/{name}"

    # ---- figures ----
    @staticmethod
    def figure(backbone: str, task: str) -> str:
        """Every head's figure, without its format's suffix."""
        return f"{RESULTS}/figures/{backbone}/{task}"

    @staticmethod
    def comparison_figure(backbone: str, comparison: str, task: str) -> str:
        """The figure of analysis.comparisons.NAME's heads, without its format's suffix."""
        return f"{RESULTS}/figures/{backbone}/compare~{comparison}/{task}"
