"""Batched decoding (`ExitDecoder.generate_batch`): every row equals the reference batch-1 loop on its prompt alone
(tests/reference_decoder.py), exits off, forced, and with heads whose decisions differ between the rows of one batch;
rows stop on their own; bad input refused."""
import copy

import pytest
import torch
from reference_decoder import reference_of
from test_decoder import byte_tokenizer, greedy

from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.choices import POLICIES
from workflow_lib.models.backbone import family
from workflow_lib.evaluation.records import generation_summary
from workflow_lib.models.heads import build_heads

# different lengths, so the batch carries left padding; the 1-token prompt has no context at all
PROMPTS = [[1, 17, 250, 33, 980, 4, 77, 512, 9], [1, 40, 300], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
           [1, 901, 56, 2, 88, 61], [3]]
ARCH_POLICIES = [(arch, policy) for arch in ("mistral", "llama", "mamba2") for policy in POLICIES[family(arch)]]


def model_for(request, arch):
    return request.getfixturevalue(f"tiny_{arch}")


def batch1(decoder, prompts, **kw):
    """Each prompt alone through the reference batch-1 loop with the decoder's configuration."""
    reference = reference_of(decoder)
    return [reference.generate(torch.tensor([p]), **kw) for p in prompts]


def same(a, b) -> bool:
    return (a.token_ids, a.exit_layers, a.stop_reason, a.costs) == (b.token_ids, b.exit_layers, b.stop_reason, b.costs)


def test_exits_off_equals_transformers_generate(tiny_any):
    got = ExitDecoder(tiny_any).generate_batch(PROMPTS, max_new_tokens=16, eos_token_id=[])
    for prompt, res in zip(PROMPTS, got):
        ids, _ = greedy(tiny_any, torch.tensor([prompt]), 16, eos_token_id=None)
        assert res.token_ids == ids
        assert res.exit_layers == [7] * 16 and res.crf_exact == 1.0
    ref = batch1(ExitDecoder(tiny_any), PROMPTS, max_new_tokens=16, eos_token_id=[])
    assert all(same(a, b) for a, b in zip(ref, got))  # costs too: each row at its own context length
    assert got[0].batch_size == len(PROMPTS) and got[0].batch_decode_seconds >= max(r.decode_seconds for r in got)


@pytest.mark.parametrize("arch,policy", ARCH_POLICIES)
@pytest.mark.parametrize("exit_layer", [3, 5, 6])
def test_forced_exits_equal_batch1(request, arch, policy, exit_layer):
    model = model_for(request, arch)
    decoder = ExitDecoder(model, build_heads("forced", 256, [exit_layer]), threshold=0.5, policy=policy)
    got = decoder.generate_batch(PROMPTS, max_new_tokens=10, eos_token_id=[])
    ref = batch1(decoder, PROMPTS, max_new_tokens=10, eos_token_id=[])
    for a, b in zip(ref, got):
        assert same(a, b)
        assert b.exit_layers == [7] + [exit_layer] * 9


@pytest.mark.parametrize("arch,policy", ARCH_POLICIES)
@pytest.mark.parametrize("emission", ["lens", "translator"])
@pytest.mark.parametrize("climbing_only", [True, False])
def test_emission_rules_batched_equal_batch1(request, arch, policy, emission, climbing_only):
    """Under lens / translator an exited row skips the last block too (its state filled by the policy, merged with
    the climbing rows'): forced exits, and calm heads whose rows exit at different layers, equal batch 1."""
    from test_decoder import random_translators

    model = model_for(request, arch)
    translators = random_translators([3, 4, 5, 6]) if emission == "translator" else None
    kw = dict(max_new_tokens=8, eos_token_id=[])
    forced = ExitDecoder(model, build_heads("forced", 256, [5]), threshold=0.5, policy=policy, emission=emission,
                         translators=translators)
    got = forced.generate_batch(PROMPTS, climbing_only=climbing_only, **kw)
    assert all(same(a, b) for a, b in zip(batch1(forced, PROMPTS, **kw), got))
    assert all(r.exit_layers == [7] + [5] * 7 for r in got)
    decoder = ExitDecoder(model, build_heads("calm", 256, [3, 4, 5, 6], seed=11), threshold=0.5, policy=policy,
                          emission=emission, translators=translators)
    got = decoder.generate_batch(PROMPTS, climbing_only=climbing_only, **kw)
    ref = batch1(decoder, PROMPTS, **kw)
    for prompt, a, b in zip(PROMPTS, ref, got):
        if not same(a, b):
            assert explained(decoder, prompt, a, b, **kw) is not None, (prompt, a.exit_layers, b.exit_layers)
    assert sum(len({r.exit_layers[s] for r in ref}) > 1 for s in range(1, 8)) >= 3  # rows exit at different layers


