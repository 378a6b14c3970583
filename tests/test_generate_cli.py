"""`python -m workflow_lib.cli.generate`: JSON output, text with stop strings, and one-line errors before any work."""
import json
import runpy
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, PreTrainedTokenizerFast

from workflow_lib.cli import generate
from workflow_lib.models.backbone import build_backbone, preset_config
from workflow_lib.models.heads import build_heads, save_heads

IDS = [1, 40, 300, 7, 901, 56]


def run(capsys, *argv) -> dict:
    generate.main(list(argv) + ["--device", "cpu"])
    return json.loads(capsys.readouterr().out)


def fail(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as err:
        generate.main(list(argv) + ["--device", "cpu"])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("python -m workflow_lib.cli.generate: error: ")
    return message


@pytest.fixture
def no_weights(monkeypatch):
    """Bad input must be refused before any weight loads."""
    def refuse(*_a, **_k):
        raise AssertionError("weights were loaded before the arguments were checked")
    monkeypatch.setattr(generate, "load_backbone", refuse)


@pytest.fixture(scope="module")
def text_backbone(tmp_path_factory):
    """A local backbone folder with a tokenizer: a tiny byte-level BPE and a 4-block Mistral of its vocabulary."""
    folder = tmp_path_factory.mktemp("backbone")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    model = build_backbone(preset_config("tiny-mistral", vocab_size=len(tokenizer), num_hidden_layers=4), device="cpu")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # imported above by this test file
def test_help(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["generate", "--help"])
    with pytest.raises(SystemExit) as err:
        runpy.run_module("workflow_lib.cli.generate", run_name="__main__")  # as `python -m workflow_lib.cli.generate`
    out = capsys.readouterr().out
    assert err.value.code == 0 and "--backbone" in out and "--exit-at" in out and "--json" in out


def test_json_exits_disabled_equals_generate(capsys, tiny_mistral):
    got = run(capsys, "--backbone", "preset:tiny-mistral", "--prompt-ids", ",".join(map(str, IDS)),
              "--max-new-tokens", "10", "--json")
    ref = tiny_mistral.generate(torch.tensor([IDS]), do_sample=False, max_new_tokens=10)[0, len(IDS):].tolist()
    assert got["token_ids"] == ref
    assert got["exit_layers"] == [7] * len(ref) and got["crf_exact"] == got["crf_paper"] == 1.0
    assert got["text"] is None and got["exits_enabled"] is False
    assert set(got) >= {"text", "token_ids", "exit_layers", "crf_exact", "crf_paper", "tokens_per_second", "stop_reason"}


def test_exit_at_and_prune(capsys):
    got = run(capsys, "--backbone", "preset:tiny-mamba2", "--prompt-ids", "5,6,7", "--exit-at", "4", "--policy", "skip",
              "--max-new-tokens", "6", "--json")
    assert got["exit_layers"] == [7] + [4] * 5 and got["crf_paper"] == pytest.approx(8 / 6)
    got = run(capsys, "--backbone", "preset:tiny-mamba2", "--prompt-ids", "5,6,7", "--prune", "2",
              "--max-new-tokens", "4", "--json")
    assert got["crf_paper"] == pytest.approx(8 / 6) and got["prune"] == 2 and got["prune_start"] == 5
    got = run(capsys, "--backbone", "preset:tiny-mamba2", "--prompt-ids", "5,6,7", "--prune", "2", "--prune-start", "1",
              "--max-new-tokens", "4", "--json")
    assert got["crf_paper"] == pytest.approx(8 / 6) and got["prune_start"] == 1
    generate.main(["--backbone", "preset:tiny-mistral", "--prompt-ids", "5,6,7", "--max-new-tokens", "3"])
    assert len(capsys.readouterr().out.split()) == 3  # without a tokenizer the ids are printed


def test_prompts_file_batched(capsys, tmp_path, text_backbone):
    """--prompts-file with --batch-size: a JSON list in file order, each object as a single-prompt run gives it."""
    folder, _, _ = text_backbone
    lines = ["the quick brown fox", "lazy", "over the lazy dog jumps"]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    got = run(capsys, "--backbone", str(folder), "--exit-at", "2", "--prompts-file", str(tmp_path / "prompts.txt"),
              "--batch-size", "2", "--max-new-tokens", "8", "--json")
    assert isinstance(got, list) and len(got) == 3 and [g["batch_size"] for g in got] == [2, 2, 1]
    for line, out in zip(lines, got):
        alone = run(capsys, "--backbone", str(folder), "--exit-at", "2", "--prompt", line, "--max-new-tokens", "8",
                    "--json")
        assert set(out) == set(alone)
        for key in ("text", "token_ids", "exit_layers", "crf_exact", "crf_paper", "stop_reason", "prompt_tokens"):
            assert out[key] == alone[key], key
    (tmp_path / "ids.txt").write_text("5,6,7\n8,9\n")
    generate.main(["--backbone", "preset:tiny-mistral", "--prompts-file", str(tmp_path / "ids.txt"), "--device", "cpu"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # one line of ids per prompt without a tokenizer


def test_text_and_stop_string(capsys, text_backbone):
    folder, model, tokenizer = text_backbone
    free = run(capsys, "--backbone", str(folder), "--prompt", "the quick", "--max-new-tokens", "16", "--json")
    prompt_ids = tokenizer("the quick", return_tensors="pt").input_ids
    ref = model.generate(prompt_ids, do_sample=False, max_new_tokens=16)[0, prompt_ids.shape[1]:].tolist()
    assert free["token_ids"] == ref and free["text"] == tokenizer.decode(ref, skip_special_tokens=True)
    stop = free["text"][5:7]
    got = run(capsys, "--backbone", str(folder), "--prompt", "the quick", "--max-new-tokens", "16", "--stop", stop,
              "--json")
    assert got["stop_reason"] == "stop_string"
    assert got["text"] == free["text"][:free["text"].index(stop)]
    generate.main(["--backbone", str(folder), "--prompt", "the quick", "--max-new-tokens", "16", "--stop", stop])
    assert capsys.readouterr().out == got["text"] + "\n"


def test_heads_folder(capsys, tmp_path, tiny_mistral, tiny_mamba2):
    save_heads(tmp_path / "mistral_heads", build_heads("calm", 256, [4, 5]), tiny_mistral.config)
    got = run(capsys, "--backbone", "preset:tiny-mistral", "--heads", str(tmp_path / "mistral_heads"),
              "--threshold", "0", "--prompt-ids", "5,6,7", "--max-new-tokens", "4", "--json")
    assert got["exit_layers"] == [7, 4, 4, 4]  # threshold 0: the first head always exits
    save_heads(tmp_path / "mamba_heads", build_heads("calm", 256, [4]), tiny_mamba2.config)
    assert "built for backbone" in fail(capsys, "--backbone", "preset:tiny-mistral", "--heads",
                                        str(tmp_path / "mamba_heads"), "--prompt-ids", "5")


def test_errors_before_any_work(capsys, tmp_path, no_weights):
    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    prompts, empty, long, words = (tmp_path / name for name in ("prompts", "empty", "long", "words"))
    prompts.write_text("5,6\n")
    empty.write_text("\n \n")
    long.write_text("5,6\n" + ",".join(["5"] * 2049) + "\n")  # prompt 2 is longer than the 2048-token context
    words.write_text("hello world\n")
    cases = {
        "unsupported architecture 'gpt2'": ["--backbone", str(tmp_path / "gpt2"), "--prompt-ids", "5"],
        "--exit-at 7 out of range": ["--backbone", "preset:tiny-mistral", "--exit-at", "7", "--prompt-ids", "5"],
        "--exit-at -1 out of range": ["--backbone", "preset:tiny-mistral", "--exit-at", "-1", "--prompt-ids", "5"],
        "threshold must be a number": ["--backbone", "preset:tiny-mistral", "--threshold", "high", "--prompt-ids", "5"],
        "policy 'copy' does not apply to mamba2": ["--backbone", "preset:tiny-mamba2", "--policy", "copy",
                                                   "--prompt-ids", "5"],
        "prune must be an integer": ["--backbone", "preset:tiny-mistral", "--prune", "9", "--prompt-ids", "5"],
        "prune start must be an integer": ["--backbone", "preset:tiny-mistral", "--prune", "2", "--prune-start", "0",
                                           "--prompt-ids", "5"],
        "has no tokenizer": ["--backbone", "preset:tiny-mistral", "--prompt", "hello"],
        "does not exist": ["--backbone", str(tmp_path / "missing"), "--prompt-ids", "5"],
        "not allowed with argument --heads": ["--backbone", "preset:tiny-mistral", "--heads", "x", "--exit-at", "4",
                                              "--prompt-ids", "5"],
        "comma-separated integers": ["--backbone", "preset:tiny-mistral", "--prompt-ids", "1,a"],
        "unknown backbone preset": ["--backbone", "preset:gpt2", "--prompt-ids", "5"],
        "--batch-size must be >= 1": ["--backbone", "preset:tiny-mistral", "--prompts-file", str(prompts),
                                      "--batch-size", "0"],
        "--batch-size needs --prompts-file": ["--backbone", "preset:tiny-mistral", "--prompt-ids", "5",
                                              "--batch-size", "2"],
        "has no prompt": ["--backbone", "preset:tiny-mistral", "--prompts-file", str(empty)],
        "--prompts-file: No such file": ["--backbone", "preset:tiny-mistral", "--prompts-file", str(tmp_path / "no")],
        "prompt 2 of": ["--backbone", "preset:tiny-mistral", "--prompts-file", str(long)],
        "holds token ids": ["--backbone", "preset:tiny-mistral", "--prompts-file", str(words)],
    }
    for expected, argv in cases.items():
        assert expected in fail(capsys, *argv), argv


def test_emission_rule(capsys, tmp_path, no_weights):
    """--emission lens skips the last block too (an exit at 4 of 8 runs 5 blocks); the translator rule without
    translators, or translators for another backbone, is refused before any weight loads."""
    from workflow_lib.models.translators import Translators, save_translators

    assert "--emission translator needs --translators" in fail(
        capsys, "--backbone", "preset:tiny-mamba2", "--prompt-ids", "5,6,7", "--exit-at", "4", "--emission", "translator")
    save_translators(tmp_path / "tr", Translators(64, [4]), preset_config("tiny-mamba2", hidden_size=64))
    assert "trained for backbone" in fail(
        capsys, "--backbone", "preset:tiny-mamba2", "--prompt-ids", "5,6,7", "--exit-at", "4", "--emission", "translator",
        "--translators", str(tmp_path / "tr"))


def test_emission_lens_json(capsys):
    got = run(capsys, "--backbone", "preset:tiny-mamba2", "--prompt-ids", "5,6,7", "--exit-at", "4", "--policy", "skip",
              "--emission", "lens", "--max-new-tokens", "6", "--json")
    assert got["exit_layers"] == [7] + [4] * 5 and got["crf_paper"] == pytest.approx(8 / 5) and got["emission"] == "lens"
