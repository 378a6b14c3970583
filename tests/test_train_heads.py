"""Head distillation: outputs and metadata, one backbone pass per batch, training helps, resume after kill -9
gives bit-identical weights, bad input fails early with nothing written, heads trained on the model's own answers.
(Heads trained on stored labels: tests/test_label_cache.py.)"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill_setup import answers_file, count_block_calls, train_config, workdir  # noqa: F401 (fixture)
from workflow_lib.cli.train_heads import main
from workflow_lib.models.backbone import load_backbone, parts, preset_config, signature
from workflow_lib.models.emission import emitted_logits, exit_hidden, exit_states
from workflow_lib.models.heads import build_heads, load_heads
from workflow_lib.models.translators import Translators
from workflow_lib.training import distill
from workflow_lib.training.checkpoints import CHECKPOINT_DIR, save_checkpoint
from workflow_lib.training.distill import METRICS_FILE, HeadTrainer, TrainConfig, train_heads
from workflow_lib.training.label_cache import LabelCacheConfig, build_label_cache
from workflow_lib.training.losses import loss_weights
from workflow_lib.training.metrics import exit_metrics
from workflow_lib.training.text import batch_indices

REPO = Path(__file__).resolve().parents[1]


def test_outputs_metadata_and_metrics(workdir):
    cfg = train_config(workdir, "out_meta", head="ffn", label_rule="oracle_in_intermediate_topk", k=3, class_balance=True,
               checkpoint_every=10, head_options={"expansion": 2}, name="ffn_x2_k3")
    metrics = train_heads(cfg)
    out = Path(cfg.out)
    assert sorted(p.name for p in out.iterdir()) == ["heads.json", "heads.safetensors", METRICS_FILE]  # no checkpoint
    model = load_backbone(cfg.backbone, device="cpu")
    heads, meta = load_heads(out, model.config)
    assert sorted(heads) == ["1", "2"] and meta["exit_layers"] == [1, 2]  # default exits of a 4-block backbone
    # the spec: its name, type, constructor options and training settings, each apart
    assert meta["spec"] == {"name": "ffn_x2_k3", "type": "ffn", "options": {"expansion": 2}, "training": {
        "label_rule": "oracle_in_intermediate_topk", "k": 3, "label_source": "emitted", "mode": "joint_decay",
        "class_balance": True,
        "seq_len": 32, "batch_size": 8, "steps": 30, "lr": 3e-3, "answers_weight": 0.0, "exit_layers": [1, 2]}}
    assert meta["head"] == {"head_type": "ffn", "hidden_size": 64, "expansion": 2} and meta["seed"] == 0
    assert heads["1"].up.out_features == 2 * 64  # the option reached the constructor
    assert meta["backbone_id"] == cfg.backbone and meta["data"]["train_text"].endswith("train.txt")
    assert (meta["emission"], meta["label_source"], meta["translators"]) == ("last_block", "emitted", None)
    assert {"packages", "git_commit", "config"} <= set(meta["provenance"])
    # each exit saved with its own weights (the authors' code saved the first head four times)
    tensors = load_file(str(out / "heads.safetensors"))
    assert not torch.equal(tensors["1.up.weight"], tensors["2.up.weight"])
    saved = json.loads((out / METRICS_FILE).read_text())["metrics"]
    assert saved["trained"] == json.loads(json.dumps(metrics["trained"]))
    for which in ("trained", "untrained"):
        for layer in ("1", "2"):
            m = saved[which][layer]
            assert {"loss", "accuracy", "precision", "recall", "f1", "auroc", "positive_ratio"} <= set(m)
            assert 0 <= m["f1"] <= 1
        # last_block labels: at block n-2 the last block's input is its full-depth input, every token agrees
        assert 0 < saved[which]["1"]["positive_ratio"] < 1 and saved[which]["2"]["positive_ratio"] == 1
    assert saved["class_weights"] is not None and saved["throughput"]["tokens_per_second"] > 0
    other = preset_config("tiny-mistral", vocab_size=320, hidden_size=64, num_hidden_layers=6)
    with pytest.raises(ValueError, match="built for backbone"):
        load_heads(out, other)


@pytest.mark.parametrize("preset", ["tiny-mistral", "tiny-mamba2"])
def test_one_backbone_pass_per_batch_for_all_exits(workdir, preset):
    model = load_backbone(str(workdir / preset), device="cpu")
    calls, hooks = count_block_calls(model)
    # lens labels: the last_block emission reruns the last block (Mamba-2: per position), timed in docs/training.md
    cfg = train_config(workdir, "unused", preset, head="mamba", mode="individual", label_source="lens")
    heads = build_heads("mamba", 64, [0, 1, 2], seed=0)
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    trainer = HeadTrainer(model, heads, cfg)
    assert len(trainer.optimizers) == 3
    batch = torch.randint(3, 300, (2, 32))  # (B, T)
    for _ in range(3):
        trainer.train_step(batch)
    for h in hooks:
        h.remove()
    assert calls == [3, 3, 3, 3]  # every block ran once per step although three exits trained
    after = heads.state_dict()
    for layer in ("0", "1", "2"):  # every exit's head learnt
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(layer + "."))


def test_captured_hidden_states_are_the_exit_block_outputs(workdir):
    model = load_backbone(str(workdir / "tiny-mistral"), device="cpu")
    trainer = HeadTrainer(model, build_heads("calm", 64, [0, 2], seed=0), train_config(workdir, "unused", label_source="lens"))
    ids = torch.randint(3, 300, (2, 16))  # (B, T)
    z, labels = trainer.backbone_pass(ids)  # (E, B, T, D), (E, B, T)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states  # Mistral: [embeddings, block 0, ...]
    p = parts(model)
    for i, layer in enumerate([0, 2]):
        torch.testing.assert_close(z[i], p.final_norm(hidden[layer + 1]))
        want = (p.lm_head(z[i]).argmax(-1) == model(ids).logits.argmax(-1)).long()  # k=1: argmaxes agree
        assert torch.equal(labels[i], want)


@pytest.mark.parametrize("preset", ["tiny-mistral", "tiny-mamba2"])
@pytest.mark.parametrize("emission", ["last_block", "translator"])
def test_emitted_labels_follow_the_emission_rule(workdir, preset, emission):
    """label_source emitted: the labels compare the full model with what the exit emits under the rule
    (models/emission.py), which differs from the logit lens' labels."""
    model = load_backbone(str(workdir / preset), device="cpu")
    translators = Translators(64, [0, 2])
    torch.manual_seed(0)
    for linear in translators.linears.values():
        torch.nn.init.normal_(linear.weight, std=0.2)
    cfg = train_config(workdir, "unused", preset, emission=emission)
    trainer = HeadTrainer(model, build_heads("calm", 64, [0, 2], seed=0), cfg, translators=translators)
    lens = HeadTrainer(model, build_heads("calm", 64, [0, 2], seed=0), train_config(workdir, "unused", preset,
                                                                              label_source="lens"))
    ids = torch.randint(3, 300, (2, 16))  # (B, T)
    _, labels = trainer.backbone_pass(ids)  # (E, B, T)
    _, lens_labels = lens.backbone_pass(ids)
    states = exit_states(model, ids, [0, 2])
    emitted = emitted_logits(model, states, emission, translators)
    for i, layer in enumerate([0, 2]):
        assert torch.equal(labels[i], (emitted[layer].argmax(-1) == states.logits.argmax(-1)).long())
    assert not torch.equal(labels, lens_labels)