@pytest.mark.parametrize("arch", ["mistral", "mamba2"])
def test_softmax_rule_through_the_translator_batched_equals_batch1(request, arch):
    """Under the translator rule the softmax rule reads final_norm(translate(h)); each evaluated exit runs one
    translation, which the exit reuses: batched equals batch 1, costs included."""
    from test_decoder import random_translators

    model = model_for(request, arch)
    kw = dict(max_new_tokens=6, eos_token_id=[])
    decoder = ExitDecoder(model, build_heads("softmax", 256, [3, 5]), threshold=0.0, emission="translator",
                          translators=random_translators([3, 5]))
    got = decoder.generate_batch(PROMPTS, **kw)
    ref = batch1(decoder, PROMPTS, **kw)
    assert all(same(a, b) for a, b in zip(ref, got))
    d = model.config.hidden_size
    assert all(r.exit_layers[1:] == [3] * 5 for r in got)  # threshold 0: the first exit always exits
    lm_head = model.config.vocab_size * d
    cost = decoder.cost_model.token_cost(3, len(PROMPTS[0]) + 1, decoder.policy, [lm_head], 0, "translator", 1)
    assert got[0].costs[0] == cost


class Trace:
    """Per decode step of a reference batch-1 run: every p_exit a head gave, and the top-2 logit gap of the chosen
    token."""

    def __init__(self, decoder):
        self.p: list[list[float]] = []  # p[s - 1]: the heads of decode step s (token s)
        self.gaps: list[float] = []  # gaps[s]: token s (0 from the prefill)
        self.hook = decoder.parts.lm_head.register_forward_hook(self._logits)
        self.heads = list(decoder.heads.values())
        for head in self.heads:  # an instance attribute: the decoder's head.step(...) calls land here
            head.step = self._wrap(type(head).step.__get__(head))

    def _wrap(self, step):
        def wrapped(z, state, z_in=None):
            logits, state = step(z, state, z_in)
            self.p[-1].append(float(logits.float().softmax(-1)[0, 1]))
            return logits, state
        return wrapped

    def _logits(self, module, args, out):
        top2 = out[0, -1].float().topk(2).values
        self.gaps.append(float(top2[0] - top2[1]))
        self.p.append([])

    def close(self):
        self.hook.remove()
        for head in self.heads:
            del head.step


def explained(decoder, prompt, ref, got, **kw) -> str | None:
    """Why a batched row differs from its batch-1 run, if it is a floating-point near-tie at the first difference:
    'exit' when a head's p_exit was within 1e-5 of the threshold, 'token' when the top-2 logits were within 1e-4."""
    reference = reference_of(decoder)
    trace = Trace(reference)
    try:
        again = reference.generate(torch.tensor([prompt]), **kw)
    finally:
        trace.close()
    assert same(again, ref)  # the batch-1 run is deterministic
    s = next(i for i, (a, b, ea, eb) in enumerate(zip(ref.token_ids, got.token_ids, ref.exit_layers, got.exit_layers))
             if a != b or ea != eb)
    if ref.exit_layers[s] != got.exit_layers[s] and any(abs(p - decoder.threshold) < 1e-5 for p in trace.p[s - 1]):
        return "exit"
    if ref.exit_layers[s] == got.exit_layers[s] and trace.gaps[s] < 1e-4:
        return "token"
    return None


