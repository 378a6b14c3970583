# Stage 4, evaluation grid: one job per (backbone, head, policy, task, threshold), so adding a threshold adds
# exactly its jobs; plus the exits-disabled baseline per (backbone, task). Records: metrics, both CRFs,
# measured speed, exit histogram, degenerate share and validity, provenance.


rule evaluate_exits:
    input:
        unpack(evaluate_inputs),
        heads=lambda wc: f"{heads_dir(wc.backbone, wc.head)}/heads.safetensors",
    output:
        f"{EVAL_ROOT}/{{backbone}}/head~{{head}}/policy~{{policy}}/task~{{task}}/threshold~{{threshold}}/record.json",
    params:
        common=evaluate_common,
        heads=lambda wc: heads_dir(wc.backbone, wc.head),
        out_dir=lambda wc: f"{EVAL_ROOT}/{wc.backbone}/head~{wc.head}/policy~{wc.policy}/task~{wc.task}",
    threads: 1
    log:
        f"{LOGS}/evaluate/{{backbone}}/{{head}}/{{policy}}/{{task}}/{{threshold}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{backbone}}/{{head}}/{{policy}}/{{task}}/{{threshold}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.evaluate {params.common} --threads {threads} --heads {params.heads} --policy {wildcards.policy}"
        " --thresholds {wildcards.threshold} --out-dir {params.out_dir} > {log} 2>&1"


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
        "python -m workflow_lib.evaluate {params.common} --threads {threads} --no-heads --out-dir {params.out_dir} > {log} 2>&1"