def test_translator_labels_need_translators(workdir, tmp_path):
    with pytest.raises(ValueError, match="--translators DIR"):
        train_heads(train_config(workdir, str(tmp_path / "o"), emission="translator"))
    with pytest.raises(FileNotFoundError, match="translators folder"):
        train_heads(train_config(workdir, str(tmp_path / "o"), emission="translator", translators=str(tmp_path / "none")))
    assert not (tmp_path / "o").exists()


def test_exit_metrics_on_hand_made_predictions():
    p_exit = torch.tensor([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.6, 0.1])  # (N,)
    gold = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    logits = torch.stack([torch.zeros(8), torch.log(p_exit / (1 - p_exit))], -1)  # (N, 2): softmax[1] = p_exit
    m = exit_metrics(logits, gold)
    # predicted exits (p >= 0.5): items 0,1,2,4,6 -> tp 3, fp 2, fn 1, tn 2
    assert (m["precision"], m["recall"], m["accuracy"]) == pytest.approx((3 / 5, 3 / 4, 5 / 8))
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35) and m["positive_ratio"] == 0.5
    pairs = [(a > b) + 0.5 * (a == b) for a in p_exit[:4].tolist() for b in p_exit[4:].tolist()]
    assert m["auroc"] == pytest.approx(sum(pairs) / 16)  # one tie (0.6 vs 0.6) counts half
    assert m["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, gold).item())
    assert exit_metrics(logits, torch.ones(8, dtype=torch.long))["auroc"] is None


def test_loss_weights_and_data_order():
    assert loss_weights(4, "joint_decay").tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])  # earliest exit highest
    assert loss_weights(4, "uniform").tolist() == pytest.approx([0.25] * 4)
    a = torch.cat([batch_indices(s, 4, 10, seed=7) for s in range(5)])  # two epochs over 10 sequences
    assert sorted(a[:10].tolist()) == list(range(10)) and sorted(a[10:20].tolist()) == list(range(10))
    assert not torch.equal(a[:10], a[10:20])  # a fresh permutation per epoch
    assert torch.equal(a, torch.cat([batch_indices(s, 4, 10, seed=7) for s in range(5)]))  # seeded
    assert not torch.equal(a, torch.cat([batch_indices(s, 4, 10, seed=8) for s in range(5)]))


