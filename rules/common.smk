# Helpers shared by every stage: the config (loaded, validated, defaults filled), the grid it spans, and
# the paths of every artifact. Nothing here runs a job.
import json
import os
import re
import shlex

import jsonschema
import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from workflow_lib.models.gguf_file import gguf_header, is_gguf
from workflow_lib.models.names import PRETRAIN_ARCHS, is_local, resolve_model
from workflow_lib.training.head_specs import EXIT_LAYERS, TRAINING_KEYS, registry, resolve_specs

min_version("9.0")

# config.yaml is the default; a --configfile replaces it whole (configs/paper.yaml and configs/smoke.yaml are
# complete), so no key of the embedded setup leaks into another setup by dictionary merging.
if not workflow.config_settings.configfiles:

    configfile: workflow.source_path("../config.yaml")


CONFIG_SCHEMA = workflow.source_path("../schemas/config.schema.yaml")


def config_error(config, schema_path):
    """The most relevant schema violation as one line naming the key, e.g. 'evaluation.thresholds[1]: ...'."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    return f"invalid config: {where or '(top level)'}: {error.message}"


# Checked before any job (dry runs included); snakemake's validate also fills in the schema's defaults. One pass when
# the config is valid (parse time is every run's, no-op reruns included); on failure, the one-line message.
try:
    validate(config, CONFIG_SCHEMA)
except WorkflowError:
    if (message := config_error(config, CONFIG_SCHEMA)) is None:
        raise
    raise WorkflowError(message) from None

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
SEED = config["seed"]
WORLD = config["world"]
REAL = config["real_data"]
BACKBONES = config["backbones"]
HEADS = list(config["heads"])
EVAL = config["evaluation"]
TASKS = list(EVAL["tasks"])
FORMATS = config["analysis"]["formats"]


def threshold_label(value):
    """0.4 -> '0.4' (the path component threshold~0.4); 1e-05 never appears, thresholds are in [0, 1]."""
    return format(float(value), "g")


THRESHOLDS = [threshold_label(t) for t in EVAL["thresholds"]]
CALIBRATION = config["calibration"]  # None: no calibrated thresholds
CALIBRATED_TASKS = [] if CALIBRATION is None else CALIBRATION["tasks"] or TASKS
DELTAS = [] if CALIBRATION is None else [threshold_label(d) for d in CALIBRATION["deltas"]]

if (WORLD is None) == (REAL is None):
    raise WorkflowError("invalid config: set exactly one of 'world' (embedded setup) and 'real_data' (paper scale)")
if REAL is not None:
    for task in TASKS:
        if task not in REAL:
            raise WorkflowError(f"invalid config: evaluation.tasks.{task} needs real_data.{task} (where its data comes from)")
for task in CALIBRATED_TASKS:
    if task not in TASKS:
        raise WorkflowError(f"invalid config: calibration.tasks: {task} is not among evaluation.tasks")
# Tasks with calibration questions of their own, apart from the evaluated file: at paper scale the hub's train splits
# (TruthfulQA has only its validation split; a local file has no train split either, so a task read from one
# calibrates on its questions beyond the evaluation's limit); embedded, CoQA stories the world draws apart
# (world_calibration_pool). Every world TriviaQA / TruthfulQA question is about a held-out fact and all are
# evaluated: new ones would need new facts stated in the corpus, i.e. another world.
if REAL is not None:
    # a local file as workflow_lib.data.sampling.is_local tells it (not imported: it loads `datasets`)
    SEPARATE_POOLS = [t for t in ("triviaqa", "coqa") if t in REAL and not (
        os.path.splitext(REAL[t]["source"])[1] in (".txt", ".jsonl", ".json", ".csv", ".arrow")
        or os.path.isfile(REAL[t]["source"]))]
else:
    SEPARATE_POOLS = ["coqa"]
# A task calibrated on its own file needs questions its evaluation leaves out, i.e. a limit: refused here rather
# than in the calibration_split job.
for task in CALIBRATED_TASKS:
    if task not in SEPARATE_POOLS and (EVAL["tasks"][task] or {}).get("limit") is None:
        raise WorkflowError(f"invalid config: calibration.tasks: {task} has no calibration questions: every one of its "
                            f"questions is evaluated (evaluation.tasks.{task}.limit: null) and it has no separate "
                            f"pool here (tasks that do: {', '.join(SEPARATE_POOLS)}); set calibration.tasks, or a limit")
# Blocks of each backbone whose depth is known before any job: trained here, a GGUF file (header only, torch-free),
# or a local checkpoint (a hub id's is known only once it loads, and its jobs check it then).
DEPTH = {}
GGUF_BACKBONES = []  # converted once into results/backbones/{name} (rule convert_backbone)
for name, spec in BACKBONES.items():
    model = spec["model"]
    if model == "pretrain":
        if WORLD is None:
            raise WorkflowError(f"invalid config: backbones.{name}.model 'pretrain' needs the synthetic world (world: ...)")
        if spec["arch"] not in PRETRAIN_ARCHS:
            raise WorkflowError(f"invalid config: backbones.{name}.arch {spec['arch']!r} cannot be pretrained here "
                                f"(model: pretrain takes {', '.join(PRETRAIN_ARCHS)})")
        DEPTH[name] = spec["pretrain"]["num_layers"]
    elif model.startswith("package:") or is_gguf(model):
        try:
            header = gguf_header(resolve_model(model))
        except ValueError as e:
            raise WorkflowError(f"invalid config: backbones.{name}.model: {e}")
        arch = header["general.architecture"]
        if arch != spec["arch"]:
            raise WorkflowError(f"invalid config: backbones.{name}.arch is {spec['arch']!r} but {model} holds a "
                                f"{arch!r} model")
        GGUF_BACKBONES.append(name)
        DEPTH[name] = header.get(f"{arch}.block_count")
    elif is_local(model):
        try:
            with open(os.path.join(model, "config.json")) as f:
                model_config = json.load(f)
        except OSError as e:
            raise WorkflowError(f"invalid config: backbones.{name}.model: no save_pretrained folder there ({e})")
        if model_config.get("model_type") != spec["arch"]:
            raise WorkflowError(f"invalid config: backbones.{name}.arch is {spec['arch']!r} but {model} holds a "
                                f"{model_config.get('model_type')!r} model")
        DEPTH[name] = model_config.get("num_hidden_layers")

# Each head spec split into its type's constructor options and its training settings (head_training's defaults
# filled in), checked against the head registry: {name: {"type", "options", "training"}}.
HEAD_REGISTRY = registry()  # read from workflow_lib/models/heads.py without importing torch
try:
    HEAD_SPECS = resolve_specs(config["heads"], config["head_training"], HEAD_REGISTRY)
except ValueError as e:
    raise WorkflowError(f"invalid config: {e}")
# A type with nothing to train (trainable = False: the zero-parameter exit rules softmax and saturation) gets a
# heads.json-only folder from rule_heads instead of a train_heads job; a training setting there would be ignored.
RULE_HEADS = [name for name, spec in HEAD_SPECS.items() if not HEAD_REGISTRY[spec["type"]].trainable]
TRAINED_HEADS = [name for name in HEADS if name not in RULE_HEADS]
for name in RULE_HEADS:
    for key in TRAINING_KEYS:
        if key in config["heads"][name]:
            raise WorkflowError(f"invalid config: heads.{name}.{key}: head type {HEAD_SPECS[name]['type']!r} is a "
                                f"zero-parameter exit rule, it has nothing to train (exit_layers is its one setting)")
for name, spec in BACKBONES.items():
    n = DEPTH.get(name)
    if n is None:
        continue
    for where, layers in [(f"backbones.{name}.exit_layers", spec["exit_layers"]),
                          *((f"heads.{h}.exit_layers", s["training"][EXIT_LAYERS]) for h, s in HEAD_SPECS.items())]:
        if any(layer > n - 2 for layer in layers or []):
            raise WorkflowError(f"invalid config: {where}: {layers} for backbone {name!r} of {n} blocks: each "
                                f"must be a block index in 0..{n - 2} (the last block always runs)")
# Emission rules (models/translators.py EMISSION_RULES, not imported here: it needs torch): how an exit turns its
# hidden state into the token. Heads are trained per rule (labels from what the rule emits), so a rule other than the
# paper's last_block gets heads, evaluation cells, oracle and calibration of its own, under an emission~RULE folder
# inside the head's (or the oracle's) folder: a head key "calm/emission~lens" stands where the head name "calm"
# does, and the paths of the default rule stay exactly as they were.
DEFAULT_EMISSION = "last_block"
for name, spec in BACKBONES.items():
    for emission, heads in spec["emission_heads"].items():
        if emission not in spec["emissions"]:
            raise WorkflowError(f"invalid config: backbones.{name}.emission_heads.{emission}: {emission!r} is not "
                                f"among backbones.{name}.emissions {spec['emissions']}")
        for i, head in enumerate(heads):
            if head not in HEAD_SPECS:
                raise WorkflowError(f"invalid config: backbones.{name}.emission_heads.{emission}[{i}]: no head named "
                                    f"{head!r} (heads: {', '.join(HEAD_SPECS)})")
    for emission, policies in spec["emission_policies"].items():
        if emission not in spec["emissions"]:
            raise WorkflowError(f"invalid config: backbones.{name}.emission_policies.{emission}: {emission!r} is not "
                                f"among backbones.{name}.emissions {spec['emissions']}")
        for i, policy in enumerate(policies):
            if policy not in spec["policies"]:
                raise WorkflowError(f"invalid config: backbones.{name}.emission_policies.{emission}[{i}]: {policy!r} "
                                    f"is not among backbones.{name}.policies {spec['policies']}")
COMPARISONS = config["analysis"]["comparisons"]
for name, heads in COMPARISONS.items():
    for i, head in enumerate(heads):
        if head not in HEAD_SPECS:
            raise WorkflowError(f"invalid config: analysis.comparisons.{name}[{i}]: no head named {head!r} "
                                f"(heads: {', '.join(HEAD_SPECS)})")

wildcard_constraints:
    backbone="|".join(BACKBONES),
    head=r"[A-Za-z0-9_]+(/emission~(lens|translator))?",  # a head key: the spec's name, emission~RULE if not default
    oracle=r"oracle(/emission~(lens|translator))?",
    comparison=r"[A-Za-z0-9_]+",
    policy=r"[a-z_]+",
    task="|".join(TASKS),
    threshold=r"[0-9.]+",
    n=r"[0-9]+",


# ---- data --------------------------------------------------------------------------------------------------
DATA = f"{RESULTS}/world" if WORLD is not None else f"{RESULTS}/data"
TASK_FILES = {"triviaqa": "triviaqa.jsonl", "coqa": "coqa.json", "truthfulqa": "truthfulqa.jsonl"}


def corpus_file(split):
    """Head-distillation (and, embedded, pretraining) text: split is train or valid."""
    return f"{DATA}/corpus_{split}.jsonl"


def task_file(task):
    return f"{DATA}/{TASK_FILES[task]}"


def fewshot_file(task):
    """TriviaQA draws its 2 shots from questions outside the evaluated set."""
    return f"{DATA}/triviaqa_train.jsonl" if task == "triviaqa" else None


def task_inputs(wildcards):
    files = {"data": task_file(wildcards.task)}
    if fewshot_file(wildcards.task):
        files["fewshot"] = fewshot_file(wildcards.task)
    return files


def cli(options):
    """{'n_people': 200, 'qa_per_doc': [3, 8], 'class_balance': True} -> '--n-people 200 --qa-per-doc 3 8 ...'

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


