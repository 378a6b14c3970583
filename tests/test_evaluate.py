"""The evaluate entry: grid points with the model loaded once, complete run records beside lm-eval's
per-sample log, the degenerate rule, and bad input refused before the model loads or generates."""
import json
import shlex

import pytest
import torch
from eval_setup import save_calm_heads, save_tiny_backbone, task_files  # noqa: F401  (fixture)

from workflow_lib.cli.evaluate import main
from workflow_lib.evaluation.degenerate import degenerate_summary, is_degenerate


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("mistral"), "tiny-mistral")


def test_degenerate_rule():
    assert is_degenerate([5, 6, 7], "max_new_tokens")  # the token limit without a stop
    assert is_degenerate([9, 9, 9, 2], "eos")  # one token repeated (the stopping token is not text)
    assert is_degenerate([9, 9, 9, 13], "stop_string")
    assert not is_degenerate([5, 6, 2], "eos")
    assert not is_degenerate([5, 2], "eos") and not is_degenerate([2], "eos")
    assert is_degenerate([9, 9, 13], "eos") and not is_degenerate([9, 8, 9, 2], "eos")
    assert degenerate_summary([True, False, False, False], 0.2) == {"count": 1, "share": 0.25, "limit": 0.2, "valid": False}
    assert degenerate_summary([True, False, False, False, False], 0.2)["valid"]  # the limit itself is still valid
    with pytest.raises(ValueError):
        degenerate_summary([], 1.5)


def _run(tmp_path, *extra):
    return main(["--out-dir", str(tmp_path / "out"), "--limit", "3", "--max-new-tokens", "6", *extra])


def test_thresholds_write_one_record_each(mistral_dir, task_files, tmp_path):
    heads = save_calm_heads(tmp_path / "heads", mistral_dir, exit_layers=(1, 2))
    _run(tmp_path, "--backbone", str(mistral_dir), "--heads", str(heads), "--task", "triviaqa",
         "--data", str(task_files["triviaqa"]), "--thresholds", "0.0,5")
    low = json.loads((tmp_path / "out" / "threshold~0.0" / "record.json").read_text())
    off = json.loads((tmp_path / "out" / "threshold~5" / "record.json").read_text())
    assert set(low["metrics"]) == {"exact_match"} and low["n_samples"] == 3
    assert low["exits_enabled"] and not off["exits_enabled"]
    assert low["crf_exact"] > 1.0 and low["crf_paper"] > 1.0 and off["crf_exact"] == off["crf_paper"] == 1.0
    assert set(low["exit_histogram"]) == {"1"} and set(off["exit_histogram"]) == {"3"}
    assert sum(low["exit_histogram"].values()) == low["speed"]["decode_tokens"]
    assert low["speed"]["decode_tokens_per_second"] > 0 and low["wall_seconds"] > 0
    assert set(low["degenerate"]) == {"count", "share", "limit", "valid"} and low["valid"] == low["degenerate"]["valid"]
    assert low["provenance"]["config"]["task"] == "triviaqa" and low["provenance"]["seed"] == 0  # the pipeline's seed
    assert low["provenance"]["packages"]["lm_eval"] == "0.4.13"
    samples = [json.loads(line) for line in (tmp_path / "out" / "threshold~0.0" / "samples.jsonl").open()]
    assert len(samples) == 3
    assert all(s["dynamax"]["exit_layers"][1:] == [1] * (len(s["dynamax"]["token_ids"]) - 1) for s in samples)
    assert sum(s["dynamax"]["degenerate"] for s in samples) == low["degenerate"]["count"]



def test_reuse_keeps_points_with_the_same_settings_and_inputs(mistral_dir, task_files, tmp_path, capsys):
    heads = save_calm_heads(tmp_path / "heads", mistral_dir, exit_layers=(1, 2))
    common = ["--backbone", str(mistral_dir), "--heads", str(heads), "--task", "triviaqa",
              "--data", str(task_files["triviaqa"]), "--reuse"]
    record = tmp_path / "out" / "threshold~0.5" / "record.json"

    def stamp():
        return record.read_bytes(), record.stat().st_mtime_ns

    _run(tmp_path, *common, "--thresholds", "0.5")
    first = stamp()
    _run(tmp_path, *common, "--thresholds", "0.5,0.9", "--threads", "1")  # a new point; threads are not a setting
    assert stamp() == first and (tmp_path / "out" / "threshold~0.9" / "record.json").is_file()
    assert "threshold~0.5: kept" in capsys.readouterr().out

    main(["--out-dir", str(tmp_path / "out"), "--limit", "2", "--max-new-tokens", "6", *common, "--thresholds", "0.5"])
    assert stamp() != first and json.loads(record.read_text())["n_samples"] == 2  # another setting: recomputed
    second = stamp()
    (heads / "heads.safetensors").touch()  # heads newer than the record: recomputed
    main(["--out-dir", str(tmp_path / "out"), "--limit", "2", "--max-new-tokens", "6", *common, "--thresholds", "0.5"])
    assert stamp() != second

