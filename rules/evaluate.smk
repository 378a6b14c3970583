# Stage 4, evaluation grid: one job per (backbone, head, policy, task) evaluates every threshold with the model
# loaded once (a job's fixed cost, imports and loading, is most of a tiny model's evaluation). Its records are
# update() outputs and the job runs with --reuse: adding a threshold reruns each cell for that threshold only,
# keeping every record already made with the same settings and inputs. The exits-disabled baseline is one job
# per (backbone, task): it is the same for every head, policy and emission rule. The oracle bound is one job per
# (backbone, emission rule, policy, task). A head key under a rule other than last_block (head~SPEC/emission~RULE,
# workflow_lib/pipeline/keys.py) evaluates with --emission RULE and its own heads. Records: metrics, both CRFs,
# measured speed, exit histogram, degenerate share and validity, provenance.


rule evaluate_exits:
    input:
        unpack(lambda wc: PATHS.exit_inputs(wc.backbone, wc.head, wc.task)),
        heads=lambda wc: f"{heads_dir(wc)}/heads.json",  # every head type has it (untrained heads: only it)
    output:
        [update(PATHS.threshold_record(EXIT_CELL, x)) for x in PLAN.thresholds],
    params:
        common=evaluate_flags,
        heads=heads_dir,
        emission=emission_flags,
        thresholds=",".join(PLAN.thresholds),
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
        f"{PATHS.baseline_dir('{backbone}', '{task}')}/record.json",
    params:
        common=evaluate_flags,
        out_dir=lambda wc: PATHS.baseline_dir(wc.backbone, wc.task),
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
        translators=translators_input,
    output:
        f"{PATHS.oracle_dir('{backbone}', '{oracle}', '{policy}', '{task}')}/record.json",
    params:
        common=evaluate_flags,
        exits=exit_layers_flag,
        emission=emission_flags,
        out_dir=lambda wc: PATHS.oracle_dir(wc.backbone, wc.oracle, wc.policy, wc.task),
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
