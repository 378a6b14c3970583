"""Translator training (training/translators.py, train_translators) and the agreement table (agreement.py)."""
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from eval_setup import TEXT, save_tiny_backbone, task_files  # noqa: F401  (fixture)

from workflow_lib.cli.agreement import main as agreement_main
from workflow_lib.cli.answers import main as answers_main
from workflow_lib.cli.train_translators import main
from workflow_lib.decoding.answers import greedy_answers, load_answers, read_answers_meta
from workflow_lib.evaluation.tasks import task_prompts
from workflow_lib.models.backbone import load_backbone, signature
from workflow_lib.models.translators import load_translators
from workflow_lib.training.text import read_sequences
from workflow_lib.training.translators import (TranslatorConfig, answer_states, fit_translators,
                                               kl_full_to_translated)


@pytest.fixture(scope="module", params=["tiny-mistral", "tiny-mamba2"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    backbone = save_tiny_backbone(root / "backbone", request.param)
    (root / "train.txt").write_text(TEXT.replace(". ", ".\n"))
    (root / "valid.txt").write_text(TEXT[::-1].replace(". ", ".\n"))
    return root, backbone


@pytest.mark.parametrize("init", ["identity", "least_squares"])
def test_training_lowers_held_out_kl_and_is_seeded(setup, init):
    root, backbone = setup
    model = load_backbone(str(backbone), device="cpu")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(backbone)
    windows = read_sequences(str(root / "train.txt"), tok, None, 32, "t")  # (N, 32)
    train, valid = windows[:-8], windows[-8:]  # held out: the last 8 windows
    cfg = TranslatorConfig(backbone=str(backbone), train_text="", out="", steps=20, batch_size=4, seq_len=32,
                           lr=1e-3, init=init, init_batches=4)
    translators, record = fit_translators(model, train, [1, 2], cfg, progress=False)
    again, _ = fit_translators(model, train, [1, 2], cfg, progress=False)
    for k, v in translators.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])  # seeded: the same run gives the same weights
    identity, _ = fit_translators(model, train, [1, 2], TranslatorConfig(**{**cfg.__dict__, "steps": 1, "lr": 1e-12,
                                                                            "init": "identity"}), progress=False)
    with torch.no_grad():
        trained, lens = kl_full_to_translated(model, translators, valid), kl_full_to_translated(model, identity, valid)
    assert (trained < lens).all(), (trained, lens)  # every exit closer to the full model than the logit lens
    assert record["seconds"] > 0 and set(record["train_kl_last_step"]) == {"1", "2"}


