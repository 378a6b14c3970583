# Stage 5, layer-pruning baseline: one job per (backbone, task, n) with the n blocks before the last one
# dropped (prefill and decode alike), so adding a depth adds exactly its jobs. Unlike the thresholds the depths
# are not batched into one job: the series differs per backbone, and a rule's outputs cannot vary with a
# wildcard (by hand, `evaluate --no-heads --prune-series 1,2,3` runs a whole series with one model load).


rule evaluate_prune:
    input:
        unpack(evaluate_inputs),
    output:
        f"{EVAL_ROOT}/{{backbone}}/prune~{{n}}/task~{{task}}/record.json",
    params:
        common=evaluate_common,
        out_dir=lambda wc: f"{EVAL_ROOT}/{wc.backbone}/prune~{wc.n}/task~{wc.task}",
    threads: 1
    log:
        f"{LOGS}/evaluate/{{backbone}}/prune~{{n}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{backbone}}/prune~{{n}}/{{task}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.evaluate {params.common} --threads {threads} --no-heads --prune {wildcards.n} --out-dir {params.out_dir} > {log} 2>&1"
