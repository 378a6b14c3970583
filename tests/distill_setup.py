"""Shared set-up for the distillation tests (head training, the label cache): train/valid text, a tiny BPE tokenizer,
tiny saved Mistral and Mamba-2 backbones that carry it, a TrainConfig over them, and the backbones' greedy answers."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workflow_lib.decoding.answers import greedy_answers, save_answers
from workflow_lib.models.backbone import build_backbone, load_backbone, parts, preset_config, signature
from workflow_lib.training.distill import TrainConfig

NAMES = ["Avel", "Borin", "Cassa", "Doran", "Elkin", "Farra", "Gorm", "Hesta"]
PLACES = ["Quell", "Rindmoor", "Saltby", "Tarn", "Umber", "Vesk"]
THINGS = ["lanterns", "copper", "moss", "kites", "ink", "salt"]


def text_lines(n_lines: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        name, place, thing = rng.choice(NAMES), rng.choice(PLACES), rng.choice(THINGS)
        lines.append(f"{name} lives in {place} and trades {thing}. {name} likes {place}.\n")
    return "".join(lines)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Train/valid text, a tiny BPE tokenizer, and tiny random Mistral and Mamba-2 folders that carry it."""
    root = tmp_path_factory.mktemp("train_heads")
    (root / "train.txt").write_text(text_lines(400, 0))
    (root / "valid.txt").write_text(text_lines(120, 1))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train([str(root / "train.txt")], trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    for preset in ("tiny-mistral", "tiny-mamba2"):
        folder = root / preset
        config = preset_config(preset, vocab_size=320, hidden_size=64, num_hidden_layers=4)
        build_backbone(config, seed=0, device="cpu", dtype=torch.float32).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return root


def train_config(workdir: Path, out: str, preset: str = "tiny-mistral", **kw) -> TrainConfig:
    base = dict(backbone=str(workdir / preset), head="calm", train_text=str(workdir / "train.txt"),
                valid_text=str(workdir / "valid.txt"), out=str(workdir / out), steps=30, batch_size=8, seq_len=32,
                lr=3e-3, valid_tokens=2048, checkpoint_every=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def count_block_calls(model) -> tuple[list[int], list]:
    """Per block, how often it runs from now on (a list counted by forward hooks), and the hooks to remove."""
    calls = [0] * len(parts(model).layers)
    hooks = [block.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, block in enumerate(parts(model).layers)]
    return calls, hooks


def answers_file(workdir: Path, preset: str, path: Path, prompts: int = 6) -> Path:
    """The backbone's greedy answers (8 tokens) to `prompts` lines of held-out text, written as cli/answers does."""
    model = load_backbone(str(workdir / preset), device="cpu")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(workdir / preset)
    answers = greedy_answers(model, tokenizer, text_lines(prompts, 7).splitlines(), 8, progress=False)
    save_answers(path, answers, {"settings": {}, "backbone": signature(model.config)})
    return path