# Thresholds at which the rows of one step exit at different layers: p_exit's spread on the random tiny backbones
# (the untrained softmax rule's top-2 margin is ~1e-4 on Mistral; consecutive blocks' cosines sit at 0.8-0.94).
DISAGREEING_THRESHOLDS = {"calm": {"mistral": (0.45, 0.55), "mamba2": (0.45, 0.55)},
                          "mamba": {"mistral": (0.45, 0.55), "mamba2": (0.45, 0.55)},
                          "softmax": {"mistral": (2e-4, 3e-4), "mamba2": (0.01, 0.03)},
                          "saturation": {"mistral": (0.87, 0.89), "mamba2": (0.9, 0.92)}}


@pytest.mark.parametrize("arch,policy", [(a, p) for a, p in ARCH_POLICIES if a != "llama"])  # llama: forced exits
@pytest.mark.parametrize("head_type", list(DISAGREEING_THRESHOLDS))
@pytest.mark.parametrize("climbing_only", [True, False])
def test_rows_that_disagree_equal_batch1(request, arch, policy, head_type, climbing_only):
    """Blocks after an exit on the climbing rows only, or on every row with the exited rows put back: both exact.
    The untrained heads too: the softmax head's LM head on R rows, the saturation head's z_in of those rows."""
    model = model_for(request, arch)
    heads = build_heads(head_type, 256, [3, 4, 5, 6], seed=11)
    kw = dict(max_new_tokens=8, eos_token_id=[])
    disagreeing_steps = 0
    for threshold in DISAGREEING_THRESHOLDS[head_type][arch]:
        decoder = ExitDecoder(model, heads, threshold=threshold, policy=policy)
        got = decoder.generate_batch(PROMPTS, climbing_only=climbing_only, **kw)
        ref = batch1(decoder, PROMPTS, **kw)
        for prompt, a, b in zip(PROMPTS, ref, got):
            if not same(a, b):  # only a floating-point near-tie may flip a decision; anything else is a bug
                assert explained(decoder, prompt, a, b, **kw) is not None, (prompt, a.exit_layers, b.exit_layers)
        # the test means something only if rows of one step exit at different layers
        disagreeing_steps += sum(len({r.exit_layers[s] for r in ref}) > 1 for s in range(1, 8))
    assert disagreeing_steps >= 6


def test_explained_identifies_a_flip(tiny_mistral):
    """A threshold set to a head's own p_exit is a near-tie: the flip a rounding difference would cause there is
    identified as one; a difference with no near-tie behind it is not."""
    heads = build_heads("calm", 256, [3, 4, 5, 6], seed=11)
    kw = dict(max_new_tokens=6, eos_token_id=[])
    probe = reference_of(ExitDecoder(tiny_mistral, heads, threshold=1.0))  # no head reaches 1: every head runs
    trace = Trace(probe)
    probe.generate(torch.tensor([PROMPTS[0]]), **kw)
    trace.close()
    threshold = trace.p[0][0]  # decode step 1, the head at block 3: p_exit == threshold, an exact tie
    decoder = ExitDecoder(tiny_mistral, heads, threshold=threshold)
    ref = reference_of(decoder).generate(torch.tensor([PROMPTS[0]]), **kw)
    flipped = reference_of(ExitDecoder(tiny_mistral, heads, threshold=threshold + 1e-6)).generate(
        torch.tensor([PROMPTS[0]]), **kw)
    assert ref.exit_layers[1] == 3 and flipped.exit_layers[1] != 3  # what a rounding difference would do
    assert explained(decoder, PROMPTS[0], ref, flipped, **kw) == "exit"
    wrong = copy.deepcopy(ref)
    wrong.token_ids[3] += 1  # a token that differs with no near-tie behind it
    assert explained(decoder, PROMPTS[0], ref, wrong, **kw) is None


