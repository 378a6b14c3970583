"""Whole-sequence emitted logits (models/emission.py) against the decoder's token-by-token emission at a forced exit."""
import pytest
import torch
from transformers import DynamicCache

from reference_decoder import ReferenceDecoder

from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.models.backbone import parts
from workflow_lib.models.emission import emitted_logits, exit_states
from workflow_lib.models.translators import check_emission
from workflow_lib.models.heads import build_heads
from workflow_lib.models.translators import Translators

SEQ = torch.tensor([[1, 17, 250, 33, 980, 4, 77, 512, 9, 301, 45, 600, 12, 88]])  # (1, 14)
EXITS = [3, 5]


def random_translators(d: int, layers: list[int]) -> Translators:
    torch.manual_seed(1)
    translators = Translators(d, layers)
    for linear in translators.linears.values():
        torch.nn.init.normal_(linear.weight, std=0.05)
        torch.nn.init.normal_(linear.bias, std=0.05)
    return translators


@torch.no_grad()
def incremental_exit_state(model, prefix: torch.Tensor, token: int, layer: int) -> torch.Tensor:
    """h_l of `token` after a full-depth prefill of `prefix` (1, T >= 0), block by block as the decoder steps:
    (1, 1, D)."""
    p = parts(model)
    cache = DynamicCache(config=model.config)
    if prefix.shape[1]:
        model(input_ids=prefix, cache=cache, use_cache=True)
    h = p.embed(torch.tensor([[token]]))  # (1, 1, D)
    kwargs = {"cache": cache}
    if p.arch != "mamba2":
        position_ids = torch.tensor([[prefix.shape[1]]])  # (1, 1)
        kwargs.update(position_embeddings=p.rotary_emb(h, position_ids=position_ids), position_ids=position_ids,
                      attention_mask=None, use_cache=True)
    for i in range(layer + 1):
        h = p.layers[i](h, **kwargs)  # (1, 1, D)
    return h


@pytest.mark.parametrize("layer", EXITS)
def test_last_block_equals_decoder_forced_exit(tiny_backbone, layer):
    """The decoder (Algorithm 1) forced out at `layer` after a full-depth prefix emits what the module computes at
    that position, for several prefix lengths (the first position included)."""
    heads = build_heads("forced", tiny_backbone.config.hidden_size, [layer])
    decoder = ExitDecoder(tiny_backbone, heads, threshold=0.5)
    reference = ReferenceDecoder(tiny_backbone, heads, threshold=0.5)  # keeps the last step's logits
    for t in (1, 2, 7, 12):
        res = decoder.generate(SEQ[:, :t], max_new_tokens=2, eos_token_id=[])
        assert res.exit_layers == [tiny_backbone.config.num_hidden_layers - 1, layer]
        assert reference.generate(SEQ[:, :t], max_new_tokens=2, eos_token_id=[]).token_ids == res.token_ids
        seq = torch.cat([SEQ[:, :t], torch.tensor([[res.token_ids[0]]])], 1)  # prefix + the token that exits
        emitted = emitted_logits(tiny_backbone, exit_states(tiny_backbone, seq, EXITS), "last_block")[layer]
        torch.testing.assert_close(emitted[:, t], reference.last_logits, rtol=1e-4, atol=1e-4)
        assert int(emitted[0, t].argmax()) == res.token_ids[1]


def test_last_block_batch_rows_independent(tiny_backbone):
    """Batched sequences give each row what it gets alone."""
    seqs = torch.stack([SEQ[0], SEQ[0].flip(0)])  # (2, T)
    both = emitted_logits(tiny_backbone, exit_states(tiny_backbone, seqs, EXITS), "last_block")
    alone = emitted_logits(tiny_backbone, exit_states(tiny_backbone, seqs[1:], EXITS), "last_block")
    for layer in EXITS:
        torch.testing.assert_close(both[layer][1:], alone[layer], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rule", ["lens", "translator"])
def test_lens_and_translator_equal_incremental(tiny_backbone, rule):
    """lens / translator: LM head(final_norm(h_l)) or of translate(h_l, l), with h_l from a token-by-token run."""
    p = parts(tiny_backbone)
    translators = random_translators(tiny_backbone.config.hidden_size, EXITS)
    emitted = emitted_logits(tiny_backbone, exit_states(tiny_backbone, SEQ, EXITS), rule, translators)
    for layer in EXITS:
        for t in (0, 5, 13):
            h = incremental_exit_state(tiny_backbone, SEQ[:, :t], int(SEQ[0, t]), layer)
            if rule == "translator":
                h = translators(h, layer)
            expected = p.lm_head(p.final_norm(h)).float()[:, -1]  # (1, V)
            torch.testing.assert_close(emitted[layer][:, t], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rule", ["last_block", "lens", "translator"])
def test_logits_at_some_positions_are_those_positions_of_every_position(tiny_backbone, rule):
    """Asked for a mask of positions (different per row), the full model's and each exit's logits are the rows of the
    whole-sequence ones at those positions, in the order of h[positions]."""
    seqs = torch.stack([SEQ[0], SEQ[0].flip(0)])  # (2, T)
    positions = torch.zeros(seqs.shape, dtype=torch.bool)  # (2, T)
    positions[0, [2, 9, 13]] = positions[1, [0, 9]] = True
    translators = random_translators(tiny_backbone.config.hidden_size, EXITS)
    every, some = exit_states(tiny_backbone, seqs, EXITS), exit_states(tiny_backbone, seqs, EXITS, positions)
    torch.testing.assert_close(some.logits, every.logits[positions], rtol=1e-4, atol=1e-4)  # (5, V)
    picked = emitted_logits(tiny_backbone, some, rule, translators, positions)
    for layer, logits in emitted_logits(tiny_backbone, every, rule, translators).items():
        torch.testing.assert_close(picked[layer], logits[positions], rtol=1e-4, atol=1e-4)  # (5, V)


def test_last_exit_last_block_is_the_full_model(tiny_backbone):
    """At exit n-2 the last block's input is its full-depth input: the emission is the full model's logits."""
    n = tiny_backbone.config.num_hidden_layers
    states = exit_states(tiny_backbone, SEQ, [n - 2])
    torch.testing.assert_close(emitted_logits(tiny_backbone, states, "last_block")[n - 2], states.logits,
                               rtol=1e-4, atol=1e-4)


def test_bad_rule_and_missing_translators():
    with pytest.raises(ValueError, match="unknown emission rule"):
        check_emission("final", None, [3])
    with pytest.raises(ValueError, match="needs translators"):
        check_emission("translator", None, [3])
    with pytest.raises(ValueError, match=r"no translator for exit layer\(s\) \[5\]"):
        check_emission("translator", Translators(8, [3]), [3, 5])
