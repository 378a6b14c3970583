# Stage 5b, calibrated thresholds (Learn-then-Test), beside the evaluation grid. Per task, a calibration set of
# questions the evaluation does not use, from a pool of its own where there is one (paper scale: the hub's train
# splits; embedded: more world stories for CoQA) or else the task's file beyond the evaluation's limit (see
# separate_pools in workflow_lib/pipeline/plan.py); the full model's answers on it, once per (backbone, task); then one
# job per (backbone, head key, policy, task; a head key carries its emission rule) tests the threshold grid from the
# highest down on the calibration set and evaluates the calibrated point of each delta on the evaluation set
# (EXIT_CELL/calibrated~delta/, a series of its own).

if PLAN.world is not None:

    rule world_calibration_pool:
        output:
            PATHS.separate_pool_file("{task}"),
        wildcard_constraints:
            task="coqa",  # more stories of the world; its TriviaQA / TruthfulQA questions are all evaluated
        params:
            # The world's own settings: the stories are the evaluated ones' kind, drawn apart (the world rule and its
            # files stay as they are).
            options=flags(PLAN.world),
            stories=lambda wc: PLAN.held_out_pool_n(wc.task),  # the calibration set's and the answer prompts'
            seed=PLAN.seed,
        log:
            f"{LOGS}/world_calibration_pool/{{task}}.log",
        benchmark:
            f"{BENCHMARKS}/world_calibration_pool/{{task}}.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.world --coqa-calibration {output} --stories {params.stories} --seed {params.seed}"
            " {params.options} > {log} 2>&1"

else:

    rule sample_calibration_pool:
        output:
            PATHS.separate_pool_file("{task}"),
        wildcard_constraints:
            task="triviaqa|coqa",  # the hub's held-out train splits; TruthfulQA draws from its own file
        params:
            # TriviaQA: train questions chosen by the evaluation's own selection rule (the longest answers, or seeded)
            options=lambda wc: flags(
                {
                    "source": PLAN.real[wc.task]["source"],
                    "config": PLAN.real[wc.task].get("config"),
                    "split": "train",
                    "n": PLAN.held_out_pool_n(wc.task),  # the calibration set's and the answer prompts'
                    # (longest, the sampler's default, left out: the paper's command stays what it was)
                    "selection": "seeded" if PLAN.real[wc.task].get("selection") == "seeded" else None,
                }
            ),
            seed=PLAN.seed,
        log:
            f"{LOGS}/sample_calibration_pool/{{task}}.log",
        benchmark:
            f"{BENCHMARKS}/sample_calibration_pool/{{task}}.tsv"
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.sample_data {wildcards.task} {params.options} --seed {params.seed} --out {output} > {log} 2>&1"


rule calibration_split:
    input:
        data=lambda wc: PATHS.task_file(wc.task),
        pool=lambda wc: PATHS.calibration_pool(wc.task),
    output:
        PATHS.calibration_file("{task}"),
    params:
        options=lambda wc: flags({"limit": PLAN.task_setting(wc.task, "limit"), "n": PLAN.calibration["n"],
                                  "seed": PLAN.seed}),
    log:
        f"{LOGS}/calibration_split/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/calibration_split/{{task}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.held_out_split --task {wildcards.task} --data {input.data} --pool {input.pool}"
        " {params.options} --out {output} > {log} 2>&1"


rule calibration_reference:
    input:
        unpack(calibration_inputs),
    output:
        f"{PATHS.calibration_reference('{backbone}', '{task}')}/record.json",
    params:
        common=lambda wc, input: FLAGS.run(wc.backbone, wc.task, input.calibration, None),
        out_dir=lambda wc: PATHS.calibration_reference(wc.backbone, wc.task),
    threads: 1
    log:
        f"{LOGS}/calibration_reference/{{backbone}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/calibration_reference/{{backbone}}/{{task}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.evaluate {params.common} --threads {threads} --no-heads --out-dir {params.out_dir} > {log} 2>&1"


rule calibrate:
    input:
        unpack(calibration_inputs),
        heads=lambda wc: f"{heads_dir(wc)}/heads.json",
        reference=lambda wc: f"{PATHS.calibration_reference(wc.backbone, wc.task)}/record.json",
        translators=translators_input,
    output:
        calibration=f"{PATHS.calibration_cell('{backbone}', '{head}', '{policy}', '{task}')}/calibration.json",
        points=[PATHS.calibrated_record(EXIT_CELL, d) for d in PLAN.deltas],
    params:
        common=evaluate_flags,
        heads=heads_dir,
        emission=emission_flags,
        reference=lambda wc, input: os.path.dirname(input.reference),
        options=lambda wc: FLAGS.calibrate_options(),
        out_dir=lambda wc: EXIT_CELL.format(**wc),
    priority: PRIORITY["calibrate"]
    threads: 1
    log:
        f"{LOGS}/calibrate/{{backbone}}/{{head}}/{{policy}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/calibrate/{{backbone}}/{{head}}/{{policy}}/{{task}}.tsv"
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m workflow_lib.cli.calibrate {params.common} --threads {threads} --heads {params.heads}"
        " --policy {wildcards.policy} {params.emission} --calibration-data {input.calibration} --reference {params.reference}"
        " {params.options} --calibration-out {output.calibration} --out-dir {params.out_dir} > {log} 2>&1"