def test_rows_stop_on_their_own(tiny_backbone):
    """EOS and the token limit end each row independently; the other rows go on exactly as alone."""
    free = ExitDecoder(tiny_backbone).generate_batch(PROMPTS, max_new_tokens=14, eos_token_id=[])
    eos = free[1].token_ids[4]  # a token row 1 produces: it stops there, rows without it run to the limit
    decoder = ExitDecoder(tiny_backbone, build_heads("calm", 256, [3, 4, 5, 6], seed=11), threshold=0.5)
    got = decoder.generate_batch(PROMPTS, max_new_tokens=14, eos_token_id=eos)
    ref = batch1(decoder, PROMPTS, max_new_tokens=14, eos_token_id=eos)
    assert all(same(a, b) for a, b in zip(ref, got))
    assert {r.stop_reason for r in got} == {"eos", "max_new_tokens"}
    lengths = [len(r.token_ids) for r in got]
    assert min(lengths) < max(lengths) == 14
    done = min(range(len(got)), key=lambda i: lengths[i])
    assert got[done].decode_seconds <= got[done].batch_decode_seconds  # its latency, not the whole batch's


def test_stop_strings_and_repetition_penalty(tiny_mistral):
    tok = byte_tokenizer()
    prompts = [tok("the quick brown fox").input_ids, tok("lazy dog").input_ids, tok("over").input_ids]
    free = ExitDecoder(tiny_mistral).generate_batch(prompts, max_new_tokens=12, eos_token_id=[])
    stop = tok.decode(free[0].token_ids[3:5])  # text row 0 produces: it stops there
    for penalty in (1.0, 1.3):
        decoder = ExitDecoder(tiny_mistral, build_heads("calm", 256, [3, 5], seed=2), threshold=0.5,
                              repetition_penalty=penalty)
        kw = dict(max_new_tokens=12, stop_strings=[stop], tokenizer=tok, eos_token_id=[])
        got = decoder.generate_batch(prompts, **kw)
        ref = batch1(decoder, prompts, **kw)
        assert all(same(a, b) for a, b in zip(ref, got))
        if penalty == 1.0:
            assert got[0].stop_reason == "stop_string"
    penalised = ExitDecoder(tiny_mistral, repetition_penalty=1.3).generate_batch(prompts, max_new_tokens=12,
                                                                               eos_token_id=[])
    for prompt, res in zip(prompts, penalised):  # transformers' own penalty on the unpadded prompt
        ids, _ = greedy(tiny_mistral, torch.tensor([prompt]), 12, eos_token_id=None, repetition_penalty=1.3)
        assert res.token_ids == ids


@pytest.mark.parametrize("prune", [1, 2])
def test_pruned_batched_equals_batch1(tiny_backbone, prune):
    decoder = ExitDecoder(tiny_backbone, build_heads("forced", 256, [3]), threshold=0.5, prune=prune)
    got = decoder.generate_batch(PROMPTS, max_new_tokens=8, eos_token_id=[])
    assert all(same(a, b) for a, b in zip(batch1(decoder, PROMPTS, max_new_tokens=8, eos_token_id=[]), got))


@pytest.mark.parametrize("arch,policy", ARCH_POLICIES)
@pytest.mark.parametrize("head_type", ["calm", "mamba"])
def test_thresholds_from_one_prefill_equal_separate_runs(request, arch, policy, head_type):
    """Several thresholds decoded from one shared prefill (copies of its cache and head states) give exactly what a
    separate run at each threshold gives, in the order asked; the decoder keeps its own threshold."""
    model = model_for(request, arch)
    heads = build_heads(head_type, 256, [3, 4, 5, 6], seed=11)
    decoder = ExitDecoder(model, heads, threshold=0.7, policy=policy)
    thresholds = [0.55, 0.0, 0.45, 1.0]
    kw = dict(max_new_tokens=8, eos_token_id=[])
    shared = decoder.generate_batch_thresholds(PROMPTS, thresholds, **kw)
    assert decoder.threshold == 0.7
    exits = set()
    for threshold, got in zip(thresholds, shared):
        ref = ExitDecoder(model, heads, threshold=threshold, policy=policy).generate_batch(PROMPTS, **kw)
        assert all(same(a, b) for a, b in zip(ref, got)), threshold
        exits |= {e for r in got for e in r.exit_layers[1:]}
    assert len(exits) >= 3  # the thresholds lead to different exits, so a shared state that leaked would show