@pytest.mark.parametrize("preset, head", [("tiny-mistral", "calm"), ("tiny-mistral", "ffn"), ("tiny-mamba2", "mamba")])
def test_training_beats_untrained_heads_on_held_out_text(workdir, preset, head):
    # labels of the lens rule: on a random backbone the last block run on an early exit state agrees with the full
    # model on no token, so the last_block labels would leave nothing to learn (and no AUROC)
    cfg = train_config(workdir, f"out_{preset}_{head}", preset, head=head, mode="uniform", class_balance=True,
               steps=20 if head == "mamba" else 40, emission="lens")
    metrics = train_heads(cfg)
    for layer, trained in metrics["trained"].items():
        untrained = metrics["untrained"][layer]
        assert trained["loss"] < untrained["loss"]
        assert trained["auroc"] > untrained["auroc"]


def _argv(cfg: TrainConfig) -> list[str]:
    return ["--backbone", cfg.backbone, "--head", cfg.head, "--train-text", cfg.train_text,
            "--valid-text", cfg.valid_text, "--out", cfg.out, "--steps", str(cfg.steps),
            "--batch-size", str(cfg.batch_size), "--seq-len", str(cfg.seq_len), "--lr", str(cfg.lr), "--seed", "3",
            "--device", "cpu", "--checkpoint-every", str(cfg.checkpoint_every), "--valid-tokens", "256",
            "--mode", "joint_decay", "--class-balance"]


