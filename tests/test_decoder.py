"""The exit-aware decoder against transformers' own greedy `generate`, and its stopping, heads and costs."""
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from reference_decoder import ReferenceDecoder, prefill_row

from workflow_lib.decoding.accounting import CostModel
from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.decoding.step import Step
from workflow_lib.models.backbone import build_backbone, parts, preset_config
from workflow_lib.models.heads import build_head, build_heads

PROMPT = torch.tensor([[1, 17, 250, 33, 980, 4, 77, 512, 9]])  # (1, 9)


def greedy(model, input_ids, max_new_tokens, **kw):
    out = model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens, output_logits=True,
                         return_dict_in_generate=True, **kw)
    return out.sequences[0, input_ids.shape[1]:].tolist(), out.logits[-1].float()  # ids, (1, V)


def one_step(decoder, tok, position_ids, cache, states):
    """One decode step of the decoder's own `Step` on a batch of one row at the decoder's threshold: fp32 logits (1, V),
    the exit block, the head MACs and the translations run."""
    logits, exits, macs, translations = Step(decoder, cache, 1, decoder.threshold)(tok, position_ids, states, None)
    return logits, exits[0], macs[0], translations[0]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE with <pad>, <s>, </s> at ids 0, 1, 2 like the tiny presets."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.mark.parametrize("threshold,with_heads", [(2.0, False), (2.0, True), (1.5, True)])
def test_exits_disabled_equals_generate(tiny_any, threshold, with_heads):
    heads = build_heads("forced", 256, [4, 5]) if with_heads else None
    ids, logits = greedy(tiny_any, PROMPT, 24, eos_token_id=None)
    res = ExitDecoder(tiny_any, heads, threshold=threshold).generate(PROMPT, max_new_tokens=24, eos_token_id=[])
    assert res.token_ids == ids
    assert res.exit_layers == [7] * 24
    assert res.stop_reason == "max_new_tokens"
    reference = ReferenceDecoder(tiny_any, heads, threshold=threshold)  # the reference's logits are generate's
    assert reference.generate(PROMPT, max_new_tokens=24, eos_token_id=[]).token_ids == ids
    torch.testing.assert_close(reference.last_logits, logits, rtol=1e-5, atol=1e-5)
    assert res.crf_exact == res.crf_paper == 1.0 and len(res.costs) == 23
    cost_model = CostModel(tiny_any.config)  # step i reads the token at position T+i, attending to T+i+1
    assert [c.macs_full for c in res.costs] == [cost_model.full_token_macs(PROMPT.shape[1] + i + 1) for i in range(23)]


def test_eos_stops_like_generate(tiny_any):
    free, _ = greedy(tiny_any, PROMPT, 16, eos_token_id=None)
    eos = free[5]  # a token the model does produce: generation must stop at its first occurrence
    ids, _ = greedy(tiny_any, PROMPT, 16, eos_token_id=eos)
    res = ExitDecoder(tiny_any).generate(PROMPT, max_new_tokens=16, eos_token_id=eos)
    assert res.token_ids == ids == free[:free.index(eos) + 1]
    assert res.stop_reason == "eos"


def test_repetition_penalty_equals_generate(tiny_mistral):
    ids, _ = greedy(tiny_mistral, PROMPT, 16, eos_token_id=None, repetition_penalty=1.3)
    res = ExitDecoder(tiny_mistral, repetition_penalty=1.3).generate(PROMPT, max_new_tokens=16, eos_token_id=[])
    assert res.token_ids == ids
    assert res.token_ids != ExitDecoder(tiny_mistral).generate(PROMPT, max_new_tokens=16, eos_token_id=[]).token_ids