@pytest.mark.parametrize("arch", ["mistral", "mamba2"])
def test_one_prefill_for_every_decoder(request, arch):
    """decode_shared: the full model, pruned models (deepest and a middle range), stateful mamba heads, the oracle and
    two thresholds decoded from one full-depth pass of the prompts give exactly what each decodes alone; each pruned
    model also what the reference's own pruned prefill gives, row by row (its blocks after the dropped range re-run
    on the hidden state that entered it)."""
    from workflow_lib.decoding.decoder import decode_shared

    model = model_for(request, arch)
    kw = dict(max_new_tokens=8, eos_token_id=[])
    mamba_heads = build_heads("mamba", 256, [3, 5], seed=4)
    runs = [(ExitDecoder(model), 2.0), (ExitDecoder(model, prune=2), 2.0), (ExitDecoder(model, prune=2, prune_start=2), 2.0),
            (ExitDecoder(model, build_heads("calm", 256, [2], seed=3), threshold=0.5, prune=3, prune_start=3), 0.5),
            (ExitDecoder(model, mamba_heads, threshold=0.5), 0.5), (ExitDecoder(model, mamba_heads, threshold=0.5), 0.45),
            (ExitDecoder(model, oracle_exits=[2, 4, 6]), 2.0)]
    shared = decode_shared(runs, PROMPTS, **kw)
    for (decoder, threshold), got in zip(runs, shared):
        alone = decode_shared([(decoder, threshold)], PROMPTS, **kw)[0]
        assert all(same(a, b) for a, b in zip(alone, got))
        if decoder.prune:
            assert all(same(a, b) for a, b in zip(batch1(decoder, PROMPTS, **kw), got))
    assert {r.prefill_seconds > 0 for rows in shared for r in rows} == {True}


def test_thresholds_need_exit_heads(tiny_mistral):
    with pytest.raises(ValueError, match="several thresholds need a decoder with exit heads"):
        ExitDecoder(tiny_mistral).generate_batch_thresholds(PROMPTS, [0.2, 0.5], max_new_tokens=4)
    decoder = ExitDecoder(tiny_mistral, build_heads("calm", 256, [3]), threshold=0.5)
    with pytest.raises(ValueError, match="thresholds in \\[0, 1\\]"):
        decoder.generate_batch_thresholds(PROMPTS, [0.2, 1.5], max_new_tokens=4)


