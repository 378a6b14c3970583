"""Missing-state policies checked on the cache contents themselves, and fast path == reference."""
import copy

import pytest
import torch
from transformers import DynamicCache
from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

import policies_reference
from reference_decoder import prefill_row
from test_decoder import one_step
from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.choices import POLICIES
from workflow_lib.decoding.policies import mamba2_state_step_kernels, make_fill, resolve_policy
from conftest import TINY
from workflow_lib.models.backbone import build_backbone, family, parts
from workflow_lib.models.heads import build_heads
from workflow_lib.models.mamba2_step import advance_state

PROMPT = torch.tensor([[1, 40, 300, 7, 901, 56, 2, 88]])  # (1, 8)
T = PROMPT.shape[1]
EXIT = 3  # blocks 4..6 are skipped, block 7 (the last) runs


def exit_step(model, policy, exit_layer=EXIT, emission="last_block"):
    """Prefill, then one decode step forced to exit at `exit_layer`, recording what the policy saw and did.

    Returns (cache before the step, cache at the exit (block e done, policy not yet run), cache after the step,
    exit hidden state h_e (1,1,D), the last block's input, position embeddings or None, the step's input token).
    """
    p = parts(model)
    dec = ExitDecoder(model, build_heads("forced", 256, [exit_layer]), threshold=0.5, policy=policy, emission=emission)
    cache = DynamicCache(config=model.config)
    tok = prefill_row(dec, PROMPT, cache, {}).argmax(-1)  # (1,)
    before = copy.deepcopy(cache)
    seen = {}

    def at_exit(_m, _args, kwargs, out):
        seen["h"], seen["cache"] = out.detach().clone(), copy.deepcopy(kwargs["cache"])

    def at_last(_m, args):
        seen["last_in"] = args[0].detach().clone()

    hooks = [p.layers[exit_layer].register_forward_hook(at_exit, with_kwargs=True),
             p.layers[p.n_layers - 1].register_forward_pre_hook(at_last)]
    seen["last_in"] = None  # stays None when the last block does not run (lens / translator)
    with torch.no_grad():
        _, got_exit, _, _ = one_step(dec, tok, torch.full((1, 1), T), cache, {exit_layer: None})
    for h in hooks:
        h.remove()
    assert got_exit == exit_layer
    pos_emb = p.rotary_emb(seen["h"], torch.full((1, 1), T)) if p.is_attention else None
    return before, seen["cache"], cache, seen["h"], seen["last_in"], pos_emb, tok


def full_depth_step(model, before, tok):
    cache = copy.deepcopy(before)
    with torch.no_grad():
        one_step(ExitDecoder(model), tok, torch.full((1, 1), T), cache, {})
    return cache


def kv(cache, j):
    return cache.layers[j].keys, cache.layers[j].values  # (1, kv_heads, L, head_dim) each


def mamba_states(cache, j):
    return cache.layers[j].conv_states[0], cache.layers[j].recurrent_states[0]


@pytest.mark.parametrize("arch", ["mistral", "llama"])
@pytest.mark.parametrize("policy", POLICIES["transformer"])
def test_attention_policy_cache_contents(request, arch, policy):
    model = request.getfixturevalue(f"tiny_{arch}")
    p = parts(model)
    before, _, after, h, last_in, (cos, sin), tok = exit_step(model, policy)
    assert all(kv(after, j)[0].shape[-2] == T + 1 for j in range(p.n_layers))  # every block has this position
    for j in range(EXIT + 1, p.n_layers - 1):
        k, v = kv(after, j)
        assert torch.equal(k[:, :, :T], kv(before, j)[0]) and torch.equal(v[:, :, :T], kv(before, j)[1])
        if policy == "recompute":  # the block's own input norm, K/V projections and rotary on h_e
            attn = p.layers[j].self_attn
            x = p.layers[j].input_layernorm(h)  # (1, 1, D)
            k_ref = attn.k_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, kv_heads, 1, head_dim)
            _, k_ref = apply_rotary_pos_emb(k_ref, k_ref, cos, sin)
            v_ref = attn.v_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)
            torch.testing.assert_close(k[:, :, -1:], k_ref)
            torch.testing.assert_close(v[:, :, -1:], v_ref)
        elif policy == "copy":  # exactly the exit block's K, V for this position
            assert torch.equal(k[:, :, -1], kv(after, EXIT)[0][:, :, -1])
            assert torch.equal(v[:, :, -1], kv(after, EXIT)[1][:, :, -1])
        else:  # copy_prev: this block's own previous position again
            assert torch.equal(k[:, :, -1], k[:, :, -2]) and torch.equal(v[:, :, -1], v[:, :, -2])
    # blocks 0..e advanced exactly once, as in a full-depth step; the last block ran on the exit hidden state
    full = full_depth_step(model, before, tok)
    for j in range(EXIT + 1):
        assert torch.equal(kv(after, j)[0], kv(full, j)[0]) and torch.equal(kv(after, j)[1], kv(full, j)[1])
    assert torch.equal(last_in, h)
    attn = p.layers[-1].self_attn
    k_last = attn.k_proj(p.layers[-1].input_layernorm(h)).view(1, 1, -1, attn.head_dim).transpose(1, 2)
    torch.testing.assert_close(kv(after, p.n_layers - 1)[0][:, :, -1:], apply_rotary_pos_emb(k_last, k_last, cos, sin)[1])


