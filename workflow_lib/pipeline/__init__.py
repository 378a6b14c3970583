"""The pipeline's plan, torch- and Snakemake-free: what a config makes the pipeline do.

    plan = resolve(config)            # ConfigError, naming the key, for a config the pipeline refuses
    plan.tasks, plan.head_keys("mistral"), plan.untrained_heads, ...   the grid (plan.py)
    plan.paths.heads_dir("mistral", "calm/emission~lens")              every artifact path (paths.py)
    plan.flags.evaluate("mistral", "coqa")                            pieces of the jobs' commands (flags.py)
    plan.records.all()                                                every run record (records.py)

rules/common.smk resolves the config once (PLAN) and every rule reads it; tests/test_plan.py tests it without
Snakemake. docs/architecture.md says where a new config check or path goes.
"""
from .config import ConfigError
from .plan import Plan, resolve

__all__ = ["ConfigError", "Plan", "resolve"]
