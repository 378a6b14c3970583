# Stage 5, layer-pruning baseline: one job per (backbone, task, n) with n blocks dropped (prefill and decode alike),
# so adding a depth adds exactly its jobs: the n blocks just before the last one (the paper's rule, prune~n/) and
# the n consecutive blocks Gromov et al.'s angular distance picks on the held-out corpus (prune_angular~n/). Unlike
# the thresholds the depths are not batched into one job: the series differs per backbone, and a rule's outputs
# cannot vary with a wildcard (by hand, `evaluate --no-heads --prune-series 1,2,3` runs a whole series with one
# model load).


rule evaluate_prune:
    wildcard_constraints:
        pruning=one_of(PRUNE_FOLDERS.values()),
    input:
        unpack(lambda wc: PATHS.prune_inputs(wc.backbone, wc.task, wc.pruning)),
    output:
        f"{PATHS.prune_dir('{backbone}', '{pruning}', '{n}', '{task}')}/record.json",
    params:
        common=evaluate_flags,
        out_dir=lambda wc: PATHS.prune_dir(wc.backbone, wc.pruning, wc.n, wc.task),
        rule=lambda wc: FLAGS.prune(wc.pruning),
    threads: 1
    log:
        f"{LOGS}/evaluate/{{backbone}}/{{pruning}}~{{n}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{backbone}}/{{pruning}}~{{n}}/{{task}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.evaluate {params.common} --threads {threads} --no-heads --prune {wildcards.n}"
        " {params.rule} --out-dir {params.out_dir} > {log} 2>&1"