@pytest.mark.parametrize("policy", POLICIES["mamba2"])
def test_mamba2_policy_cache_contents(tiny_mamba2, policy):
    p = parts(tiny_mamba2)
    before, _, after, h, last_in, _, tok = exit_step(tiny_mamba2, policy)
    stepped = copy.deepcopy(before)  # each block's own mixer stepped on h_e: in_proj, conv and SSM
    with torch.no_grad():
        for j in range(EXIT + 1, p.n_layers):
            p.layers[j].mixer(p.layers[j].norm(h), cache=stepped)
    for j in range(EXIT + 1, p.n_layers - 1):
        if policy == "recompute":
            for got, ref, old in zip(mamba_states(after, j), mamba_states(stepped, j), mamba_states(before, j)):
                torch.testing.assert_close(got, ref)
                assert not torch.equal(got, old)
        else:  # skip: bit-identical
            for got, old in zip(mamba_states(after, j), mamba_states(before, j)):
                assert torch.equal(got, old)
    full = full_depth_step(tiny_mamba2, before, tok)
    for j in range(EXIT + 1):  # the exit block and those below it advanced exactly once
        for got, ref in zip(mamba_states(after, j), mamba_states(full, j)):
            assert torch.equal(got, ref)
    assert torch.equal(last_in, h)  # the last block runs on the exit hidden state
    for got, ref in zip(mamba_states(after, p.n_layers - 1), mamba_states(stepped, p.n_layers - 1)):
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("arch,policy", [(a, pol) for a in TINY for pol in POLICIES[family(a)]])
@pytest.mark.parametrize("exit_layer", [2, 5, 6])
def test_fast_path_equals_reference(request, arch, policy, exit_layer):
    model = request.getfixturevalue(TINY[arch])
    p = parts(model)
    _, at_exit, after, h, _, pos_emb, _ = exit_step(model, policy, exit_layer)
    skipped = list(range(exit_layer + 1, p.n_layers - 1))
    fast, ref = copy.deepcopy(at_exit), copy.deepcopy(at_exit)
    with torch.no_grad():
        make_fill(arch, policy, p.layers, skipped)(p.layers, fast, h, exit_layer, skipped, pos_emb)
        policies_reference.FILL[(family(arch), policy)](p.layers, ref, h, exit_layer, skipped, pos_emb)
    states = kv if p.is_attention else mamba_states
    for j in range(p.n_layers - 1):
        for a, b, c in zip(states(fast, j), states(ref, j), states(after, j)):
            torch.testing.assert_close(a, b)
            assert torch.equal(a, c)  # and the decoder's own step wrote exactly the fast path's result


@pytest.mark.parametrize("policy", POLICIES["transformer"])
def test_qwen2_biased_kv_fast_path_equals_reference(policy):
    """Qwen2's K/V projections carry biases: the stacked recompute adds them (the reference uses the modules)."""
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048)
    model = build_backbone(config, seed=0, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for layer in parts(model).layers:  # non-zero biases, or the test could not tell them apart
            layer.self_attn.k_proj.bias.normal_()
            layer.self_attn.v_proj.bias.normal_()
    p = parts(model)
    _, at_exit, after, h, _, pos_emb, _ = exit_step(model, policy, 2)
    skipped = list(range(3, p.n_layers - 1))
    fast, ref = copy.deepcopy(at_exit), copy.deepcopy(at_exit)
    with torch.no_grad():
        make_fill("qwen2", policy, p.layers, skipped)(p.layers, fast, h, 2, skipped, pos_emb)
        policies_reference.FILL[("transformer", policy)](p.layers, ref, h, 2, skipped, pos_emb)
    for j in range(p.n_layers - 1):
        for a, b, c in zip(kv(fast, j), kv(ref, j), kv(after, j)):
            torch.testing.assert_close(a, b)
            assert torch.equal(a, c)


def test_policy_names_and_errors():
    assert all(resolve_policy(arch, None) == "recompute" for arch in ("mistral", "llama", "qwen2", "mamba2"))
    assert set(policies_reference.FILL) == {(a, p) for a, ps in POLICIES.items() for p in ps}
    for arch, bad in [("mamba2", "copy"), ("mamba2", "copy_prev"), ("mistral", "skip"), ("llama", "nope")]:
        with pytest.raises(ValueError, match=f"does not apply to {arch}") as err:
            resolve_policy(arch, bad)
        assert "\n" not in str(err.value)


def test_stacked_recompute_serves_every_later_exit(tiny_mistral):
    """Prepared once for the earliest exit, the stacked weights serve any later exit's skipped suffix."""
    p = parts(tiny_mistral)
    fill = make_fill("mistral", "recompute", p.layers, list(range(3, p.n_layers - 1)))
    _, at_exit, _, h, _, pos_emb, _ = exit_step(tiny_mistral, "recompute", 4)
    skipped = list(range(5, p.n_layers - 1))
    fast, ref = copy.deepcopy(at_exit), copy.deepcopy(at_exit)
    with torch.no_grad():
        fill(p.layers, fast, h, 4, skipped, pos_emb)
        policies_reference.FILL[("transformer", "recompute")](p.layers, ref, h, 4, skipped, pos_emb)
    for j in range(p.n_layers - 1):
        for a, b in zip(kv(fast, j), kv(ref, j)):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="not a suffix"):
        fill(p.layers, copy.deepcopy(at_exit), h, 4, [5], pos_emb)


