"""The label cache (training/label_cache.py): one labelling pass per backbone and emission rule serves every head job;
heads trained on the stored labels are bit-identical to heads that label their own batches; a cache made for other
settings, exits or text is refused; a cached job runs only the blocks up to its deepest exit."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_setup import count_block_calls, train_config, workdir  # noqa: F401 (fixture)
from workflow_lib.cli.label_cache import main
from workflow_lib.cli.train_heads import main as train_heads_main
from workflow_lib.models.backbone import load_backbone, parts
from workflow_lib.models.emission import exit_hidden, exit_states
from workflow_lib.training.distill import train_heads
from workflow_lib.training.label_cache import LabelCacheConfig, build_label_cache


@pytest.mark.parametrize("preset", ["tiny-mistral", "tiny-mamba2"])
def test_exit_hidden_runs_only_up_to_the_deepest_exit(workdir, preset):
    model = load_backbone(str(workdir / preset), device="cpu")
    calls, hooks = count_block_calls(model)
    ids = torch.randint(3, 300, (2, 16))  # (B, T)
    hidden = exit_hidden(model, ids, [0, 1])
    for h in hooks:
        h.remove()
    assert calls == [1, 1, 0, 0] and len(parts(model).layers) == 4  # blocks 2, 3 skipped, then restored
    states = exit_states(model, ids, [0, 1])
    assert all(torch.equal(hidden[layer], states.hidden[layer]) for layer in (0, 1))  # bit-identical


@pytest.mark.parametrize("preset, emission", [("tiny-mistral", "last_block"), ("tiny-mamba2", "last_block"),
                                              ("tiny-mistral", "lens")])
def test_heads_trained_on_stored_labels_are_bit_identical(workdir, tmp_path, preset, emission):
    """One label cache per backbone and emission rule serves every head: the heads, their metrics and positive
    ratios are exactly those of a job that labels its own batches, also for a job reading fewer tokens."""
    cache = LabelCacheConfig(backbone=str(workdir / preset), train_text=str(workdir / "train.txt"),
                             valid_text=str(workdir / "valid.txt"), out=str(tmp_path / "labels"),
                             train_tokens=12 * 8 * 32, emission=emission, seq_len=32, valid_tokens=2048,
                             batch_size=5, device="cpu")
    shapes = build_label_cache(cache)
    assert shapes["train"][0] == 2 and shapes["train"][2:] == (32, 2)  # exits 1 and 2 of 4 blocks
    for head, steps, kw in [("calm", 12, {}), ("mamba", 7, dict(label_rule="oracle_in_intermediate_topk", k=2))]:
        own = train_heads(train_config(workdir, str(tmp_path / f"own_{head}"), preset, head=head, steps=steps,
                               emission=emission, **kw))
        stored = train_heads(train_config(workdir, str(tmp_path / f"stored_{head}"), preset, head=head, steps=steps,
                                  emission=emission, label_cache=cache.out, **kw))
        a = load_file(str(tmp_path / f"own_{head}" / "heads.safetensors"))
        b = load_file(str(tmp_path / f"stored_{head}" / "heads.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for key in ("trained", "untrained", "train_positive_ratio"):
            assert own[key] == stored[key]


def test_stored_labels_of_other_settings_are_refused(workdir, tmp_path):
    cache = LabelCacheConfig(backbone=str(workdir / "tiny-mistral"), train_text=str(workdir / "train.txt"),
                             valid_text=str(workdir / "valid.txt"), out=str(tmp_path / "labels"),
                             train_tokens=4 * 8 * 32, exit_layers=[1, 2], seq_len=32, valid_tokens=2048, device="cpu")
    build_label_cache(cache)
    cases = [
        (dict(emission="lens"), "other settings .*emission: 'last_block' there, 'lens' here"),
        (dict(seq_len=16), "other settings .*seq_len"),
        (dict(exit_layers=[0, 1]), r"no labels at exit layers \[0\]"),
        (dict(steps=5), "other training sequences"),  # reads more text than was labelled
        (dict(preset="tiny-mamba2"), "made for backbone"),
    ]
    for i, (kw, match) in enumerate(cases):
        preset = kw.pop("preset", "tiny-mistral")
        cfg = train_config(workdir, str(tmp_path / f"out{i}"), preset, steps=kw.pop("steps", 4), label_cache=cache.out, **kw)
        with pytest.raises(ValueError, match=match):
            train_heads(cfg)
        assert not Path(cfg.out).exists()
    with pytest.raises(FileNotFoundError, match="has no labels.safetensors"):
        train_heads(train_config(workdir, str(tmp_path / "none"), steps=4, label_cache=str(tmp_path)))


def test_label_cache_entry_point(workdir, tmp_path, capsys):
    out = tmp_path / "labels"
    common = ["--backbone", str(workdir / "tiny-mistral"), "--train-text", str(workdir / "train.txt"),
              "--valid-text", str(workdir / "valid.txt"), "--seq-len", "32", "--valid-tokens", "2048"]
    with pytest.raises(SystemExit, match="label_cache: error: .*--translators DIR"):
        main([*common, "--train-tokens", "1024", "--emission", "translator", "--out", str(out)])
    with pytest.raises(SystemExit, match="label_cache: error: train_tokens must be >= 1"):
        main([*common, "--train-tokens", "0", "--out", str(out)])
    assert not out.exists()
    main([*common, "--train-tokens", "1024", "--out", str(out)])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["ranks"]["train"] == [2, 32, 32, 2]
    train_heads_main(["--backbone", str(workdir / "tiny-mistral"), "--head", "calm", "--train-text",
                      str(workdir / "train.txt"), "--valid-text", str(workdir / "valid.txt"), "--seq-len", "32",
                      "--valid-tokens", "2048", "--steps", "4", "--batch-size", "8", "--label-cache", str(out),
                      "--out", str(tmp_path / "heads"), "--device", "cpu"])
    assert (tmp_path / "heads" / "heads.safetensors").is_file()
    help_text = subprocess.run([sys.executable, "-m", "workflow_lib.cli.label_cache", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--train-tokens" in help_text and "--label-cache" in help_text
