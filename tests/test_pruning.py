"""Layer pruning: n = 0 is the plain model; n > 0 is exactly a model built without those blocks."""
import pytest
import torch

from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.decoding.pruning import angular_distance_start, kept_blocks, prune_blocks, pruned_logits
from workflow_lib.models.backbone import architecture, build_backbone, parts, preset_config
from workflow_lib.models.heads import build_heads

PROMPT = torch.tensor([[1, 64, 3, 700, 21, 5, 333]])  # (1, 7)


def without_blocks(model, n, start=None):
    """A fresh model of n fewer blocks holding the kept blocks' weights (renumbered)."""
    keep = kept_blocks(model.config.num_hidden_layers, n, start)
    config = model.config.__class__.from_dict({**model.config.to_dict(), "num_hidden_layers": len(keep)})
    small = build_backbone(config, device="cpu", dtype=torch.float32)
    prefix = "model.layers." if architecture(config) == "mistral" else "backbone.layers."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            if int(idx) not in keep:
                continue
            key = f"{prefix}{keep.index(int(idx))}.{rest}"
        state[key] = value
    small.load_state_dict(state)
    return small


def greedy(model, max_new_tokens=12):
    out = model.generate(PROMPT, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None)
    return out[0, PROMPT.shape[1]:].tolist()


def test_kept_blocks_and_range():
    assert kept_blocks(8, 0) == list(range(8))
    assert kept_blocks(8, 3) == [0, 1, 2, 3, 7]
    assert kept_blocks(8, 6) == [0, 7]
    for bad in (-1, 7, 2.0):
        with pytest.raises(ValueError, match="prune must be an integer in 0..6"):
            kept_blocks(8, bad)


def test_prune_zero_is_the_plain_model(tiny_backbone):
    ids = greedy(tiny_backbone)
    with prune_blocks(tiny_backbone, 0) as m:
        assert greedy(m) == ids
    assert ExitDecoder(tiny_backbone, prune=0).generate(PROMPT, max_new_tokens=12, eos_token_id=[]).token_ids == ids
    with torch.no_grad():
        torch.testing.assert_close(pruned_logits(tiny_backbone, PROMPT, 0), tiny_backbone(PROMPT).logits.float())


@pytest.mark.parametrize("n", [1, 3])
def test_prune_equals_model_without_those_blocks(tiny_backbone, n):
    small = without_blocks(tiny_backbone, n)
    ids = greedy(small)
    with prune_blocks(tiny_backbone, n) as m:
        assert len(parts(m).layers) == 8 - n
        assert greedy(m) == ids  # transformers' own generate on the pruned model
    assert len(parts(tiny_backbone).layers) == 8  # restored
    res = ExitDecoder(tiny_backbone, prune=n).generate(PROMPT, max_new_tokens=12, eos_token_id=[])
    assert res.token_ids == ids and res.exit_layers == [7] * 12
    assert res.crf_paper == pytest.approx(8 / (8 - n))
    with torch.no_grad():
        torch.testing.assert_close(pruned_logits(tiny_backbone, PROMPT, n), small(PROMPT).logits.float())
    assert ids != greedy(tiny_backbone)  # pruning changed something


def test_prune_restores_blocks_on_error(tiny_mistral):
    with pytest.raises(RuntimeError):
        with prune_blocks(tiny_mistral, 2):
            raise RuntimeError("boom")
    assert len(parts(tiny_mistral).layers) == 8


def test_exits_with_pruning(tiny_mistral):
    with pytest.raises(ValueError, match="among the 3 pruned blocks"):
        ExitDecoder(tiny_mistral, build_heads("forced", 256, [5]), threshold=0.5, prune=3)
    res = ExitDecoder(tiny_mistral, build_heads("forced", 256, [2]), threshold=0.5, prune=3).generate(
        PROMPT, max_new_tokens=5, eos_token_id=[])
    assert res.exit_layers == [7, 2, 2, 2, 2]
    assert res.crf_paper == pytest.approx(8 / (4 + 1 / 6))  # blocks 0-2 and 7 run, block 3 recomputed


def test_prune_start_equals_model_without_those_blocks(tiny_backbone):
    assert kept_blocks(8, 2, start=2) == [0, 1, 4, 5, 6, 7]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="prune start must be an integer in 1..5"):
            kept_blocks(8, 2, start=bad)
    small = without_blocks(tiny_backbone, 2, start=2)
    ids = greedy(small)
    res = ExitDecoder(tiny_backbone, prune=2, prune_start=2).generate(PROMPT, max_new_tokens=12, eos_token_id=[])
    assert res.token_ids == ids and res.crf_paper == pytest.approx(8 / 6)
    with torch.no_grad():
        torch.testing.assert_close(pruned_logits(tiny_backbone, PROMPT, 2, start=2), small(PROMPT).logits.float())
    # an exit above the dropped range: blocks 0, 1, 4, 5 and 7 run, block 6 is recomputed
    res = ExitDecoder(tiny_backbone, build_heads("forced", 256, [5]), threshold=0.5, prune=2, prune_start=2).generate(
        PROMPT, max_new_tokens=3, eos_token_id=[])
    assert res.exit_layers == [7, 5, 5]
    assert res.crf_paper == pytest.approx(8 / (5 + (1 / 6 if architecture(tiny_backbone.config) == "mistral" else 9 / 26)))


@pytest.mark.parametrize("name", ["tiny-mistral", "tiny-mamba2"])
def test_angular_distance_picks_the_blocks_that_change_nothing(name):
    model = build_backbone(preset_config(name), seed=1, device="cpu", dtype=torch.float32)
    p = parts(model)
    with torch.no_grad():
        for j in (3, 4):  # blocks 3 and 4 add nothing to the residual stream: inputs of blocks 3 and 5 are equal
            outs = ([p.layers[j].self_attn.o_proj, p.layers[j].mlp.down_proj] if p.arch == "mistral"
                    else [p.layers[j].mixer.out_proj])
            for lin in outs:
                lin.weight.zero_()
    calibration = [PROMPT, torch.tensor([[1, 9, 99, 999]])]
    assert angular_distance_start(model, calibration, 2) == 3
    assert angular_distance_start(model, calibration, 1) in (3, 4)
