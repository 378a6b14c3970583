# Emission stage: tuned-lens translators for the backbones whose emission rules include `translator` (one cached job
# per backbone, trained from the frozen backbone on the heads' corpus and, with answers.tasks, on the full model's
# greedy answers to held-out prompts, rules/answers.smk), and per backbone the agreement table: each exit's emitted
# token against the full model, per emission rule, on held-out text and the tasks' greedy answers.

rule train_translators:
    wildcard_constraints:
        backbone=one_of([b for b in PLAN.backbones if "translator" in PLAN.emissions(b)]),
    input:
        backbone=backbone_input,
        tokenizer=tokenizer_input,
        train=PATHS.corpus_file("train"),
        answers=lambda wc: PATHS.answers_input(wc.backbone, PLAN.translators["answers_weight"]),
    output:
        weights=f"{PATHS.translators_dir('{backbone}')}/translators.safetensors",
        meta=PATHS.translators_file("{backbone}"),
    params:
        out=lambda wc, output: os.path.dirname(output.meta),
        model=backbone_path,
        tokenizer=tokenizer_flag,
        exit_layers=exit_layers_flag,
        options=flags({k: v for k, v in PLAN.translators.items() if k != "answers_weight"}),
        answers=lambda wc: FLAGS.answers(wc.backbone, PLAN.translators["answers_weight"]),
        seed=PLAN.seed,
    priority: PRIORITY["train_translators"]
    threads: 1
    log:
        f"{LOGS}/train_translators/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/train_translators/{{backbone}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.train_translators --backbone {params.model} {params.tokenizer} {params.exit_layers}"
        " --train-text {input.train} --out {params.out} --seed {params.seed} --threads {threads} {params.options}"
        " {params.answers} > {log} 2>&1"


rule agreement:
    input:
        unpack(lambda wc: {"backbone": backbone_input(wc), "valid": PATHS.corpus_file("valid"),
                           "translators": [PATHS.translators_file(wc.backbone)]
                           if "translator" in PLAN.emissions(wc.backbone) else [],
                           **{f"task_{t}": PATHS.task_file(t) for t in PLAN.tasks},
                           **({"fewshot": PATHS.fewshot_file("triviaqa")} if "triviaqa" in PLAN.tasks else {})}),
        tokenizer=tokenizer_input,
    output:
        report(PATHS.agreement_table("{backbone}"), caption="../report/agreement_table.rst", category="Tables"),
    params:
        model=backbone_path,
        tokenizer=tokenizer_flag,
        exit_layers=exit_layers_flag,
        translators=lambda wc, input: f"--translators {os.path.dirname(input.translators[0])}" if input.translators else "",
        tasks=FLAGS.task_options(PLAN.tasks, PATHS.task_file),
        fewshot=FLAGS.fewshot(PLAN.tasks),
        options=flags({**PLAN.agreement, "max_new_tokens": PLAN.evaluation["max_new_tokens"], "seed": PLAN.seed}),
    priority: PRIORITY["agreement"]
    threads: 1
    log:
        f"{LOGS}/agreement/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/agreement/{{backbone}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.agreement --backbone {params.model} {params.tokenizer} {params.exit_layers}"
        " {params.translators} --text {input.valid} {params.tasks} {params.fewshot} --threads {threads}"
        " {params.options} --out {output} > {log} 2>&1"
