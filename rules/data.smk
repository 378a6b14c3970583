# Stage 1, data: the synthetic world (embedded) or real data sampled from the hub into local files (paper).
# Either way the later stages read the same file names under PATHS.data (workflow_lib/pipeline/paths.py).

if PLAN.world is not None:

    rule world:
        output:
            corpus_train=PATHS.corpus_file("train"),
            corpus_valid=PATHS.corpus_file("valid"),
            triviaqa=PATHS.task_file("triviaqa"),
            triviaqa_fewshot=PATHS.fewshot_file("triviaqa"),
            coqa=PATHS.task_file("coqa"),
            truthfulqa=PATHS.task_file("truthfulqa"),
            meta=PATHS.world_meta,
        params:
            out_dir=lambda wc, output: os.path.dirname(output.meta),
            options=flags(PLAN.world),
            seed=PLAN.seed,
        log:
            f"{LOGS}/world.log",
        benchmark:
            f"{BENCHMARKS}/world.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.world --out-dir {params.out_dir} --seed {params.seed} {params.options} > {log} 2>&1"

else:

    rule sample_corpus:
        output:
            train=PATHS.corpus_file("train"),
            valid=PATHS.corpus_file("valid"),
        params:
            # One seeded stream: the held-out text is the documents that follow the training ones, so the two
            # share no document (two draws of one source would, heavily for a small local file).
            options=sample_options(
                {k: PLAN.real["corpus"][k] for k in ("source", "config", "split", "tokens", "valid_tokens")}
            ),
            seed=PLAN.seed,
        log:
            f"{LOGS}/sample_corpus.log",
        benchmark:
            f"{BENCHMARKS}/sample_corpus.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.sample_data fineweb {params.options} --seed {params.seed}"
            " --out {output.train} --valid-out {output.valid} > {log} 2>&1"

    rule sample_triviaqa:
        output:
            data=PATHS.task_file("triviaqa"),
            fewshot=PATHS.fewshot_file("triviaqa"),
        params:
            options=sample_options(PLAN.real.get("triviaqa") or {}),
            seed=PLAN.seed,
        log:
            f"{LOGS}/sample_task/triviaqa.log",
        benchmark:
            f"{BENCHMARKS}/sample_task/triviaqa.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.sample_data triviaqa {params.options} --seed {params.seed}"
            " --out {output.data} --fewshot-out {output.fewshot} > {log} 2>&1"

    rule sample_task:
        output:
            f"{PATHS.data}/{{task}}.{{ext}}",
        wildcard_constraints:
            task="coqa|truthfulqa",
            ext="json|jsonl",
        params:
            options=lambda wc: sample_options(PLAN.real[wc.task]),
            seed=PLAN.seed,
        log:
            f"{LOGS}/sample_task/{{task}}.{{ext}}.log",
        benchmark:
            f"{BENCHMARKS}/sample_task/{{task}}.{{ext}}.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.sample_data {wildcards.task} {params.options} --seed {params.seed} --out {output} > {log} 2>&1"

    rule sample_answers_pool:
        output:
            PATHS.answers_pool_file("{task}"),
        wildcard_constraints:
            task=one_of([t for t in PLAN.answer_tasks if t not in PLAN.separate_pools]),
        params:
            # every question of the task's source: rule answer_prompts leaves out the evaluated ones, the calibration
            # set and the few-shot examples by question text (a local file or TruthfulQA has no other split)
            options=lambda wc: sample_options(
                {k: PLAN.real[wc.task].get(k) for k in ("source", "config", "split") if k in PLAN.real[wc.task]}
                | ({"n": "all", "selection": "seeded"} if wc.task == "triviaqa" else {})
            ),
            seed=PLAN.seed,
        log:
            f"{LOGS}/sample_answers_pool/{{task}}.log",
        benchmark:
            f"{BENCHMARKS}/sample_answers_pool/{{task}}.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.sample_data {wildcards.task} {params.options} --seed {params.seed} --out {output} > {log} 2>&1"
