# Stage 3, exit heads: one job per (backbone, head type) trains that type at every exit of the frozen
# backbone, in one backbone pass (knowledge distillation from the full model). A zero-parameter exit rule
# (softmax, saturation) has nothing to train: its folder holds heads.json only, written from the backbone's config.


rule train_heads:
    wildcard_constraints:
        head=one_of(TRAINED_HEADS),
    input:
        backbone=backbone_input,
        tokenizer=lambda wc: [TOKENIZER] if pretrained_here(wc.backbone) else [],
        train=corpus_file("train"),
        valid=corpus_file("valid"),
    output:
        weights=f"{RESULTS}/heads/{{backbone}}/head~{{head}}/heads.safetensors",
        meta=f"{RESULTS}/heads/{{backbone}}/head~{{head}}/heads.json",
        metrics=f"{RESULTS}/heads/{{backbone}}/head~{{head}}/metrics.json",
    params:
        out=lambda wc, output: os.path.dirname(output.weights),
        seed=SEED,
        backbone=lambda wc: backbone_path(wc.backbone),
        tokenizer=lambda wc: f"--tokenizer {TOKENIZER}" if pretrained_here(wc.backbone) else "",
        exit_layers=lambda wc: exit_layers_option(wc.backbone),
        head_options=head_options,
        options=cli(
            {k: config["heads"][k] for k in ("label_rule", "k", "mode", "class_balance", "steps", "batch_size", "seq_len", "lr")}
        ),
    threads: 1
    log:
        f"{LOGS}/train_heads/{{backbone}}/{{head}}.log",
    benchmark:
        f"{BENCHMARKS}/train_heads/{{backbone}}/{{head}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.train_heads --backbone {params.backbone} {params.tokenizer} --head {wildcards.head}"
        " {params.head_options} {params.exit_layers} --train-text {input.train} --valid-text {input.valid}"
        " --out {params.out} --seed {params.seed} --threads {threads} {params.options} > {log} 2>&1"


rule rule_heads:
    wildcard_constraints:
        head=one_of(RULE_HEADS),
    input:
        backbone=backbone_input,
    output:
        f"{RESULTS}/heads/{{backbone}}/head~{{head}}/heads.json",
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        backbone=lambda wc: backbone_path(wc.backbone),
        exit_layers=lambda wc: exit_layers_option(wc.backbone),
        head_options=head_options,
    log:
        f"{LOGS}/rule_heads/{{backbone}}/{{head}}.log",
    benchmark:
        f"{BENCHMARKS}/rule_heads/{{backbone}}/{{head}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.train_heads --backbone {params.backbone} --head {wildcards.head} {params.head_options}"
        " {params.exit_layers} --out {params.out} > {log} 2>&1"