def sample_options(spec):
    """A real_data entry as sample_data flags. `config: null` (the dataset has no config) goes as '': cli() would
    leave it out, and sample_data would then use its own default config (e.g. sample-10BT)."""
    return cli({**spec, "config": spec.get("config") or ""})


# ---- backbones and heads -----------------------------------------------------------------------------------
TOKENIZER = f"{RESULTS}/tokenizer"


def pretrained_here(backbone):
    return BACKBONES[backbone]["model"] == "pretrain"


def made_here(backbone):
    """Pretrained here or converted here from a GGUF file: a folder under results/backbones."""
    return pretrained_here(backbone) or backbone in GGUF_BACKBONES


def backbone_path(backbone):
    """What the entry points load: the folder pretrained or converted here, or the configured hub id / folder. A
    converted folder holds the GGUF file's own tokenizer, which the entry points take by default."""
    return f"{RESULTS}/backbones/{backbone}" if made_here(backbone) else BACKBONES[backbone]["model"]


def backbone_input(wildcards):
    return [backbone_path(wildcards.backbone)] if made_here(wildcards.backbone) else []


def exit_layers_option(backbone, head=None):
    """The head's own exit layers, else the backbone's (else the entry points' default); head None: the backbone's
    (the oracle bound's)."""
    layers = (head and HEAD_SPECS[spec_name(head)]["training"][EXIT_LAYERS]) or BACKBONES[backbone]["exit_layers"]
    return shlex.join(["--exit-layers", ",".join(map(str, layers))]) if layers else ""


