"""The default of every setting the pipeline's config also has, by config section and key, in one torch-free place.

The entry points' argparse defaults and the dataclasses' field defaults (TrainConfig, LabelCacheConfig,
TranslatorConfig, PretrainConfig, WorldConfig) read them from here, so a stage run by hand does what the pipeline's
job does; schemas/config.schema.yaml states the same values for the pipeline (Snakemake fills them in), and
tests/test_defaults.py fails when the two disagree, or when an entry point's or a dataclass's default is not the one
of the config key the pipeline passes it from. The schema is not read here: the installed package does not carry
it, and every entry point's `--help` would pay for parsing it. Enums and their defaults are in choices.py.

Only the keys some code reads are here (a key only the pipeline reads, e.g. calibration.n, has its default in the
schema alone). A setting no config key has keeps its default where it is used, unless several modules share it (the
end of this file).
"""
from __future__ import annotations

from types import MappingProxyType

from workflow_lib.choices import (DEFAULT_BOUND, DEFAULT_CRF, DEFAULT_LABEL_RULE, DEFAULT_LABEL_SOURCE, DEFAULT_RISK,
                                  DEFAULT_TRAIN_MODE, DEFAULT_TRANSLATOR_INIT, DEFAULT_TRIVIAQA_SELECTION)

SEED = 0  # seed: every stage's

# world: the synthetic world (data/world.py WorldConfig, cli/world.py)
WORLD = MappingProxyType({
    "n_people": 200, "n_cities": 24, "attributes": ("city", "job", "colour"), "qa_fraction": 0.7, "paraphrases": 4,
    "bio_docs": 3, "mixed_docs": 1, "qa_docs": 150, "qa_per_doc": (3, 8), "truthful_docs": 60,
    "rumour_fraction": 0.05, "n_unknown": 20, "coqa_train_stories": 150, "coqa_eval_stories": 100,
    "valid_people_fraction": 0.25,
})

# real_data: the hub sources (cli/sample_data.py, data/sampling.py); coqa and truthfulqa name their source in the config
CORPUS = MappingProxyType({"source": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT", "split": "train",
                           "tokens": 20_000_000, "valid_tokens": 500_000})
TRIVIAQA = MappingProxyType({"source": "mandarjoshi/trivia_qa", "config": "rc.nocontext", "split": "validation",
                             "n": 1000, "selection": DEFAULT_TRIVIAQA_SELECTION, "fewshot_n": 100})
COQA = MappingProxyType({"source": "stanfordnlp/coqa", "config": None, "split": "validation", "n": None})
TRUTHFULQA = MappingProxyType({"source": "truthfulqa/truthful_qa", "config": "generation", "split": "validation",
                               "n": None})

TOKENIZER = MappingProxyType({"vocab_size": 1024})  # tokenizer (cli/tokenizer.py)

# backbones.NAME.pretrain: a tiny backbone pretrained here (training/pretrain.py PretrainConfig, cli/pretrain.py)
PRETRAIN = MappingProxyType({"hidden_size": 192, "num_layers": 6, "seq_len": 128, "batch_size": 16, "steps": 1000,
                             "lr": 0.002, "state_size": 16, "eval_limit": 0, "time_budget_s": 0.0})

# head_training: how every head is distilled (training/distill.py TrainConfig, cli/train_heads.py; the label cache
# shares seq_len, batch_size and label_source). answers_weight is the share of the answers when there are answers
# (--answers); without them the fit is on text alone.
HEAD_TRAINING = MappingProxyType({
    "label_rule": DEFAULT_LABEL_RULE, "k": 1, "label_source": DEFAULT_LABEL_SOURCE, "mode": DEFAULT_TRAIN_MODE,
    "class_balance": False, "seq_len": 128, "batch_size": 16, "steps": 300, "lr": 0.001, "answers_weight": 0.5,
    "store_inputs": False,
})

# translators: tuned-lens translators (training/translators.py TranslatorConfig, cli/train_translators.py);
# answers_weight as head_training's
TRANSLATORS = MappingProxyType({"steps": 100, "lr": 0.001, "batch_size": 8, "seq_len": 256,
                                "init": DEFAULT_TRANSLATOR_INIT, "init_batches": 16, "answers_weight": 0.75})

ANSWERS = MappingProxyType({"prompts": 64, "tokens": 32})  # answers: the full model's greedy answers (cli/answers.py)

AGREEMENT = MappingProxyType({"text_tokens": 16384, "limit": 32})  # agreement: the agreement table (cli/agreement.py)

# evaluation: every run of a task (cli/evaluate.py, cli/calibrate.py; answers and agreement decode as many tokens and
# answers as many prompts at once)
EVALUATION = MappingProxyType({"max_new_tokens": 64, "degenerate_limit": 0.5, "batch_size": 1})

# calibration: calibrated thresholds (cli/calibrate.py, evaluation/ltt.py)
CALIBRATION = MappingProxyType({"epsilon": 0.05, "risk": DEFAULT_RISK, "metric": None, "bound": DEFAULT_BOUND})

# analysis: tables and figures (cli/make_tables.py, cli/make_figures.py)
ANALYSIS = MappingProxyType({"crf": DEFAULT_CRF, "no_loss_delta": 0.02})

# ---- defaults no config key has, shared by several modules
VALID_TOKENS = 65536  # held-out tokens a head job evaluates on, and its label cache labels
TRIVIAQA_SUBSET = 1000  # TriviaQA's evaluated questions: the validation questions with the longest answers (paper)
EXITS_OFF = 2.0  # a threshold above 1: no token exits (the baseline, pruning and oracle points, the exits-off pairing)
