# Stage 7, figures like the paper's Fig. 1-5: per backbone and task, metric versus CRF (PNG and PDF), with every
# head, and one more per analysis.comparisons entry with its heads alone (e.g. an ablation: calm vs calm_k15).
# A figure reruns only when a record it shows changes (see figure_inputs in rules/common.smk).


rule figure:
    input:
        unpack(lambda wc: figure_inputs(wc, PLAN.heads)),
    output:
        [
            report(
                f"{PATHS.figure('{backbone}', '{task}')}.{ext}",
                caption="../report/figure.rst",
                category="Figures",
                subcategory="{backbone}",
                labels={"backbone": "{backbone}", "task": "{task}", "format": ext},
            )
            for ext in PLAN.analysis["formats"]
        ],
    params:
        crf=PLAN.analysis["crf"],
        heads="",
    log:
        f"{LOGS}/figures/{{backbone}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{backbone}}/{{task}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.make_figures --grid {input.grid} --backbone {wildcards.backbone} --task {wildcards.task}"
        " --crf {params.crf} {params.heads} --out {output} > {log} 2>&1"


use rule figure as comparison_figure with:
    input:
        unpack(lambda wc: figure_inputs(wc, PLAN.analysis["comparisons"][wc.comparison])),
    output:
        [
            report(
                f"{PATHS.comparison_figure('{backbone}', '{comparison}', '{task}')}.{ext}",
                caption="../report/figure.rst",
                category="Figures",
                subcategory="{backbone}",
                labels={"backbone": "{backbone}", "comparison": "{comparison}", "task": "{task}", "format": ext},
            )
            for ext in PLAN.analysis["formats"]
        ],
    params:
        crf=PLAN.analysis["crf"],
        heads=lambda wc: FLAGS.comparison(wc.comparison),
    log:
        f"{LOGS}/figures/{{backbone}}/compare~{{comparison}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{backbone}}/compare~{{comparison}}/{{task}}.tsv"