def heads_dir(backbone, head):
    """The heads of a head key: results/heads/B/head~NAME, plus /emission~RULE for a rule other than last_block."""
    return f"{RESULTS}/heads/{backbone}/head~{head}"


def head_key(head, rule):
    """calm, last_block -> calm; calm, lens -> calm/emission~lens (the heads', cells' and logs' folders)."""
    return head if rule == DEFAULT_EMISSION else f"{head}/emission~{rule}"


def oracle_folder(rule):
    """oracle, or oracle/emission~RULE for a rule other than last_block."""
    return head_key("oracle", rule)


def spec_name(key):
    """The head spec's name of a head key."""
    return key.split("/", 1)[0]


def key_emission(key):
    """The emission rule of a head key (or of an oracle folder)."""
    _, found, rule = key.partition("emission~")
    return rule if found else DEFAULT_EMISSION


def head_keys(backbone, heads=HEADS):
    """Every (head, rule) this backbone runs among `heads`: each of its emission rules, on the heads listed for it
    under emission_heads (every head when the rule is not listed there)."""
    spec = BACKBONES[backbone]
    return [head_key(h, rule) for rule in spec["emissions"] for h in heads
            if h in (spec["emission_heads"].get(rule) or HEADS)]


def policies_under(backbone, rule):
    """The policies that a backbone's cells, oracle and calibration run under for one emission rule (emission_policies'
    list for it, else every policy of the backbone)."""
    spec = BACKBONES[backbone]
    return spec["emission_policies"].get(rule) or spec["policies"]


