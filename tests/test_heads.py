import pytest
import torch

from workflow_lib.models.heads import HEAD_TYPES, build_heads, load_heads, save_heads


@pytest.mark.parametrize("head_type", ["calm", "ffn", "mamba"])
def test_head_shapes_and_registry(head_type):
    heads = build_heads(head_type, 64, [2, 3], seed=0)
    z = torch.randn(2, 5, 64)  # (B, T, D)
    assert heads["2"](z).shape == (2, 5, 2)
    assert head_type in HEAD_TYPES


def test_mamba_head_parallel_equals_recurrent():
    head = build_heads("mamba", 64, [0], seed=1)["0"].eval()
    z = torch.randn(2, 40, 64)
    with torch.no_grad():
        parallel = head(z)  # (2, 40, 2)
        state = head.prefill(z[:, :13], head.init_state(2, z.device, z.dtype))
        steps = torch.stack([head.step(z[:, t], state)[0] for t in range(13, 40)], dim=1)  # (2, 27, 2)
        # the CPU step against transformers' own single-token mixer step on the same prefix
        mixer_state = head.prefill(z[:, :13], head.init_state(2, z.device, z.dtype))
        mixer_steps = torch.cat([head.mixer(z[:, t : t + 1], cache=mixer_state) for t in range(13, 40)], dim=1)
    torch.testing.assert_close(steps, parallel[:, 13:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(steps, mixer_steps, atol=1e-6, rtol=1e-5)


def test_heads_round_trip_keep_each_exit_own_weights(tmp_path, tiny_mistral):
    heads = build_heads("ffn", tiny_mistral.config.hidden_size, [3, 5], seed=0)
    assert not torch.equal(heads["3"].up.weight, heads["5"].up.weight)
    save_heads(tmp_path / "h", heads, tiny_mistral.config, {"seed": 0})
    loaded, meta = load_heads(tmp_path / "h", tiny_mistral.config)
    assert meta["exit_layers"] == [3, 5]
    for layer in ("3", "5"):
        for a, b in zip(heads[layer].parameters(), loaded[layer].parameters()):
            assert torch.equal(a, b)


def test_heads_for_another_backbone_are_refused(tmp_path, tiny_mistral, tiny_mamba2):
    save_heads(tmp_path / "h", build_heads("calm", 256, [3]), tiny_mistral.config)
    with pytest.raises(ValueError, match="built for backbone"):
        load_heads(tmp_path / "h", tiny_mamba2.config)