def test_resume_after_kill_is_bit_identical(workdir, capsys):
    killed = train_config(workdir, "resume_killed", head="ffn", steps=80, checkpoint_every=5)
    clean = dataclasses.replace(killed, out=str(workdir / "resume_clean"), checkpoint_every=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen([sys.executable, "-m", "workflow_lib.cli.train_heads", *_argv(killed)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the single-threaded subprocess
    try:
        main(_argv(clean))  # the uninterrupted reference, while the victim starts up
        ckpt = Path(killed.out) / CHECKPOINT_DIR / "state.safetensors"
        deadline = time.time() + 60
        while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
        assert not (Path(killed.out) / "heads.safetensors").exists()  # nothing finished was written
        capsys.readouterr()
        main(_argv(killed))  # the same command again
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "resuming from step" in err and "resuming from step 0 " not in err
    a = load_file(str(Path(killed.out) / "heads.safetensors"))
    b = load_file(str(Path(clean.out) / "heads.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (Path(killed.out) / CHECKPOINT_DIR).exists()


def test_bad_input_fails_before_work_and_writes_nothing(workdir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    csv = tmp_path / "corpus.csv"
    csv.write_text("text\nhello\n")
    cases = [
        (dict(train_text=str(tmp_path / "missing.txt")), FileNotFoundError, "training text .* does not exist"),
        (dict(train_text=str(empty)), ValueError, "training text .* is empty"),
        (dict(train_text=str(blank)), ValueError, "training text .* contains no documents"),
        (dict(valid_text=str(workdir / "train.txt")), ValueError, "validation text must differ"),
        (dict(valid_text=str(csv)), ValueError, "corpus must be .txt or .jsonl"),
        (dict(exit_layers=[1, 3]), ValueError, r"invalid for a 4-block backbone.*0\.\.2"),
        (dict(head="transformer"), ValueError, "unknown or untrainable head type 'transformer'"),
        (dict(head="forced"), ValueError, "untrainable head type 'forced'"),
        (dict(head="mamba", head_options={"state_sise": 64}), ValueError,
         "head type 'mamba' with options .*unexpected keyword argument 'state_sise'"),
        (dict(k=0), ValueError, "k >= 1"),
        (dict(mode="sum"), ValueError, "unknown training mode"),
        (dict(backbone="preset:tiny-mistral"), ValueError, "--tokenizer"),
        (dict(seq_len=100_000), ValueError, "fewer than one sequence"),
        (dict(steps=0), ValueError, "steps must be >= 1, got 0"),
        (dict(seq_len=1), ValueError, "seq_len must be >= 2, got 1"),
        (dict(lr=0.0), ValueError, "lr must be > 0, got 0.0"),
    ]
    for i, (kw, exc, match) in enumerate(cases):
        cfg = dataclasses.replace(train_config(workdir, "unused", **kw), out=str(tmp_path / f"out{i}"))
        with pytest.raises(exc, match=match):
            train_heads(cfg)
        assert not Path(cfg.out).exists()
    with pytest.raises(SystemExit, match="train_heads: error: training text .* is empty"):
        main(["--backbone", str(workdir / "tiny-mistral"), "--head", "calm", "--train-text", str(empty),
              "--valid-text", str(workdir / "valid.txt"), "--out", str(tmp_path / "cli")])
    assert not (tmp_path / "cli").exists()


def test_resuming_with_another_backbone_is_refused(workdir):
    cfg = train_config(workdir, "resume_other", steps=4, checkpoint_every=2)
    # A checkpoint left by a run on the Mamba-2 backbone, then a restart on the Mistral one with the same --out.
    mamba = load_backbone(str(workdir / "tiny-mamba2"), device="cpu")
    other = dataclasses.replace(cfg, backbone=str(workdir / "tiny-mamba2"), exit_layers=[1, 2])
    trainer = HeadTrainer(mamba, build_heads("calm", 64, [1, 2], seed=0), other)
    ckpt = Path(cfg.out) / CHECKPOINT_DIR / "state.safetensors"
    save_checkpoint(ckpt, trainer.heads, trainer.optimizers, 2, {"config": dataclasses.asdict(other), "backbone": signature(mamba.config),
                                       "train_positive_ratio": [0.5, 0.5]})
    with pytest.raises(ValueError, match="built for backbone"):
        train_heads(cfg)
    with pytest.raises(ValueError, match="different configuration.*lr"):
        train_heads(dataclasses.replace(cfg, backbone=other.backbone, lr=1e-2))
    assert not (Path(cfg.out) / "heads.json").exists()


def test_untrained_head_gets_a_config_only_folder_without_text(tmp_path, capsys):
    main(["--backbone", "preset:tiny-mistral", "--head", "saturation", "--name", "sat", "--exit-layers", "4,6",
          "--out", str(tmp_path / "rule")])
    assert sorted(p.name for p in (tmp_path / "rule").iterdir()) == ["heads.json"]
    heads, meta = load_heads(tmp_path / "rule", preset_config("tiny-mistral"))
    assert sorted(heads) == ["4", "6"] and meta["trained"] is False and meta["head"]["head_type"] == "saturation"
    assert meta["spec"] == {"name": "sat", "type": "saturation", "options": {}, "training": {"exit_layers": [4, 6]}}
    with pytest.raises(SystemExit):  # a trained head needs its texts
        main(["--backbone", "preset:tiny-mistral", "--head", "calm", "--out", str(tmp_path / "calm")])
    assert "--train-text and --valid-text are required" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="invalid for a 8-block backbone"):
        main(["--backbone", "preset:tiny-mistral", "--head", "softmax", "--exit-layers", "7", "--out",
              str(tmp_path / "bad")])
    assert not (tmp_path / "calm").exists() and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("preset", ["tiny-mistral", "tiny-mamba2"])
def test_heads_trained_on_answers(workdir, tmp_path, preset, monkeypatch):
    """With answers_weight the heads also train on the full model's greedy answers (their decode steps only): other
    heads than text alone, the answers' own positive ratio reported, and the label cache's answer labels give the
    heads of a job that labels its own answers, bit for bit, for a per-token head and the recurrent one. So do the
    heads' inputs stored in the cache (store_inputs), with which a per-token head's job runs no backbone pass at all."""
    answers = answers_file(workdir, preset, tmp_path / "answers.safetensors")
    cache = LabelCacheConfig(backbone=str(workdir / preset), train_text=str(workdir / "train.txt"),
                             valid_text=str(workdir / "valid.txt"), out=str(tmp_path / "labels"),
                             train_tokens=6 * 8 * 32, seq_len=32, valid_tokens=2048, device="cpu", answers=str(answers))
    shapes = build_label_cache(cache)
    assert shapes["answers"][:2] == (2, 6)
    with_inputs = dataclasses.replace(cache, out=str(tmp_path / "inputs"), store_inputs=True, batch_size=5)
    build_label_cache(with_inputs)  # other batches than the head jobs': the inputs do not depend on them
    for head in ("calm", "mamba"):
        kw = dict(head=head, steps=6, class_balance=True, answers=str(answers), answers_weight=0.5)
        own = train_heads(train_config(workdir, str(tmp_path / f"own_{head}"), preset, **kw))
        stored = train_heads(train_config(workdir, str(tmp_path / f"stored_{head}"), preset, label_cache=cache.out, **kw))
        passes = []  # backbone passes of the job reading the stored inputs
        monkeypatch.setattr(distill, "exit_hidden", lambda *a, **k: passes.append(1) or exit_hidden(*a, **k))
        cached = train_heads(train_config(workdir, str(tmp_path / f"cached_{head}"), preset,
                                          label_cache=with_inputs.out, **kw))
        monkeypatch.undo()
        text = train_heads(train_config(workdir, str(tmp_path / f"text_{head}"), preset, head=head, steps=6, class_balance=True))
        a, b, c, t = (load_file(str(tmp_path / f"{which}_{head}" / "heads.safetensors"))
                      for which in ("own", "stored", "cached", "text"))
        assert all(torch.equal(a[k], b[k]) for k in a) and own["answers"] == stored["answers"]
        assert all(torch.equal(a[k], c[k]) for k in a) and own["trained"] == cached["trained"]
        assert cached["stored_inputs"] == ["answers", "train", "valid"] and own["stored_inputs"] == []
        assert (passes == []) == (head == "calm")  # the recurrent head still reads the answers' prompts itself
        assert not all(torch.equal(a[k], t[k]) for k in a)  # the answers changed the heads
        assert own["answers"]["positions"] == 6 * 7 and own["answers"]["sequences"] == 6  # 8 tokens: 7 decode steps
        assert set(own["answers"]["train_positive_ratio"]) == {"1", "2"} and own["answers"]["weight"] == 0.5
        meta = json.loads((tmp_path / f"own_{head}" / "heads.json").read_text())
        assert meta["spec"]["training"]["answers_weight"] == 0.5


def test_answers_bad_input_is_refused(workdir, tmp_path):
    answers = answers_file(workdir, "tiny-mistral", tmp_path / "answers.safetensors", prompts=2)
    other = answers_file(workdir, "tiny-mistral", tmp_path / "other.safetensors", prompts=3)
    mamba = answers_file(workdir, "tiny-mamba2", tmp_path / "mamba.safetensors", prompts=2)
    plain = LabelCacheConfig(backbone=str(workdir / "tiny-mistral"), train_text=str(workdir / "train.txt"),
                             valid_text=str(workdir / "valid.txt"), out=str(tmp_path / "plain"),
                             train_tokens=4 * 8 * 32, seq_len=32, valid_tokens=2048, device="cpu")
    build_label_cache(plain)
    build_label_cache(dataclasses.replace(plain, out=str(tmp_path / "with"), answers=str(answers)))
    cases = [
        (dict(answers_weight=0.5), "go together", ValueError),
        (dict(answers=str(answers)), "go together", ValueError),
        (dict(answers=str(answers), answers_weight=1.0), r"not in \[0, 1\)", ValueError),
        (dict(answers=str(tmp_path / "none.safetensors"), answers_weight=0.5), "does not exist", FileNotFoundError),
        (dict(answers=str(workdir / "tiny-mistral" / "model.safetensors"), answers_weight=0.5), "not an answers file",
         ValueError),
        (dict(answers=str(mamba), answers_weight=0.5), "generated by backbone", ValueError),
        (dict(answers=str(answers), answers_weight=0.5, label_cache=plain.out), "answers: None there", ValueError),
        (dict(answers=str(other), answers_weight=0.5, label_cache=str(tmp_path / "with")), "answers: .* there",
         ValueError),
    ]
    for i, (kw, match, error) in enumerate(cases):
        cfg = train_config(workdir, str(tmp_path / f"out{i}"), steps=4, **kw)
        with pytest.raises(error, match=match):
            train_heads(cfg)
        assert not Path(cfg.out).exists()
