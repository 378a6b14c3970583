# Answers: the full model's greedy answers to held-out prompts of answers.tasks, the decode steps where an exit
# decides, fitted beside the text by the translators (translators.answers_weight) and the heads
# (head_training.answers_weight). Per task its prompts (answer_prompts: drawn clear of the evaluated questions, the
# calibration set and the few-shot examples, from the task's held-out pool or its whole source); per backbone one
# file of answers to all of them (greedy_answers), shared by its translators, its label caches and its heads, and
# the draft vocabulary of its speculative series (draft_vocab: the tokens it emits most).

rule answer_prompts:
    input:
        data=lambda wc: PATHS.task_file(wc.task),
        pool=lambda wc: PATHS.answers_pool(wc.task),
        apart=lambda wc: ([PATHS.calibration_file(wc.task)] if wc.task in PLAN.calibrated_tasks else [])
        + ([PATHS.fewshot_file(wc.task)] if PATHS.fewshot_file(wc.task) else []),
    output:
        PATHS.answer_prompts_file("{task}"),
    wildcard_constraints:
        task=one_of(PLAN.answer_tasks),
    params:
        options=lambda wc, input: flags({"limit": PLAN.task_setting(wc.task, "limit"), "n": PLAN.answers["prompts"],
                                         "seed": PLAN.seed, "exclude": list(input.apart) or None}),
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
        tokenizer=tokenizer_input,
        prompts=[PATHS.answer_prompts_file(t) for t in PLAN.answer_tasks],
        fewshot=[PATHS.fewshot_file("triviaqa")] if "triviaqa" in PLAN.answer_tasks else [],
    output:
        PATHS.answers_file("{backbone}"),
    params:
        model=backbone_path,
        tokenizer=tokenizer_flag,
        tasks=FLAGS.prompts(PLAN.answer_tasks, PATHS.answer_prompts_file),
        options=flags({"prompts": PLAN.answers["prompts"], "tokens": PLAN.answers["tokens"],
                       "batch_size": PLAN.evaluation["batch_size"], "seed": PLAN.seed}),
    priority: PRIORITY["greedy_answers"]
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


rule draft_vocab:
    input:
        answers=PATHS.answers_file("{backbone}"),
        text=PATHS.corpus_file("train"),
        tokenizer=tokenizer_input,
        backbone=backbone_input,
    output:
        PATHS.draft_vocab_file("{backbone}"),
    params:
        tokenizer=lambda wc: PATHS.tokenizer if PLAN.pretrained_here(wc.backbone) else PATHS.backbone_path(wc.backbone),
        size=lambda wc: PLAN.backbones[wc.backbone]["speculative"]["draft_vocab"],
    priority: PRIORITY["draft_vocab"]
    threads: 1
    log:
        f"{LOGS}/draft_vocab/{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/draft_vocab/{{backbone}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.draft_vocab --answers {input.answers} --text {input.text}"
        " --tokenizer {params.tokenizer} --size {params.size} --threads {threads} --out {output} > {log} 2>&1"
