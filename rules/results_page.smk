# Stage 9, the results page, a target of its own (it writes into docs/, so `all` leaves it out):
#   snakemake results_page --cores all --configfile CONFIG
# copies this run's tables and PNG figures, with the per-rule times of its benchmark files (timings.csv) and what made
# them (manifest.json: command, config files and their sha256, each run's commit, seed and versions), into the folder
# beside the config's results_page.page, and rewrites the page's generated blocks (docs/results/README.md).
from workflow_lib.pipeline.paths import PAGE_MANIFEST, PAGE_SPEC


if PLAN.config["results_page"] is None:

    rule results_page:
        input:
            lambda wc: PATHS.results_page(),  # raises: the config names no page

else:

    rule results_page:
        input:
            tables=[PATHS.grid_table, PATHS.pareto_table, PATHS.no_loss_table, PATHS.versus_pruning_table,
                    PATHS.versus_rule_table] + [PATHS.agreement_table(b) for b in PLAN.backbones],
            figures=[f for f in RECORDS.figures() if f.endswith(".png")],
            spec=PATHS.results_page_file(PAGE_SPEC),
        output:
            manifest=PATHS.results_page_file(PAGE_MANIFEST),
        params:
            page=PATHS.results_page(),
            configfiles=" ".join(os.path.relpath(f) for f in workflow.config_settings.configfiles)
            or os.path.relpath(os.path.join(workflow.basedir, "config.yaml")),
            benchmarks=BENCHMARKS,
            # every other rule's benchmark pattern, as Snakemake spells it: which rule each timings.csv row is
            rules=lambda wc: " ".join(f"--rule-benchmark '{r.name}={r.benchmark}'" for r in workflow.rules
                                      if r.benchmark and r.name != "results_page"),
        log:
            f"{LOGS}/results_page.log",
        benchmark:
            f"{BENCHMARKS}/results_page.tsv"
        localrule: True
        conda:
            "../envs/cpu.yaml"
        shell:
            "python -m workflow_lib.cli.results_page --page {params.page} --tables {input.tables}"
            " --figures {input.figures} --figures-root results/figures --benchmarks {params.benchmarks} {params.rules}"
            " --skip-benchmark {params.benchmarks}/results_page.tsv --configfile {params.configfiles} > {log} 2>&1"
