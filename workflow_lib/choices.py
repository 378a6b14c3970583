"""Every closed set of names the project knows, with its default, in one torch-free place: the entry points' `choices`,
the config schema's enums (tests/test_defaults.py compares them) and the pipeline's plan read them from here. The
numbers and paths that default a setting live beside them in workflow_lib/defaults.py.

Nothing here imports torch, so the pipeline's plan and the entry points' argument checks use it before any expensive
import.
"""
from __future__ import annotations

# How an exit turns its hidden state h_e into the token (decoding/core.py, docs/policies.md).
EMISSION_RULES = ("last_block", "lens", "translator")
DEFAULT_EMISSION = "last_block"  # the paper's

# What the blocks an exit skipped store for its position, keyed by backbone family (models/backbone.family).
POLICIES: dict[str, tuple[str, ...]] = {"transformer": ("recompute", "copy", "copy_prev"),
                                        "mamba2": ("recompute", "skip")}
DEFAULT_POLICY: dict[str, str] = {"transformer": "recompute", "mamba2": "recompute"}

# How the exits' losses are weighed in head distillation (training/losses.loss_weights).
TRAIN_MODES = ("joint_decay", "uniform", "individual")
DEFAULT_TRAIN_MODE = "joint_decay"  # the paper's

# Which exit label is 1 under the top-k relaxation (training/labels.py): the paper's wording first, the authors' code's
# direction second.
LABEL_RULES = ("intermediate_in_oracle_topk", "oracle_in_intermediate_topk")
DEFAULT_LABEL_RULE = LABEL_RULES[0]
# The exit's prediction that labels compare with the full model's: the token the exit emits under its emission rule,
# or the logit lens (final norm and LM head on h_e), which the authors' code used.
LABEL_SOURCES = ("emitted", "lens")
DEFAULT_LABEL_SOURCE = LABEL_SOURCES[0]

# Which n blocks layer pruning drops: the n before the last (the paper's), or the n consecutive blocks closest in angle
# (Gromov et al.).
PRUNE_RULES = ("deepest", "angular")
DEFAULT_PRUNE_RULE = PRUNE_RULES[0]

# How a translator fit starts (training/translators.py).
TRANSLATOR_INITS = ("identity", "least_squares")
DEFAULT_TRANSLATOR_INIT = TRANSLATOR_INITS[0]

# The architectures a backbone may have (the schema's backbones.*.arch), and those a tiny backbone can be pretrained from
# here (the tiny-<arch> presets, training/pretrain.py).
ARCHITECTURES = ("mistral", "llama", "qwen2", "mamba2")
PRETRAIN_ARCHS = ("mistral", "llama", "mamba2")
DEFAULT_PRETRAIN_ARCH = PRETRAIN_ARCHS[0]

# The weights' dtype an evaluation may ask for (None: the checkpoint's).
DTYPES = ("float32", "bfloat16", "float16")

# Which TriviaQA questions are sampled: the n with the longest answers (the paper's subset), or n drawn with the seed.
TRIVIAQA_SELECTIONS = ("longest", "seeded")
DEFAULT_TRIVIAQA_SELECTION = TRIVIAQA_SELECTIONS[0]

# Calibrated thresholds (evaluation/ltt.py, cli/calibrate.py): the loss a question counts, and the p-value bound.
RISKS = ("consistency", "metric")
DEFAULT_RISK = RISKS[0]
BOUNDS = ("binomial", "hoeffding_bentkus")
DEFAULT_BOUND = BOUNDS[0]

# The CRF on the figures' x axis: the exact MAC count or the paper's block count (decoding/accounting.py).
CRF_KINDS = ("exact", "paper")
DEFAULT_CRF = CRF_KINDS[0]
# The files a figure is written as.
FIGURE_FORMATS = ("png", "pdf", "svg")
