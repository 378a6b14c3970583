"""Speculative decoding (decoding/speculative.py): the exits draft, the full model verifies, every token is the full
model's greedy token: equal to transformers' `generate` at batch size 1 and batched, both backbone families, every
emission rule, EOS and stop strings; drafts accepted where they are right, rolled back where they are not; costs."""
import json

import pytest
import torch
from eval_setup import task_files  # noqa: F401  (fixture)
from test_decoder import lossless_after, byte_tokenizer, greedy, random_translators

from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.models.backbone import build_backbone, preset_config
from workflow_lib.models.heads import build_heads

# different lengths (a padded batch); the 1-token prompt has no context at all
PROMPTS = [[1, 17, 250, 33, 980, 4, 77, 512, 9], [1, 40, 300], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [3]]
EXITS = [2, 4, 6]


def reference(model, prompts, n, **kw):
    """transformers' greedy generate, one prompt at a time."""
    return [greedy(model, torch.tensor([p]), n, **kw)[0] for p in prompts]


@pytest.mark.parametrize("arch", ["mistral", "llama", "mamba2"])
@pytest.mark.parametrize("emission", ["last_block", "lens", "translator"])
@pytest.mark.parametrize("climb", ["deepest", "shallowest"])
def test_every_token_is_the_full_models(request, arch, emission, climb):
    """Random heads draft at random: most drafts are wrong and roll back, some are right; the tokens are generate's,
    at batch size 1 and in a padded batch where rows keep different numbers of tokens per cycle."""
    model = request.getfixturevalue(f"tiny_{arch}")
    want = reference(model, PROMPTS, 12, eos_token_id=None)
    translators = random_translators(EXITS) if emission == "translator" else None
    decoder = ExitDecoder(model, build_heads("calm", 256, EXITS, seed=1).eval(), threshold=0.45, emission=emission,
                          translators=translators, max_draft=3, draft_climb=climb)
    alone = [decoder.generate_batch([p], max_new_tokens=12, eos_token_id=[])[0] for p in PROMPTS]
    batched = decoder.generate_batch(PROMPTS, max_new_tokens=12, eos_token_id=[])
    assert [r.token_ids for r in alone] == [r.token_ids for r in batched] == want
    drafted = sum(r.speculation["drafted"] for r in batched)
    rejected = sum(r.speculation["drafted"] - r.speculation["accepted"] for r in batched)
    assert drafted > 10 and rejected > 0  # the test means something: drafts were made and some rolled back
    if emission != "translator":  # random translators: no draft is ever right
        assert len({r.speculation["accepted"] for r in batched}) > 1  # rows accept different numbers
    for a, b in zip(alone, batched):  # a row's cycles do not depend on its neighbours
        assert {k: a.speculation[k] for k in ("cycles", "drafted", "accepted")} == \
            {k: b.speculation[k] for k in ("cycles", "drafted", "accepted")}


