"""The `dynamax` lm-eval model: registered beside the built-ins, equal to lm-eval's `hf` model with exits
disabled (generations, metrics, loglikelihoods), and actually exiting early with heads and a low threshold."""
import lm_eval
import pytest
from eval_setup import save_calm_heads, save_tiny_backbone, saved_backbone, task_files, task_metadata  # noqa: F401  (fixtures)
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

from workflow_lib.evaluation.lm_model import DynamaxLM
from workflow_lib.evaluation.tasks import TASK_DIR, TASKS

ALL_TASKS = [name for name, _ in TASKS.values()]


def test_registered_beside_builtin_models():
    assert get_model("dynamax") is DynamaxLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours did not hide lm-eval's own


def _evaluate(model, model_args, files):
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=task_metadata(files))
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=ALL_TASKS, task_manager=tm,
                                   limit=2, gen_kwargs="max_gen_toks=6", log_samples=True)


def test_exits_disabled_equals_hf(saved_backbone, task_files):
    ours = _evaluate("dynamax", {"backbone": str(saved_backbone), "device": "cpu"}, task_files)
    ref = _evaluate("hf", {"pretrained": str(saved_backbone), "device": "cpu", "dtype": "float32"}, task_files)
    for task in ALL_TASKS:
        assert ours["results"][task] == ref["results"][task]
        assert [s["resps"] for s in ours["samples"][task]] == [s["resps"] for s in ref["samples"][task]]
        assert [s["arguments"] for s in ours["samples"][task]] == [s["arguments"] for s in ref["samples"][task]]
        assert all(s["resps"][0][0] for s in ours["samples"][task])  # something was generated to compare


def _ll_requests():
    pairs = [("Question: Who painted the old tower?\nAnswer:", " Mira Holt"), ("Cotton was a", " white kitten")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def test_loglikelihood_full_and_pruned(saved_backbone):
    from lm_eval.models.huggingface import HFLM

    ours = DynamaxLM(backbone=str(saved_backbone), device="cpu")
    ref = HFLM(pretrained=str(saved_backbone), device="cpu", dtype="float32")
    full = [ll for ll, _ in ours.loglikelihood(_ll_requests())]
    assert full == pytest.approx([ll for ll, _ in ref.loglikelihood(_ll_requests())], abs=1e-4)
    rolling = [Instance("loglikelihood_rolling", {}, ("Cotton was a white kitten.",), 0)]
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(ref.loglikelihood_rolling(rolling), abs=1e-4)
    ours.add_series("pruned", prune=1)
    ours.set_point(2.0, "pruned")
    pruned = [ll for ll, _ in ours.loglikelihood(_ll_requests())]
    assert all(abs(a - b) > 1e-3 for a, b in zip(pruned, full))  # the pruned model scores differently


def test_heads_exit_early_and_threshold_moves_the_point(saved_backbone, task_files, tmp_path):
    heads = save_calm_heads(tmp_path / "heads", saved_backbone, exit_layers=(1, 2))
    lm = DynamaxLM(backbone=str(saved_backbone), heads=str(heads), threshold=0.0, device="cpu")
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=task_metadata(task_files))
    lm_eval.simple_evaluate(model=lm, tasks=["dynamax_triviaqa"], task_manager=tm, limit=2,
                            gen_kwargs="max_gen_toks=5")
    assert len(lm.generations) == 2
    for g in lm.generations:  # p_exit >= 0 always: every decode step stops at the first exit
        assert g["exit_layers"][1:] == [1] * (len(g["token_ids"]) - 1)
        assert g["crf_paper"] > 1.0 and g["crf_exact"] > 1.0
    lm.set_point(2.0)  # threshold above 1: exits disabled, same model object
    assert lm.generations == [] and not lm.decoder.exits_enabled
    lm_eval.simple_evaluate(model=lm, tasks=["dynamax_triviaqa"], task_manager=tm, limit=2,
                            gen_kwargs="max_gen_toks=5")
    assert all(set(g["exit_layers"]) == {3} and g["crf_exact"] == 1.0 for g in lm.generations)


