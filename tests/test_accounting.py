"""Compute accounting against numbers derived by hand from the real 7B configs (docs/accounting.md)."""
from fractions import Fraction

import pytest

from workflow_lib.decoding.accounting import CostModel, TokenCost, crf_exact, crf_paper, summarize
from workflow_lib.models.backbone import preset_config

# Mistral-7B-v0.3: d 4096, 32 query heads and 8 K/V heads of 128, MLP 14336, 32 layers, vocab 32768.
MISTRAL_LINEAR = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336  # q, k+v, o, gate/up/down
MISTRAL_ATTN_PER_POS = 2 * 32 * 128  # q.k and p.v for each of the 32 query heads
# Mamba-Codestral-7B: d 4096, inner 8192, 8 groups of state 128, 128 heads, kernel 4, 64 layers, vocab 32768.
CODESTRAL_CONV_DIM = 8192 + 2 * 8 * 128  # x, B, C
CODESTRAL_STATE_IN_PROJ = 4096 * (CODESTRAL_CONV_DIM + 128)  # x, B, C, dt rows of in_proj
CODESTRAL_CONV = CODESTRAL_CONV_DIM * 4
CODESTRAL_SSM_UPDATE = 2 * 8192 * 128
# SmolLM2-135M-Instruct (Llama): d 576, 9 query heads and 3 K/V heads of 64, MLP 1536, 30 layers, vocab 49152, tied
# embeddings (the LM head product still runs), no sliding window (attention over the whole context), no biases.
SMOL_LINEAR = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536  # q, k+v, o, gate/up/down = 3,538,944
SMOL_ATTN_PER_POS = 2 * 9 * 64  # 1152
SMOL_LM_HEAD = 576 * 49152  # 28,311,552: 8 blocks' worth
CODESTRAL_BLOCK = (4096 * 8192 + CODESTRAL_STATE_IN_PROJ + CODESTRAL_CONV + CODESTRAL_SSM_UPDATE
                   + 8192 * 128 + 8192 + 4 * 8192 + 8192 * 4096)  # gate rows, ..., readout, D, gated norm, out_proj


@pytest.fixture(scope="module")
def mistral():
    return CostModel(preset_config("mistral-7b-v0.3"))


@pytest.fixture(scope="module")
def codestral():
    return CostModel(preset_config("mamba-codestral-7b-v0.1"))


def test_mistral_block_and_token(mistral):
    assert mistral.block_macs(1) == MISTRAL_LINEAR + MISTRAL_ATTN_PER_POS
    assert mistral.block_macs(1000) - mistral.block_macs(1) == 999 * MISTRAL_ATTN_PER_POS  # attention grows with context
    assert mistral.full_token_macs(100) == 32 * (MISTRAL_LINEAR + 100 * MISTRAL_ATTN_PER_POS) + 4096 * 32768


def test_smollm2_block_token_and_recompute():
    smol = CostModel(preset_config("smollm2-135m"))
    assert SMOL_LINEAR == 3_538_944 and SMOL_LM_HEAD == 28_311_552  # the hand sums above
    assert smol.block_macs(1) == 3_538_944 + 1152
    assert smol.block_macs(10_000) == 3_538_944 + 10_000 * 1152  # no sliding window: the whole context, always
    assert smol.full_token_macs(100) == 30 * (3_538_944 + 100 * 1152) + 28_311_552
    assert smol.recompute_macs("recompute") == 2 * 576 * 192 == 221_184  # 3 K/V heads of 64 (GQA), 1/16 of a block
    assert Fraction(smol.recompute_macs("recompute"), SMOL_LINEAR) == Fraction(1, 16)
    cost = smol.token_cost(14, 100, "recompute", head_macs=[576 * 2])
    assert cost.macs_spent == 16 * smol.block_macs(100) + 14 * 221_184 + 1152 + 28_311_552  # blocks 0..14 and 29
    assert cost.blocks_spent_paper == pytest.approx(16 + 14 / 6)


def test_qwen2_biases_are_not_macs_and_a_sliding_window_caps_attention():
    from transformers import Qwen2Config

    shape = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152)
    qwen2 = CostModel(Qwen2Config(**shape))  # q/k/v biases: adds, not MACs
    assert qwen2.block_macs(1000) == CostModel(preset_config("smollm2-135m")).block_macs(1000)
    with pytest.raises(ValueError, match="blocks mix attention types"):  # per-block windows: refused, not miscounted
        CostModel(Qwen2Config(**shape, use_sliding_window=True, max_window_layers=10))
    config = preset_config("tiny-mistral")
    config.sliding_window = 64
    windowed = CostModel(config)
    assert windowed.block_macs(1000) == windowed.block_macs(64) > windowed.block_macs(63)


