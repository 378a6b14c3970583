# Stage 3, exit heads: one job per (backbone, head spec) trains the spec's head type with its options and training
# settings at every exit of the frozen backbone, in one backbone pass (knowledge distillation from the full
# model). A job's command holds only its own spec, so adding a spec leaves every other head as it is. A
# zero-parameter exit rule (type softmax, saturation) has nothing to train: untrained_heads writes its folder,
# heads.json only, from the backbone's config. The head wildcard is a head key (workflow_lib/pipeline/keys.py): under
# an emission rule other than last_block (backbones.B.emissions) the heads train on labels from what that rule emits
# (train_heads --emission RULE, with the backbone's translators for the translator rule) into
# head~SPEC/emission~RULE/. The labels are computed once per backbone and emission rule (label_cache) for every head
# spec that shares head_training's text and exits (plan.reads_label_cache); a spec that does not labels its own
# batches. With answers.tasks the heads (head_training.answers_weight, per spec) and the label caches also read the
# backbone's greedy answers (rules/answers.smk).
HEADS_DIR = PATHS.heads_dir("{backbone}", "{head}")


rule label_cache:
    input:
        backbone=backbone_input,
        tokenizer=tokenizer_input,
        translators=translators_input,
        answers=lambda wc: PATHS.answers_input(wc.backbone, PLAN.head_training["answers_weight"]),
        train=PATHS.corpus_file("train"),
        valid=PATHS.corpus_file("valid"),
    output:
        f"{PATHS.label_cache('{backbone}', '{emission}')}/labels.safetensors",
    wildcard_constraints:
        emission=one_of(EMISSION_RULES),
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        seed=PLAN.seed,
        backbone=backbone_path,
        tokenizer=tokenizer_flag,
        exit_layers=exit_layers_flag,
        emission=emission_flags,
        answers=lambda wc, input: f"--answers {input.answers[0]}" if input.answers else "",
        options=FLAGS.label_cache_options(),
    priority: PRIORITY["label_cache"]
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
        head=keys_of(PLAN.trained_heads),
    input:
        backbone=backbone_input,
        tokenizer=tokenizer_input,
        translators=translators_input,
        labels=lambda wc: PATHS.label_cache_input(wc.backbone, wc.head),
        answers=lambda wc: PATHS.answers_input(wc.backbone, PLAN.spec(wc.head)["training"]["answers_weight"]),
        train=PATHS.corpus_file("train"),
        valid=PATHS.corpus_file("valid"),
    output:
        weights=f"{HEADS_DIR}/heads.safetensors",
        meta=f"{HEADS_DIR}/heads.json",
        metrics=f"{HEADS_DIR}/metrics.json",
    params:
        out=lambda wc, output: os.path.dirname(output.weights),
        seed=PLAN.seed,
        backbone=backbone_path,
        tokenizer=tokenizer_flag,
        name=lambda wc: spec_name(wc.head),
        head_type=lambda wc: PLAN.spec(wc.head)["type"],
        exit_layers=exit_layers_flag,
        head_options=head_options,
        emission=emission_flags,
        labels=lambda wc, input: f"--label-cache {os.path.dirname(input.labels[0])}" if input.labels else "",
        options=lambda wc: FLAGS.training_options(wc.head),
        answers=lambda wc: FLAGS.answers(wc.backbone, PLAN.spec(wc.head)["training"]["answers_weight"]),
    priority: PRIORITY["train_heads"]
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


rule untrained_heads:
    wildcard_constraints:
        head=keys_of(PLAN.untrained_heads),
    input:
        backbone=backbone_input,
    output:
        f"{HEADS_DIR}/heads.json",
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        backbone=backbone_path,
        name=lambda wc: spec_name(wc.head),
        head_type=lambda wc: PLAN.spec(wc.head)["type"],
        exit_layers=exit_layers_flag,
        head_options=head_options,
    # logs keep the rule's former name, rule_heads: the jobs' commands stay as they were
    log:
        f"{LOGS}/rule_heads/{{backbone}}/{{head}}.log",
    benchmark:
        f"{BENCHMARKS}/rule_heads/{{backbone}}/{{head}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.train_heads --backbone {params.backbone} --name {params.name} --head {params.head_type}"
        " {params.head_options} {params.exit_layers} --out {params.out} > {log} 2>&1"