def test_stop_string_spanning_tokens():
    tokenizer = byte_tokenizer()
    model = build_backbone(preset_config("tiny-mistral", vocab_size=len(tokenizer), num_hidden_layers=4), device="cpu")
    prompt = tokenizer("the quick", return_tensors="pt").input_ids
    free = ExitDecoder(model).generate(prompt, max_new_tokens=20, eos_token_id=[])
    pieces = [tokenizer.decode(free.token_ids[:k]) for k in range(len(free.token_ids) + 1)]
    k = next(k for k in range(6, 19) if len(pieces[k]) > len(pieces[k - 1]) and len(pieces[k + 1]) > len(pieces[k]))
    stop = pieces[k][-1] + pieces[k + 1][len(pieces[k])]  # last char of token k-1 + first char of token k
    first = next(j for j in range(len(pieces)) if stop in pieces[j])  # it may already occur earlier
    res = ExitDecoder(model).generate(prompt, max_new_tokens=20, stop_strings=["never there", stop],
                                      tokenizer=tokenizer, eos_token_id=[])
    assert res.stop_reason == "stop_string"
    assert res.token_ids == free.token_ids[:first]
    with pytest.raises(ValueError, match="tokenizer"):
        ExitDecoder(model).generate(prompt, stop_strings=["x"])


@pytest.mark.parametrize("arch", ["mistral", "llama"])
@pytest.mark.parametrize("policy", ["recompute", "copy", "copy_prev"])
def test_forced_exit_records_layer_and_costs(request, arch, policy):
    model = request.getfixturevalue(f"tiny_{arch}")
    res = ExitDecoder(model, build_heads("forced", 256, [3]), threshold=0.5, policy=policy).generate(
        PROMPT, max_new_tokens=6, eos_token_id=[])
    assert res.exit_layers == [7] + [3] * 5  # the prefill token runs full depth
    assert len(res.costs) == 5 and res.crf_exact > 1.0
    assert res.crf_paper == pytest.approx(8 / (5 + (3 / 6 if policy == "recompute" else 0)))


def test_threshold_is_inclusive_and_first_exit_wins(tiny_mamba2):
    heads = torch.nn.ModuleDict({"4": build_head("forced", 256, exit=False), "5": build_head("forced", 256),
                                 "6": build_head("forced", 256)})
    res = ExitDecoder(tiny_mamba2, heads, threshold=1.0).generate(PROMPT, max_new_tokens=4, eos_token_id=[])
    assert res.exit_layers == [7, 5, 5, 5]


def _mixer_calls(head):
    """Every output of the head, (1, T, 2) each: its mixer on the prompt (prefill), then each step's."""
    calls = []
    head.mixer.register_forward_hook(lambda _m, _i, out: calls.append(out.detach().clone()))
    step = head.step

    def recorded_step(z, state, z_in=None):
        conv_state = state.get_conv_state(0)
        out, state = step(z, state, z_in)
        if conv_state is not None:  # the CPU step does not go through the mixer's forward (no hook)
            calls.append(out.detach().clone()[:, None])
        return out, state

    head.step = recorded_step
    return calls


def test_mamba_head_state_carried_across_tokens(tiny_backbone):
    layer = 5
    heads = build_heads("mamba", 256, [layer], seed=3)
    calls = _mixer_calls(heads[str(layer)])
    # threshold 1.0: the untrained head never reaches p_exit = 1, so every token reaches the head
    res = ExitDecoder(tiny_backbone, heads, threshold=1.0).generate(PROMPT, max_new_tokens=8, eos_token_id=[])
    assert res.exit_layers == [7] * 8
    assert [c.shape[1] for c in calls] == [PROMPT.shape[1]] + [1] * 7  # prefill on the prompt, then one per step
    stepwise = torch.cat(calls, dim=1)  # (1, T + 7, 2)
    full = torch.cat([PROMPT, torch.tensor([res.token_ids[:-1]])], dim=1)  # (1, T + 7)
    p = parts(tiny_backbone)
    with torch.no_grad():
        hs = tiny_backbone(full, output_hidden_states=True).hidden_states
        h = hs[layer + 1] if p.is_attention else hs[layer]  # block `layer`'s output (conventions differ)
        parallel = heads[str(layer)](p.final_norm(h))  # (1, T + 7, 2)
    torch.testing.assert_close(stepwise, parallel, rtol=1e-4, atol=1e-4)