def test_mistral_kv_projections_are_one_26th_of_a_block(mistral):
    # 2*1024 / (4096 + 2048 + 4096 + 3*14336) = 2048 / 53248 = 1/26 exactly for the linear layers;
    # attention over the context makes the block slightly bigger, so the share slightly smaller.
    assert Fraction(mistral.recompute_macs("recompute"), MISTRAL_LINEAR) == Fraction(1, 26)
    assert mistral.recompute_macs("recompute") / mistral.block_macs(1) == pytest.approx(1 / 26, rel=1e-3)
    assert mistral.recompute_macs("copy") == mistral.recompute_macs("copy_prev") == 0


def test_codestral_block_and_recompute(codestral):
    assert codestral.block_macs(1) == codestral.block_macs(5000) == CODESTRAL_BLOCK  # no attention: context-free
    recompute = codestral.recompute_macs("recompute")
    assert recompute == CODESTRAL_STATE_IN_PROJ + CODESTRAL_CONV + CODESTRAL_SSM_UPDATE
    # Only the in_proj rows that feed the state are needed: ~0.40 of a block. The estimate "about 0.7" is what
    # the whole in_proj (gate rows too) + conv + SSM update costs.
    assert recompute / CODESTRAL_BLOCK == pytest.approx(0.3954, abs=1e-4)
    whole_in_proj = recompute + 4096 * 8192
    assert whole_in_proj / CODESTRAL_BLOCK == pytest.approx(0.693, abs=1e-3)
    assert codestral.recompute_macs("skip") == 0


def test_paper_count_skips_blocks_after_the_exit(mistral, codestral):
    cost = mistral.token_cost(15, 10, "recompute", head_macs=[])
    assert cost.blocks_spent_paper == pytest.approx(17 + 15 / 6)  # blocks 0..15 and 31 run; the 15 blocks 16..30 skipped
    assert cost.blocks_full_paper == 32
    assert mistral.token_cost(15, 10, "copy", head_macs=[]).blocks_spent_paper == 17
    assert codestral.token_cost(40, 10, "recompute", []).blocks_spent_paper == pytest.approx(42 + 22 * 9 / 26)
    assert codestral.token_cost(40, 10, "skip", []).blocks_spent_paper == 42
    assert crf_paper([mistral.token_cost(15, 10, "copy", [])]) == pytest.approx(32 / 17)


def test_lens_and_translator_skip_the_last_block_too(mistral, codestral):
    """Under lens / translator an exit at e skips n-1-e blocks (the last included), the policy's recompute covers
    them, a translation costs one d x d product; full-depth tokens cost what they cost under last_block."""
    block = mistral.block_macs(10)
    kv = 2 * 4096 * 1024
    heads = [4096 * 2, 4096 * 2]
    lens = mistral.token_cost(15, 10, "recompute", heads, 0, "lens")
    assert lens.macs_spent == 16 * block + 16 * kv + 2 * 4096 * 2 + 4096 * 32768  # blocks 0..15 run, 16..31 filled
    assert lens.blocks_spent_paper == pytest.approx(16 + 16 / 6)
    translator = mistral.token_cost(15, 10, "recompute", heads, 0, "translator", 1)
    assert translator.macs_spent == lens.macs_spent + 4096 * 4096
    assert translator.blocks_spent_paper == lens.blocks_spent_paper  # the paper count ignores heads and translators
    assert mistral.token_cost(15, 10, "copy", [], 0, "lens").blocks_spent_paper == 16
    assert codestral.token_cost(40, 10, "recompute", [], 0, "lens").blocks_spent_paper == pytest.approx(41 + 23 * 9 / 26)
    assert codestral.token_cost(40, 10, "skip", [], 0, "translator", 1).macs_spent == (
        41 * CODESTRAL_BLOCK + 4096 * 4096 + 4096 * 32768)
    for emission in ("lens", "translator"):  # a full-depth token: every block runs, no translation
        assert mistral.token_cost(31, 10, "recompute", heads, 0, emission) == mistral.token_cost(31, 10, "recompute", heads)
    # pruned: 8 blocks dropped before the last; an exit at 15 skips the 8 kept blocks 16..23 and the last
    pruned = mistral.token_cost(15, 10, "recompute", [], 8, "lens")
    assert pruned.macs_spent == 16 * block + 8 * kv + 4096 * 32768 and pruned.blocks_spent_paper == pytest.approx(16 + 8 / 6)
    for call, message in [(lambda: mistral.token_cost(15, 10, "copy", [], 0, "logit"), "unknown emission rule"),
                          (lambda: mistral.token_cost(15, 10, "copy", [], 0, "lens", 1), "do not fit the 'lens'")]:
        with pytest.raises(ValueError, match=message):
            call()


def test_exact_count_of_an_exit(mistral):
    heads = [4096 * 2, 4096 * 2]  # two calm heads evaluated before exiting
    cost = mistral.token_cost(15, 10, "recompute", head_macs=heads)
    block = mistral.block_macs(10)
    assert cost.macs_spent == 17 * block + 15 * 2 * 4096 * 1024 + 2 * 4096 * 2 + 4096 * 32768
    assert cost.macs_full == mistral.full_token_macs(10)
    copy = mistral.token_cost(15, 10, "copy", head_macs=heads)
    assert copy.macs_spent == cost.macs_spent - 15 * 2 * 4096 * 1024
    assert crf_exact([cost, copy]) == (2 * cost.macs_full) / (cost.macs_spent + copy.macs_spent)


