"""lm-eval's own command line with the `dynamax` model registered and the project's tasks on the path.

lm-eval 0.4.13 finds models only in its registry (no package entry points), so the model has to be
imported before the CLI runs; this is that import, nothing else of the harness changes:

    python -m workflow_lib.cli.lm_eval_cli --model dynamax \
        --model_args backbone=PATH,heads=DIR,threshold=0.4,policy=recompute,prune=0 \
        --tasks dynamax_triviaqa --metadata '{"triviaqa_file": "triviaqa.jsonl"}' --log_samples --output_path OUT

(also installed as the `dynamax-lm-eval` command). Without --include_path the project's task folder is
added; with one, it is left as given (so pass the folder yourself when adding others).
"""
import sys

from workflow_lib.evaluation.tasks import TASK_DIR


def main() -> None:
    argv = sys.argv[1:]
    if not any(a in ("-h", "--help") for a in argv) and not any(a.startswith("--include_path") for a in argv):
        argv += ["--include_path", str(TASK_DIR)]
    sys.argv = [sys.argv[0], *argv]

    import workflow_lib.evaluation.lm_model  # noqa: F401  (registers `dynamax`)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