def translators_dir(backbone):
    """The backbone's tuned-lens translators (the translators job, rules/translators.smk)."""
    return f"{RESULTS}/translators/{backbone}"


def emission_flags(backbone, emission):
    """--emission (and --translators) for a rule other than last_block; nothing for it (commands stay as they were)."""
    if emission == DEFAULT_EMISSION:
        return ""
    words = ["--emission", emission] + (["--translators", translators_dir(backbone)] if emission == "translator" else [])
    return shlex.join(words)


def emission_inputs(backbone, emission):
    return [f"{translators_dir(backbone)}/translators.json"] if emission == "translator" else []


HEAD_TRAINING = config["head_training"]
LABELS_ROOT = f"{RESULTS}/labels"


def label_cache_dir(backbone, head):
    """The backbone's stored labels (rule label_cache) under the head key's emission rule, when the head spec trains on
    them: it keeps head_training's sequence length and label source and the backbone's exit layers, reads no more
    text than head_training's steps do, and trains on answers only if head_training does (the cache then labels
    them). Else None: the head job labels its batches itself, as it always could."""
    training = HEAD_SPECS[spec_name(head)]["training"]
    shared = (training[EXIT_LAYERS] is None
              and all(training[k] == HEAD_TRAINING[k] for k in ("seq_len", "label_source"))
              and (not ANSWER_TASKS or training["answers_weight"] == 0 or HEAD_TRAINING["answers_weight"] > 0)
              and training["steps"] * training["batch_size"] <= HEAD_TRAINING["steps"] * HEAD_TRAINING["batch_size"])
    return f"{LABELS_ROOT}/{backbone}/emission~{key_emission(head)}" if shared else None