def test_exits_disabled_is_exactly_one(tiny_backbone, mistral, codestral):
    for model, policy in ((mistral, "recompute"), (codestral, "skip"), (CostModel(tiny_backbone.config), "recompute")):
        costs = [model.token_cost(model.n_layers - 1, c, policy, head_macs=[]) for c in range(1, 20)]
        assert crf_exact(costs) == 1.0 and crf_paper(costs) == 1.0
        assert all(c.macs_spent == c.macs_full for c in costs)


def test_full_depth_token_still_pays_its_heads(mistral):
    cost = mistral.token_cost(31, 10, "recompute", head_macs=[100, 200, 300])
    assert cost.macs_spent == cost.macs_full + 600
    assert cost.blocks_spent_paper == 32  # the paper ignores heads
    assert crf_exact([cost]) < 1.0


def test_softmax_rule_pays_an_lm_head_per_evaluated_exit(mistral, tiny_backbone):
    import torch

    from workflow_lib.decoding.decoder import ExitDecoder
    from workflow_lib.models.backbone import parts
    from workflow_lib.models.heads import build_head, build_heads

    class Parts:
        lm_head = torch.nn.Linear(4096, 32768, bias=False, device="meta")  # Mistral-7B's shape, no memory

    rule = build_head("softmax", 4096)
    rule.attach(Parts)
    assert rule.macs_per_token() == 4096 * 32768
    assert rule.macs_per_token() / mistral.block_macs(1) == pytest.approx(0.615, abs=1e-3)  # 0.6 of a block
    # in a decode: every token climbs all 4 exits (no margin reaches 1), so each pays 4 LM-head products on top of the
    # full model
    lm_head = parts(tiny_backbone).lm_head.weight.numel()  # (V, D)
    res = ExitDecoder(tiny_backbone, build_heads("softmax", 256, [3, 4, 5, 6]), threshold=1.0).generate(
        torch.tensor([[1, 17, 250, 33]]), max_new_tokens=5, eos_token_id=[])
    model = CostModel(tiny_backbone.config)
    assert res.costs == [model.token_cost(7, 4 + i + 1, "recompute", [lm_head] * 4) for i in range(4)]
    assert all(c.macs_spent == c.macs_full + 4 * lm_head for c in res.costs) and res.crf_exact < 1.0


def test_pruning(mistral, codestral):
    assert mistral.pruned_crf_paper(8) == 32 / 24
    assert codestral.pruned_crf_paper(16) == 64 / 48
    assert mistral.pruned_crf_paper(0) == 1.0 and mistral.pruned_crf_exact(0, [1, 50]) == 1.0
    block = codestral.block_macs(1)
    full = 64 * block + 4096 * 32768
    assert codestral.pruned_crf_exact(16, [1]) == full / (full - 16 * block)  # the LM head is kept
    assert codestral.pruned_token_cost(16, 1) == TokenCost(full - 16 * block, full, 48.0, 64.0)
    # an exit in a pruned model: the pruned blocks are neither run nor recomputed
    cost = mistral.token_cost(15, 10, "recompute", [], prune=8)
    assert cost.blocks_spent_paper == pytest.approx(17 + 7 / 6)  # 23..30 pruned, 16..22 skipped
    assert cost.macs_spent == 17 * mistral.block_macs(10) + 7 * mistral.recompute_macs() + 4096 * 32768


def test_run_summary(mistral):
    costs = [mistral.token_cost(e, c, "recompute", []) for e, c in ((15, 5), (31, 6), (23, 7))]
    s = summarize(costs)
    assert s["tokens"] == 3 and s["crf_exact"] == crf_exact(costs) and s["crf_paper"] == crf_paper(costs)
    assert 1.0 < s["crf_exact"] and 1.0 < s["crf_paper"]
    assert crf_exact([]) == crf_paper([]) == 1.0


@pytest.mark.parametrize("call, match", [
    (lambda m: m.token_cost(31, 1, "skip", []), "does not fit a mistral"),
    (lambda m: m.token_cost(32, 1, "copy", []), "exit_layer 32 out of range"),
    (lambda m: m.token_cost(-1, 1, "copy", []), "exit_layer -1 out of range"),
    (lambda m: m.token_cost(28, 1, "copy", [], prune=4), "exit_layer 28 out of range"),
    (lambda m: m.token_cost(31, 1, "copy", [], prune=32), "prune must be in 0..31"),
    (lambda m: m.block_macs(0), "context_len must be >= 1"),
])
def test_bad_input(mistral, call, match):
    with pytest.raises(ValueError, match=match):
        call(mistral)


def test_unknown_architecture():
    from transformers import GPT2Config
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        CostModel(GPT2Config())
