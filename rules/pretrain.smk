# Stage 2, embedded setup only: a byte-level BPE tokenizer and the tiny backbones, trained from scratch on the
# world corpus. Backbones from the hub (paper scale) skip this stage.


rule tokenizer:
    input:
        corpus_file("train"),
    output:
        directory(TOKENIZER),
    params:
        options=cli(config["tokenizer"]),
    log:
        f"{LOGS}/tokenizer.log",
    benchmark:
        f"{BENCHMARKS}/tokenizer.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.tokenizer --corpus {input} --out-dir {output} {params.options} > {log} 2>&1"


rule pretrain:
    input:
        world=f"{DATA}/world.json",
        corpus=corpus_file("train"),
        valid=corpus_file("valid"),
        tokenizer=TOKENIZER,
    output:
        directory(f"{RESULTS}/backbones/{{backbone}}"),
    params:
        world=lambda wc, input: os.path.dirname(input.world),
        seed=SEED,
        arch=lambda wc: BACKBONES[wc.backbone]["arch"],
        options=lambda wc: cli(BACKBONES[wc.backbone].get("pretrain", {})),
    threads: 1
    log:
        f"{LOGS}/pretrain/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{backbone}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.pretrain --world {params.world} --tokenizer {input.tokenizer} --out-dir {output}"
        " --arch {params.arch} --seed {params.seed} --threads {threads} {params.options} > {log} 2>&1"
