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


class _Parts:  # what attach() reads of a backbone
    def __init__(self, lm_head):
        self.lm_head = lm_head


def _p_exit(logits):
    return logits.softmax(-1)[..., 1]


def test_softmax_rule_is_the_top2_margin_of_the_intermediate_prediction():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05],  # margin 0.2
                          [0.25, 0.25, 0.25, 0.25],  # a tie: 0
                          [0.97, 0.01, 0.01, 0.01]])  # 0.96
    lm_head = torch.nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        lm_head.weight.copy_(probs.log().T)  # (V, D): z = e_j gives the logits log(probs[j])
    rule = build_heads("softmax", 3, [0])["0"]
    with pytest.raises(RuntimeError, match="attach"):
        rule(torch.eye(3))
    rule.attach(_Parts(lm_head))
    torch.testing.assert_close(_p_exit(rule(torch.eye(3))), torch.tensor([0.2, 0.0, 0.96]))
    logits, state = rule.step(torch.eye(3), None)  # (B, 2), no state
    torch.testing.assert_close(_p_exit(logits), torch.tensor([0.2, 0.0, 0.96]))
    assert state is None and rule.macs_per_token() == 12 and not rule.trainable


def test_saturation_rule_is_the_cosine_with_the_block_input():
    z = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 2.0], [0.0, 1.0]])
    z_in = torch.tensor([[1.0, 1.0], [6.0, 8.0], [-1.0, -2.0], [1.0, 0.0]])
    rule = build_heads("saturation", 2, [0])["0"]
    assert rule.reads_block_input and rule.macs_per_token() == 6
    logits, _ = rule.step(z, None, z_in)
    # 1/sqrt(2); parallel: 1; opposite: -1 counts as 0; orthogonal: 0
    torch.testing.assert_close(_p_exit(logits), torch.tensor([2 ** -0.5, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="z_in"):
        rule.step(z, None)


def test_zero_parameter_rules_registry_and_folder(tmp_path, tiny_mistral):
    from workflow_lib.models.head_kinds import ZERO_PARAMETER_HEADS

    untrainable = {name for name, cls in HEAD_TYPES.items() if not cls.trainable}
    assert untrainable == set(ZERO_PARAMETER_HEADS) | {"forced"}  # the pipeline's torch-free list is the registry's
    save_heads(tmp_path / "h", build_heads("saturation", 256, [3, 5]), tiny_mistral.config, {"trained": False})
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["heads.json"]  # config only
    loaded, meta = load_heads(tmp_path / "h", tiny_mistral.config)
    assert meta["exit_layers"] == [3, 5] and all(type(h).head_type == "saturation" for h in loaded.values())
