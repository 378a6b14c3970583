# DYNAMAX: early exits for Transformer and Mamba-2 decoders, from data to figures.
#   snakemake --cores all                                   embedded default (config.yaml), offline, CPU
#   snakemake --cores all --profile slurm --configfile configs/paper.yaml    paper scale on a SLURM GPU cluster
#   snakemake --report results/report.html                  the HTML report (figures and tables, with captions)
#   snakemake results_page --cores all --configfile C     the results page a config names (results_page.page)
# Stages, in order: data -> tokenizer and pretraining (embedded only) -> heads and translators -> evaluation, pruning and
# calibrated thresholds -> tables -> figures -> report (and, asked for, the results page). The plan (the config checked
# and resolved: the grid, paths, command flags) is workflow_lib/pipeline, resolved once in rules/common.smk.


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/answers.smk"
include: "rules/heads.smk"
include: "rules/translators.smk"
include: "rules/evaluate.smk"
include: "rules/calibrate.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"
include: "rules/report.smk"
include: "rules/results_page.smk"


rule all:
    default_target: True
    input:
        PATHS.grid_table,
        PATHS.pareto_table,
        PATHS.no_loss_table,
        PATHS.versus_pruning_table,
        PATHS.versus_rule_table,
        [PATHS.agreement_table(b) for b in PLAN.backbones],
        RECORDS.figures(),