def test_thresholds_of_one_job_equal_one_job_each(mistral_dir, task_files, tmp_path):
    """A job's thresholds share each batch's prefill; every point's generations and metrics equal those of a
    job that evaluates that threshold alone."""
    heads = save_calm_heads(tmp_path / "heads", mistral_dir, exit_layers=(1, 2))
    common = ["--backbone", str(mistral_dir), "--heads", str(heads), "--task", "coqa",
              "--data", str(task_files["coqa"]), "--limit", "4", "--max-new-tokens", "6", "--batch-size", "3"]
    thresholds = ["0.3", "0.5", "0.7"]
    main([*common, "--thresholds", ",".join(thresholds), "--out-dir", str(tmp_path / "together")])

    def point(folder, t):
        record = json.loads((tmp_path / folder / f"threshold~{t}" / "record.json").read_text())
        samples = [json.loads(line) for line in (tmp_path / folder / f"threshold~{t}" / "samples.jsonl").open()]
        return record, samples

    exits = set()
    for t in thresholds:
        main([*common, "--thresholds", t, "--out-dir", str(tmp_path / f"alone{t}")])
        (together, shared), (alone, single) = point("together", t), point(f"alone{t}", t)
        assert together["metrics"] == alone["metrics"] and together["exit_histogram"] == alone["exit_histogram"]
        assert [(s["doc_id"], s["dynamax"]["token_ids"], s["dynamax"]["exit_layers"]) for s in shared] == \
               [(s["doc_id"], s["dynamax"]["token_ids"], s["dynamax"]["exit_layers"]) for s in single]
        assert {s["dynamax"]["prefill_shared_by"] for s in single} == {1}
        exits.add(tuple(sorted(together["exit_histogram"])))
    assert {s["dynamax"]["prefill_shared_by"] for s in point("together", "0.3")[1]} == {3}
    assert len(exits) > 1  # the thresholds exit differently: a leak between them would show


def test_series_of_one_job_equal_one_job_each(mistral_dir, task_files, tmp_path):
    """--series: the exit cells, the baseline and the pruning depths of a task in one job, every batch prefilled once:
    each point's record (metrics, tokens, exits, costs, its series' own settings in its provenance) is what a job of
    that series alone writes."""
    heads = save_calm_heads(tmp_path / "heads", mistral_dir, exit_layers=(1, 2))
    task = ["--backbone", str(mistral_dir), "--task", "coqa", "--data", str(task_files["coqa"]), "--limit", "4",
            "--max-new-tokens", "6", "--batch-size", "3"]
    series = {"exits": ["--heads", str(heads), "--thresholds", "0.3,0.6", "--policy", "copy"],
              "baseline": ["--no-heads"], "prune": ["--no-heads", "--prune-series", "1,2"]}
    main([*task, *sum((["--series", shlex.join([*flags, "--out-dir", str(tmp_path / "together" / name)])]
                       for name, flags in series.items()), [])])
    points = 0
    for name, flags in series.items():
        main([*task, *flags, "--out-dir", str(tmp_path / "alone" / name)])
        for record in sorted((tmp_path / "alone" / name).rglob("record.json")):
            other = tmp_path / "together" / record.relative_to(tmp_path / "alone")
            a, b = json.loads(record.read_text()), json.loads(other.read_text())
            for key in ("metrics", "exit_histogram", "cost", "crf_exact", "stop_reasons", "threshold", "prune",
                        "prune_start", "policy"):
                assert a[key] == b[key], (record, key)
            config = {k: v for k, v in a["provenance"]["config"].items() if k != "out_dir"}
            assert config == {k: v for k, v in b["provenance"]["config"].items() if k != "out_dir"}
            sa, sb = ([json.loads(line)["dynamax"] for line in (path.parent / "samples.jsonl").open()]
                      for path in (record, other))
            assert [(s["token_ids"], s["exit_layers"]) for s in sa] == [(s["token_ids"], s["exit_layers"]) for s in sb]
            assert {s["prefill_shared_by"] for s in sb} == {5}  # 2 thresholds + baseline + 2 depths
            points += 1
    assert points == 5