def one_of(names):
    """A wildcard constraint matching exactly these names (none: a pattern that never matches)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def keys_of(names):
    """A wildcard constraint matching the head keys of these head names, under any emission rule."""
    return f"({one_of(names)})(/emission~(lens|translator))?"


def head_options(wildcards):
    """The head spec's constructor options as train_heads' --head-options (sorted: the same spec, the same command)."""
    options = HEAD_SPECS[spec_name(wildcards.head)]["options"]
    return shlex.join(["--head-options", json.dumps(options, sort_keys=True)]) if options else ""


# ---- translators and the agreement table (rules/translators.smk) -------------------------------------------
# `emissions:` (per backbone; how an exit emits its token) is read with .get: default the paper's last_block.
TRANSLATORS = config["translators"]
AGREEMENT = config["agreement"]
# answers: the full model's greedy answers to held-out prompts of these tasks, drawn apart from the evaluated
# questions, the calibration set and the few-shot examples (rule answer_prompts), one file per backbone (rule
# greedy_answers); the translators (translators.answers_weight) and the heads (head_training.answers_weight, per spec)
# fit them beside the text. No tasks: text alone.
ANSWERS = config["answers"]
ANSWER_TASKS = ANSWERS["tasks"]
for task in ANSWER_TASKS:
    if task not in TASKS:
        raise WorkflowError(f"invalid config: answers.tasks: {task} is not among evaluation.tasks (its prompts are "
                            f"built as its evaluation builds them)")
    if WORLD is not None and task not in SEPARATE_POOLS:
        raise WorkflowError(f"invalid config: answers.tasks: {task} has no held-out prompts in the world: every one "
                            f"of its questions is about a held-out fact and is evaluated (tasks that have some: "
                            f"{', '.join(SEPARATE_POOLS)})")


def answer_prompts_file(task):
    """The task's held-out prompts whose greedy answers the translators and heads are fitted on (rule answer_prompts)."""
    return f"{RESULTS}/answers/prompts/{task}.jsonl"


def answers_file(backbone):
    """The backbone's greedy answers to every answer task's prompts (rule greedy_answers)."""
    return f"{RESULTS}/answers/{backbone}/answers.safetensors"


def answers_pool(task):
    """Where the answer prompts are drawn from: the task's separate held-out pool (shared with the calibration set,
    sized for both), else every question of its source (rule sample_answers_pool; the evaluated ones, the
    calibration set and the few-shot examples are then left out by question text)."""
    return calibration_pool(task) if task in SEPARATE_POOLS else f"{DATA}/answers_pool/{task}.jsonl"


def held_out_pool_n(task):
    """Questions a separate pool holds: the calibration set's and the answer prompts' (TriviaQA's few-shot examples
    come from the same train split, and the answer prompts must avoid them: room for them too)."""
    n = CALIBRATION["n"] if task in CALIBRATED_TASKS else 0
    if task in ANSWER_TASKS:
        n += ANSWERS["prompts"] + (REAL["triviaqa"]["fewshot_n"] if REAL is not None and task == "triviaqa" else 0)
    return n


def answers_flags(backbone, weight):
    """--answers FILE --answers-weight W for a fit with this weight on the answers, or nothing (text alone: the
    command is what it was before answers existed)."""
    return f"--answers {answers_file(backbone)} --answers-weight {weight}" if ANSWER_TASKS and weight > 0 else ""


def answers_input(backbone, weight):
    return [answers_file(backbone)] if ANSWER_TASKS and weight > 0 else []


def answer_task_options():
    """greedy_answers' prompts: each answer task's held-out prompts with its evaluation's shots, and TriviaQA's
    few-shot pool."""
    words = []
    for task in ANSWER_TASKS:
        shots = (EVAL["tasks"][task] or {}).get("shots")
        words += ["--task", f"{task}:{answer_prompts_file(task)}" + ("" if shots is None else f":{shots}")]
    if "triviaqa" in ANSWER_TASKS:
        words += ["--fewshot-data", fewshot_file("triviaqa")]
    return shlex.join(words)


