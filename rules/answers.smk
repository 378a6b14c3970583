# Answers: the full model's greedy answers to held-out prompts of answers.tasks, the decode steps where an exit
# decides, fitted beside the text by the translators (translators.answers_weight) and the heads
# (head_training.answers_weight). Per task its prompts (answer_prompts: drawn clear of the evaluated questions, the
# calibration set and the few-shot examples, from the task's held-out pool or its whole source); per backbone one
# file of answers to all of them (greedy_answers), shared by its translators, its label caches and its heads.

rule answer_prompts:
    input:
        data=lambda wc: task_file(wc.task),
        pool=lambda wc: answers_pool(wc.task),
        apart=lambda wc: ([calibration_file(wc.task)] if wc.task in CALIBRATED_TASKS else [])
        + ([fewshot_file(wc.task)] if fewshot_file(wc.task) else []),
    output:
        answer_prompts_file("{task}"),
    wildcard_constraints:
        task=one_of(ANSWER_TASKS),
    params:
        options=lambda wc, input: cli({"limit": task_limit(wc.task), "n": ANSWERS["prompts"], "seed": SEED,
                                       "exclude": list(input.apart) or None}),
    log:
        f"{LOGS}/answer_prompts/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/answer_prompts/{{task}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.held_out_split --task {wildcards.task} --data {input.data} --pool {input.pool}"
        " {params.options} --out {output} > {log} 2>&1"


rule greedy_answers:
    input:
        backbone=backbone_input,
        tokenizer=lambda wc: [TOKENIZER] if pretrained_here(wc.backbone) else [],
        prompts=[answer_prompts_file(t) for t in ANSWER_TASKS],
        fewshot=[fewshot_file("triviaqa")] if "triviaqa" in ANSWER_TASKS else [],
    output:
        answers_file("{backbone}"),
    params:
        model=lambda wc: backbone_path(wc.backbone),
        tokenizer=lambda wc: f"--tokenizer {TOKENIZER}" if pretrained_here(wc.backbone) else "",
        tasks=answer_task_options(),
        options=cli({"prompts": ANSWERS["prompts"], "tokens": ANSWERS["tokens"], "batch_size": EVAL["batch_size"],
                     "seed": SEED}),
    # unlocks the translators and every head job of the backbone: first (see train_heads)
    priority: 3
    threads: 1
    log:
        f"{LOGS}/greedy_answers/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/greedy_answers/{{backbone}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.answers --backbone {params.model} {params.tokenizer} {params.tasks}"
        " --threads {threads} {params.options} --out {output} > {log} 2>&1"