def test_series_flags_go_inside_series(mistral_dir, task_files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--backbone", str(mistral_dir), "--task", "coqa", "--data", str(task_files["coqa"]), "--no-heads",
              "--series", f"--no-heads --out-dir {tmp_path}"])
    assert "inside each --series" in capsys.readouterr().err


def test_baseline_and_pruning_points(mistral_dir, task_files, tmp_path):
    common = ["--backbone", str(mistral_dir), "--no-heads", "--task", "coqa", "--data", str(task_files["coqa"])]
    _run(tmp_path, *common)
    base = json.loads((tmp_path / "out" / "record.json").read_text())
    assert set(base["metrics"]) == {"em", "f1"} and base["threshold"] is None and base["prune"] == 0
    main(["--out-dir", str(tmp_path / "prune"), "--limit", "2", "--max-new-tokens", "4", *common, "--prune-series", "0,2"])
    p0 = json.loads((tmp_path / "prune" / "prune~0" / "record.json").read_text())
    p2 = json.loads((tmp_path / "prune" / "prune~2" / "record.json").read_text())
    assert p0["crf_paper"] == 1.0 and p2["crf_paper"] == pytest.approx(4 / 2)  # 2 of 4 blocks run


def test_angular_pruning_points(mistral_dir, task_files, tmp_path):
    """The dropped blocks are Gromov et al.'s choice on the given text, recorded with each point."""
    import torch
    from transformers import AutoTokenizer

    from workflow_lib.decoding.pruning import angular_distance_start
    from workflow_lib.models.backbone import load_backbone

    text = tmp_path / "valid.txt"
    text.write_text("\n".join(f"Cotton was a white kitten number {i} who lived in a barn." for i in range(20)))
    main(["--out-dir", str(tmp_path / "prune"), "--limit", "2", "--max-new-tokens", "4", "--backbone", str(mistral_dir),
          "--no-heads", "--task", "triviaqa", "--data", str(task_files["triviaqa"]), "--prune-series", "1,2",
          "--prune-rule", "angular", "--angular-text", str(text), "--angular-sequences", "4"])
    model, tok = load_backbone(str(mistral_dir), device="cpu"), AutoTokenizer.from_pretrained(mistral_dir)
    sequences = [torch.tensor([tok(line).input_ids]) for line in text.read_text().splitlines()[:4]]
    for n in (1, 2):
        record = json.loads((tmp_path / "prune" / f"prune_angular~{n}" / "record.json").read_text())
        assert record["prune_rule"] == "angular" and record["prune"] == n
        assert record["prune_start"] == angular_distance_start(model, sequences, n)
        assert record["crf_paper"] == pytest.approx(4 / (4 - n))


