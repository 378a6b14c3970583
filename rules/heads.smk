# Stage 3, exit heads: one job per (backbone, head type) trains that type at every exit of the frozen
# backbone, in one backbone pass (knowledge distillation from the full model).


rule train_heads:
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
        head_options=lambda wc: (
            shlex.join(["--head-options", json.dumps(config["heads"]["options"][wc.head])])
            if wc.head in config["heads"]["options"]
            else ""
        ),
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
