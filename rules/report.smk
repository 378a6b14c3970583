# Stage 8, report: `snakemake --report results/report.html` gathers the figures and tables (marked with
# report() in their rules) with the captions in report/, plus the workflow's provenance.


report: "../report/workflow.rst"
