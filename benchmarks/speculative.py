"""Speculative (lossless) early exit against exits off, the lossy exits and transformers' `assistant_early_exit`
on a task's evaluated prompts (issue 36, docs: benchmarks/README.md).

The prompts are the task's as lm-eval builds them for evaluate (`tasks.task_prompts`: same shots, few-shot pool and
seed), encoded, truncated and stopped as the `dynamax` lm-eval model does (the task's `until` plus the EOS text, the
EOS id, its max_gen_toks), batched as its Collator batches them (longest first). Variants, interleaved round by round:
  exits_off            the project's decoder, no exits: the reference of every speedup
  lossy@T              the exit decoder at --lossy-threshold T (the lossy no-loss point; its tokens may differ)
  spec@T/K/V[/C]       speculative at threshold T, max_draft K, draft vocabulary V (size, or 'full') and draft_climb
                       C (named unless 'deepest'): the grid
  exits_off_call, generate, aee@k   (batch 1, with --assistant-early-exit): whole calls, prefill included, as
                       transformers' generate cannot time its decode alone: the project's exits-off decoder as one
                       call, plain greedy `model.generate`, and `generate(assistant_early_exit=k)`
Ours are timed on decode alone (each batch prefilled once, untimed, and decoded from a copy of its cache; a
`prefill` variant times the same prefills every round, so `speedup_whole_call` adds it to both sides).

Per variant: ms per token (decode tokens for ours, answer tokens for whole calls); speedup over exits off (the
whole-call kind over exits_off_call) as a ratio of times per token over the batches whose answers all equal exits
off's (`speedup_batches` of `batches`: every batch for a lossless variant; a lossy variant's changed answer has other
tokens at other contexts, and in a batch changes how long the batch runs with idle rows): pooled (sums of times over
sums of tokens) and the median and quartiles of the ratios paired per batch, each batch timed by its fastest round
(a round disturbed by the machine drops out instead of moving every ratio it enters); the MAC-based CRF over the same
prompts (`crf_exact_macs`, its bound; `crf_exact_macs_all` over every prompt); the raw seconds per (round, batch) and
tokens per batch (`seconds`, `batch_tokens`) stay in each row; prompts and tokens that differ from exits off
(speculative and generate must have none: the script
exits 1 naming them after writing the JSON); speculative: acceptance (accepted / drafted), tokens per verification,
drafts, rejected drafts, MACs of drafts / verification / rejected work / Mamba-2 rollback, the MAC-based CRF
(`crf_exact_macs`: compute, not time) and per cycle the accepted lengths and the drafts' exit layers (what
speculative_7b.py borrows); assistant_early_exit: drafted and accepted tokens per verification, counted by wrapping
`AssistedCandidateGenerator.get_candidates` / `update_candidate_strategy` (restored afterwards). The best
speculative setting (highest pooled speedup, tokens all equal) is printed and stored as `best`.

  python benchmarks/speculative.py --backbone results/backbones/smollm2 \\
      --heads results/heads/smollm2/head~calm/emission~translator --emission translator \\
      --translators results/translators/smollm2 --task triviaqa --data results/data/triviaqa.jsonl \\
      --fewshot-data results/data/triviaqa_train.jsonl --n-prompts 32 --lossy-threshold 0.9 \\
      --thresholds 0.5,0.7,0.9 --max-drafts 2,4,6 --draft-vocabs none,results/draft_vocab/smollm2/draft_vocab.json \\
      --assistant-early-exit 14,26 --threads 2 --repeats 3
Without --heads: random `calm` heads at --exit-layers (presets, tests); a preset needs --tokenizer.
"""
from __future__ import annotations

import argparse
import statistics
from collections import Counter
from contextlib import contextmanager
from itertools import product
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from timing import add_common_args, interleaved, print_table, save, setup, spread, timed

