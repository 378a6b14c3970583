"""The real-data path of the pipeline (the paper-scale path, `real_data` instead of `world`): backbones named by
hub id or folder (their config checks: tests/test_plan.py), and the run end to end: the real samples in
../shared/data sampled by the data rules, two tiny backbones given as `model: PATH` (save_pretrained folders with
their tokenizer, as a downloaded checkpoint is), heads distilled on WikiText-2, the evaluation grid, tables and
figures."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from workflow_lib.cli import evaluate
from workflow_lib.data import formats
from workflow_lib.data.tokenizer import train_tokenizer
from workflow_lib.models.backbone import build_backbone, load_backbone, preset_config
from workflow_lib.models.names import is_local

REPO = Path(__file__).resolve().parents[1]
TASKS = ["triviaqa", "coqa", "truthfulqa"]


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Random tiny Mistral and Mamba-2 saved with the project's tokenizer trained on WikiText-2 text."""
    out = tmp_path_factory.mktemp("models")
    docs = list(formats.read_corpus(shared_data / "wikitext2" / "test.txt"))[:400]
    tokenizer = train_tokenizer(docs, vocab_size=512)
    folders = {}
    for arch in ("mistral", "mamba2"):
        config = preset_config(f"tiny-{arch}", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4)
        folders[arch] = out / arch
        build_backbone(config, seed=0, device="cpu", dtype=torch.float32).save_pretrained(folders[arch])
        tokenizer.save_pretrained(folders[arch])
    return folders


def snakemake(config: dict, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    config_file = workdir / "real.yaml"
    workdir.mkdir(exist_ok=True)
    config_file.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "--configfile", str(config_file), *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def real_config(shared_data: Path, folders: dict[str, Path]) -> dict:
    """configs/smoke.yaml with the world replaced by the real samples (their original release formats)."""
    config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    del config["tokenizer"]
    config["world"] = None
    config["real_data"] = {
        "corpus": {"source": str(shared_data / "wikitext2" / "valid.txt"), "config": None, "tokens": 3000,
                   "valid_tokens": 1500},
        "triviaqa": {"source": str(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl"), "n": 3, "fewshot_n": 4},
        "coqa": {"source": str(shared_data / "coqa" / "coqa_dev_story0_full.json")},  # with additional_answers
        "truthfulqa": {"source": str(shared_data / "truthfulqa" / "TruthfulQA.csv"), "n": 2},
    }
    for name, spec in config["backbones"].items():
        del spec["pretrain"]
        spec.update(model=str(folders[name]), prune=[])  # pruning takes no other path with real data
    config["head_training"].update(steps=4, batch_size=4, seq_len=32)
    # The oracle series and comparison figures take no other path with real data: left out to keep the run short.
    config["evaluation"]["oracle"] = False
    config["analysis"]["comparisons"] = {}
    # Calibration from local files takes each task's questions beyond its limit; that path is the smoke pipeline's.
    config["calibration"] = None
    config["evaluation"]["tasks"] = {"triviaqa": {"shots": 2, "limit": 2}, "coqa": {"shots": 0, "limit": 1},
                                     "truthfulqa": {"shots": 1, "limit": 1}}
    config["evaluation"]["thresholds"] = [0.5]
    return config


def test_hub_ids_are_not_taken_for_missing_folders(tmp_path, monkeypatch):
    """'org/name' is a hub id unless such a folder exists (transformers' rule); a path no hub id can be is local."""
    monkeypatch.chdir(tmp_path)
    assert not is_local("mistralai/Mistral-7B-v0.3") and not is_local("gpt2")
    assert is_local("./m") and is_local(str(tmp_path / "m")) and is_local("results/backbones/mistral")
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert is_local("org/name")
    with pytest.raises(FileNotFoundError, match="backbone folder 'results/backbones/mistral' does not exist"):
        load_backbone("results/backbones/mistral")
    with pytest.raises(OSError) as hub:  # offline: the hub lookup itself fails, not a local-folder check
        load_backbone("mistralai/Mistral-7B-v0.3")
    assert not isinstance(hub.value, FileNotFoundError) and "huggingface.co" in str(hub.value)
    data = tmp_path / "coqa.json"
    data.write_text("[]")
    common = ["--no-heads", "--task", "coqa", "--data", str(data), "--out-dir", str(tmp_path / "out")]
    assert evaluate.parse_args(["--backbone", "mistralai/Mistral-7B-v0.3", *common]).backbone
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--backbone", "./missing", *common])


@pytest.mark.slow
def test_real_data_pipeline_end_to_end(shared_data, folders, tmp_path):
    run = snakemake(real_config(shared_data, folders), tmp_path, "--cores", "2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = tmp_path / "results"

    # the data rules: the longest-answer questions with few-shot examples outside them, the seeded subsets, the text
    data = results / "data"
    chosen = formats.read_triviaqa(data / "triviaqa.jsonl")
    pool = formats.read_triviaqa(data / "triviaqa_train.jsonl")
    source = formats.load_triviaqa(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl")
    assert len(chosen) == 3 and len(pool) == 4 and not {r["question_id"] for r in chosen} & {r["question_id"] for r in pool}
    lengths = sorted((len(r["answer"]["value"]) for r in source), reverse=True)
    assert [len(r["answer"]["value"]) for r in chosen] == lengths[:3]
    coqa = formats.read_coqa(data / "coqa.json")
    assert len(coqa) == 1 and sorted(coqa[0]["additional_answers"]) == ["0", "1", "2"]
    assert len(formats.read_truthfulqa(data / "truthfulqa.jsonl")) == 2
    train, valid = (list(formats.read_corpus(data / f"corpus_{s}.jsonl")) for s in ("train", "valid"))
    assert sum(len(d.split()) for d in train) >= 3000 and sum(len(d.split()) for d in valid) >= 1500
    assert not set(train) & set(valid)  # the held-out text follows the training text in one stream
    assert json.loads((data / "corpus_train.jsonl.meta.json").read_text())["config"]["config"] is None

    for arch in folders:
        metrics = json.loads((results / "heads" / arch / "head~calm" / "metrics.json").read_text())
        assert len(metrics["metrics"]["trained"]) == 2  # the default exits of a 4-block backbone
    with open(results / "tables" / "grid.csv") as f:
        rows = list(csv.DictReader(f))
    points = {(r["backbone"], r["task"], r["method"]) for r in rows}
    for arch in folders:
        for task in TASKS:
            assert {(arch, task, "baseline"), (arch, task, "early_exit")} <= points
    assert all(float(r["crf_exact"]) == float(r["crf_paper"]) == 1.0 for r in rows if r["method"] == "baseline")
    heads = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())["heads"]  # one policy, one threshold
    assert len(rows) == len(folders) * len(TASKS) * (1 + len(heads))  # the baseline and each head
    assert all(float(r["crf_exact"]) > 0 and int(r["n_samples"]) > 0 for r in rows)
    for arch in folders:
        for task in TASKS:
            for ext in ("png", "pdf"):
                assert (results / "figures" / arch / f"{task}.{ext}").stat().st_size > 0