def test_mamba2_recompute_kernel_path_equals_cpu_step(tiny_mamba2):
    """The CUDA branch (transformers' step functions; their torch fallbacks here) writes what the CPU step does."""
    p = parts(tiny_mamba2)
    _, at_exit, _, h, _, _, _ = exit_step(tiny_mamba2, "recompute", 2)
    kernels, cpu = copy.deepcopy(at_exit), copy.deepcopy(at_exit)
    with torch.no_grad():
        for j in range(3, p.n_layers - 1):
            m = p.layers[j].mixer
            x = p.layers[j].norm(h)  # (1, 1, D)
            xbc, dt = m.in_proj(x)[..., m.intermediate_size:].split([m.conv_dim, m.num_heads], dim=-1)
            mamba2_state_step_kernels(m, kernels.layers[j].conv_states[0], kernels.layers[j].recurrent_states[0], xbc, dt)
            advance_state(m, cpu.layers[j].conv_states[0], cpu.layers[j].recurrent_states[0], xbc[:, 0], dt[:, 0])
    for j in range(3, p.n_layers - 1):
        for a, b, old in zip(mamba_states(kernels, j), mamba_states(cpu, j), mamba_states(at_exit, j)):
            torch.testing.assert_close(a, b)
            assert not torch.equal(a, old)


@pytest.mark.parametrize("arch,policy", [(a, pol) for a in TINY for pol in POLICIES[family(a)]])
@pytest.mark.parametrize("exit_layer", [2, 6])
def test_lens_fills_the_last_block_too_fast_path_equals_reference(request, arch, policy, exit_layer):
    """Under lens (and translator, the same fill) the last block does not run: the policy fills blocks e+1 .. n-1,
    the last one included, and the stacked recompute covers it; fast path == reference == what the decoder wrote,
    and the token is LM head(final_norm(h_e))."""
    model = request.getfixturevalue(TINY[arch])
    p = parts(model)
    before, at_exit, after, h, last_in, pos_emb, tok = exit_step(model, policy, exit_layer, emission="lens")
    assert last_in is None  # the last block never ran
    skipped = list(range(exit_layer + 1, p.n_layers))
    fast, ref = copy.deepcopy(at_exit), copy.deepcopy(at_exit)
    with torch.no_grad():
        make_fill(arch, policy, p.layers, skipped)(p.layers, fast, h, exit_layer, skipped, pos_emb)
        policies_reference.FILL[(family(arch), policy)](p.layers, ref, h, exit_layer, skipped, pos_emb)
    states = kv if p.is_attention else mamba_states
    for j in range(p.n_layers):
        for a, b, c in zip(states(fast, j), states(ref, j), states(after, j)):
            torch.testing.assert_close(a, b)
            assert torch.equal(a, c)
    last = p.n_layers - 1
    if policy in ("recompute", "copy", "copy_prev"):  # the last block's state moved for this position
        assert not p.is_attention or kv(after, last)[0].shape[-2] == T + 1
        assert not all(torch.equal(a, b) for a, b in zip(states(after, last), states(before, last))) or p.is_attention
    if policy == "skip":
        assert all(torch.equal(a, b) for a, b in zip(states(after, last), states(before, last)))
    dec = ExitDecoder(model, build_heads("forced", 256, [exit_layer]), threshold=0.5, policy=policy, emission="lens")
    with torch.no_grad():
        logits, _, _, _ = one_step(dec, tok, torch.full((1, 1), T), copy.deepcopy(before), {exit_layer: None})
        torch.testing.assert_close(logits, p.lm_head(p.final_norm(h))[:, -1].float())
