# Stage 4, evaluation grid: one job per (backbone, head, policy, task) evaluates every threshold with the model
# loaded once (a job's fixed cost, imports and loading, is most of a tiny model's evaluation). Its records are
# update() outputs and the job runs with --reuse: adding a threshold reruns each cell for that threshold only,
# keeping every record already made with the same settings and inputs. The exits-disabled baseline is one job
# per (backbone, task): it is the same for every head, policy and emission rule. The oracle bound is one job per
# (backbone, emission rule, policy, task). A head key under a rule other than last_block (head~NAME/emission~RULE,
# common.smk) evaluates with --emission RULE and its own heads. Records: metrics, both CRFs, measured speed, exit histogram, degenerate share and validity, provenance.


rule evaluate_exits:
    input:
        unpack(exit_inputs),
        heads=lambda wc: f"{heads_dir(wc.backbone, wc.head)}/heads.json",  # every head type has it (rules: only it)
    output:
        [update(f"{EXIT_CELL}/threshold~{x}/record.json") for x in THRESHOLDS],
    params:
        common=evaluate_common,
        heads=lambda wc: heads_dir(wc.backbone, wc.head),
        emission=lambda wc: emission_flags(wc.backbone, key_emission(wc.head)),
        thresholds=",".join(THRESHOLDS),
        out_dir=lambda wc: EXIT_CELL.format(**wc),
    threads: 1
    log:
        f"{LOGS}/evaluate/{{backbone}}/{{head}}/{{policy}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{backbone}}/{{head}}/{{policy}}/{{task}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.evaluate {params.common} --threads {threads} --heads {params.heads} --policy {wildcards.policy}"
        " {params.emission} --thresholds {params.thresholds} --reuse --out-dir {params.out_dir} > {log} 2>&1"


rule evaluate_baseline:
    input:
        unpack(evaluate_inputs),
    output:
        f"{EVAL_ROOT}/{{backbone}}/baseline/task~{{task}}/record.json",
    params:
        common=evaluate_common,
        out_dir=lambda wc: f"{EVAL_ROOT}/{wc.backbone}/baseline/task~{wc.task}",
    threads: 1
    log:
        f"{LOGS}/evaluate/{{backbone}}/baseline/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{backbone}}/baseline/{{task}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.evaluate {params.common} --threads {threads} --no-heads --out-dir {params.out_dir} > {log} 2>&1"


rule evaluate_oracle:
    input:
        unpack(evaluate_inputs),
        translators=lambda wc: emission_inputs(wc.backbone, key_emission(wc.oracle)),
    output:
        f"{EVAL_ROOT}/{{backbone}}/{{oracle}}/policy~{{policy}}/task~{{task}}/record.json",
    params:
        common=evaluate_common,
        exits=lambda wc: exit_layers_option(wc.backbone),
        emission=lambda wc: emission_flags(wc.backbone, key_emission(wc.oracle)),
        out_dir=lambda wc: f"{EVAL_ROOT}/{wc.backbone}/{wc.oracle}/policy~{wc.policy}/task~{wc.task}",
    threads: 1
    log:
        f"{LOGS}/evaluate/{{backbone}}/{{oracle}}/{{policy}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{backbone}}/{{oracle}}/{{policy}}/{{task}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.evaluate {params.common} --threads {threads} --oracle {params.exits}"
        " --policy {wildcards.policy} {params.emission} --out-dir {params.out_dir} > {log} 2>&1"