def emissions(backbone):
    return BACKBONES[backbone].get("emissions", ["last_block"])


def agreement_table(backbone):
    return f"{RESULTS}/tables/agreement_{backbone}.csv"


def translators_input(wildcards):
    return [f"{translators_dir(wildcards.backbone)}/translators.json"] if "translator" in emissions(wildcards.backbone) else []


# ---- the evaluation grid -----------------------------------------------------------------------------------
EVAL_ROOT = f"{RESULTS}/eval"
# One evaluation job's folder (wildcards backbone, head, policy, task); its points are threshold~X/ inside.
EXIT_CELL = f"{EVAL_ROOT}/{{backbone}}/head~{{head}}/policy~{{policy}}/task~{{task}}"


def exit_records(backbones=BACKBONES, heads=HEADS, tasks=TASKS):
    return [
        f"{EXIT_CELL}/threshold~{x}/record.json".format(backbone=b, head=h, policy=p, task=t)
        for b in backbones
        for h in head_keys(b, heads)
        for p in policies_under(b, key_emission(h))
        for t in tasks
        for x in THRESHOLDS
    ]


def baseline_records(backbones=BACKBONES, tasks=TASKS):
    return [f"{EVAL_ROOT}/{b}/baseline/task~{t}/record.json" for b in backbones for t in tasks]


def oracle_records(backbones=BACKBONES, tasks=TASKS):
    """The oracle bound per (backbone, emission rule, policy, task) at the heads' exit layers (evaluation.oracle)."""
    if not EVAL["oracle"]:
        return []
    return [f"{EVAL_ROOT}/{b}/{oracle_folder(e)}/policy~{p}/task~{t}/record.json"
            for b in backbones for e in BACKBONES[b]["emissions"] for p in policies_under(b, e) for t in tasks]


# Layer pruning: which n blocks are dropped -> the folder of its points. deepest: the n before the last (the paper);
# angular: the n consecutive blocks whose input and output are closest in angle on the held-out text (Gromov et al.).
PRUNE_DIRS = {"deepest": "prune", "angular": "prune_angular"}


def prune_records(backbones=BACKBONES, tasks=TASKS):
    return [
        f"{EVAL_ROOT}/{b}/{folder}~{n}/task~{t}/record.json"
        for b in backbones
        for folder in PRUNE_DIRS.values()
        for n in BACKBONES[b].get("prune", [])
        for t in tasks
    ]


def all_records():
    return exit_records() + baseline_records() + oracle_records() + prune_records() + calibrated_records()


# ---- calibrated thresholds ---------------------------------------------------------------------------------
CALIBRATION_ROOT = f"{RESULTS}/calibration"
# One calibration job's folder (wildcards backbone, head, policy, task); its calibrated points go to EXIT_CELL.
CALIBRATION_CELL = f"{CALIBRATION_ROOT}/{{backbone}}/head~{{head}}/policy~{{policy}}/task~{{task}}"


def calibration_file(task):
    """The task's calibration questions, outside the evaluated ones (CoQA's canonical format is .jsonl too)."""
    return f"{CALIBRATION_ROOT}/data/{task}.jsonl"


def calibration_pool(task):
    """Where the calibration questions are drawn from: the task's separate pool, else its own file (its questions
    beyond the evaluation's limit)."""
    if task not in SEPARATE_POOLS:
        return task_file(task)
    return f"{DATA}/calibration_pool/{task}.jsonl" if REAL is not None else f"{CALIBRATION_ROOT}/pool/{task}.jsonl"


def calibrated_records(backbones=BACKBONES, heads=HEADS, tasks=TASKS):
    return [
        f"{EXIT_CELL}/calibrated~{d}/record.json".format(backbone=b, head=h, policy=p, task=t)
        for b in backbones
        for h in head_keys(b, heads)
        for p in policies_under(b, key_emission(h))
        for t in tasks
        if t in CALIBRATED_TASKS
        for d in DELTAS
    ]


