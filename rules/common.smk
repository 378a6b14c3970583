# The pipeline's plan, resolved once before any job (dry runs included) by workflow_lib/pipeline: the config checked
# and its defaults filled, the grid it spans, every artifact path and command flag. The rules read PLAN (the grid),
# PATHS, FLAGS and RECORDS; what only Snakemake knows stays here: the default config file, the wildcard constraints
# and adapters from a job's wildcards to the plan. Nothing here runs a job.
import os  # the rules' os.path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from workflow_lib.choices import EMISSION_RULES
from workflow_lib.pipeline import ConfigError, resolve
from workflow_lib.pipeline.flags import flags, sample_options
from workflow_lib.pipeline.keys import HEAD_KEY, ORACLE_KEY, SPEC_NAME, emission_of, keys_of, one_of, spec_name
from workflow_lib.pipeline.paths import EVALUATION_PARTS, PRUNE_FOLDERS

min_version("9.0")

# config.yaml is the default; a --configfile replaces it whole (configs/paper.yaml and configs/smoke.yaml are
# complete), so no key of the embedded setup leaks into another setup by dictionary merging.
if not workflow.config_settings.configfiles:

    configfile: workflow.source_path("../config.yaml")


try:
    PLAN = resolve(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None
config.update(PLAN.config)  # the schema's defaults too, for the report's captions (snakemake.config)
PATHS, FLAGS, RECORDS = PLAN.paths, PLAN.flags, PLAN.records

LOGS, BENCHMARKS = PATHS.logs, PATHS.benchmarks
EXIT_CELL = PATHS.exit_cell("{backbone}", "{head}", "{policy}", "{task}")

# Which ready job a free core takes first (the highest priority) when the ready jobs outnumber the cores, as on a
# laptop: the jobs that unlock others; the short agreement and calibration jobs as soon as they can run; of the
# evaluations (the DAG's last jobs) the longest first (list scheduling's longest-processing-time rule): TruthfulQA's
# and CoQA's long answers and prompts ahead of TriviaQA's, so that no long job is left alone on one core at the end.
# In the 2-core run at dfd4f9b, the order as it was left TruthfulQA's reference job, the longest, alone for its last
# 26 minutes. A short job that unlocks others takes their priority (Snakemake gives none to a job's inputs): at
# 24dda6a the 9-second draft_vocab, at 0, waited for a core behind a reference job and a calibration and held
# TruthfulQA's heads job back 1 min 41 s.
PRIORITY = {"greedy_answers": 3, "label_cache": 3, "train_heads": 2, "train_translators": 1, "agreement": 3,
            "calibrate": 3, "draft_vocab": 4, "evaluate_heads": 4, "evaluate_reference": 1}
LONGER_EVALUATION = {"triviaqa": 0, "truthfulqa": 3, "coqa": 6}  # added to both evaluation parts' priorities


def evaluation_priority(part):
    return lambda wc: PRIORITY[f"evaluate_{part}"] + LONGER_EVALUATION[wc.task]


wildcard_constraints:
    backbone="|".join(PLAN.backbones),
    head=HEAD_KEY,  # a head key: the spec's name, /emission~RULE under a rule other than last_block
    oracle=ORACLE_KEY,
    comparison=SPEC_NAME,
    policy=r"[a-z_]+",
    task="|".join(PLAN.tasks),
    n=r"[0-9]+",


# ---- adapters: a job's wildcards -> the plan --------------------------------------------------------------------
def backbone_input(wildcards):
    return PATHS.backbone_input(wildcards.backbone)


def backbone_path(wildcards):
    return PATHS.backbone_path(wildcards.backbone)


def tokenizer_input(wildcards):
    return PATHS.tokenizer_input(wildcards.backbone)


def tokenizer_flag(wildcards):
    return FLAGS.tokenizer(wildcards.backbone)


def exit_layers_flag(wildcards):
    """The head key's exit layers in a head job, else the backbone's."""
    return FLAGS.exit_layers(wildcards.backbone, wildcards.get("head"))


def job_emission(wildcards):
    """A job's emission rule (its own wildcard), or its head key's, or its oracle folder's."""
    return wildcards.get("emission") or emission_of(wildcards.get("head") or wildcards.oracle)


def emission_flags(wildcards):
    return FLAGS.emission(wildcards.backbone, job_emission(wildcards))


def translators_input(wildcards):
    return PATHS.translators_input(wildcards.backbone, job_emission(wildcards))


def heads_dir(wildcards):
    return PATHS.heads_dir(wildcards.backbone, wildcards.head)


def head_options(wildcards):
    return FLAGS.head_options(wildcards.head)


def evaluate_inputs(wildcards):
    return PATHS.evaluate_inputs(wildcards.backbone, wildcards.task)


def calibration_inputs(wildcards):
    return PATHS.calibration_inputs(wildcards.backbone, wildcards.task)


def evaluate_flags(wildcards):
    return FLAGS.evaluate(wildcards.backbone, wildcards.task)


def figure_inputs(wildcards, specs):
    """A figure reads the grid table, but reruns only when the records it shows change: the table is ancient() (it
    changes whenever any record does) and the records of its heads, the baseline, the oracle and the pruning are
    inputs."""
    return {"grid": ancient(PATHS.grid_table), "records": RECORDS.shown(wildcards.backbone, wildcards.task, specs)}
