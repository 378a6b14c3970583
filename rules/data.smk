# Stage 1, data: the synthetic world (embedded) or real data sampled from the hub into local files (paper).
# Either way the later stages read the same file names under DATA (see common.smk).

if WORLD is not None:

    rule world:
        output:
            corpus_train=corpus_file("train"),
            corpus_valid=corpus_file("valid"),
            triviaqa=task_file("triviaqa"),
            triviaqa_fewshot=f"{DATA}/triviaqa_train.jsonl",
            coqa=task_file("coqa"),
            truthfulqa=task_file("truthfulqa"),
            meta=f"{DATA}/world.json",
        params:
            out_dir=lambda wc, output: os.path.dirname(output.meta),
            options=cli(WORLD),
            seed=SEED,
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
            train=corpus_file("train"),
            valid=corpus_file("valid"),
        params:
            # One seeded stream: the held-out text is the documents that follow the training ones, so the two
            # share no document (two draws of one source would, heavily for a small local file).
            options=sample_options(
                {k: REAL["corpus"][k] for k in ("source", "config", "split", "tokens", "valid_tokens")}
            ),
            seed=SEED,
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
            data=task_file("triviaqa"),
            fewshot=f"{DATA}/triviaqa_train.jsonl",
        params:
            options=sample_options(REAL.get("triviaqa") or {}),
            seed=SEED,
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
            f"{DATA}/{{task}}.{{ext}}",
        wildcard_constraints:
            task="coqa|truthfulqa",
            ext="json|jsonl",
        params:
            options=lambda wc: sample_options(REAL[wc.task]),
            seed=SEED,
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
            f"{DATA}/answers_pool/{{task}}.jsonl",
        wildcard_constraints:
            task=one_of([t for t in ANSWER_TASKS if t not in SEPARATE_POOLS]),
        params:
            # every question of the task's source: rule answer_prompts leaves out the evaluated ones, the calibration
            # set and the few-shot examples by question text (a local file or TruthfulQA has no other split)
            options=lambda wc: sample_options(
                {k: REAL[wc.task].get(k) for k in ("source", "config", "split") if k in REAL[wc.task]}
                | ({"n": "all", "selection": "seeded"} if wc.task == "triviaqa" else {})
            ),
            seed=SEED,
        log:
            f"{LOGS}/sample_answers_pool/{{task}}.log",
        benchmark:
            f"{BENCHMARKS}/sample_answers_pool/{{task}}.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.sample_data {wildcards.task} {params.options} --seed {params.seed} --out {output} > {log} 2>&1"