def test_batched_generation_equals_batch_size_1(saved_backbone, task_files, tmp_path):
    """batch_size covers generation: every task's answers and statistics equal batch size 1's, one entry per request
    in the request order, each naming its batch."""
    heads = save_calm_heads(tmp_path / "heads", saved_backbone, exit_layers=(1, 2))
    runs = {}
    for batch_size in (1, 3):
        lm = DynamaxLM(backbone=str(saved_backbone), heads=str(heads), threshold=0.5, device="cpu",
                       batch_size=batch_size)
        out = _evaluate(lm, None, task_files)
        runs[batch_size] = (out, lm.generations)
    (ref, ref_gens), (got, got_gens) = runs[1], runs[3]
    for task in ALL_TASKS:
        assert [s["resps"] for s in got["samples"][task]] == [s["resps"] for s in ref["samples"][task]]
        assert got["results"][task] == ref["results"][task]
    keys = ("task", "doc_id", "prompt_tokens", "token_ids", "exit_layers", "stop_reason", "costs")
    assert [[g[k] for k in keys] for g in got_gens] == [[g[k] for k in keys] for g in ref_gens]
    assert {g["batch_size"] for g in ref_gens} == {1} and max(g["batch_size"] for g in got_gens) == 2
    assert len({g["batch_id"] for g in got_gens}) < len(got_gens)  # rows shared batches
    assert any(len(set(g["exit_layers"][1:])) > 1 for g in got_gens)  # heads that do not all agree


def test_heads_for_another_backbone_are_refused(saved_backbone, tmp_path):
    from workflow_lib.models.backbone import preset_config
    from workflow_lib.models.heads import build_heads, save_heads

    other = preset_config("tiny-mistral", vocab_size=512, hidden_size=64, num_hidden_layers=6)
    save_heads(tmp_path / "heads", build_heads("calm", 64, [3], seed=0), other)
    with pytest.raises(ValueError, match="built for backbone"):
        DynamaxLM(backbone=str(saved_backbone), heads=str(tmp_path / "heads"), threshold=0.5, device="cpu")


def test_lm_eval_command_line(task_files, tmp_path):
    """lm-eval's own CLI, through the project's wrapper: --model dynamax resolves, the tasks are found.
    One backbone only: the CLI indexes all of lm-eval's built-in tasks (~10 s)."""
    import json
    import subprocess
    import sys

    saved_backbone = save_tiny_backbone(tmp_path / "backbone", "tiny-mistral")
    meta = json.dumps({"triviaqa_file": str(task_files["triviaqa"])})
    cmd = [sys.executable, "-m", "workflow_lib.cli.lm_eval_cli", "--model", "dynamax",
           "--model_args", f"backbone={saved_backbone},threshold=0.4,policy=recompute,prune=0",
           "--tasks", "dynamax_triviaqa", "--metadata", meta, "--limit", "1", "--gen_kwargs", "max_gen_toks=3",
           "--output_path", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert "exact_match,remove_whitespace" in results["results"]["dynamax_triviaqa"]
    assert results["config"]["model"] == "dynamax"


def test_translator_emission_from_model_args(saved_backbone, task_files, tmp_path):
    """emission=translator,translators=DIR in model_args: every decode step exits at the first exit and pays one
    translation; translators lacking an exit layer, or missing, are refused when the model is built."""
    from transformers import AutoConfig

    from workflow_lib.models.translators import Translators, save_translators

    heads = save_calm_heads(tmp_path / "heads", saved_backbone, exit_layers=(1, 2))
    config = AutoConfig.from_pretrained(saved_backbone)
    save_translators(tmp_path / "tr", Translators(config.hidden_size, [1, 2]), config)
    save_translators(tmp_path / "tr1", Translators(config.hidden_size, [1]), config)
    lm = get_model("dynamax").create_from_arg_string(
        f"backbone={saved_backbone},heads={heads},threshold=0.0,emission=translator,translators={tmp_path / 'tr'}",
        {"device": "cpu"})
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata=task_metadata(task_files))
    lm_eval.simple_evaluate(model=lm, tasks=["dynamax_triviaqa"], task_manager=tm, limit=2, gen_kwargs="max_gen_toks=4")
    assert lm.get_model_info()["emission"] == "translator"
    for g in lm.generations:
        assert g["exit_layers"][1:] == [1] * (len(g["token_ids"]) - 1) and g["crf_exact"] > 1.0
    with pytest.raises(ValueError, match=r"no translator for exit layer\(s\) \[2\]"):
        DynamaxLM(backbone=str(saved_backbone), heads=str(heads), threshold=0.5, device="cpu", emission="translator",
                  translators=str(tmp_path / "tr1"))
    with pytest.raises(ValueError, match="needs translators"):
        DynamaxLM(backbone=str(saved_backbone), heads=str(heads), threshold=0.5, device="cpu", emission="translator")


def test_warm_up_runs_the_batched_path_it_times(saved_backbone):
    """The untimed warm-up decodes a batch of `batch_size` rows, as the grid points it warms up for do (it used to
    warm batch size 1 only, a path evaluation never times)."""
    lm = DynamaxLM(backbone=str(saved_backbone), device="cpu", batch_size=4)
    rows = []
    hook = lm.model.lm_head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        lm.warm_up(new_tokens=3)
    finally:
        hook.remove()
    assert rows and max(rows) == 4