def test_mamba_head_not_advanced_by_tokens_that_exit_before_it(tiny_mistral):
    heads = torch.nn.ModuleDict({"3": build_head("forced", 256), "5": build_head("mamba", 256)})
    calls = _mixer_calls(heads["5"])
    res = ExitDecoder(tiny_mistral, heads, threshold=0.5).generate(PROMPT, max_new_tokens=5, eos_token_id=[])
    assert res.exit_layers == [7] + [3] * 4
    assert len(calls) == 1 and calls[0].shape[1] == PROMPT.shape[1]  # the prompt only


def test_bad_input_errors(tiny_mistral, tiny_mamba2):
    with pytest.raises(ValueError, match="does not apply to mamba2") as err:
        ExitDecoder(tiny_mamba2, policy="copy")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="out of range"):
        ExitDecoder(tiny_mistral, build_heads("calm", 256, [7]), threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        ExitDecoder(tiny_mistral, threshold="0.5")
    with pytest.raises(ValueError, match="hidden size"):
        ExitDecoder(tiny_mistral, build_heads("calm", 128, [4]), threshold=0.5)
    with pytest.raises(ValueError, match="batch size 1"):
        ExitDecoder(tiny_mistral).generate(PROMPT.repeat(2, 1))


@pytest.mark.parametrize("rule", ["softmax", "saturation"])
def test_zero_parameter_rules_read_the_right_hidden_states(tiny_backbone, rule):
    """Decode step 1 runs the blocks the full model runs on prompt + first token, so each rule's p_exit there is the
    rule applied to the full model's hidden states: block l's output (softmax: through final norm and LM head) and,
    for saturation, block l's input."""
    exits = [3, 4, 5, 6]
    heads = build_heads(rule, 256, exits)
    decoder = ExitDecoder(tiny_backbone, heads, threshold=1.0)  # no p_exit reaches 1: every exit is evaluated
    seen = {}
    for layer in exits:
        head = heads[str(layer)]
        step = head.step

        def recorded(z, state, z_in=None, step=step, layer=layer):
            logits, state = step(z, state, z_in)
            seen.setdefault(layer, []).append(float(logits.softmax(-1)[0, 1]))
            return logits, state
        head.step = recorded
    res = decoder.generate(PROMPT, max_new_tokens=2, eos_token_id=[])
    assert res.exit_layers == [7, 7]
    p = parts(tiny_backbone)
    with torch.no_grad():
        hs = tiny_backbone(torch.cat([PROMPT, torch.tensor([res.token_ids[:1]])], 1), output_hidden_states=True).hidden_states
        shift = 1 if p.is_attention else 0  # hidden_states[l + shift] is block l's output (conventions differ)
        for layer in exits:
            z, z_in = p.final_norm(hs[layer + shift][:, -1]), p.final_norm(hs[layer + shift - 1][:, -1])  # (1, D)
            if rule == "softmax":
                top2 = p.lm_head(z).softmax(-1).topk(2).values[0]
                expected = float(top2[0] - top2[1])
            else:
                expected = float(torch.nn.functional.cosine_similarity(z, z_in))
            assert seen[layer] == [pytest.approx(expected, abs=1e-5)]


def lossless_after(model, first_exit: int, last_scale: float):
    """Blocks first_exit+1 .. n-2 made identities on the residual stream (output projections zeroed), so that an
    exit at `first_exit` or later loses nothing; the last block's output scaled by `last_scale`, so that the
    intermediate top-1 agrees with the final one at some steps and not at others."""
    layers = parts(model).layers
    for i, block in enumerate(layers[first_exit + 1:], start=first_exit + 1):
        projections = [block.mixer.out_proj] if hasattr(block, "mixer") else [block.self_attn.o_proj, block.mlp.down_proj]
        for proj in projections:
            with torch.no_grad():
                proj.weight.mul_(last_scale if i == len(layers) - 1 else 0.0)
    return model


@pytest.mark.parametrize("arch,policy,emission", [
    ("mistral", "recompute", "last_block"), ("mistral", "copy", "last_block"), ("llama", "recompute", "last_block"),
    ("mamba2", "recompute", "last_block"), ("mamba2", "skip", "last_block"), ("mistral", "recompute", "lens"),
    ("llama", "recompute", "lens"), ("mamba2", "recompute", "lens")])
def test_oracle_exits_at_the_earliest_agreeing_layer(arch, policy, emission):
    from workflow_lib.training.pretrain import layer_predictions

    model = lossless_after(build_backbone(preset_config(f"tiny-{arch}"), seed=1, device="cpu",
                                           dtype=torch.float32), 3, 0.3)
    exits = [3, 4, 5, 6]
    full, _ = greedy(model, PROMPT, 20, eos_token_id=None)
    res = ExitDecoder(model, policy=policy, oracle_exits=exits, emission=emission).generate(
        PROMPT, max_new_tokens=20, eos_token_id=[])
    # Skipping identity blocks loses nothing (under lens, recompute fills the last block's state as running it
    # would), so the oracle's tokens are the full model's (its look-ahead leaves the cache as it found it) ...
    assert res.token_ids == full
    start = PROMPT.shape[1]
    if emission == "last_block":
        # ... and the last block run on h_3 is the full model's computation: every step exits at the first exit
        expected = [3] * 19
    else:
        # ... and each step exits at the first exit whose logit-lens top-1 is the full model's top-1.
        seq = torch.cat([PROMPT, torch.tensor([full])], dim=1)  # (1, T + 20)
        preds = layer_predictions(model, seq)[:, 0]  # (layers, T + 20)
        expected = [next((e for e in exits if preds[e, pos] == preds[-1, pos]), 7) for pos in range(start, start + 19)]
        assert 3 in expected and 7 in expected  # exits and non-exits
    assert res.exit_layers[1:] == expected
    assert res.crf_exact > 1.0  # no head cost counted
    cost_model = CostModel(model.config)
    assert res.costs == [cost_model.token_cost(e, start + i + 1, policy, [], 0, emission) for i, e in enumerate(expected)]


@pytest.mark.parametrize("arch,policy", [("mistral", "recompute"), ("mistral", "copy_prev"), ("mamba2", "recompute"),
                                         ("mamba2", "skip")])
@pytest.mark.parametrize("emission", ["last_block", "lens", "translator"])
def test_oracle_compares_what_an_exit_would_emit(request, arch, policy, emission):
    """At each step the oracle exits at the earliest exit where a decoder forced to exit there emits the full-depth
    token (both run on copies of the same cache): the definition, checked on a random model (exits disagree)."""
    import copy

    from transformers import DynamicCache

    model = request.getfixturevalue(f"tiny_{arch}")
    exits = [2, 4, 6]
    translators = random_translators(exits) if emission == "translator" else None
    oracle = ExitDecoder(model, policy=policy, oracle_exits=exits, emission=emission, translators=translators)
    full_depth = ExitDecoder(model)
    forced = {e: ExitDecoder(model, build_heads("forced", 256, [e]), threshold=0.5, policy=policy, emission=emission,
                             translators=translators) for e in exits}
    cache = DynamicCache(config=model.config)
    tok = prefill_row(oracle, PROMPT, cache, {}).argmax(-1)  # (1,)
    for s in range(6):
        pos = torch.full((1, 1), PROMPT.shape[1] + s)
        want, _, _, _ = one_step(full_depth, tok, pos, copy.deepcopy(cache), {})
        agree = [e for e in exits if torch.equal(one_step(forced[e], tok, pos, copy.deepcopy(cache), {e: None})[0].argmax(-1),
                                                 want.argmax(-1))]
        logits, exit_layer, _, translations = one_step(oracle, tok, pos, cache, {})
        assert exit_layer == (agree[0] if agree else 7)
        assert torch.equal(logits.argmax(-1), want.argmax(-1)) or not agree
        assert translations == (emission == "translator" and exit_layer < 7)
        tok = logits.argmax(-1)


def random_translators(exits, hidden=256, seed=0):
    from workflow_lib.models.translators import Translators

    torch.manual_seed(seed)
    translators = Translators(hidden, exits)
    with torch.no_grad():
        for linear in translators.linears.values():
            linear.weight.normal_(0, 0.05)
            linear.bias.normal_(0, 0.05)
    return translators.eval()


def test_oracle_refuses_heads_too(tiny_mistral):
    with pytest.raises(ValueError, match="oracle"):
        ExitDecoder(tiny_mistral, build_heads("forced", 256, [4]), threshold=0.5, oracle_exits=[4])
    with pytest.raises(ValueError, match="oracle exit layer 7"):
        ExitDecoder(tiny_mistral, oracle_exits=[7])


@pytest.mark.parametrize("emission", ["lens", "translator"])
def test_emission_rules_leave_full_depth_alone_and_read_the_exit_state(tiny_backbone, emission):
    """Exits off, every rule is plain greedy decoding; an exit emits LM head(final_norm(translate(h_e))) without
    running the last block, and the translation runs (and is paid) only for a token that exits."""
    translators = random_translators([3, 5]) if emission == "translator" else None
    ids, _ = greedy(tiny_backbone, PROMPT, 8, eos_token_id=None)
    off = ExitDecoder(tiny_backbone, build_heads("forced", 256, [3, 5]), threshold=2.0, emission=emission,
                      translators=translators).generate(PROMPT, max_new_tokens=8, eos_token_id=[])
    assert off.token_ids == ids and off.crf_exact == 1.0
    p = parts(tiny_backbone)
    seen = {}
    hooks = [p.layers[3].register_forward_hook(lambda _m, _i, out: seen.__setitem__("h", out)),
             p.layers[7].register_forward_hook(lambda _m, _i, out: seen.__setitem__("last", True))]
    try:
        decoder = ExitDecoder(tiny_backbone, build_heads("forced", 256, [3]), threshold=0.5, emission=emission,
                              translators=translators)
        from transformers import DynamicCache
        cache = DynamicCache(config=tiny_backbone.config)
        tok = prefill_row(decoder, PROMPT, cache, {}).argmax(-1)
        seen.clear()
        logits, exit_layer, _, translations = one_step(decoder, tok, torch.full((1, 1), PROMPT.shape[1]), cache,
                                                       {3: None})
    finally:
        for hook in hooks:
            hook.remove()
    h = seen["h"] if translators is None else translators(seen["h"], 3)
    torch.testing.assert_close(logits, p.lm_head(p.final_norm(h))[:, -1].float())
    assert "last" not in seen and exit_layer == 3 and translations == (emission == "translator")


def test_emission_bad_input_refused_at_construction(tiny_mistral):
    heads = build_heads("calm", 256, [3, 5])
    for kwargs, message in [(dict(emission="logit"), "unknown emission rule 'logit'"),
                            (dict(emission="translator"), "needs translators"),
                            (dict(emission="translator", translators=random_translators([3])),
                             "no translator for exit layer\\(s\\) \\[5\\]"),
                            (dict(emission="lens", translators=random_translators([3, 5])), "'translator' rule only"),
                            (dict(emission="translator", translators=random_translators([3, 5], hidden=64)),
                             "hidden size 64")]:
        with pytest.raises(ValueError, match=message):
            ExitDecoder(tiny_mistral, heads, threshold=0.5, **kwargs)
    with pytest.raises(ValueError, match="no translator for exit layer"):
        ExitDecoder(tiny_mistral, oracle_exits=[2, 4], emission="translator", translators=random_translators([4]))