def test_bad_input_refused(tiny_mistral):
    decoder = ExitDecoder(tiny_mistral)
    for prompts, message in [([], "non-empty list"), (torch.tensor([[1, 2]]), "non-empty list"),
                             ([[1, 2], []], "prompt 1 is empty"),
                             ([[1] * 2049], "longer than the model's context of 2048"),
                             ([[1, 5000]], "outside the vocabulary")]:
        with pytest.raises(ValueError, match=message):
            decoder.generate_batch(prompts, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        decoder.generate_batch([[1, 2]], max_new_tokens=0)


def test_run_record_counts_each_batch_once():
    rows = [{"token_ids": [5, 6, 7], "exit_layers": [7, 3, 7], "stop_reason": "eos", "costs": [], "decode_seconds": d,
             "prefill_seconds": 0.5, "batch_id": 1, "batch_size": 2, "batch_decode_seconds": 2.0} for d in (1.0, 2.0)]
    speed = generation_summary(rows, 0.5)["speed"]
    assert speed["decode_tokens"] == 4 and speed["decode_seconds"] == 2.0 and speed["prefill_seconds"] == 0.5
    assert speed["decode_tokens_per_second"] == 2.0 and speed["batches"] == 1 and speed["batch_size"] == 2


def test_padded_forward_prefill_equals_row_prefill(tiny_any):
    """The padded batch through one forward (the GPU path) gives the caches, head states and logits that the
    row-by-row pass (the CPU path for padded batches) stacks from batch-1 prefills, up to rounding."""
    from workflow_lib.decoding.prefill import Prefill

    decoder = ExitDecoder(tiny_any, build_heads("mamba", 256, [3, 5], seed=4), threshold=0.5)
    padded = Prefill([decoder], PROMPTS, 4, by_rows=False)
    by_rows = Prefill([decoder], PROMPTS, 4, by_rows=True)
    assert padded.batch.padded
    batch, cache, states, logits, _ = padded.start(decoder)
    _, row_cache, row_states, row_logits, _ = by_rows.start(decoder)
    torch.testing.assert_close(logits, row_logits, rtol=1e-4, atol=1e-4)
    real = batch.mask.bool()  # (B, W): the positions that are not padding
    for j, (a, b) in enumerate(zip(cache.layers, row_cache.layers)):
        if decoder.parts.is_attention:
            for name in ("keys", "values"):
                got, ref = getattr(a, name).transpose(1, 2)[real], getattr(b, name).transpose(1, 2)[real]
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        else:
            for name in ("conv_states", "recurrent_states"):
                torch.testing.assert_close(getattr(a, name)[0], getattr(b, name)[0], rtol=1e-4, atol=1e-4)
    for layer in decoder.heads:
        for name in ("conv_states", "recurrent_states"):
            torch.testing.assert_close(getattr(states[layer].layers[0], name)[0],
                                       getattr(row_states[layer].layers[0], name)[0], rtol=1e-4, atol=1e-4)


def test_decoding_imports_run_one_way():
    """decoder.py -> step.py -> core.py: importing the step does not import the loop."""
    import subprocess
    import sys

    code = ("import sys, workflow_lib.decoding.step; "
            "assert 'workflow_lib.decoding.decoder' not in sys.modules, 'step.py imports decoder.py'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arch,policy,emission,climbing_only", [
    (arch, policy, emission, True) for arch, policy in (("mistral", "recompute"), ("llama", "copy_prev"),
                                                        ("mamba2", "skip")) for emission in ("last_block", "lens",
                                                                                             "translator")]
    + [("mistral", "copy", "last_block", False), ("mamba2", "recompute", "translator", False)])
def test_oracle_batched_equals_batch1(request, arch, policy, emission, climbing_only):
    """The oracle's look-ahead on every row at once, each row then exiting at its own earliest agreeing exit: what
    batch 1 gives each prompt (tokens, exits, costs), on a random model whose exits agree now and then."""
    from test_decoder import random_translators

    model = model_for(request, arch)
    exits = [2, 4, 6]
    translators = random_translators(exits) if emission == "translator" else None
    decoder = ExitDecoder(model, policy=policy, oracle_exits=exits, emission=emission, translators=translators)
    kw = dict(max_new_tokens=8, eos_token_id=[])
    got = decoder.generate_batch(PROMPTS, climbing_only=climbing_only, **kw)
    ref = batch1(decoder, PROMPTS, **kw)
    for a, b in zip(ref, got):
        assert same(a, b), (a.exit_layers, b.exit_layers)
    steps = [{r.exit_layers[s] for r in ref} for s in range(1, 8)]
    assert any(len(s) > 1 for s in steps)  # rows of one step exit at different blocks
    with pytest.raises(ValueError, match="several thresholds"):
        decoder.generate_batch_thresholds(PROMPTS, [0.5, 0.9], **kw)
