# Stage 4, evaluation: two jobs per (backbone, task), each evaluating its points with the model loaded once and each
# batch of prompts prefilled once (decoding/prefill.py: the prompt runs at full depth whatever decodes it; a pruned
# model's blocks after its dropped range re-run on the hidden state that entered it). `heads`: every exit cell (head
# key, policy; all thresholds) and the speculative series (head~KEY/policy~P/speculative~K/). `reference`: the
# exits-disabled baseline, the oracle bound per (emission rule, policy) and each pruning depth (the n blocks just
# before the last, prune~n/, and the n Gromov et al.'s angular distance picks on the held-out text, prune_angular~n/);
# it reads no head, so it starts as soon as the backbone and its translators exist. Two prefills of a task instead of
# one buy both cores on it: on the real model one job per task kept CoQA's two hours on one core. Records are update()
# outputs and the jobs run with --reuse: adding a head, a threshold or a depth reruns a job for those points only,
# keeping every record already made with the same settings and inputs (it prefills the prompts again). A head key under
# a rule other than last_block (head~SPEC/emission~RULE, workflow_lib/pipeline/keys.py) evaluates with --emission RULE
# and its own heads. Records: metrics, both CRFs, measured speed, exit histogram, degenerate share and validity,
# provenance (each point's own series settings, as a job of that series alone records them).


# One rule per backbone and part: a job's outputs are every record of its task and part, and the series differ between
# backbones.
for _backbone in PLAN.backbones:
    for _part in EVALUATION_PARTS:
        if not RECORDS.evaluated(_backbone, "{task}", _part):
            continue

        rule:
            name:
                f"evaluate_{_backbone}_{_part}"
            input:
                unpack(lambda wc, b=_backbone, part=_part: PATHS.task_inputs_all(b, wc.task, part)),
            output:
                [update(path) for path in RECORDS.evaluated(_backbone, "{task}", _part)],
            params:
                common=lambda wc, b=_backbone: FLAGS.evaluate(b, wc.task),
                series=lambda wc, b=_backbone, part=_part: FLAGS.series(b, wc.task, part),
            priority: evaluation_priority(_part)
            threads: 1
            log:
                f"{LOGS}/evaluate/{_backbone}/{_part}/{{task}}.log",
            benchmark:
                f"{BENCHMARKS}/evaluate/{_backbone}/{_part}/{{task}}.tsv"
            conda:
                "../envs/gpu.yaml"
            shell:
                "python -m workflow_lib.cli.evaluate {params.common} --threads {threads} --reuse {params.series} > {log} 2>&1"
