"""The project's lm-eval task definitions (YAML here, Python in helpers.py), found with
`TaskManager(include_path=TASK_DIR)` or `lm_eval --include_path TASK_DIR`."""
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent

# evaluate's --task name -> (lm-eval task name, metadata key of its data file)
TASKS = {
    "triviaqa": ("dynamax_triviaqa", "triviaqa_file"),
    "coqa": ("dynamax_coqa", "coqa_file"),
    "truthfulqa": ("dynamax_truthfulqa_gen", "truthfulqa_file"),
}
