# Emission stage: tuned-lens translators for the backbones whose emission rules include `translator` (one cached job
# per backbone, trained from the frozen backbone on the heads' corpus and, with answers.tasks, on the full model's
# greedy answers to held-out prompts, rules/answers.smk), and per backbone the agreement table: each exit's emitted
# token against the full model, per emission rule, on held-out text and the tasks' greedy answers.

rule train_translators:
    wildcard_constraints:
        backbone=one_of([b for b in BACKBONES if "translator" in emissions(b)]),
    input:
        backbone=backbone_input,
        tokenizer=lambda wc: [TOKENIZER] if pretrained_here(wc.backbone) else [],
        train=corpus_file("train"),
        answers=lambda wc: answers_input(wc.backbone, TRANSLATORS["answers_weight"]),
    output:
        weights=f"{RESULTS}/translators/{{backbone}}/translators.safetensors",
        meta=f"{RESULTS}/translators/{{backbone}}/translators.json",
    params:
        out=lambda wc, output: os.path.dirname(output.meta),
        model=lambda wc: backbone_path(wc.backbone),
        tokenizer=lambda wc: f"--tokenizer {TOKENIZER}" if pretrained_here(wc.backbone) else "",
        exit_layers=lambda wc: exit_layers_option(wc.backbone),
        options=cli({k: v for k, v in TRANSLATORS.items() if k != "answers_weight"}),
        answers=lambda wc: answers_flags(wc.backbone, TRANSLATORS["answers_weight"]),
        seed=SEED,
    # unlocks the translator heads and their evaluations: first (see train_heads)
    priority: 1
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
        unpack(lambda wc: {"backbone": backbone_input(wc), "valid": corpus_file("valid"),
                           "translators": translators_input(wc),
                           **{f"task_{t}": task_file(t) for t in TASKS},
                           **({"fewshot": fewshot_file("triviaqa")} if "triviaqa" in TASKS else {})}),
        tokenizer=lambda wc: [TOKENIZER] if pretrained_here(wc.backbone) else [],
    output:
        report(f"{RESULTS}/tables/agreement_{{backbone}}.csv", caption="../report/agreement_table.rst", category="Tables"),
    params:
        model=lambda wc: backbone_path(wc.backbone),
        tokenizer=lambda wc: f"--tokenizer {TOKENIZER}" if pretrained_here(wc.backbone) else "",
        exit_layers=lambda wc: exit_layers_option(wc.backbone),
        translators=lambda wc, input: f"--translators {os.path.dirname(input.translators[0])}" if input.translators else "",
        tasks=" ".join(f"--task {t}:{task_file(t)}" + (f":{EVAL['tasks'][t]['shots']}" if (EVAL["tasks"][t] or {}).get("shots") is not None else "")
                       for t in TASKS),
        fewshot=f"--fewshot-data {fewshot_file('triviaqa')}" if "triviaqa" in TASKS else "",
        options=cli({**AGREEMENT, "max_new_tokens": EVAL["max_new_tokens"], "seed": SEED}),
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
