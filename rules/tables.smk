# Stage 6, tables: every run record -> the tidy grid (one row per grid point) and the per-task Pareto table.


rule tables:
    input:
        all_records(),
    output:
        grid=report(GRID_TABLE, caption="../report/grid_table.rst", category="Tables"),
        pareto=report(PARETO_TABLE, caption="../report/pareto_table.rst", category="Tables"),
    params:
        crf=f"crf_{config['analysis']['crf']}",
        root=lambda wc: EVAL_ROOT,
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{BENCHMARKS}/tables.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.make_tables --records {input} --results-root {params.root}"
        " --grid {output.grid} --pareto {output.pareto} --crf {params.crf} > {log} 2>&1"
