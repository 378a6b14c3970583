# DYNAMAX: early exits for Transformer and Mamba-2 decoders, from data to figures.
#   snakemake --cores all                                   embedded default (config.yaml), offline, CPU
#   snakemake --cores all --profile slurm --configfile configs/paper.yaml    paper scale on a SLURM GPU cluster
#   snakemake --report results/report.html                  the HTML report (figures and tables, with captions)
# Stages, in order: data -> tokenizer and pretraining (embedded only) -> heads and translators -> evaluation, pruning and
# calibrated thresholds -> tables -> figures -> report. Helpers and config validation live in rules/common.smk.


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/answers.smk"
include: "rules/heads.smk"
include: "rules/translators.smk"
include: "rules/evaluate.smk"
include: "rules/prune.smk"
include: "rules/calibrate.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        GRID_TABLE,
        PARETO_TABLE,
        NO_LOSS_TABLE,
        VERSUS_PRUNING_TABLE,
        VERSUS_RULE_TABLE,
        [agreement_table(b) for b in BACKBONES],
        figure_files(),
