# Stage 4, evaluation: one job per (backbone, task) evaluates every point of that task with the model loaded once and
# each batch of prompts prefilled once (decoding/prefill.py: the prompt runs at full depth whatever decodes it; a
# pruned model's blocks after its dropped range re-run on the hidden state that entered it): every exit cell (head key,
# policy; all thresholds), the exits-disabled baseline, the oracle bound per (emission rule, policy), each pruning
# depth (the n blocks just before the last, prune~n/, and the n Gromov et al.'s angular distance picks on the held-out
# text, prune_angular~n/) and the speculative series (head~KEY/policy~P/speculative~K/). Its records are update()
# outputs and the job runs with --reuse: adding a head, a threshold or a depth reruns the job for those points only,
# keeping every record already made with the same settings and inputs (it prefills the prompts again). A head key under
# a rule other than last_block (head~SPEC/emission~RULE, workflow_lib/pipeline/keys.py) evaluates with --emission RULE
# and its own heads. Records: metrics, both CRFs, measured speed, exit histogram, degenerate share and validity,
# provenance (each point's own series settings, as a job of that series alone records them).


# One rule per backbone: a job's outputs are every record of its task, and the series differ between backbones.
for _backbone in PLAN.backbones:

    rule:
        name:
            f"evaluate_{_backbone}"
        input:
            unpack(lambda wc, b=_backbone: PATHS.task_inputs_all(b, wc.task)),
        output:
            [update(path) for path in RECORDS.evaluated(_backbone, "{task}")],
        params:
            common=lambda wc, b=_backbone: FLAGS.evaluate(b, wc.task),
            series=lambda wc, b=_backbone: FLAGS.series(b, wc.task),
        threads: 1
        log:
            f"{LOGS}/evaluate/{_backbone}/{{task}}.log",
        benchmark:
            f"{BENCHMARKS}/evaluate/{_backbone}/{{task}}.tsv"
        conda:
            "../envs/gpu.yaml"
        shell:
            "python -m workflow_lib.cli.evaluate {params.common} --threads {threads} --reuse {params.series} > {log} 2>&1"