@pytest.mark.parametrize("emission", ["last_block", "lens"])
def test_oracle_point(task_files, tmp_path, emission):
    """Blocks 2 and 3 made identities: block 1's top-1 is the full model's, and so is the last block run on h_1, so
    the oracle exits there every step under either rule; the record carries the rule."""
    from transformers import AutoModelForCausalLM

    backbone = save_tiny_backbone(tmp_path / "identity", "tiny-mistral")
    model = AutoModelForCausalLM.from_pretrained(backbone)
    with torch.no_grad():
        for layer in model.model.layers[2:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(backbone)
    common = ["--backbone", str(backbone), "--task", "triviaqa", "--data", str(task_files["triviaqa"])]
    _run(tmp_path, *common, "--oracle", "--exit-layers", "1,2", "--policy", "copy", "--batch-size", "2",
         "--emission", emission)
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["exits_enabled"] and record["oracle_exits"] == [1, 2] and record["policy"] == "copy"
    assert record["emission"] == emission
    assert set(record["exit_histogram"]) == {"1"} and record["n_samples"] == 3
    with pytest.raises(SystemExit):  # exit layers belong to the oracle; heads carry their own
        main(["--out-dir", str(tmp_path / "x"), *common, "--no-heads", "--exit-layers", "1"])


@pytest.mark.parametrize("bad, message", [
    (["--task", "squad"], "invalid choice: 'squad'"),
    (["--data", "/nonexistent/triviaqa.jsonl"], "file not found"),
    (["--thresholds", "0.5,high"], "'high' in '0.5,high' is not a number"),
    (["--thresholds", "0.5,nan"], "not a finite non-negative number"),
    (["--prune-rule", "angular"], "--prune-rule angular needs --prune N or --prune-series"),
    (["--emission", "logit"], "invalid choice: 'logit'"),
    (["--emission", "translator"], "--emission translator needs --translators DIR"),
    (["--translators", "/nonexistent"], "--translators is for --emission translator"),
    (["--emission", "translator", "--translators", "/nonexistent"], "--translators: folder not found"),
])
def test_bad_arguments_are_refused_before_loading(bad, message, task_files, tmp_path, capsys):
    args = {"--backbone": "preset:tiny-mistral", "--task": "triviaqa", "--data": str(task_files["triviaqa"]),
            "--thresholds": "0.5", "--out-dir": str(tmp_path / "out")}
    args.update(dict(zip(bad[::2], bad[1::2])))
    with pytest.raises(SystemExit) as exit_info:
        main([*sum(([k, v] for k, v in args.items()), []), "--heads", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_wrong_data_format_is_refused(task_files, tmp_path):
    with pytest.raises(SystemExit, match="coqa"):
        main(["--backbone", "preset:tiny-mistral", "--no-heads", "--task", "coqa", "--data", str(task_files["triviaqa"]),
              "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_heads_for_another_backbone_are_refused(mistral_dir, task_files, tmp_path):
    from workflow_lib.models.backbone import preset_config
    from workflow_lib.models.heads import build_heads, save_heads

    save_heads(tmp_path / "heads", build_heads("calm", 64, [1], seed=0), preset_config("tiny-mamba2", hidden_size=64))
    with pytest.raises(SystemExit, match="built for backbone"):
        _run(tmp_path, "--backbone", str(mistral_dir), "--heads", str(tmp_path / "heads"), "--task", "triviaqa",
             "--data", str(task_files["triviaqa"]), "--thresholds", "0.5")
    assert not (tmp_path / "out").exists()


def test_records_made_before_the_emission_rule_are_reused_as_last_block():
    """A record whose config predates --emission / --translators was made under last_block: same settings; a record
    under another rule is not."""
    from workflow_lib.evaluation.points import settings

    old = {"backbone": "b", "policy": "copy", "thresholds": [("0.5", 0.5)]}
    new = {**old, "emission": "last_block", "translators": None, "thresholds": [("0.9", 0.9)]}
    assert settings(old) == settings(new)
    assert settings({**new, "emission": "lens"}) != settings(old)
    assert settings({**new, "emission": "translator", "translators": "t"}) != settings({**new, "emission": "translator"})


def test_heads_of_another_emission_rule_are_not_a_points_input(tmp_path):
    """results/heads/B/head~H/emission~lens/ sits inside the last_block heads' folder: retraining it must not make
    the last_block points look out of date."""
    import os

    from workflow_lib.evaluation.points import newest_input

    heads = tmp_path / "head~calm"
    (heads / "emission~lens").mkdir(parents=True)
    (heads / "heads.json").write_text("{}")
    (heads / "emission~lens" / "heads.json").write_text("{}")
    os.utime(heads / "heads.json", (1000, 1000))
    os.utime(heads / "emission~lens" / "heads.json", (5000, 5000))
    assert newest_input(["preset:x", None, str(heads)]) == 1000


def test_answer_prompts_are_the_evaluated_prompts(mistral_dir, task_files, tmp_path):
    """A task given as NAME:DATA without SHOTS (answers, agreement) gets the prompts evaluate builds without --shots:
    the task file's shots (TruthfulQA's 1; the entry points used to give it 0, so the answers the heads and translators
    were fitted on were not to the prompts evaluated)."""
    from workflow_lib.arguments import task_spec
    from workflow_lib.evaluation.tasks import default_shots, task_prompts

    _run(tmp_path, "--backbone", str(mistral_dir), "--no-heads", "--task", "truthfulqa",
         "--data", str(task_files["truthfulqa"]))
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").open()]
    evaluated = [s["arguments"][0][0] for s in sorted(samples, key=lambda s: s["doc_id"])]
    task, data, shots = task_spec(f"truthfulqa:{task_files['truthfulqa']}")
    assert shots == default_shots("truthfulqa") == 1
    assert task_prompts(task, data, shots, 3, None, seed=0) == evaluated  # evaluate's seed: the pipeline's, 0
    assert task_prompts(task, data, 0, 3, None, seed=0) != evaluated  # the primer alone: another prompt
    assert [default_shots(t) for t in ("triviaqa", "coqa")] == [2, 0]


def test_oracle_exits_of_a_gguf_backbone(tmp_path):
    """--oracle without --exit-layers takes the heads' default exits from the backbone's config, read as every entry
    point reads it (models.backbone.load_config): a GGUF file's from its header (it used to be read as a folder's
    config.json, and failed)."""
    from gguf import GGUFWriter

    from workflow_lib.evaluation.points import oracle_exits
    from workflow_lib.models.backbone import default_exit_layers

    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(12)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert oracle_exits(str(path), None) == default_exit_layers(12) == [5, 6, 8, 9]
    assert oracle_exits(str(path), [3, 4]) == [3, 4]