@pytest.mark.parametrize("arch", ["mistral", "mamba2"])
@pytest.mark.parametrize("max_draft", [1, 4])
def test_right_drafts_are_all_kept(arch, max_draft):
    """Blocks after 3 made identities and a head that always exits at 3 under last_block: every draft is the full
    model's token, so each cycle keeps max_draft tokens (a capped cycle keeps its drafts, the next one starts from
    the last), and the tokens are generate's."""
    model = lossless_after(build_backbone(preset_config(f"tiny-{arch}"), seed=1, device="cpu",
                                           dtype=torch.float32), 3, 0.3)
    n = 13
    want = reference(model, PROMPTS, n, eos_token_id=None)
    decoder = ExitDecoder(model, build_heads("forced", 256, [3]), threshold=0.5, max_draft=max_draft)
    got = decoder.generate_batch(PROMPTS, max_new_tokens=n, eos_token_id=[])
    assert [r.token_ids for r in got] == want
    for r in got:
        s = r.speculation
        assert s["accepted"] == s["drafted"] == s["kept"] == n - 1
        assert s["cycles"] == -(-(n - 1) // max_draft)
        assert r.exit_layers == [7] + [3] * (n - 1)  # every kept token was a draft of the exit at block 3


def climbs(model, decoder, prompt: list[int], n: int) -> list[list[int]]:
    """Per cycle, the block each drafting token climbed to: every block call is recorded (its index and positions);
    a drafting token runs blocks 0, 1, ... on one position, a verification runs several positions at once."""
    calls = []
    hooks = [layer.register_forward_hook(lambda m, args, out, j=j: calls.append((j, args[0].shape[1])))
             for j, layer in enumerate(model.model.layers)]
    try:
        decoder.generate_batch([prompt], max_new_tokens=n, eos_token_id=[])
    finally:
        for hook in hooks:
            hook.remove()
    cycles, cycle = [], []
    for j, positions in calls[len(model.model.layers):]:  # after the prefill
        if positions > 1:  # the verification ends the cycle
            if cycle:
                cycles.append(cycle)
            cycle = []
        elif j == 0:
            cycle.append(0)
        elif j <= max(EXITS):
            cycle[-1] = j
    return cycles


def test_a_shallow_climb_goes_no_higher_than_the_cycle(tiny_mistral):
    """draft_climb="shallowest": after a cycle's first token, no token climbs above the shallowest block the cycle's
    tokens stopped at (above it the verification recomputes every position); "deepest" climbs higher on the same
    model and prompt, so the check can fail. Both give generate's tokens (test_every_token_is_the_full_models)."""
    heads = build_heads("calm", 256, EXITS, seed=1).eval()
    tops = {climb: climbs(tiny_mistral, ExitDecoder(tiny_mistral, heads, threshold=0.75, emission="translator",
                                                    translators=random_translators(EXITS), max_draft=3,
                                                    draft_climb=climb), PROMPTS[0], 16)
            for climb in ("deepest", "shallowest")}

    def higher(cycle):
        return any(top > min(cycle[:i]) for i, top in enumerate(cycle) if i)
    assert sum(len(c) > 1 for c in tops["shallowest"]) >= 3  # cycles with drafts
    assert not any(higher(c) for c in tops["shallowest"]) and any(higher(c) for c in tops["deepest"])


def test_eos_and_stop_strings_end_a_row_inside_a_cycle(tiny_mistral):
    """A stop that falls inside a cycle's kept tokens ends the row there, as generate stops."""
    free = reference(tiny_mistral, PROMPTS, 16, eos_token_id=None)
    decoder = ExitDecoder(tiny_mistral, build_heads("calm", 256, EXITS, seed=1).eval(), threshold=0.45, max_draft=4)
    for prompt, ids in zip(PROMPTS, free):
        eos = ids[6]
        got = decoder.generate_batch([prompt], max_new_tokens=16, eos_token_id=eos)[0]
        assert got.token_ids == ids[:ids.index(eos) + 1] and got.stop_reason == "eos"
    tokenizer = byte_tokenizer()
    model = lossless_after(build_backbone(preset_config("tiny-mistral", vocab_size=len(tokenizer),
                                                         num_hidden_layers=8), seed=1, device="cpu"), 3, 0.3)
    prompt = tokenizer("the quick", return_tensors="pt").input_ids
    plain = ExitDecoder(model).generate(prompt, max_new_tokens=20, eos_token_id=[])
    text = tokenizer.decode(plain.token_ids)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    want = ExitDecoder(model).generate(prompt, max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer,
                                       eos_token_id=[])
    spec = ExitDecoder(model, build_heads("forced", 256, [3]), threshold=0.5, max_draft=4)
    got = spec.generate(prompt, max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer, eos_token_id=[])
    assert want.stop_reason == got.stop_reason == "stop_string" and got.token_ids == want.token_ids


def test_draft_vocabulary(tiny_mistral):
    """Drafts from a few rows of the LM head: still the full model's tokens; a draft outside that vocabulary is
    never made, and the emission is charged for its rows only."""
    want = reference(tiny_mistral, PROMPTS, 10, eos_token_id=None)
    vocab = sorted({t for ids in want for t in ids})[::2]  # half of the tokens the model says
    heads = build_heads("calm", 256, EXITS, seed=1).eval()
    full = ExitDecoder(tiny_mistral, heads, threshold=0.45, max_draft=3)
    small = ExitDecoder(tiny_mistral, heads, threshold=0.45, max_draft=3, draft_vocab=vocab)
    got = small.generate_batch(PROMPTS, max_new_tokens=10, eos_token_id=[])
    assert [r.token_ids for r in got] == want
    drafted = [t for r in got for t, e in zip(r.token_ids, r.exit_layers) if e < 7]
    assert set(drafted) <= set(vocab)
    cheaper = sum(r.speculation["macs_draft"] for r in got)
    dearer = sum(r.speculation["macs_draft"] for r in full.generate_batch(PROMPTS, max_new_tokens=10,
                                                                          eos_token_id=[]))
    assert cheaper < dearer


def test_costs_add_up(tiny_mistral):
    """A cycle's MACs (drafts, verification) are shared by the tokens it keeps: the run's spent MACs are the drafts'
    plus the verifications'; the full model's are one full token per kept token."""
    decoder = ExitDecoder(tiny_mistral, build_heads("calm", 256, EXITS, seed=1).eval(), threshold=0.45, max_draft=3)
    got = decoder.generate_batch([PROMPTS[0]], max_new_tokens=12, eos_token_id=[])[0]
    s = got.speculation
    assert sum(c.macs_spent for c in got.costs) == s["macs_draft"] + s["macs_verify"]
    cm = decoder.cost_model
    assert [c.macs_full for c in got.costs] == [cm.full_token_macs(len(PROMPTS[0]) + i + 1) for i in range(11)]
    assert s["kept"] == 11 and 0 < s["macs_rejected"] < s["macs_draft"] + s["macs_verify"]


@pytest.mark.parametrize("arch", ["mistral", "mamba2"])
@pytest.mark.parametrize("emission", ["last_block", "translator"])
def test_a_token_that_does_not_exit_stops_climbing_at_the_deepest_exit(request, arch, emission):
    """A drafting step whose token exits nowhere stops after the deepest exit's block: the blocks above run once per
    cycle, in the verification, as the cost model counts (they once ran in the draft as well, then again)."""
    model = request.getfixturevalue(f"tiny_{arch}")
    layers = model.model.layers if hasattr(model, "model") else model.backbone.layers
    calls = [0] * len(layers)
    hooks = [block.register_forward_hook(lambda *_, j=j: calls.__setitem__(j, calls[j] + 1))
             for j, block in enumerate(layers)]
    translators = random_translators([2, 4]) if emission == "translator" else None
    decoder = ExitDecoder(model, build_heads("calm", 256, [2, 4], seed=1).eval(), threshold=1.0, emission=emission,
                          translators=translators, max_draft=3)  # p_exit never reaches 1: no token exits
    try:
        got = decoder.generate_batch(PROMPTS[:1], max_new_tokens=8, eos_token_id=[])[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert got.speculation["drafted"] == 0 and got.speculation["cycles"] == 7
    assert len(set(calls)) == 1, calls  # every block: the prefill, then once per cycle


def test_exits_off_is_plain_decoding(tiny_mamba2):
    decoder = ExitDecoder(tiny_mamba2, build_heads("calm", 256, EXITS), threshold=2.0, max_draft=3)
    got = decoder.generate_batch(PROMPTS, max_new_tokens=8, eos_token_id=[])
    assert [r.token_ids for r in got] == reference(tiny_mamba2, PROMPTS, 8, eos_token_id=None)
    assert all(r.speculation is None for r in got)


def test_refused(tiny_mistral):
    heads = build_heads("calm", 256, [2, 4])
    for kwargs, message in [(dict(max_draft=0), "max_draft must be an integer >= 1"),
                            (dict(max_draft=2, prune=1), "no pruning"),
                            (dict(max_draft=2, repetition_penalty=1.2), "no repetition penalty"),
                            (dict(max_draft=2, draft_vocab=[1, 1]), "distinct token ids"),
                            (dict(max_draft=2, draft_vocab=[10 ** 6]), "distinct token ids"),
                            (dict(max_draft=2, draft_climb="highest"), "draft_climb must be one of"),
                            (dict(draft_vocab=[1, 2]), "is for speculative decoding")]:
        with pytest.raises(ValueError, match=message):
            ExitDecoder(tiny_mistral, heads, threshold=0.5, **kwargs)
    with pytest.raises(ValueError, match="mamba head"):
        ExitDecoder(tiny_mistral, build_heads("mamba", 256, EXITS), threshold=0.5, max_draft=2)


def test_evaluate_speculative_points_pair_exits_off_and_equal_the_baseline(task_files, tmp_path):  # noqa: F811
    """`evaluate --max-draft`: the record's answers are the baseline's, every one; it counts drafts, acceptance and
    where the MACs went, and the measured speedup over exits off decoded from the same prefills, batch by batch."""
    from eval_setup import save_calm_heads, save_tiny_backbone

    from workflow_lib.cli.evaluate import main

    backbone = save_tiny_backbone(tmp_path / "mistral", "tiny-mistral")
    heads = save_calm_heads(tmp_path / "heads", backbone, exit_layers=(1, 2))
    common = ["--backbone", str(backbone), "--task", "truthfulqa", "--data", str(task_files["truthfulqa"]),
              "--limit", "4", "--max-new-tokens", "8", "--batch-size", "2"]
    main([*common, "--no-heads", "--out-dir", str(tmp_path / "baseline")])
    main([*common, "--heads", str(heads), "--thresholds", "0.0,0.5", "--max-draft", "3",
          "--out-dir", str(tmp_path / "spec")])
    base = [json.loads(line) for line in (tmp_path / "baseline" / "samples.jsonl").read_text().splitlines()]
    for t in ("0.0", "0.5"):
        folder = tmp_path / "spec" / f"threshold~{t}"
        record = json.loads((folder / "record.json").read_text())
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert [s["resps"] for s in samples] == [s["resps"] for s in base]
        assert [s["dynamax"]["token_ids"] for s in samples] == [s["dynamax"]["token_ids"] for s in base]
        spec = record["speculation"]
        assert record["max_draft"] == 3 and spec["drafted"] > 0 and spec["cycles"] > 0
        assert spec["kept"] == record["speed"]["decode_tokens"]
        assert spec["paired_speedup"] > 0 and spec["paired_speedup_batches"]["n"] == 2  # 4 questions, batches of 2
        assert record["provenance"]["config"]["max_draft"] == 3
    low = json.loads((tmp_path / "spec" / "threshold~0.0" / "record.json").read_text())
    assert low["speculation"]["drafted"] >= low["speculation"]["accepted"] > 0  # threshold 0: every token drafts


def test_evaluate_refuses_speculative_without_exits(task_files, tmp_path, capsys):  # noqa: F811
    from workflow_lib.cli.evaluate import main

    common = ["--backbone", "preset:tiny-mistral", "--task", "triviaqa", "--data", str(task_files["triviaqa"]),
              "--out-dir", str(tmp_path / "x")]
    for extra, message in [(["--no-heads", "--max-draft", "2"], "--max-draft must be >= 1, with --heads"),
                           (["--no-heads", "--draft-vocab", str(task_files["triviaqa"])], "--draft-vocab is for"),
                           (["--oracle", "--max-draft", "2", "--draft-vocab", str(tmp_path / "no.json")],
                            "--draft-vocab: file not found")]:
        with pytest.raises(SystemExit):
            main([*common, *extra])
        assert message in capsys.readouterr().err


def test_draft_vocab_entry_point(tmp_path):
    """The vocabulary holds the tokens the model emitted first, then its prompts', then the text's, EOS always; the
    file says how much of the answers and the text it covers; a decoder reads it."""
    import json as json_

    from eval_setup import save_tiny_backbone

    from workflow_lib.cli.draft_vocab import draft_vocabulary, main as draft_main
    from workflow_lib.decoding.answers import greedy_answers, save_answers
    from workflow_lib.evaluation.lm_model import read_draft_vocab
    from workflow_lib.models.backbone import load_backbone, load_tokenizer

    assert draft_vocabulary([7, 7, 9], [3, 3, 3, 9], [5, 5, 1], 4, eos=2) == [2, 3, 7, 9]
    assert draft_vocabulary([7], [], [5, 5, 6], 10, eos=None) == [5, 6, 7]
    backbone = save_tiny_backbone(tmp_path / "mistral", "tiny-mistral")
    tokenizer = load_tokenizer(str(backbone))
    model = load_backbone(str(backbone), device="cpu").eval()
    answers = greedy_answers(model, tokenizer, ["Q: Where did the baker live?\n\nA:", "Cotton was"], 6,
                             progress=False)
    save_answers(tmp_path / "answers.safetensors", answers, {"settings": {}, "backbone": {}})
    (tmp_path / "text.txt").write_text("the baker lived by the river\nCotton was a white kitten\n")
    out = tmp_path / "vocab.json"
    draft_main(["--answers", str(tmp_path / "answers.safetensors"), "--text", str(tmp_path / "text.txt"),
                "--tokenizer", str(backbone), "--size", "20", "--out", str(out)])
    written = json_.loads(out.read_text())
    emitted = {t for ids, counted in answers for t in ids[0, counted[0].tolist().index(True):].tolist()}
    assert len(written["token_ids"]) == 20 and tokenizer.eos_token_id in written["token_ids"]
    assert emitted <= set(written["token_ids"]) and written["coverage"]["answers"] == 1.0
    assert read_draft_vocab(str(out)) == written["token_ids"]
    with pytest.raises(SystemExit):
        draft_main(["--answers", str(tmp_path / "answers.safetensors"), "--text", str(tmp_path / "text.txt"),
                    "--tokenizer", str(backbone), "--out", str(tmp_path / "vocab.txt")])
