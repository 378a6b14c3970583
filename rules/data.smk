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
            "python -m workflow_lib.world --out-dir {params.out_dir} --seed {params.seed} {params.options} > {log} 2>&1"

else:

    rule sample_corpus:
        output:
            corpus_file("{split}"),
        wildcard_constraints:
            split="train|valid",
        params:
            # The held-out text is a second draw with another seed: same source, same filter, disjoint budget.
            options=lambda wc: cli(
                {
                    "source": REAL["corpus"]["source"],
                    "config": REAL["corpus"]["config"],
                    "split": REAL["corpus"]["split"],
                    "tokens": REAL["corpus"]["tokens" if wc.split == "train" else "valid_tokens"],
                    "seed": SEED if wc.split == "train" else SEED + 1,
                }
            ),
        log:
            f"{LOGS}/sample_corpus/{{split}}.log",
        benchmark:
            f"{BENCHMARKS}/sample_corpus/{{split}}.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.sample_data fineweb {params.options} --out {output} > {log} 2>&1"

    rule sample_triviaqa:
        output:
            data=task_file("triviaqa"),
            fewshot=f"{DATA}/triviaqa_train.jsonl",
        params:
            options=cli(REAL.get("triviaqa") or {}),
            seed=SEED,
        log:
            f"{LOGS}/sample_task/triviaqa.log",
        benchmark:
            f"{BENCHMARKS}/sample_task/triviaqa.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.sample_data triviaqa {params.options} --seed {params.seed}"
            " --out {output.data} --fewshot-out {output.fewshot} > {log} 2>&1"

    rule sample_task:
        output:
            f"{DATA}/{{task}}.{{ext}}",
        wildcard_constraints:
            task="coqa|truthfulqa",
            ext="json|jsonl",
        params:
            options=lambda wc: cli(REAL[wc.task]),
            seed=SEED,
        log:
            f"{LOGS}/sample_task/{{task}}.{{ext}}.log",
        benchmark:
            f"{BENCHMARKS}/sample_task/{{task}}.{{ext}}.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.sample_data {wildcards.task} {params.options} --seed {params.seed} --out {output} > {log} 2>&1"
