# Stage 6, tables: every run record -> the tidy grid (one row per grid point, metrics with bootstrap intervals and
# paired differences to the full model), the per-task Pareto table, the no-loss table, early exit versus pruning and
# each emission rule versus the paper's last_block.


rule tables:
    input:
        RECORDS.all(),
    output:
        grid=report(PATHS.grid_table, caption="../report/grid_table.rst", category="Tables"),
        pareto=report(PATHS.pareto_table, caption="../report/pareto_table.rst", category="Tables"),
        no_loss=report(PATHS.no_loss_table, caption="../report/no_loss_table.rst", category="Tables"),
        versus_pruning=report(PATHS.versus_pruning_table, caption="../report/versus_pruning_table.rst", category="Tables"),
        versus_rule=report(PATHS.versus_rule_table, caption="../report/versus_rule_table.rst", category="Tables"),
    params:
        crf=f"crf_{PLAN.analysis['crf']}",
        delta=PLAN.analysis["no_loss_delta"],
        seed=PLAN.seed,
        root=lambda wc: PATHS.eval_root,
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{BENCHMARKS}/tables.tsv"
    conda:
        "../envs/cpu.yaml"
    shell:
        "python -m workflow_lib.cli.make_tables --records {input} --results-root {params.root}"
        " --grid {output.grid} --pareto {output.pareto} --no-loss {output.no_loss}"
        " --versus-pruning {output.versus_pruning} --versus-rule {output.versus_rule} --crf {params.crf}"
        " --no-loss-delta {params.delta} --seed {params.seed} > {log} 2>&1"