def test_greedy_answers_are_generate_at_batch_1(setup):
    """Batched answers (2 prompts a batch, 3 prompts of different lengths, out of length order) are transformers' own
    greedy generate at batch size 1, token for token, also where a row stops at EOS; counted marks the decode steps."""
    _, backbone = setup
    model = load_backbone(str(backbone), device="cpu")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(backbone)
    prompts = ["Q: Who wrote the play about the prince of Denmark, and in which year?\nA:", "Q: Hi?\nA:",
               "Q: What is the capital of France?\nA:"]
    ids = [tok(text, return_tensors="pt").input_ids for text in prompts]  # (1, T) each
    assert len({i.shape[1] for i in ids}) == 3
    n = 8

    def check():
        answers = greedy_answers(model, tok, prompts, n, batch_size=2)
        assert len(answers) == len(prompts)
        for prompt_ids, (seq, counted) in zip(ids, answers):
            reference = model.generate(prompt_ids, do_sample=False, max_new_tokens=n)  # (1, T + G)
            assert torch.equal(seq, reference)
            t, g = prompt_ids.shape[1], seq.shape[1] - prompt_ids.shape[1]
            expected = torch.zeros_like(seq, dtype=torch.bool)  # (1, T + G)
            expected[:, t:t + g - 1] = True
            assert counted.dtype == torch.bool and torch.equal(counted, expected)
        return answers

    answers = check()
    assert all(seq.shape[1] == i.shape[1] + n for i, (seq, _) in zip(ids, answers))
    model.generation_config.eos_token_id = int(answers[0][0][0, ids[0].shape[1] + 2])  # prompt 0 stops at token 3
    answers = check()
    assert answers[0][0].shape[1] <= ids[0].shape[1] + 3
    for bad in ({"batch_size": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            greedy_answers(model, tok, prompts, **{"max_new_tokens": n, **bad})


def test_answers_join_the_fit(setup):
    """Answers weighted into the least-squares start fit their own positions better; weight 0 ignores them."""
    root, backbone = setup
    model = load_backbone(str(backbone), device="cpu")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(backbone)
    train = read_sequences(str(root / "train.txt"), tok, None, 32, "t")  # (N, 32)
    answers = greedy_answers(model, tok, ["Q: What is the capital of France?\nA:", "Q: Who wrote Hamlet?\nA:"], 8)
    assert all(seq.shape[1] > c.nonzero()[0, 1] for seq, c in answers) and sum(int(c.sum()) for _, c in answers) > 0
    cfg = TranslatorConfig(backbone=str(backbone), train_text="", out="", steps=1, batch_size=4, seq_len=32,
                           lr=1e-12, init="least_squares", init_batches=4)  # the least-squares start alone

    def fit(weight, given=answers):
        return fit_translators(model, train, [1, 2], TranslatorConfig(**{**cfg.__dict__, "answers_weight": weight}),
                               progress=False, answers=given)

    text_alone, record = fit(0.0, None)
    ignored, _ = fit(0.0)
    for k, v in text_alone.state_dict().items():
        assert torch.equal(v, ignored.state_dict()[k])  # weight 0: the answers change nothing
    assert record["answer_positions"] == 0
    mixed, record = fit(0.9)
    again, _ = fit(0.9)
    for k, v in mixed.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])  # seeded
    assert record["answer_positions"] == sum(int(c.sum()) for _, c in answers)
    states = answer_states(model, answers, [1, 2])
    n = model.config.num_hidden_layers
    with torch.no_grad():
        for layer in (1, 2):
            error = {name: (t(states[layer], layer) - states[n - 1]).pow(2).mean().item()
                     for name, t in (("text", text_alone), ("mixed", mixed))}
            assert error["mixed"] < error["text"], (layer, error)


