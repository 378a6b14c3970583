"""Tiny-backbone pretraining: saves a folder load_backbone and AutoTokenizer read, seeded losses, EM scoring."""
import json

import pytest
import torch
from transformers import AutoTokenizer

from workflow_lib.data.formats import read_corpus
from workflow_lib.data.world import WorldConfig, write_world
from workflow_lib.models.backbone import architecture, load_backbone
from workflow_lib.cli.pretrain import main as pretrain_main
from workflow_lib.cli.tokenizer import main as tokenizer_main
from workflow_lib.training.pretrain import (PretrainConfig, build_model, layer_predictions, normalize_answer,
                                            token_stream, train)

TINY = ["--hidden-size", "32", "--num-layers", "4", "--seq-len", "32", "--batch-size", "4", "--steps", "3",
        "--warmup-steps", "1", "--eval-limit", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    write_world(root / "world", 0, WorldConfig(n_people=12, qa_docs=5, truthful_docs=3, coqa_train_stories=3,
                                               coqa_eval_stories=2, n_unknown=2))
    tokenizer_main(["--corpus", str(root / "world" / "corpus_train.jsonl"), "--out-dir", str(root / "tok"),
                    "--vocab-size", "300"])
    return root


@pytest.mark.parametrize("arch", ["mistral", "mamba2"])
def test_pretrain_saves_a_loadable_backbone(world, arch):
    out = world / f"model-{arch}"
    metrics = pretrain_main(["--arch", arch, "--world", str(world / "world"), "--tokenizer", str(world / "tok"),
                             "--out-dir", str(out), *TINY])
    model = load_backbone(str(out), device="cpu")
    tok = AutoTokenizer.from_pretrained(out)
    assert architecture(model.config) == arch and model.config.num_hidden_layers == 4
    assert model.config.vocab_size == len(tok) == 300
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["heldout_em"] == metrics["heldout_em"] and 0.0 <= saved["heldout_em"] <= 1.0
    assert saved["training"]["steps_done"] == 3 and saved["n_heldout"] == 3
    assert len(saved["layer_agreement_with_final"]) == 4 and saved["layer_agreement_with_final"][-1] == 1.0
    assert saved["provenance"]["config"]["arch"] == arch and saved["provenance"]["seed"] == 0
    # The reloaded weights are the trained ones: the same intermediate predictions as a second load.
    ids = tok("Question: Where does anyone live?\nAnswer:", return_tensors="pt")["input_ids"]
    assert torch.equal(layer_predictions(model, ids), layer_predictions(load_backbone(str(out), device="cpu"), ids))


def test_same_seed_same_losses(world):
    tok = AutoTokenizer.from_pretrained(world / "tok")
    stream = token_stream(list(read_corpus(world / "world" / "corpus_train.jsonl")), tok)
    torch.set_num_threads(1)

    def losses(seed):
        config = PretrainConfig(arch="mamba2", hidden_size=32, num_layers=2, seq_len=32, batch_size=4, steps=4,
                                warmup_steps=1, seed=seed)
        curve = train(build_model(config, len(tok)), stream, config, log_every=1)
        return list(curve["loss_curve"].values())

    first = losses(0)
    assert first == losses(0)
    assert first != losses(1)
    assert first[-1] < first[0]  # it learns


def test_mamba2_chunk_size_is_the_same_function():
    """--chunk-size reaches the saved config and only reorders the SSD scan's sums: the same logits up to rounding."""
    ids = torch.randint(3, 300, (2, 40), generator=torch.Generator().manual_seed(0))  # (2, 40): 2.5 chunks of 16
    logits = {}
    for chunk in (16, 64):
        model = build_model(PretrainConfig(arch="mamba2", hidden_size=32, num_layers=2, chunk_size=chunk), 300)
        assert model.config.chunk_size == chunk
        logits[chunk] = model(input_ids=ids).logits  # (2, 40, V)
    torch.testing.assert_close(logits[16], logits[64], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="chunk_size"):
        PretrainConfig(arch="mamba2", chunk_size=0)


def test_token_stream_wraps_documents(world):
    tok = AutoTokenizer.from_pretrained(world / "tok")
    stream = token_stream(["a b", "c"], tok).tolist()
    assert stream[0] == tok.bos_token_id and stream[-1] == tok.eos_token_id
    assert stream.count(tok.bos_token_id) == 2 and stream.count(tok.eos_token_id) == 2


def test_answer_normalisation_matches_lm_eval_triviaqa():
    assert normalize_answer(" Brimholt, the town\nQuestion:") == "brimholt"
    assert normalize_answer(" a baker.") == "a baker"
    assert normalize_answer("O'Neil!") == "oneil"


def test_bad_input(world, tmp_path):
    args = ["--arch", "mistral", "--tokenizer", str(world / "tok"), "--out-dir", str(tmp_path / "m"), *TINY]
    with pytest.raises(FileNotFoundError, match="corpus"):
        pretrain_main([*args, "--world", str(world / "world"), "--corpus", str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="lr"):
        pretrain_main([*args, "--world", str(world / "world"), "--lr", "0"])
    with pytest.raises(SystemExit):
        pretrain_main(args)  # neither --world nor the files
    assert not (tmp_path / "m").exists()
