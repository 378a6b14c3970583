# Stage 3, exit heads: one job per (backbone, head spec) trains the spec's head type with its options and training
# settings at every exit of the frozen backbone, in one backbone pass (knowledge distillation from the full
# model). A job's command holds only its own spec, so adding a spec leaves every other head as it is. A
# zero-parameter exit rule (type softmax, saturation) has nothing to train: rule_heads writes its folder, heads.json
# only, from the backbone's config. The head wildcard is a head key: under an emission rule other than last_block
# (backbones.B.emissions) the heads train on labels from what that rule emits (train_heads --emission RULE, with the
# backbone's translators for the translator rule) into head~NAME/emission~RULE/. The labels are computed once per
# backbone and emission rule (label_cache) for every head spec that shares head_training's text and exits
# (label_cache_dir); a spec that does not labels its own batches. With answers.tasks the heads (head_training.
# answers_weight, per spec) and the label caches also read the backbone's greedy answers (rules/answers.smk).


rule label_cache:
    input:
        backbone=backbone_input,
        tokenizer=lambda wc: [TOKENIZER] if pretrained_here(wc.backbone) else [],
        translators=lambda wc: emission_inputs(wc.backbone, wc.emission),
        answers=lambda wc: answers_input(wc.backbone, HEAD_TRAINING["answers_weight"]),
        train=corpus_file("train"),
        valid=corpus_file("valid"),
    output:
        f"{LABELS_ROOT}/{{backbone}}/emission~{{emission}}/labels.safetensors",
    wildcard_constraints:
        emission="last_block|lens|translator",
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        seed=SEED,
        backbone=lambda wc: backbone_path(wc.backbone),
        tokenizer=lambda wc: f"--tokenizer {TOKENIZER}" if pretrained_here(wc.backbone) else "",
        exit_layers=lambda wc: exit_layers_option(wc.backbone),
        emission=lambda wc: emission_flags(wc.backbone, wc.emission),
        answers=lambda wc, input: f"--answers {input.answers[0]}" if input.answers else "",
        options=cli({"label_source": HEAD_TRAINING["label_source"], "seq_len": HEAD_TRAINING["seq_len"],
                     "batch_size": HEAD_TRAINING["batch_size"],
                     "train_tokens": HEAD_TRAINING["steps"] * HEAD_TRAINING["batch_size"] * HEAD_TRAINING["seq_len"]}),
    # unlocks every head job of the backbone: first (see train_heads)
    priority: 2
    threads: 1
    log:
        f"{LOGS}/label_cache/{{backbone}}/{{emission}}.log",
    benchmark:
        f"{BENCHMARKS}/label_cache/{{backbone}}/{{emission}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.label_cache --backbone {params.backbone} {params.tokenizer} {params.exit_layers}"
        " --train-text {input.train} --valid-text {input.valid} --out {params.out} --seed {params.seed}"
        " --threads {threads} {params.emission} {params.answers} {params.options} > {log} 2>&1"


rule train_heads:
    wildcard_constraints:
        head=keys_of(TRAINED_HEADS),
    input:
        backbone=backbone_input,
        tokenizer=lambda wc: [TOKENIZER] if pretrained_here(wc.backbone) else [],
        translators=lambda wc: emission_inputs(wc.backbone, key_emission(wc.head)),
        labels=lambda wc: [f"{d}/labels.safetensors" for d in [label_cache_dir(wc.backbone, wc.head)] if d],
        answers=lambda wc: answers_input(wc.backbone, HEAD_SPECS[spec_name(wc.head)]["training"]["answers_weight"]),
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
        name=lambda wc: spec_name(wc.head),
        head_type=lambda wc: HEAD_SPECS[spec_name(wc.head)]["type"],
        exit_layers=lambda wc: exit_layers_option(wc.backbone, wc.head),
        head_options=head_options,
        emission=lambda wc: emission_flags(wc.backbone, key_emission(wc.head)),
        labels=lambda wc, input: f"--label-cache {os.path.dirname(input.labels[0])}" if input.labels else "",
        options=lambda wc: cli({k: v for k, v in HEAD_SPECS[spec_name(wc.head)]["training"].items()
                                if k not in (EXIT_LAYERS, "answers_weight")}),
        answers=lambda wc: answers_flags(wc.backbone, HEAD_SPECS[spec_name(wc.head)]["training"]["answers_weight"]),
    # long jobs that unlock the evaluations: first, so the run does not end on one of them with a core idle
    priority: 1
    threads: 1
    log:
        f"{LOGS}/train_heads/{{backbone}}/{{head}}.log",
    benchmark:
        f"{BENCHMARKS}/train_heads/{{backbone}}/{{head}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.train_heads --backbone {params.backbone} {params.tokenizer} --name {params.name}"
        " --head {params.head_type} {params.head_options} {params.exit_layers} --train-text {input.train} --valid-text {input.valid}"
        " --out {params.out} --seed {params.seed} --threads {threads} {params.emission} {params.labels} {params.options}"
        " {params.answers} > {log} 2>&1"


rule rule_heads:
    wildcard_constraints:
        head=keys_of(RULE_HEADS),
    input:
        backbone=backbone_input,
    output:
        f"{RESULTS}/heads/{{backbone}}/head~{{head}}/heads.json",
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        backbone=lambda wc: backbone_path(wc.backbone),
        name=lambda wc: spec_name(wc.head),
        head_type=lambda wc: HEAD_SPECS[spec_name(wc.head)]["type"],
        exit_layers=lambda wc: exit_layers_option(wc.backbone, wc.head),
        head_options=head_options,
    log:
        f"{LOGS}/rule_heads/{{backbone}}/{{head}}.log",
    benchmark:
        f"{BENCHMARKS}/rule_heads/{{backbone}}/{{head}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.train_heads --backbone {params.backbone} --name {params.name} --head {params.head_type}"
        " {params.head_options} {params.exit_layers} --out {params.out} > {log} 2>&1"