def test_entry_point_writes_translators_with_provenance(setup, tmp_path, capsys):
    root, backbone = setup
    out = tmp_path / "translators"
    main(["--backbone", str(backbone), "--train-text", str(root / "train.txt"), "--exit-layers", "1,2", "--out", str(out),
          "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--device", "cpu"])
    translators, meta = load_translators(out, load_backbone(str(backbone), device="cpu").config)
    assert translators.exit_layers == [1, 2]
    assert meta["training"]["steps"] == 3 and meta["training"]["objective"].startswith("KL")
    assert {"packages", "git_commit", "config"} <= set(meta["provenance"]) and meta["run"]["seconds"] > 0
    assert "seconds" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_answers_entry_point_and_the_translators_fitted_on_them(setup, task_files, tmp_path, capsys):  # noqa: F811
    """cli/answers writes the backbone's greedy answers to the tasks' prompts (those greedy_answers gives, read back
    unpadded); train_translators --answers fits on their decode steps."""
    root, backbone = setup
    answers = tmp_path / "answers.safetensors"
    answers_main(["--backbone", str(backbone), "--task", f"truthfulqa:{task_files['truthfulqa']}",
                  "--task", f"coqa:{task_files['coqa']}", "--prompts", "2", "--tokens", "5", "--device", "cpu",
                  "--out", str(answers)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answers"] == 4
    model = load_backbone(str(backbone), device="cpu")
    from transformers import AutoTokenizer
    prompts = [*task_prompts("truthfulqa", str(task_files["truthfulqa"]), None, 2, None, 0),  # the task files' shots
               *task_prompts("coqa", str(task_files["coqa"]), None, 2, None, 0)]
    expected = greedy_answers(model, AutoTokenizer.from_pretrained(backbone), prompts, 5, progress=False)
    stored = load_answers(answers, signature(model.config))
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(stored, expected))
    assert read_answers_meta(answers)["settings"]["tokens"] == 5
    out = tmp_path / "translators"
    main(["--backbone", str(backbone), "--train-text", str(root / "train.txt"), "--exit-layers", "1,2", "--out", str(out),
          "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--device", "cpu", "--init", "least_squares",
          "--init-batches", "2", "--answers", str(answers), "--answers-weight", "0.5"])
    _, meta = load_translators(out, model.config)
    assert meta["training"]["answers_weight"] == 0.5 and meta["training"]["answers"] == str(answers)
    assert meta["run"]["answers"] == 4 and meta["run"]["answer_positions"] == sum(int(c.sum()) for _, c in stored) > 0


def test_entry_point_bad_input(setup, task_files, tmp_path, capsys):  # noqa: F811
    root, backbone = setup
    with pytest.raises(SystemExit, match="exit layers"):
        main(["--backbone", str(backbone), "--train-text", str(root / "train.txt"), "--exit-layers", "3",
              "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--backbone", str(backbone), "--train-text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")])
    for bad, message in ((["--answers-weight", "0.5"], "go together"),
                         (["--answers", str(root / "train.txt"), "--answers-weight", "0"], "go together"),
                         (["--answers", str(tmp_path / "none.safetensors"), "--answers-weight", "0.5"],
                          "does not exist"),
                         (["--answers", str(root / "train.txt"), "--answers-weight", "1.0"], "not in [0, 1)")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            main(["--backbone", str(backbone), "--train-text", str(root / "train.txt"), "--out", str(tmp_path / "o"),
                  *bad])
    assert not (tmp_path / "o").exists()
    for bad, message in ((["--task", "truthfulqa:" + str(tmp_path / "none.jsonl")], "no file"),
                         (["--task", f"nope:{root / 'train.txt'}"], "NAME:DATA"),
                         (["--task", f"truthfulqa:{task_files['truthfulqa']}:x"], "whole number"),
                         (["--task", f"truthfulqa:{task_files['truthfulqa']}", "--prompts", "0"], "--prompts must be"),
                         (["--task", f"truthfulqa:{task_files['truthfulqa']}", "--out", str(tmp_path / "a.pt")],
                          ".safetensors")):
        with pytest.raises(SystemExit):
            answers_main(["--backbone", str(backbone), "--out", str(tmp_path / "a.safetensors"), *bad])
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("a.*"))
    for module in ("train_translators", "agreement", "answers"):
        help_text = subprocess.run([sys.executable, "-m", f"workflow_lib.cli.{module}", "--help"], capture_output=True,
                                   text=True, check=True).stdout
        assert "--out" in help_text


def test_agreement_table(setup, task_files, tmp_path):  # noqa: F811
    root, backbone = setup
    translators = tmp_path / "translators"
    main(["--backbone", str(backbone), "--train-text", str(root / "train.txt"), "--exit-layers", "1,2",
          "--out", str(translators), "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--device", "cpu"])
    out = tmp_path / "agreement.csv"
    agreement_main(["--backbone", str(backbone), "--exit-layers", "1,2", "--translators", str(translators),
                    "--text", str(root / "valid.txt"), "--seq-len", "32", "--text-tokens", "256",
                    "--task", f"truthfulqa:{task_files['truthfulqa']}", "--limit", "2", "--max-new-tokens", "6",
                    "--resamples", "200", "--device", "cpu", "--out", str(out)])
    table = pd.read_csv(out)
    assert set(table.source) == {"text", "truthfulqa"} and set(table.rule) == {"last_block", "lens", "translator"}
    assert len(table) == 2 * 2 * 3
    assert ((table.top1_low <= table.top1) & (table.top1 <= table.top1_high)).all()
    assert ((0 <= table.top1) & (table.top1 <= 1) & (table.kl >= -1e-5)).all()
    last = table[(table.exit_layer == 2) & (table.rule == "last_block")]  # block n-2 + the last block: the full model
    assert (last.top1 == 1).all() and (last.kl.abs() < 1e-3).all()
    assert (table[table.source == "text"].tokens == 256).all()
    assert table["run"].nunique() == 1 and table["packages"].str.contains("torch=").all()  # what made the rows
