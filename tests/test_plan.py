"""The pipeline's plan (workflow_lib/pipeline) without Snakemake: every config the pipeline refuses, named by its key
before any job, and what a config resolves to (the grid, paths, flags, records). Milliseconds a case; the wiring
into the rules is tests/test_pipeline.py's."""
import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_lib.data import sampling
from workflow_lib.data.sources import is_local_file
from workflow_lib.pipeline import ConfigError, resolve
from workflow_lib.pipeline.flags import flags, sample_options
from workflow_lib.pipeline.keys import HEAD_KEY, LABEL, ORACLE_KEY, keys_of, number_label
from workflow_lib.training import label_cache, label_sharing

REPO = Path(__file__).resolve().parents[1]


def shipped(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.fixture
def smoke() -> dict:
    return shipped("configs/smoke.yaml")


def saved_folder(path: Path, model_type: str, blocks: int) -> str:
    """A save_pretrained folder as far as the plan reads one: its config.json."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": blocks}))
    return str(path)


def gguf_file(path: Path, arch: str, blocks: int) -> str:
    """A GGUF checkpoint as far as the plan reads one: its header (no tensors)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(blocks)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def real_data(c):
    c.update(world=None, real_data={"corpus": {}, "triviaqa": {}})


def mistral(**changes):
    return lambda c, tmp: c["backbones"]["mistral"].update(
        {k: v(tmp) if callable(v) else v for k, v in changes.items()})


BAD_CONFIGS = [
    # the schema, each key alone
    (lambda c, tmp: c["evaluation"]["thresholds"].append("high"), "evaluation.thresholds[2]", "'high' is not of type"),
    (lambda c, tmp: c["head_training"].update(bogus=1), "head_training",
     "Additional properties are not allowed \\('bogus'"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(policies=["copy"]), "backbones.mamba2.policies[0]",
     "'copy' is not one of"),
    (lambda c, tmp: c["heads"].update(c={"type": "calm", "k": 0}), "heads.c.k", "0 is less than the minimum of 1"),
    (lambda c, tmp: c["heads"].update(c={"type": "calm", "mode": "joint"}), "heads.c.mode", "'joint' is not one of"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(emissions=["logit"]), "backbones.mamba2.emissions[0]", "'logit'"),
    (lambda c, tmp: c.update(translators={"answers_weight": 1}), "translators.answers_weight", "1 is greater than or"),
    (lambda c, tmp: c["heads"].update(calm_answers={"type": "calm", "answers_weight": -0.5}),
     "heads.calm_answers.answers_weight", "-0.5 is less than the minimum of 0"),
    (lambda c, tmp: c.pop("heads"), "(top level)", "'heads' is a required property"),
    # the setup: world or real data, and where each evaluated task's data comes from
    (lambda c, tmp: c.update(world=None), "world", "set exactly one of 'world' \\(embedded setup\\) and 'real_data'"),
    (lambda c, tmp: c.update(real_data={"corpus": {}}), "world", "set exactly one of"),
    (lambda c, tmp: c.update(world=None, real_data={"corpus": {}}), "evaluation.tasks.triviaqa",
     "needs real_data.triviaqa \\(where its data comes from\\)"),
    # calibration on a task not evaluated, or whose every question is evaluated with no pool of its own
    (lambda c, tmp: c["calibration"].update(tasks=["coqa"]), "calibration.tasks",
     "coqa is not among the evaluated evaluation.tasks"),
    (lambda c, tmp: c["evaluation"]["tasks"]["triviaqa"].update(limit=None), "calibration.tasks",
     "triviaqa has no calibration questions: every one of its questions is evaluated"),
    # backbones: made here, a GGUF file, a local folder; exits the backbone does not have
    (lambda c, tmp: real_data(c), "backbones.mistral.model", "'pretrain' needs the synthetic world \\(world: ...\\)"),
    (mistral(arch="qwen2"), "backbones.mistral.arch", "'qwen2' cannot be pretrained here \\(model: pretrain takes mistral"),
    (mistral(model=lambda tmp: str(tmp / "missing")), "backbones.mistral.model", "no save_pretrained folder there"),
    (mistral(model=lambda tmp: saved_folder(tmp / "m", "mamba2", 4)), "backbones.mistral.arch",
     "'mistral' but .*/m holds a 'mamba2' model"),
    (mistral(model=lambda tmp: saved_folder(tmp / "m", "mistral", 4), exit_layers=[1, 3]), "backbones.mistral.exit_layers",
     r"\[1, 3\] for backbone 'mistral' of 4 blocks: each must be a block index in 0..2"),
    (mistral(model=lambda tmp: gguf_file(tmp / "m.gguf", "llama", 4)), "backbones.mistral.arch",
     "'mistral' but .*m.gguf holds a 'llama' model"),
    (mistral(model=lambda tmp: str(tmp / "none.gguf")), "backbones.mistral.model", "GGUF file .*none.gguf does not exist"),
    (mistral(model="package:no_such_package/m.gguf"), "backbones.mistral.model",
     "package 'no_such_package' is not installed"),
    # head specs: unknown type (issue 13: `ffnn` used to fail only in its training job), an option the type's
    # constructor does not take, a training setting on a type with nothing to train, exits the backbone lacks
    (lambda c, tmp: c["heads"].update(x={"type": "ffnn"}), "heads.x.type", "unknown head type 'ffnn'; known: calm, ffn,"),
    (lambda c, tmp: c["heads"].update(m={"type": "mamba", "state_sise": 64}), "heads.m.state_sise",
     "head type 'mamba' takes no option 'state_sise' \\(its options: state_size,"),
    (lambda c, tmp: c["heads"].update(s={"type": "softmax", "steps": 5}), "heads.s.steps",
     "head type 'softmax' is a zero-parameter exit rule, it has nothing to train"),
    (lambda c, tmp: c["heads"].update(c={"type": "calm", "exit_layers": [1, 3]}), "heads.c.exit_layers",
     r"\[1, 3\] for backbone 'mistral' of 4 blocks"),
    # emission rules: a head or policy list for a rule not run, naming no head, or a policy the backbone lacks
    (lambda c, tmp: c["backbones"]["mamba2"].update(emission_heads={"lens": ["calm"]}),
     "backbones.mamba2.emission_heads.lens", "'lens' is not among backbones.mamba2.emissions \\['last_block'\\]"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(emissions=["last_block", "lens"], emission_heads={"lens": ["cal"]}),
     "backbones.mamba2.emission_heads.lens[0]", "no head named 'cal' \\(heads: calm, saturation\\)"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(emission_policies={"translator": ["skip"]}),
     "backbones.mamba2.emission_policies.translator", "'translator' is not among backbones.mamba2.emissions"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(emissions=["last_block", "lens"], emission_policies={"lens": ["copy"]}),
     "backbones.mamba2.emission_policies.lens[0]", "'copy' is not among backbones.mamba2.policies \\['skip'\\]"),
    # figures of heads that do not exist
    (lambda c, tmp: c["analysis"].update(comparisons={"k": ["calm", "calm_k15"]}), "analysis.comparisons.k[1]",
     "no head named 'calm_k15'"),
    # calibrating heads that do not exist
    (lambda c, tmp: c["calibration"].update(heads=["cal"]), "calibration.heads[0]", "no head named 'cal'"),
    (lambda c, tmp: c["calibration"].update(emissions=["lens"]), "calibration.emissions[0]",
     "'lens' is not among the backbones' emissions \\['last_block'\\]"),
    # speculative series: heads the backbone runs under a rule it runs, with no recurrent state; a vocabulary needs answers
    (lambda c, tmp: c["backbones"]["mamba2"].update(speculative={"heads": {"lens": ["calm"]}, "max_draft": [2]}),
     "backbones.mamba2.speculative.heads.lens", "'lens' is not among backbones.mamba2.emissions"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(speculative={"heads": {"last_block": ["cal"]}, "max_draft": [2]}),
     "backbones.mamba2.speculative.heads.last_block[0]", "no head named 'cal'"),
    (lambda c, tmp: (c["heads"].update(m={"type": "mamba"}), c["backbones"]["mamba2"].update(
        speculative={"heads": {"last_block": ["m"]}, "max_draft": [2]})),
     "backbones.mamba2.speculative.heads.last_block[0]", "head type 'mamba' carries a recurrent state"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(speculative={"heads": {"last_block": ["calm"]}, "max_draft": [2],
                                                                 "draft_vocab": 64}),
     "backbones.mamba2.speculative.draft_vocab", "made from the backbone's greedy answers: set answers.tasks"),
    (lambda c, tmp: c["backbones"]["mamba2"].update(speculative={"heads": {"last_block": ["calm"]}, "max_draft": [0]}),
     "backbones.mamba2.speculative.max_draft[0]", "0 is less than the minimum of 1"),
    # answer prompts of a task not evaluated, or where the world has none to spare
    (lambda c, tmp: c.update(answers={"tasks": ["coqa"]}), "answers.tasks", "coqa is not among evaluation.tasks"),
    (lambda c, tmp: c.update(answers={"tasks": ["triviaqa"]}), "answers.tasks",
     "triviaqa has no held-out prompts in the world: every one of its questions is about a held-out fact"),
]


@pytest.mark.parametrize("edit, key, problem", BAD_CONFIGS, ids=[f"{i}:{case[1]}" for i, case in enumerate(BAD_CONFIGS)])
def test_bad_config_raises_one_error_naming_the_key(smoke, tmp_path, edit, key, problem):
    edit(smoke, tmp_path)
    with pytest.raises(ConfigError) as refused:
        resolve(smoke)
    assert refused.value.key == key
    assert str(refused.value).startswith(f"invalid config: {key}: ")
    assert re.search(problem, refused.value.problem), refused.value.problem


def test_good_local_and_gguf_backbones_resolve_with_their_depth(smoke, tmp_path):
    smoke["backbones"]["mistral"].update(model=gguf_file(tmp_path / "m.gguf", "llama", 6), arch="llama",
                                         exit_layers=[4])
    smoke["backbones"]["mamba2"].update(model=saved_folder(tmp_path / "m", "mamba2", 5))
    plan = resolve(smoke)
    assert plan.depth == {"mistral": 6, "mamba2": 5} and plan.gguf_backbones == ["mistral"]
    assert plan.paths.backbone_path("mistral") == "results/backbones/mistral"  # converted here, once
    assert plan.paths.backbone_path("mamba2") == str(tmp_path / "m") and plan.paths.backbone_input("mamba2") == []
    assert plan.flags.tokenizer("mistral") == plan.flags.tokenizer("mamba2") == ""  # their own tokenizers
    hub = resolve({**smoke, "backbones": {"mistral": {**smoke["backbones"]["mistral"], "model": "org/name"}}})
    assert hub.depth == {}  # a hub id's depth is checked by its jobs once it loads


def test_schema_defaults_filled_and_the_given_config_untouched(smoke):
    given = copy.deepcopy(smoke)
    plan = resolve(smoke)
    assert smoke == given
    assert plan.analysis["formats"] == ["png", "pdf"] and plan.answers == {"tasks": [], "prompts": 64, "tokens": 32}
    assert plan.backbones["mistral"]["emissions"] == ["last_block"] and plan.config["seed"] == 0
    assert plan.head_specs["calm"]["training"]["label_source"] == "emitted"  # head_training's default
    assert plan.calibrated_tasks == ["triviaqa"] and plan.separate_pools == ["coqa"]


def test_default_plan_heads_keys_policies_and_records():
    plan = resolve(shipped("config.yaml"))
    assert plan.untrained_heads == ["softmax", "saturation"] and plan.trained_heads == ["calm", "ffn", "mamba"]
    assert plan.head_keys("mistral") == ["calm", "ffn", "mamba", "softmax", "saturation", "calm/emission~translator"]
    assert plan.policies_under("mistral", "translator") == ["recompute"]
    assert plan.policies_under("mamba2", "last_block") == ["recompute", "skip"]
    translator = {re.match(r"results/eval/(\w+)/(head~\w+|oracle)/emission~translator/policy~(\w+)/task~(\w+)", r).groups()
                  for r in plan.records.exits() + plan.records.oracle() if "emission~translator" in r}
    assert translator == {(b, what, "recompute", t) for b in ("mistral", "mamba2") for what in ("head~calm", "oracle")
                          for t in ("triviaqa", "coqa", "truthfulqa")}
    # every exit cell of every task, 8 thresholds each
    cells = [(b, k, p) for b, k, p in plan.cells()]
    assert len(plan.records.exits()) == len(cells) * 3 * 8 and len(cells) == 5 * 3 + 5 * 2 + 2
    # one speculative point per backbone and task (calm under the translator, recompute, max_draft 4, threshold 0.9)
    assert plan.records.speculative() == [
        f"results/eval/{b}/head~calm/emission~translator/policy~recompute/speculative~4/task~{t}/threshold~0.9/"
        "record.json" for b in ("mistral", "mamba2") for t in ("triviaqa", "coqa", "truthfulqa")]
    assert len(plan.records.all()) == 765 + 6 and len(plan.records.figures()) == 2 * 3 * 2


def test_two_evaluation_jobs_per_backbone_and_task_run_every_series(smoke):
    """A backbone's evaluation of a task is two jobs: `heads` (every exit cell's thresholds and the speculative series,
    reading the heads) and `reference` (the baseline, the oracle per rule and policy, each pruning depth of both
    rules, reading no head); together every record once; each command holds one --series per series, with the flags
    a job of that series alone would take."""
    smoke["backbones"]["mamba2"].update(speculative={"heads": {"last_block": ["calm"]}, "max_draft": [2, 4],
                                                     "thresholds": [0.5]})
    plan = resolve(smoke)
    cells = [c for c in plan.cells(["mamba2"])]
    speculative = list(plan.speculative_cells(["mamba2"]))
    assert speculative == [("mamba2", "calm", "skip", 2), ("mamba2", "calm", "skip", 4)]
    heads, reference = (plan.records.evaluated("mamba2", "{task}", part) for part in ("heads", "reference"))
    prune = 2 * len(plan.backbones["mamba2"]["prune"])
    oracle = len(plan.records.oracle(["mamba2"], ["t"]))
    assert len(heads) == len(cells) * len(plan.thresholds) + 2
    assert len(reference) == 1 + oracle + prune
    assert "results/eval/mamba2/head~calm/policy~skip/speculative~4/task~{task}/threshold~0.5/record.json" in heads
    assert not set(heads) & set(reference)
    every = {r.replace("{task}", t) for r in heads + reference for t in plan.tasks}
    assert every == {r for r in plan.records.all() if "/mamba2/" in r and "/calibrated~" not in r}
    series = {part: shlex.split(plan.flags.series("mamba2", "coqa", part)) for part in ("heads", "reference")}
    assert series["heads"][::2] == ["--series"] * (len(cells) + 2)
    assert series["reference"][::2] == ["--series"] * (1 + oracle + prune)
    assert "--heads results/heads/mamba2/head~calm --policy skip --thresholds 0.5 --max-draft 4 " \
           "--out-dir results/eval/mamba2/head~calm/policy~skip/speculative~4/task~coqa" in series["heads"]
    assert "--no-heads --out-dir results/eval/mamba2/baseline/task~coqa" in series["reference"]
    inputs = {part: plan.paths.task_inputs_all("mamba2", "coqa", part) for part in ("heads", "reference")}
    assert inputs["heads"]["heads"] == [f"results/heads/mamba2/head~{h}/heads.json" for h in ("calm", "saturation")]
    assert inputs["heads"]["draft_vocab"] == [] and "angular_text" not in inputs["heads"]
    assert "heads" not in inputs["reference"] and inputs["reference"]["angular_text"] == [
        "results/world/corpus_valid.jsonl"]


def test_a_task_not_evaluated_here_still_sets_its_answer_prompts():
    """configs/real-small.yaml evaluates TriviaQA and TruthfulQA; CoQA (evaluate: false) still gives answer prompts,
    drawn clear of the stories configs/real-small-extra.yaml evaluates. Merged, the extra config evaluates CoQA too
    and builds every upstream file with the same flags, so nothing upstream reruns."""
    main = shipped("configs/real-small.yaml")
    extra = copy.deepcopy(main)
    extra["evaluation"]["tasks"]["coqa"].update(shipped("configs/real-small-extra.yaml")["evaluation"]["tasks"]["coqa"])
    alone, merged = resolve(main), resolve(extra)
    assert alone.tasks == ["triviaqa", "truthfulqa"] and merged.tasks == ["triviaqa", "coqa", "truthfulqa"]
    assert alone.answer_tasks == merged.answer_tasks == ["triviaqa", "coqa", "truthfulqa"]
    assert alone.flags.task_options(["coqa"], alone.paths.answer_prompts_file) == \
        merged.flags.task_options(["coqa"], merged.paths.answer_prompts_file)
    assert alone.task_setting("coqa", "limit") == merged.task_setting("coqa", "limit") == 200
    assert not [r for r in alone.records.all() if "task~coqa" in r]
    assert set(alone.records.all()) < set(merged.records.all())
    main["calibration"]["tasks"] = ["coqa"]
    with pytest.raises(ConfigError, match="coqa is not among the evaluated evaluation.tasks"):
        resolve(main)
    for task in main["evaluation"]["tasks"].values():
        task["evaluate"] = False
    with pytest.raises(ConfigError, match="every task says evaluate: false"):
        resolve(main)


def test_calibration_of_some_heads_only():
    config = shipped("config.yaml")
    every = resolve(config).records.calibrated()
    config["calibration"]["heads"] = ["calm"]
    calm = resolve(config).records.calibrated()
    assert calm and set(calm) < set(every) and all("/head~calm/" in r for r in calm)
    assert {r for r in every if "/head~calm/" in r} == set(calm)  # under both rules, every policy
    config["calibration"]["emissions"] = ["translator"]
    translator = resolve(config).records.calibrated()
    assert translator and set(translator) < set(calm) and all("/emission~translator/" in r for r in translator)
    assert {r for r in calm if "/emission~translator/" in r} == set(translator)  # every policy, task and delta


def test_head_keys_paths_and_flags():
    plan = resolve(shipped("config.yaml"))
    key = "calm/emission~translator"
    assert plan.paths.heads_dir("mamba2", key) == "results/heads/mamba2/head~calm/emission~translator"
    assert plan.flags.emission("mamba2", "translator") == "--emission translator --translators results/translators/mamba2"
    assert plan.flags.emission("mamba2", "last_block") == ""
    assert plan.paths.translators_input("mamba2", "lens") == []
    assert plan.flags.exit_layers("mamba2", key) == "" and plan.exit_layers("mamba2") is None
    assert plan.flags.evaluate("mistral", "triviaqa") == (
        "--backbone results/backbones/mistral --task triviaqa --data results/world/triviaqa.jsonl --tokenizer "
        "results/tokenizer --fewshot-data results/world/triviaqa_train.jsonl --batch-size 32 --degenerate-limit 0.5 "
        "--max-new-tokens 32 --seed 0 --shots 2")
    assert plan.flags.prune("prune_angular") == "--prune-rule angular --angular-text results/world/corpus_valid.jsonl"
    assert plan.flags.prune("prune") == "--prune-rule deepest"
    assert plan.paths.calibration_pool("coqa") == "results/calibration/pool/coqa.jsonl"
    assert plan.paths.calibration_pool("triviaqa") == "results/world/triviaqa.jsonl"  # its questions beyond a limit
    assert re.fullmatch(HEAD_KEY, key) and re.fullmatch(ORACLE_KEY, "oracle/emission~lens")
    assert not re.fullmatch(HEAD_KEY, "calm/emission~last_block")  # the default rule has no folder of its own
    assert not re.fullmatch(keys_of([]), "calm") and re.fullmatch(keys_of(["a.b"]), "a.b/emission~lens")


def test_flags_sorted_and_absent_values_left_out():
    assert flags({"qa_per_doc": [3, 8], "n_people": 200, "class_balance": True, "x": None, "y": False}) == (
        "--class-balance --n-people 200 --qa-per-doc 3 8")
    assert flags({"data": "a b"}) == "--data 'a b'"
    assert sample_options({"source": "s", "config": None}) == "--config '' --source s"


@pytest.mark.parametrize("value, label", [(1e-05, "0.00001"), (0.4, "0.4"), (1, "1"), (0, "0"), (0.95, "0.95"),
                                          (0.1 + 0.2, "0.30000000000000004"), (2.5e-07, "0.00000025")])
def test_number_labels_are_positional_and_round_trip(value, label):
    """A threshold or delta's folder: threshold~1e-05 broke the folder's form ([0-9.]+, what analysis reads back);
    format(v, 'g') gave it, and two thresholds 6 significant digits apart one folder."""
    assert number_label(value) == label and re.fullmatch(LABEL, label) and float(label) == value


def test_tiny_thresholds_and_deltas_in_paths_and_commands(smoke):
    smoke["evaluation"]["thresholds"] = [1e-05, 0.5]
    smoke["calibration"].update(thresholds=[0.9, 1e-05], deltas=[5e-05])
    plan = resolve(smoke)
    assert plan.thresholds == ["0.00001", "0.5"] and plan.deltas == ["0.00005"]
    numbers = [re.search(r"/(threshold|calibrated)~([^/]+)/", r).group(2)
               for r in plan.records.exits() + plan.records.calibrated()]
    assert numbers and all(re.fullmatch(LABEL, n) for n in numbers) and "0.00001" in numbers
    assert "--deltas 0.00005" in plan.flags.calibrate_options()
    assert "--thresholds 0.9,0.00001" in plan.flags.calibrate_options()


def test_label_cache_rule_is_the_one_the_cache_reader_checks():
    """A head job trains on the stored labels when it keeps the backbone's exits and the shared settings, reads no more
    text than the cache, and trains on answers only where the cache labels them (training/label_sharing.py)."""
    assert label_cache.SHARED_SETTINGS is label_sharing.SHARED_SETTINGS
    cache = {"label_source": "emitted", "seq_len": 128, "steps": 300, "batch_size": 16, "answers_weight": 0.5}
    spec = {**cache, "exit_layers": None, "k": 15}
    reads = label_sharing.reads_label_cache
    assert reads(spec, cache, answers=True)
    assert not reads({**spec, "exit_layers": [1]}, cache, answers=False)
    assert not reads({**spec, "seq_len": 64}, cache, answers=False)
    assert not reads({**spec, "label_source": "lens"}, cache, answers=False)
    assert not reads({**spec, "steps": 301}, cache, answers=False) and reads({**spec, "steps": 600, "batch_size": 8},
                                                                              cache, answers=False)
    assert not reads(spec, {**cache, "answers_weight": 0}, answers=True)  # the cache holds no answers' labels
    assert reads(spec, {**cache, "answers_weight": 0}, answers=False) and reads({**spec, "answers_weight": 0},
                                                                                {**cache, "answers_weight": 0}, True)


def test_label_cache_paths_of_a_plan(smoke):
    smoke["heads"].update(calm_long={"type": "calm", "seq_len": 32})
    plan = resolve(smoke)
    assert plan.paths.label_cache_input("mistral", "calm") == [
        "results/labels/mistral/emission~last_block/labels.safetensors"]
    assert plan.paths.label_cache_input("mistral", "calm_long") == []  # labels its own batches
    assert plan.flags.label_cache_options() == "--batch-size 8 --label-source emitted --seq-len 64 --train-tokens 5120"


def test_one_local_file_rule_for_the_sampler_and_the_plan(tmp_path, smoke):
    assert sampling.is_local_file is is_local_file
    (tmp_path / "data").write_text("x")
    assert is_local_file("q.jsonl") and is_local_file(str(tmp_path / "data")) and not is_local_file("org/name")
    config = shipped("configs/paper.yaml")
    config["real_data"].update(coqa={"source": "coqa.json"})
    with pytest.raises(ConfigError, match="calibration.tasks: coqa has no calibration questions"):
        resolve(config)  # a local file has no train split to calibrate on, and every question is evaluated
    config["calibration"]["tasks"] = ["triviaqa"]
    real = resolve(config)
    assert real.separate_pools == ["triviaqa"]
    assert real.paths.calibration_pool("triviaqa") == "results/data/calibration_pool/triviaqa.jsonl"


def test_answer_tasks_prompts_pools_and_flags():
    config = shipped("configs/paper.yaml")
    config["answers"] = {"tasks": ["triviaqa", "truthfulqa"], "prompts": 8}
    config["calibration"]["tasks"] = ["triviaqa"]
    plan = resolve(config)
    assert plan.held_out_pool_n("triviaqa") == 500 + 8 + 100  # calibration set, prompts, few-shot examples
    assert plan.paths.answers_pool("truthfulqa") == "results/data/answers_pool/truthfulqa.jsonl"
    assert plan.paths.answers_pool("triviaqa") == "results/data/calibration_pool/triviaqa.jsonl"
    assert plan.flags.answers("mistral", 0.5) == "--answers results/answers/mistral/answers.safetensors --answers-weight 0.5"
    assert plan.flags.answers("mistral", 0) == "" and plan.paths.answers_input("mistral", 0) == []
    assert plan.flags.task_options(plan.answer_tasks, plan.paths.answer_prompts_file) == (
        "--task triviaqa:results/answers/prompts/triviaqa.jsonl:2 "
        "--task truthfulqa:results/answers/prompts/truthfulqa.jsonl:1")
    assert plan.flags.fewshot(plan.answer_tasks) == "--fewshot-data results/data/triviaqa_train.jsonl"
    assert plan.flags.prompts(["truthfulqa"], plan.paths.task_file) == "--task truthfulqa:results/data/truthfulqa.jsonl:1"


def test_plan_imports_neither_torch_nor_snakemake():
    code = ("import sys, yaml; from workflow_lib.pipeline import resolve; "
            "resolve(yaml.safe_load(open('config.yaml'))).records.all(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'snakemake', 'transformers', 'datasets')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
