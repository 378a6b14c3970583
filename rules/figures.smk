# Stage 7, figures like the paper's Fig. 1-5: per backbone and task, metric versus CRF (PNG and PDF).


rule figure:
    input:
        GRID_TABLE,
    output:
        [
            report(
                f"{RESULTS}/figures/{{backbone}}/{{task}}.{ext}",
                caption="../report/figure.rst",
                category="Figures",
                subcategory="{backbone}",
                labels={"backbone": "{backbone}", "task": "{task}", "format": ext},
            )
            for ext in FORMATS
        ],
    params:
        crf=config["analysis"]["crf"],
    log:
        f"{LOGS}/figures/{{backbone}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{backbone}}/{{task}}.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.make_figures --grid {input} --backbone {wildcards.backbone} --task {wildcards.task}"
        " --crf {params.crf} --out {output} > {log} 2>&1"