from workflow_lib.choices import EMISSION_RULES
from workflow_lib.decoding.accounting import crf_exact
from workflow_lib.decoding.core import DRAFT_CLIMBS
from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.decoding.prefill import Prefill
from workflow_lib.evaluation.lm_model import read_draft_vocab
from workflow_lib.evaluation.tasks import TASKS, load_task, task_prompts
from workflow_lib.models.backbone import default_exit_layers, load_backbone, load_tokenizer, parts
from workflow_lib.models.heads import build_heads, load_heads
from workflow_lib.models.translators import Translators, load_translators

LOSSLESS = ("speculative", "exits_off_call", "generate", "assistant_early_exit")  # kinds whose tokens must be equal


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="backbone folder, hub id or preset:NAME")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, id or GGUF (default: the backbone's)")
    p.add_argument("--heads", default=None, help="trained heads folder (default: random calm heads at --exit-layers)")
    p.add_argument("--exit-layers", default=None, help="random heads' exit layers, comma-separated (default: the 4 "
                   "default ones)")
    p.add_argument("--emission", default="last_block", choices=EMISSION_RULES,
                   help="emission rule the heads were trained for (default: last_block)")
    p.add_argument("--translators", default=None, help="translators folder (translator rule; default: zero "
                   "translators, i.e. the logit lens, for random heads)")
    p.add_argument("--policy", default=None, help="missing-state policy (default: the decoder's)")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", required=True, help="the task's data file (results/data/TASK.jsonl)")
    p.add_argument("--fewshot-data", default=None, help="TriviaQA's few-shot pool (results/data/triviaqa_train.jsonl)")
    p.add_argument("--shots", type=int, default=None, help="few-shot examples (default: the task's own)")
    p.add_argument("--n-prompts", type=int, default=16, help="the task's first N evaluated prompts (default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's max_gen_toks")
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default: 1)")
    p.add_argument("--lossy-threshold", type=float, default=None, help="the lossy exit decoder's threshold (its "
                   "no-loss point); default: no lossy variant")
    p.add_argument("--thresholds", default="0.5,0.7,0.9", help="speculative thresholds (default: 0.5,0.7,0.9)")
    p.add_argument("--max-drafts", default="2,4", help="speculative max_draft values (default: 2,4)")
    p.add_argument("--draft-vocabs", default="none", help="draft vocabularies: 'none' (the full LM head) or files "
                   "of cli/draft_vocab.py, comma-separated (default: none)")
    p.add_argument("--draft-climbs", default="deepest", help="how high a drafting token climbs (ExitDecoder's "
                   f"draft_climb: {', '.join(DRAFT_CLIMBS)}), comma-separated (default: deepest)")
    p.add_argument("--assistant-early-exit", default="", help="transformers' generate(assistant_early_exit=k) for "
                   "these k, comma-separated, with plain generate and our exits-off call (batch 1 only)")
    add_common_args(p, out="results/benchmarks/speculative.json")
    p.set_defaults(repeats=3, warmup=0)  # a round is long: the warm-up is one batch through every variant
    return p.parse_args(argv)


