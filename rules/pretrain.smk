# Stage 2, the backbones made here. Embedded setup: a byte-level BPE tokenizer and the tiny backbones, trained from
# scratch on the world corpus. A GGUF checkpoint: converted once into a save_pretrained folder with its own tokenizer.
# Backbones from the hub or a local folder skip this stage.


rule tokenizer:
    input:
        PATHS.corpus_file("train"),
    output:
        directory(PATHS.tokenizer),
    params:
        options=flags(PLAN.tokenizer),
    log:
        f"{LOGS}/tokenizer.log",
    benchmark:
        f"{BENCHMARKS}/tokenizer.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.tokenizer --corpus {input} --out-dir {output} {params.options} > {log} 2>&1"


rule pretrain:
    input:
        world=PATHS.world_meta,
        corpus=PATHS.corpus_file("train"),
        valid=PATHS.corpus_file("valid"),
        tokenizer=PATHS.tokenizer,
    output:
        directory(PATHS.backbone_dir("{backbone}")),
    wildcard_constraints:
        backbone=one_of([name for name in PLAN.backbones if PLAN.pretrained_here(name)]),
    params:
        world=lambda wc, input: os.path.dirname(input.world),
        seed=PLAN.seed,
        arch=lambda wc: PLAN.backbones[wc.backbone]["arch"],
        options=lambda wc: flags(PLAN.backbones[wc.backbone]["pretrain"]),
    threads: 1
    log:
        f"{LOGS}/pretrain/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{backbone}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.pretrain --world {params.world} --tokenizer {input.tokenizer} --out-dir {output}"
        " --arch {params.arch} --seed {params.seed} --threads {threads} {params.options} > {log} 2>&1"


rule convert_backbone:
    output:
        directory(PATHS.backbone_dir("{backbone}")),
    wildcard_constraints:
        backbone=one_of(PLAN.gguf_backbones),
    params:
        model=lambda wc: PLAN.backbones[wc.backbone]["model"],
    threads: 1
    log:
        f"{LOGS}/convert_backbone/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/convert_backbone/{{backbone}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.convert_backbone --model {params.model:q} --out {output} > {log} 2>&1"
