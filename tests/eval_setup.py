"""Shared set-up for the evaluation tests: a tiny byte-level BPE tokenizer, tiny saved backbones, and small
task files in the canonical formats (built here, so these tests need neither the network nor ../shared)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workflow_lib.data.formats import coqa_record, triviaqa_record, truthfulqa_record, write_coqa, write_triviaqa, write_truthfulqa
from workflow_lib.models.backbone import build_backbone, preset_config

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2: the tiny presets' pad / bos / eos
TEXT = ("Question: Who painted the old tower?\nAnswer: Mira Holt, the painter.\n\n"
        "Q: Where did the baker live?\n\nA: in a small house by the river.\n\n"
        "Cotton was a white kitten who lived in a barn with her mother and five sisters. ") * 20


def build_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out_dir)
    return fast


def save_tiny_backbone(out_dir: Path, preset: str, num_hidden_layers: int = 4) -> Path:
    """A tiny random backbone saved with its tokenizer, loadable by both `hf` and `dynamax`."""
    config = preset_config(preset, vocab_size=512, hidden_size=64, num_hidden_layers=num_hidden_layers)
    model = build_backbone(config, seed=0, device="cpu", dtype=torch.float32)
    model.save_pretrained(out_dir)
    build_tokenizer(out_dir)
    return out_dir


def write_task_files(out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{k}.jsonl" for k in ("triviaqa", "coqa", "truthfulqa")}
    write_triviaqa(paths["triviaqa"], [
        triviaqa_record(f"Who painted tower number {i}", f"q{i}", "Mira Holt" + " Jr" * (i % 3), ["Mira"])
        for i in range(8)])
    story = "Cotton was a white kitten. She lived in a barn with her mother."
    write_coqa(paths["coqa"], [coqa_record("synthetic", story, [("What colour was Cotton?", "white", 13, 18),
                                                                ("Where did she live?", "in a barn", 36, 45)])
                               for _ in range(4)])
    write_truthfulqa(paths["truthfulqa"], [
        truthfulqa_record(f"Where does the baker number {i} live?", "The baker lives by the river.",
                          ["The baker lives by the river.", "By the river."], ["The baker lives in the tower."])
        for i in range(4)])
    return paths


@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> dict[str, Path]:
    return write_task_files(tmp_path_factory.mktemp("task_files"))


@pytest.fixture(scope="session", params=["tiny-mistral", "tiny-mamba2"])
def saved_backbone(request, tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp(request.param), request.param)


def save_calm_heads(out_dir: Path, backbone_dir: Path, exit_layers=(1, 2)) -> Path:
    """Untrained calm heads for a saved backbone: threshold 0 makes every decode step exit at the first."""
    from transformers import AutoConfig

    from workflow_lib.models.heads import build_heads, save_heads

    config = AutoConfig.from_pretrained(backbone_dir)
    save_heads(out_dir, build_heads("calm", config.hidden_size, list(exit_layers), seed=0), config)
    return out_dir


def task_metadata(files: dict[str, Path]) -> dict:
    return {f"{kind}_file": str(path) for kind, path in files.items()}