def numbers(spec: str, kind, flag: str) -> list:
    try:
        return [kind(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: {flag} must be comma-separated numbers, got {spec!r}") from None


def check_args(a: argparse.Namespace) -> dict:
    """Every flag checked before a model loads; the parsed grids."""
    grid = {"thresholds": numbers(a.thresholds, float, "--thresholds"),
            "max_drafts": numbers(a.max_drafts, int, "--max-drafts"),
            "aee": numbers(a.assistant_early_exit, int, "--assistant-early-exit"),
            "climbs": [c.strip() for c in a.draft_climbs.split(",") if c.strip()], "vocabs": {}}
    if not grid["climbs"] or set(grid["climbs"]) - set(DRAFT_CLIMBS):
        raise SystemExit(f"error: --draft-climbs must list some of {', '.join(DRAFT_CLIMBS)}, got {a.draft_climbs!r}")
    if not Path(a.data).is_file() or (a.fewshot_data and not Path(a.fewshot_data).is_file()):
        raise SystemExit(f"error: task data {a.data!r} or few-shot pool {a.fewshot_data!r} does not exist")
    if a.n_prompts < 1 or a.batch_size < 1 or (a.max_new_tokens is not None and a.max_new_tokens < 1):
        raise SystemExit("error: --n-prompts, --batch-size and --max-new-tokens must be >= 1")
    if not all(0 <= t <= 1 for t in grid["thresholds"] + ([a.lossy_threshold] if a.lossy_threshold is not None
                                                          else [])):
        raise SystemExit("error: thresholds must lie in [0, 1]")
    if not grid["thresholds"] or not grid["max_drafts"] or min(grid["max_drafts"]) < 1:
        raise SystemExit("error: --thresholds and --max-drafts must be non-empty, max drafts >= 1")
    if grid["aee"] and a.batch_size != 1:
        raise SystemExit("error: --assistant-early-exit runs at --batch-size 1 only (transformers' assisted "
                         "generation decodes one row)")
    if a.backbone.startswith("preset:") and not a.tokenizer:
        raise SystemExit("error: a preset backbone has no tokenizer: give --tokenizer")
    for spec in a.draft_vocabs.split(","):
        try:
            grid["vocabs"][spec] = None if spec.strip().lower() == "none" else read_draft_vocab(spec)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    return grid


def task_inputs(a: argparse.Namespace, tokenizer, config) -> tuple[list[list[int]], list[str], int, int]:
    """(token ids per prompt, stop strings, max new tokens, EOS id) as the dynamax lm-eval model gets them."""
    from lm_eval.models.utils import (DEFAULT_MAX_LENGTH, handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                      resolve_max_length)

    texts = task_prompts(a.task, a.data, a.shots, a.n_prompts, a.fewshot_data, a.seed)
    _, built = load_task(a.task, a.data, fewshot_data=a.fewshot_data)
    kwargs = normalize_gen_kwargs(dict(built.get_config("generation_kwargs")))
    eos = tokenizer.eos_token_id
    until = handle_stop_sequences(kwargs["until"], eos=tokenizer.decode(eos, skip_special_tokens=False))
    max_new = a.max_new_tokens or kwargs["max_gen_toks"]
    keep = resolve_max_length(config, tokenizer, default=DEFAULT_MAX_LENGTH) - max_new  # HFLM's left truncation
    prompts = []
    for text in texts:  # HFLM.tok_batch_encode, one string at a time
        special = {"add_special_tokens": False} if has_bos_prefix(text, tokenizer.bos_token) else {}
        prompts.append(tokenizer(text, **special).input_ids[-keep:])
    return prompts, until, max_new, eos


def cut_at_stop(ids: list[int], eos: int, until: list[str], tokenizer) -> list[int]:
    """A generation up to and including the token where the decoder's stop rule first fires (generate's assisted
    path can accept tokens past a stop string inside one verification)."""
    for i in range(1, len(ids) + 1):
        if ExitDecoder.stop_reason(ids[:i], {eos}, until, tokenizer):
            return ids[:i]
    return ids


def differences(got: list[list[int]], want: list[list[int]]) -> tuple[list[int], int]:
    """Prompts whose tokens differ, and differing tokens (position by position, a missing one counting)."""
    bad, tokens = [], 0
    for i, (g, w) in enumerate(zip(got, want)):
        n = sum(x != y for x, y in zip(g, w)) + abs(len(g) - len(w))
        if n:
            bad.append(i)
            tokens += n
    return bad, tokens


def cycles(exit_layers: list[int], last: int, max_draft: int) -> list[tuple[int, bool]]:
    """Per verification cycle of one row, from its kept tokens' exit layers: (drafts accepted, whether the cycle ended
    on the full model's own token). A cycle keeps its accepted drafts (exit < last) then the full model's token, or
    stops after max_draft accepted drafts (the next cycle reads the last one)."""
    out, run = [], 0
    for e in exit_layers[1:]:  # the first token comes from the prefill
        if e == last:
            out.append((run, True))
            run = 0
        else:
            run += 1
            if run == max_draft:
                out.append((run, False))
                run = 0
    return out + ([(run, False)] if run else [])  # a stop can end the last cycle inside its drafts


class StopAnywhere(StoppingCriteria):
    """generate's stop at a stop string anywhere in the generated text, the decoder's rule (core.stop_reason).
    transformers' own `stop_strings` cannot serve: StopStringCriteria looks at the sequence's end only, which assisted
    generation steps past when it accepts several tokens at once (it then ran to max_new_tokens on TriviaQA), and
    `stop_strings=` reaches the assistant's inner generate without the tokenizer it needs (transformers 5.24 raises)."""

    def __init__(self, tokenizer, stops: list[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        text = self.tokenizer.decode(input_ids[0, self.prompt_len:])  # batch 1
        return torch.tensor([any(s in text for s in self.stops)], device=input_ids.device)


@contextmanager
def assisted_counts():
    """transformers' assisted generation counted: drafted tokens per candidate call, matches per verification."""
    from transformers.generation.candidate_generator import AssistedCandidateGenerator as G

    get, update = G.get_candidates, G.update_candidate_strategy
    counts = {"drafted": [], "matches": []}

    def get_candidates(self, input_ids, *args, **kwargs):
        ids, logits = get(self, input_ids, *args, **kwargs)
        counts["drafted"].append(ids.shape[1] - input_ids.shape[1])
        return ids, logits

    def update_candidate_strategy(self, input_ids, scores, num_matches):
        counts["matches"].append(int(num_matches))
        return update(self, input_ids, scores, num_matches)

    G.get_candidates, G.update_candidate_strategy = get_candidates, update_candidate_strategy
    try:
        yield counts
    finally:
        G.get_candidates, G.update_candidate_strategy = get, update


def speculation_row(results, last: int, max_draft: int) -> dict:
    """Speculative totals over the results, per-cycle accepted lengths and the accepted drafts' exit layers."""
    totals = Counter()
    for r in results:
        totals.update(r.speculation)
    per_cycle = [c for r in results for c in cycles(r.exit_layers, last, max_draft)]
    if len(per_cycle) != totals["cycles"]:
        raise RuntimeError(f"read {len(per_cycle)} cycles from the exit layers, the decoder counted {totals['cycles']}")
    exits = Counter(e for r in results for e in r.exit_layers[1:] if e != last)
    macs_full = sum(c.macs_full for r in results for c in r.costs)
    return {**{k: totals[k] for k in ("cycles", "drafted", "accepted", "kept", "verified")},
            "rejected": totals["drafted"] - totals["accepted"],
            "acceptance": totals["accepted"] / totals["drafted"] if totals["drafted"] else None,
            "tokens_per_verification": totals["kept"] / totals["cycles"] if totals["cycles"] else None,
            **{k: totals[k] for k in ("macs_draft", "macs_verify", "macs_rejected", "macs_rollback")},
            "macs_full": macs_full,  # what the full model spends on the same tokens
            "accepted_per_cycle": dict(sorted(Counter(a for a, _ in per_cycle).items())),
            "bonus_share": sum(b for _, b in per_cycle) / len(per_cycle) if per_cycle else None,
            "accepted_exit_share": {e: n / sum(exits.values()) for e, n in sorted(exits.items())}}


def main(argv=None) -> None:
    a = parse_args(argv)
    grid = check_args(a)
    device, dtype = setup(args=a)
    tokenizer = load_tokenizer(a.tokenizer or a.backbone)
    model = load_backbone(a.backbone, device=device, dtype=dtype, seed=a.seed)
    config, last = model.config, parts(model).n_layers - 1
    if grid["aee"] and not parts(model).is_attention:
        raise SystemExit("error: --assistant-early-exit needs an attention backbone (transformers cannot crop a "
                         "Mamba-2 state)")
    if a.heads:
        heads, meta = load_heads(a.heads, backbone_config=config)
    else:
        layers = numbers(a.exit_layers, int, "--exit-layers") if a.exit_layers else default_exit_layers(last + 1)
        heads, meta = build_heads("calm", config.hidden_size, layers, seed=a.seed).eval(), {"random": True}
    heads = heads.to(device=device, dtype=dtype)
    exit_layers = sorted(int(k) for k in heads)
    translators = None
    if a.emission == "translator":
        translators = (load_translators(a.translators, config, device=device, dtype=dtype)[0] if a.translators
                       else Translators(config.hidden_size, exit_layers).to(device=device, dtype=dtype))
    prompts, until, max_new, eos = task_inputs(a, tokenizer, config)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # as lm-eval's Collator: longest first
    batches = [order[i:i + a.batch_size] for i in range(0, len(order), a.batch_size)]
    climbing_only = device.type == "cpu"  # the decoder's own default
    exit_kw = dict(heads=heads, policy=a.policy, emission=a.emission, translators=translators)

    prefiller = ExitDecoder(model, threshold=1.0, **exit_kw)  # exits on: head states for every decoder here
    with torch.no_grad():
        pool = [Prefill([prefiller], [prompts[i] for i in b], max_new) for b in batches]

    variants, records, meta_rows = {}, {}, {}
    scope = list(range(len(batches)))  # the batches a variant's call decodes: all, or the first for the warm-up

    def ours(name: str, decoder: ExitDecoder, kind: str, **info):
        records[name], meta_rows[name] = {}, {"variant": name, "kind": kind, "timed": "decode", **info}

        def run() -> list[float]:
            times, results = [], [None] * len(prompts)
            for b, shared in ((batches[k], pool[k]) for k in scope):
                rows, cache, states, logits, _ = shared.start(decoder)  # untimed: a copy of the batch's prefill
                with torch.no_grad():
                    out = decoder.decode(rows, cache, states, logits, decoder.threshold, max_new, until, tokenizer,
                                         eos, climbing_only, 0.0)
                times.append(out[0].batch_decode_seconds)
                for i, r in zip(b, out):
                    results[i] = r
            records[name] = {"results": results, "batch_tokens": [  # None: a batch the warm-up left out
                sum(len(results[i].costs) for i in b) if results[b[0]] is not None else None for b in batches]}
            return times
        variants[name] = run

    ours("exits_off", ExitDecoder(model), "exits_off")
    if a.lossy_threshold is not None:
        ours(f"lossy@{a.lossy_threshold}", ExitDecoder(model, threshold=a.lossy_threshold, **exit_kw), "lossy",
             threshold=a.lossy_threshold)
    for t, k, (vocab_spec, vocab), climb in product(grid["thresholds"], grid["max_drafts"], grid["vocabs"].items(),
                                                   grid["climbs"]):
        size = "full" if vocab is None else len(vocab)
        name = f"spec@{t}/{k}/{size}" + ("" if climb == "deepest" else f"/{climb}")  # earlier JSONs' names stand
        ours(name, ExitDecoder(model, threshold=t, max_draft=k, draft_vocab=vocab, draft_climb=climb, **exit_kw),
             "speculative", threshold=t, max_draft=k, draft_vocab=size, draft_climb=climb,
             draft_vocab_file=vocab_spec if vocab else None)

    def run_prefill() -> list[float]:
        with torch.no_grad():
            return [timed(lambda k=k: Prefill([prefiller], [prompts[i] for i in batches[k]], max_new), device)[0]
                    for k in scope]
    variants["prefill"] = run_prefill

    def whole_call(name: str, kind: str, call, **info):
        records[name], meta_rows[name] = {}, {"variant": name, "kind": kind, "timed": "prefill+decode", **info}

        def run() -> list[float]:
            times, tokens, raw, counts = [], [None] * len(prompts), [], {"drafted": [], "matches": []}
            for i in (batches[k][0] for k in scope):  # batch size 1: in the batches' order, as ours
                with assisted_counts() as c:
                    seconds, ids = timed(lambda: call(prompts[i]), device)
                times.append(seconds)
                raw.append(len(ids))
                tokens[i] = cut_at_stop(ids, eos, until, tokenizer)
                for key in counts:
                    counts[key] += c[key]
            records[name] = {"tokens_ids": tokens, "batch_tokens": [None if tokens[b[0]] is None else len(tokens[b[0]])
                                                                  for b in batches],
                             "raw": raw, "counts": counts}
            return times
        variants[name] = run

    if grid["aee"]:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

        def hf_generate(**kw):
            def call(ids: list[int]) -> list[int]:
                x = torch.tensor([ids], device=device)  # (1, T)
                stops = StoppingCriteriaList([StopAnywhere(tokenizer, until, x.shape[1])])
                with torch.no_grad():
                    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new,
                                         eos_token_id=eos, pad_token_id=pad, stopping_criteria=stops,
                                         **kw)  # (1, T + N)
                return out[0, x.shape[1]:].tolist()
            return call

        def our_call(ids: list[int]) -> list[int]:
            return ExitDecoder(model).generate_batch([ids], max_new, until, tokenizer, eos)[0].token_ids
        whole_call("exits_off_call", "exits_off_call", our_call)
        whole_call("generate", "generate", hf_generate())
        for k in grid["aee"]:
            whole_call(f"aee@{k}", "assistant_early_exit", hf_generate(assistant_early_exit=k), k=k)

    print(f"{a.task}: {len(prompts)} prompts in {len(batches)} batches of <= {a.batch_size}, {len(variants)} variants "
          f"x {a.repeats} rounds, max {max_new} new tokens, stops {until!r}", flush=True)
    scope[:] = [0]
    for run in variants.values():  # untimed: one-off costs (allocator, lazy kernels) out of the first round
        run()
    scope[:] = range(len(batches))
    samples = interleaved(variants, a.repeats, a.warmup)
    rows = summarise(samples, records, meta_rows, batches, last, a.batch_size, exit_layers)

    columns = ["variant", "timed", "ms_per_token", "speedup", "speedup_q1", "speedup_q3", "speedup_whole_call",
               "prompts_differing", "acceptance", "tokens_per_verification", "crf_exact_macs"]
    print_table(rows, columns)
    spec = [r for r in rows if r["kind"] == "speculative" and not r["prompts_differing"]]
    best = max(spec, key=lambda r: r["speedup"]) if spec else None
    if best:
        print(f"best speculative setting on {a.task} at batch {a.batch_size}: {best['variant']} (speedup "
              f"{best['speedup']:.3f}, paired median {best['speedup_median']:.3f} [{best['speedup_q1']:.3f}, "
              f"{best['speedup_q3']:.3f}], acceptance {best['acceptance']}, tokens per verification "
              f"{best['tokens_per_verification']:.2f}; MAC-based CRF {best['crf_exact_macs']:.3f})")
    save(a.out, "speculative", a, rows, best=best and best["variant"], task=a.task, prompts=len(prompts),
         max_new_tokens=max_new, stop_strings=until, n_layers=last + 1, exit_layers=exit_layers, batch_prompts=batches,
         hidden_size=config.hidden_size, vocab_size=config.vocab_size, heads_metadata=meta)
    wrong = [r for r in rows if r["kind"] in LOSSLESS and r["prompts_differing"]]
    if wrong:
        raise SystemExit("error: tokens differ from exits off: " + "; ".join(
            f"{r['variant']}: prompts {r['differing_prompts']}" for r in wrong))


def fastest(seconds: list[list[float]], plus: list[list[float]] | None = None) -> list[float]:
    """Per batch, its fastest round (seconds[round][batch], plus `plus` of the same shape added round by round): a
    round disturbed by the machine drops out instead of moving every ratio it enters."""
    if plus is not None:
        seconds = [[s + p for s, p in zip(rs, rp)] for rs, rp in zip(seconds, plus)]
    return [min(column) for column in zip(*seconds)]


def summarise(samples: dict, records: dict, meta_rows: dict, batches: list[list[int]], last: int, batch_size: int,
              exit_layers: list[int]) -> list[dict]:
    """One row per variant: time per token, speedups (pooled and paired), equality with exits off, speculation."""
    want = [r.token_ids for r in records["exits_off"]["results"]]
    prefill_s = samples.pop("prefill")
    rows = []
    for name, times in samples.items():
        rec, row = records[name], dict(meta_rows[name], batch_size=batch_size)
        whole = row["timed"] != "decode"
        ref_name = "exits_off_call" if whole else "exits_off"
        ref, ref_tokens = samples[ref_name], records[ref_name]["batch_tokens"]
        tokens = rec["batch_tokens"]
        got = rec["tokens_ids"] if whole else [r.token_ids for r in rec["results"]]
        bad, n_bad = differences(got, want)
        same = [k for k, b in enumerate(batches) if not set(b) & set(bad)]  # the batches compared

        def pooled(ref_s: list[float], var_s: list[float]) -> float | None:
            """Ratio of times per token over the compared batches, from each batch's fastest round."""
            if not same:
                return None
            return ((sum(ref_s[k] for k in same) / sum(ref_tokens[k] for k in same))
                    / (sum(var_s[k] for k in same) / sum(tokens[k] for k in same)))

        ref_t, var_t = fastest(ref), fastest(times)
        pairs = [(ref_t[k] / ref_tokens[k]) / (var_t[k] / tokens[k]) for k in same]  # per compared batch
        ratio = spread(pairs) if pairs else dict.fromkeys(("median", "q1", "q3"))
        per_round = [sum(t) / sum(tokens) for t in times]
        row.update(prompts=len(got), tokens=sum(tokens), ms_per_token=1e3 * spread(per_round)["median"],
                   ms_per_token_spread={k: 1e3 * v if k != "n" else v for k, v in spread(per_round).items()},
                   reference=ref_name, speedup=pooled(ref_t, var_t), speedup_median=ratio["median"],
                   speedup_q1=ratio["q1"], speedup_q3=ratio["q3"], speedup_batches=len(same), batches=len(batches),
                   prompts_differing=len(bad), tokens_differing=n_bad, differing_prompts=bad,
                   seconds=times, batch_tokens=tokens)
        if whole:
            counts = rec["counts"]
            row["tokens_past_stop"] = sum(rec["raw"]) - sum(tokens)
            if samples.get("generate") is not None and name != "generate":
                row["speedup_vs_generate"] = sum(map(sum, samples["generate"])) / sum(map(sum, times))
            if counts["matches"]:
                row.update(verifications=len(counts["matches"]), drafted=sum(counts["drafted"]),
                           accepted=sum(counts["matches"]),
                           acceptance=sum(counts["matches"]) / max(sum(counts["drafted"]), 1),
                           tokens_per_verification=(sum(counts["matches"]) + len(counts["matches"]))
                           / len(counts["matches"]))
        else:  # whole-call time of ours: the same measured prefills added to both sides
            row["speedup_whole_call"] = pooled(fastest(ref, plus=prefill_s), fastest(times, plus=prefill_s))
            results = rec["results"]
            # over the compared prompts, as the speedup: its bound (and over every prompt, for a lossy variant)
            row["crf_exact_macs"] = (crf_exact([c for k in same for i in batches[k] for c in results[i].costs])
                                     if same else None)
            row["crf_exact_macs_all"] = crf_exact([c for r in results for c in r.costs])
            if row["kind"] == "lossy":
                exits = [e for r in results for e in r.exit_layers[1:]]
                row["early_exit_share"] = sum(e < last for e in exits) / max(len(exits), 1)
            if row["kind"] == "speculative":
                row.update(speculation_row(results, last, row["max_draft"]), exit_layers=exit_layers)
        rows.append(row)
    rows.append({"variant": "prefill", "kind": "prefill", "timed": "prefill", "batch_size": batch_size,
                 "ms_per_batch": 1e3 * statistics.median(sum(t) / len(t) for t in prefill_s)})
    return rows


if __name__ == "__main__":
    main()