def calibration_reference(backbone, task):
    """The full model's answers on the calibration set, shared by every head and policy."""
    return f"{CALIBRATION_ROOT}/{backbone}/reference/task~{task}"


def calibration_inputs(wildcards):
    files = evaluate_inputs(wildcards)
    files["calibration"] = calibration_file(wildcards.task)
    return files


def run_flags(wildcards, data, limit):
    """Flags of any run of a task on `data` scoring its first `limit` documents (None: all): the backbone, its
    tokenizer and the task's settings."""
    words = ["--backbone", backbone_path(wildcards.backbone), "--task", wildcards.task, "--data", data]
    if pretrained_here(wildcards.backbone):
        words.extend(["--tokenizer", TOKENIZER])
    if fewshot_file(wildcards.task):
        words.extend(["--fewshot-data", fewshot_file(wildcards.task)])
    spec = EVAL["tasks"][wildcards.task] or {}
    options = {"shots": spec.get("shots"), "limit": limit, "max_new_tokens": EVAL["max_new_tokens"],
               "degenerate_limit": EVAL["degenerate_limit"], "batch_size": EVAL["batch_size"], "seed": SEED}
    return f"{shlex.join(words)} {cli(options)}"


def task_limit(task):
    return (EVAL["tasks"][task] or {}).get("limit")


def evaluate_common(wildcards):
    """Flags every evaluation job shares: the task's evaluation data with its limit."""
    return run_flags(wildcards, task_file(wildcards.task), task_limit(wildcards.task))


def evaluate_inputs(wildcards):
    files = task_inputs(wildcards)
    files["backbone"] = backbone_input(wildcards)
    if pretrained_here(wildcards.backbone):
        files["tokenizer"] = TOKENIZER
    return files


def exit_inputs(wildcards):
    """evaluate_inputs, and the translators for a head key under the translator rule."""
    files = evaluate_inputs(wildcards)
    files["translators"] = emission_inputs(wildcards.backbone, key_emission(wildcards.head))
    return files


def prune_rule(wildcards):
    """deepest or angular, from a pruning point's folder name (wildcard `pruning`)."""
    return next(rule for rule, folder in PRUNE_DIRS.items() if folder == wildcards.pruning)


def prune_inputs(wildcards):
    files = evaluate_inputs(wildcards)
    if prune_rule(wildcards) == "angular":
        files["angular_text"] = corpus_file("valid")  # the held-out text that chooses the blocks
    return files


# ---- analysis ----------------------------------------------------------------------------------------------
GRID_TABLE = f"{RESULTS}/tables/grid.csv"
PARETO_TABLE = f"{RESULTS}/tables/pareto.csv"
NO_LOSS_TABLE = f"{RESULTS}/tables/no_loss.csv"
VERSUS_PRUNING_TABLE = f"{RESULTS}/tables/versus_pruning.csv"
VERSUS_RULE_TABLE = f"{RESULTS}/tables/versus_rule.csv"


FIGURE = f"{RESULTS}/figures/{{backbone}}/{{task}}"  # every head
COMPARISON_FIGURE = f"{RESULTS}/figures/{{backbone}}/compare~{{comparison}}/{{task}}"  # analysis.comparisons


def figure_files():
    every_head = [f"{FIGURE}.{ext}".format(backbone=b, task=t) for b in BACKBONES for t in TASKS for ext in FORMATS]
    return every_head + [
        f"{COMPARISON_FIGURE}.{ext}".format(backbone=b, comparison=c, task=t)
        for b in BACKBONES
        for c in COMPARISONS
        for t in TASKS
        for ext in FORMATS
    ]


def figure_inputs(wildcards, heads):
    """A figure reads the grid table, but reruns only when the records it shows change: the table is ancient() (it
    changes whenever any record does) and the records of its heads (calibrated points too), the baseline, the oracle
    and the pruning are inputs."""
    b, t = [wildcards.backbone], [wildcards.task]
    return {"grid": ancient(GRID_TABLE),
            "records": exit_records(b, heads, t) + calibrated_records(b, heads, t) + baseline_records(b, t)
            + oracle_records(b, t) + prune_records(b, t)}
