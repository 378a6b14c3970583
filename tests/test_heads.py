import inspect

import pytest
import torch

from workflow_lib.models.heads import HEAD_TYPES, build_heads, load_heads, save_heads
from workflow_lib.training.head_specs import HeadType, registry, resolve_specs

# head_training as the pipeline fills it in
DEFAULTS = {"label_rule": "intermediate_in_oracle_topk", "k": 1, "label_source": "emitted", "mode": "joint_decay",
            "class_balance": False,
            "seq_len": 64, "batch_size": 8, "steps": 10, "lr": 0.001, "answers_weight": 0.0}


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


def test_saving_heads_keeps_another_emission_rules_heads_in_the_folder(tmp_path, tiny_mistral):
    """The pipeline keeps a non-default rule's heads inside the default rule's folder (head~calm/emission~lens/);
    writing the default heads after them must leave them there (a from-scratch run trains them in either order),
    and an untrained head written over trained heads leaves no stale weights."""
    folder = tmp_path / "head~calm"
    save_heads(folder / "emission~lens", build_heads("calm", 256, [3], seed=1), tiny_mistral.config)
    save_heads(folder, build_heads("calm", 256, [3], seed=2), tiny_mistral.config)
    assert sorted(p.name for p in folder.iterdir()) == ["emission~lens", "heads.json", "heads.safetensors"]
    first, _ = load_heads(folder / "emission~lens", tiny_mistral.config)
    second, _ = load_heads(folder, tiny_mistral.config)
    assert not torch.equal(first["3"].proj.weight, second["3"].proj.weight)
    save_heads(folder, build_heads("saturation", 256, [3]), tiny_mistral.config)
    assert sorted(p.name for p in folder.iterdir()) == ["emission~lens", "heads.json"]


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
    untrainable = {name for name, kind in registry().items() if not kind.trainable}
    assert untrainable == {"softmax", "saturation", "forced"}  # what the pipeline gives a heads.json-only folder
    save_heads(tmp_path / "h", build_heads("saturation", 256, [3, 5]), tiny_mistral.config, {"trained": False})
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["heads.json"]  # config only
    loaded, meta = load_heads(tmp_path / "h", tiny_mistral.config)
    assert meta["exit_layers"] == [3, 5] and all(type(h).head_type == "saturation" for h in loaded.values())


def test_registry_read_from_source_matches_the_imported_registry():
    """The pipeline checks head specs against registry(), read from heads.py without importing torch."""
    described = registry()
    assert set(described) == set(HEAD_TYPES)
    for name, cls in HEAD_TYPES.items():
        params = list(inspect.signature(cls).parameters.values())[1:]  # after hidden_size
        named = [p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        assert described[name].options == tuple(p.name for p in named), name
        assert described[name].required == tuple(p.name for p in named if p.default is p.empty), name
        assert described[name].any_options == any(p.kind is p.VAR_KEYWORD for p in params), name
        assert described[name].trainable == cls.trainable, name


def test_registry_follows_bases_and_refuses_ambiguous_options(tmp_path):
    source = tmp_path / "heads.py"
    source.write_text(
        "class ExitHead:\n"
        "    trainable: bool = True\n"
        "    def __init__(self, hidden_size, **options): pass\n"
        "    def prefill(self, hidden): pass\n"
        "@register_head('plain')\n"
        "class Plain(ExitHead):\n"
        "    trainable = False\n"
        "@register_head('needy')\n"
        "class Needy(Plain):\n"
        "    def __init__(self, hidden_size, width, *, depth=2): pass\n"
        "    def prefill(self, hidden): pass\n"
        "@register_head('recurrent')\n"
        "class Recurrent(Needy):\n"
        "    pass\n")
    types = registry(source)
    assert types["plain"] == HeadType(options=(), required=(), any_options=True, trainable=False, stateful=False)
    assert types["needy"] == HeadType(options=("width", "depth"), required=("width",), any_options=False,
                                      trainable=False, stateful=True)
    assert types["recurrent"].stateful  # a prefill inherited from a base other than ExitHead
    with pytest.raises(ValueError, match="heads.n: head type 'needy' needs the option 'width'"):
        resolve_specs({"n": {"type": "needy"}}, DEFAULTS, types)
    source.write_text(source.read_text().replace("depth=2", "k=2"))
    with pytest.raises(ValueError, match="'needy' has constructor options named like spec keys: k"):
        registry(source)



def test_head_specs_split_into_options_and_training_settings():
    specs = resolve_specs({
        "mamba": {"type": "mamba"},
        "mamba_s64": {"type": "mamba", "state_size": 64},
        "calm_k15": {"type": "calm", "label_rule": "oracle_in_intermediate_topk", "k": 15, "exit_layers": [1, 2]},
    }, DEFAULTS, registry())
    assert specs["mamba"] == {"type": "mamba", "options": {}, "training": {**DEFAULTS, "exit_layers": None}}
    assert specs["mamba_s64"]["options"] == {"state_size": 64}
    assert specs["mamba_s64"]["training"] == specs["mamba"]["training"]
    assert specs["calm_k15"] == {"type": "calm", "options": {}, "training": {
        **DEFAULTS, "label_rule": "oracle_in_intermediate_topk", "k": 15, "exit_layers": [1, 2]}}
    with pytest.raises(ValueError, match=r"heads.bad.type: unknown head type 'ffnn'; known: calm, ffn, forced"):
        resolve_specs({"bad": {"type": "ffnn"}}, DEFAULTS, registry())
    with pytest.raises(ValueError, match=r"heads.c.steps_: head type 'calm' takes no option 'steps_' \(its options: "
                                         r"none; training settings: label_rule, .*exit_layers\)"):
        resolve_specs({"c": {"type": "calm", "steps_": 5}}, DEFAULTS, registry())
