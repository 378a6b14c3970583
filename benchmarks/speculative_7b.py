"""A timing model of speculative early exit at 7B shapes on this machine (issue 36): the pieces of a cycle measured on
random bf16 weights, combined with acceptance and accepted lengths BORROWED from speculative.py's measurements on a
smaller real model (SmolLM2-135M), not measured on a 7B model. At that model's own shapes (`--preset smollm2-135m
--blocks 30 --dtype float32`) the same composition checks itself against speculative.py's measured speedups, and its
`ideal` cycles give the ceiling of the mode on this hardware.

Measured (interleaved rounds, medians with quartiles), on `--blocks` blocks of the preset built with random weights
(default 4: a 7B block reads 436 MB, far past any cache, so a block's time does not depend on how many are built;
`--blocks 32` builds all of Mistral-7B, 14.6 GB), then scaled to the preset's depth:
  block@P      one block on P positions at a cached context of --prompt-len tokens (K/V cropped back after), per block
  lm_head@P    final norm, LM head and the host's argmax on P positions
  draft_head@V the drafts' emission through the LM head restricted to V rows (`full`: the whole head), one position
  translator   one d x d translation (the translator rule); head: final norm and a calm head, p_exit read back
  fill@POLICY  the missing-state policy's fill of one skipped block (recompute: its K/V from the exit hidden state)
  step         a real exits-off decode step of the built model (the decoder's loop), to find the per-pass overhead
               (embedding, mask, rotary, Python) that the pieces leave out: step - blocks x block@1 - lm_head@1
Composed for the preset's n blocks (e = exit block, m = the verification's shallowest exact block, P positions):
  full step       n x block@1 + lm_head@1 + overhead
  draft at e      (e+1) x block@1 + heads reached + skipped x fill + emission + overhead; emission = translator +
                  draft head (translator / lens rule; lens without the translator) or block@1 + draft head (last_block)
  climb           (deepest+1) x block@1 + every head + overhead (a token that exits nowhere)
  verification    (n-1-m) x block@P + lm_head@P + overhead
Model per borrowed setting (a speculative row of speculative.py's JSON), per cycle: drafted d = drafted / cycles at
exits distributed as that run's accepted drafts' exits (mapped to the preset's exits by index; the rejected drafts'
exits are not recorded and are assumed distributed alike), climbs (verified - drafted) / cycles, a verification of
P = verified / cycles positions (block@P interpolated) from the shallowest exit among d independent draws, and kept /
cycles tokens: expected speedup = tokens x full step / cycle time. `ideal` rows: r drafts at one exit, all accepted.
`if_memory_bound` is the same model with a pass over P positions costing what one position costs (block@P =
block@1, lm_head@P = lm_head@1: the weights read once, as on a GPU at batch 1): an assumption, printed beside the
measured-time model and never in its place. On this CPU a pass over P positions is not that cheap (of_one_position).

  python benchmarks/speculative_7b.py --borrowed results/benchmarks/speculative_triviaqa_b1.json --threads 2
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from timing import add_common_args, interleaved, print_table, save, setup, spread, timed

from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.decoding.kv_cache import new_cache
from workflow_lib.models.backbone import PRESETS, build_backbone, default_exit_layers, parts, preset_config
from workflow_lib.models.heads import build_head, build_heads
from workflow_lib.models.translators import Translators

BORROWED = ("acceptance and accepted lengths are BORROWED from speculative.py's measurements on {sources}, not "
            "measured on this model; times are measured on {preset} shapes, random weights ({blocks} of {n} blocks "
            "built, scaled)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mistral-7b-v0.3", choices=sorted(PRESETS), help="attention backbone preset "
                   "(default: mistral-7b-v0.3)")
    p.add_argument("--blocks", type=int, default=4, help="blocks built and timed, >= 3 (default: 4; the preset's "
                   "depth builds it whole)")
    p.add_argument("--borrowed", action="append", default=[], help="speculative.py JSON whose speculative rows "
                   "give acceptance and accepted lengths (repeatable; none: pieces and ideal cycles only)")
    p.add_argument("--exit-layers", default=None, help="the preset's exits, comma-separated, as many as the borrowed "
                   "run's (default: the 4 default ones)")
    p.add_argument("--emission", default=None, help="emission rule (default: the borrowed run's, else translator)")
    p.add_argument("--policy", default=None, help="missing-state policy (default: the borrowed run's, else the "
                   "decoder's)")
    p.add_argument("--draft-vocab-sizes", default="", help="extra draft vocabulary sizes to time, comma-separated "
                   "(the borrowed runs' sizes are always timed, capped at the preset's vocabulary)")
    p.add_argument("--max-positions", type=int, default=None, help="verification positions timed 1..P (default: "
                   "the borrowed runs' largest max_draft + 1, at least 5)")
    p.add_argument("--prompt-len", type=int, default=16, help="cached context (default: 16: a CPU prefill of 7B "
                   "is slow and decode is what is compared)")
    p.add_argument("--step-tokens", type=int, default=4, help="decode steps of the `step` measurement (default: 4)")
    add_common_args(p, out="results/benchmarks/speculative_7b.json")
    p.set_defaults(dtype="bfloat16")
    return p.parse_args(argv)


def read_borrowed(paths: list[str]) -> list[dict]:
    """The borrowed runs: each JSON's settings and its speculative rows."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            rows = [r for r in data["rows"] if r.get("kind") == "speculative"]
            runs.append({"source": path, "task": data["task"], "exit_layers": data["exit_layers"],
                         "n_layers": data["n_layers"], "emission": data["config"]["emission"],
                         "policy": data["config"]["policy"], "batch_size": data["config"]["batch_size"], "rows": rows})
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"error: --borrowed {path!r}: not a speculative.py result ({e})") from None
        if not rows:
            raise SystemExit(f"error: --borrowed {path!r} has no speculative rows")
    return runs


def built_model(preset: str, blocks: int, seed: int, device, dtype):
    """The preset with `blocks` blocks, random weights in dtype (head_cost.py builds two the same way)."""
    config = preset_config(preset)
    fields = config.to_dict()
    fields.pop("layer_types", None)  # recomputed for the new depth
    return config, build_backbone(type(config)(**{**fields, "num_hidden_layers": blocks}), seed=seed, device=device,
                                  dtype=dtype)


class Pieces:
    """Callables timing each piece of a cycle on the built model, at a cached context that they crop back to."""

    def __init__(self, model, prompt_len: int, seed: int, device):
        self.model, self.p, self.device = model, parts(model), device
        config = model.config
        self.decoder = ExitDecoder(model)
        gen = torch.Generator().manual_seed(seed)
        self.prompt = torch.randint(3, config.vocab_size, (1, prompt_len), generator=gen).to(device)  # (1, T)
        self.cache = new_cache(config)
        with torch.no_grad():
            model(input_ids=self.prompt, cache=self.cache, use_cache=True)
        self.context = prompt_len
        self.h = torch.randn(1, 1, config.hidden_size, generator=gen).to(device, self.p.final_norm.weight.dtype)

    def crop(self) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., :self.context, :], layer.values[..., :self.context, :]

    def inputs(self, positions: int):
        """h (1, P, D), its position ids (1, P), rotary (cos, sin) and the causal mask, as the verification has them."""
        h = self.h.expand(1, positions, -1).contiguous()  # (1, P, D)
        pos = torch.arange(self.context, self.context + positions, device=self.device)[None]  # (1, P)
        rotary = self.p.rotary_emb(h, position_ids=pos)
        mask = self.decoder.mask_fn(config=self.model.config, inputs_embeds=h, attention_mask=None, cache=self.cache,
                                    position_ids=pos, layer_idx=0)
        return h, pos, rotary, mask

    @torch.no_grad()
    def block(self, positions: int):
        h, pos, rotary, mask = self.inputs(positions)
        layers = self.p.layers

        def run() -> float:
            seconds, _ = timed(lambda: [layers[j](h, attention_mask=mask, position_ids=pos, use_cache=True,
                                                  cache=self.cache, position_embeddings=rotary)
                                        for j in range(len(layers))], self.device)
            self.crop()
            return seconds / len(layers)
        return run

    @torch.no_grad()
    def lm_head(self, positions: int):
        h = self.h.expand(1, positions, -1).contiguous()  # (1, P, D)
        return lambda: timed(lambda: self.decoder.logits_all(h).argmax(-1).tolist(), self.device)[0]

    @torch.no_grad()
    def draft_head(self, size: int | None):
        decoder = ExitDecoder(self.model, max_draft=1, draft_vocab=None if size is None else list(range(size)))
        return lambda: timed(lambda: decoder.draft_tokens(self.h).tolist(), self.device)[0]

    @torch.no_grad()
    def translator(self):
        t = Translators(self.h.shape[-1], [0]).to(self.device, self.h.dtype)
        return lambda: timed(lambda: t(self.h, 0), self.device)[0]

    @torch.no_grad()
    def head(self):
        head = build_head("calm", self.h.shape[-1]).to(self.device, self.h.dtype)
        return lambda: timed(lambda: (head.step_rows(self.p.final_norm(self.h)[:, 0], None, None)[0].float()
                                      .softmax(-1)[:, 1] >= 0.5).tolist(), self.device)[0]

    @torch.no_grad()
    def fill(self, policy: str | None, emission: str):
        """Seconds per skipped block of the policy's fill after an exit at block 0 (blocks 1..n-2 skipped, and the last
        under lens / translator)."""
        n = len(self.p.layers)
        translators = Translators(self.h.shape[-1], [0]).to(self.device, self.h.dtype) if emission == "translator" \
            else None
        heads = build_heads("calm", self.h.shape[-1], [0]).to(self.device, self.h.dtype)
        decoder = ExitDecoder(self.model, heads=heads, threshold=0.5, policy=policy, emission=emission,
                              translators=translators)
        skipped = list(range(1, n - 1)) + ([n - 1] if emission != "last_block" else [])
        _, pos, rotary, _ = self.inputs(1)

        def run() -> float:
            seconds, _ = timed(lambda: decoder.fill(self.p.layers, self.cache, self.h, 0, skipped, rotary), self.device)
            self.crop()
            return seconds / len(skipped)
        return run

    @torch.no_grad()
    def step(self, tokens: int):
        def run() -> float:
            r = self.decoder.generate(self.prompt, max_new_tokens=tokens + 1, eos_token_id=[])
            return r.decode_seconds / len(r.costs)
        return run


def composer(ms: dict, n: int, exits: list[int], emission: str, policy_fill: float, overhead: float):
    """Step and cycle times (ms) of the preset's n blocks from the measured pieces (see the module docstring)."""
    def draft(e: int, size) -> float:
        emit = (ms["translator"] if emission == "translator" else 0.0) if emission != "last_block" else ms["block@1"]
        skipped = n - 2 - e + (emission != "last_block")
        reached = sum(x <= e for x in exits)
        return ((e + 1) * ms["block@1"] + reached * ms["head"] + skipped * policy_fill + emit
                + ms[f"draft_head@{size}"] + overhead)

    def climb() -> float:
        return (max(exits) + 1) * ms["block@1"] + len(exits) * ms["head"] + overhead

    def verify(positions: float, m: int) -> float:
        lo = max(1, math.floor(positions))
        hi = lo + (positions > lo)
        w = positions - lo
        block = (1 - w) * ms[f"block@{lo}"] + w * ms[f"block@{hi}"]
        head = (1 - w) * ms[f"lm_head@{lo}"] + w * ms[f"lm_head@{hi}"]
        return (n - 1 - m) * block + head + overhead

    full = n * ms["block@1"] + ms["lm_head@1"] + overhead
    return full, draft, climb, verify


def modelled(run: dict, row: dict, exits: list[int], vocab_size: int, full: float, draft, climb, verify) -> dict:
    """The expected speedup of one borrowed setting (see the module docstring)."""
    mapped = dict(zip(run["exit_layers"], exits))
    c = row["cycles"]
    d, climbs, positions, tokens = row["drafted"] / c, (row["verified"] - row["drafted"]) / c, row["verified"] / c, \
        row["kept"] / c
    share = {mapped[int(e)]: s for e, s in row["accepted_exit_share"].items()} or {max(exits): 1.0}
    size = row["draft_vocab"] if row["draft_vocab"] == "full" else min(int(row["draft_vocab"]), vocab_size)
    t_draft = sum(s * draft(e, size) for e, s in share.items())
    # the verification starts after the shallowest exit among the cycle's d drafts (independent draws of `share`)
    at_least = {e: sum(s for x, s in share.items() if x >= e) ** d for e in exits}
    p_min = {e: at_least[e] - (at_least[exits[i + 1]] if i + 1 < len(exits) else 0.0) for i, e in enumerate(exits)}
    p_min[max(exits)] += 1.0 - sum(p_min.values())  # no draft: verified after the climb's deepest exit
    t_verify = sum(p * verify(positions, e) for e, p in p_min.items())
    cycle = d * t_draft + climbs * climb() + t_verify
    return {"task": run["task"], "setting": row["variant"], "borrowed_from": run["source"],
            "borrowed_acceptance": row["acceptance"], "borrowed_tokens_per_verification": tokens,
            "borrowed_drafts_per_cycle": d, "borrowed_positions_per_cycle": positions,
            "smollm2_measured_speedup": row["speedup"], "draft_ms": t_draft, "verification_ms": t_verify,
            "cycle_ms": cycle, "ms_per_token": cycle / tokens, "full_step_ms": full,
            "expected_speedup": tokens * full / cycle}


def main(argv=None) -> None:
    a = parse_args(argv)
    runs = read_borrowed(a.borrowed)
    config = preset_config(a.preset)
    n = config.num_hidden_layers
    if config.model_type == "mamba2":
        raise SystemExit("error: the timing model covers attention backbones (a Mamba-2 rollback re-runs kept tokens)")
    if not 3 <= a.blocks <= n:
        raise SystemExit(f"error: --blocks must lie in 3..{n}, got {a.blocks}")
    exits = [int(x) for x in a.exit_layers.split(",")] if a.exit_layers else default_exit_layers(n)
    if any(len(r["exit_layers"]) != len(exits) for r in runs):
        raise SystemExit(f"error: the borrowed runs' exits {[r['exit_layers'] for r in runs]} do not map one to one "
                         f"onto {exits} (give --exit-layers)")
    emission = a.emission or (runs[0]["emission"] if runs else "translator")
    policy = a.policy or (runs[0]["policy"] if runs else None)
    if any(r["emission"] != emission or r["policy"] != policy for r in runs):
        raise SystemExit("error: the borrowed runs mix emission rules or policies: model them one at a time")
    sizes = {None} | {min(int(s), config.vocab_size) for s in a.draft_vocab_sizes.split(",") if s.strip()}
    sizes |= {min(int(r["draft_vocab"]), config.vocab_size) for run in runs for r in run["rows"]
              if r["draft_vocab"] != "full"}
    positions = max([a.max_positions or 5] + [r["max_draft"] + 1 for run in runs for r in run["rows"]])

    device, dtype = setup(a)
    _, model = built_model(a.preset, a.blocks, a.seed, device, dtype)
    pieces = Pieces(model, a.prompt_len, a.seed, device)
    variants = {f"block@{k}": pieces.block(k) for k in range(1, positions + 1)}
    variants |= {f"lm_head@{k}": pieces.lm_head(k) for k in range(1, positions + 1)}
    variants |= {f"draft_head@{'full' if s is None else s}": pieces.draft_head(s) for s in sorted(sizes, key=str)}
    variants |= {"translator": pieces.translator(), "head": pieces.head(),
                 "fill": pieces.fill(policy, emission), "step": pieces.step(a.step_tokens)}
    print(f"{a.preset}: {a.blocks} of {n} blocks built ({dtype}), {len(variants)} pieces x {a.repeats} rounds",
          flush=True)
    samples = interleaved(variants, a.repeats, a.warmup)
    ms = {k: 1e3 * spread(v)["median"] for k, v in samples.items()}
    pieces_rows = [{"piece": k, "ms": ms[k], "ms_q1": 1e3 * spread(v)["q1"], "ms_q3": 1e3 * spread(v)["q3"]}
                   for k, v in samples.items()]
    for r in pieces_rows:  # how a pass over P positions scales: ~1 where the weights' reading bounds it
        if r["piece"].startswith(("block@", "lm_head@")):
            r["of_one_position"] = r["ms"] / ms[r["piece"].split("@")[0] + "@1"]
    overhead_raw = ms["step"] - a.blocks * ms["block@1"] - ms["lm_head@1"]
    full, draft, climb, verify = composer(ms, n, exits, emission, ms["fill"], max(overhead_raw, 0.0))
    # the same cycles where a pass over P positions costs what one does (the weights read once: a GPU at batch 1);
    # an assumption beside the measured times, never in place of them
    bound = {k: ms[k.split("@")[0] + "@1"] if k.startswith(("block@", "lm_head@")) else v for k, v in ms.items()}
    memory_bound = composer(bound, n, exits, emission, ms["fill"], max(overhead_raw, 0.0))

    steps = [{"step": "full", "ms": full, "of_full": 1.0},
             {"step": f"climb to {max(exits)}", "ms": climb(), "of_full": climb() / full}]
    steps += [{"step": f"draft at {e}, head {s}", "ms": draft(e, s), "of_full": draft(e, s) / full}
              for e in exits for s in sorted({"full"} | {s for s in sizes if s}, key=str)]
    steps += [{"step": f"verify {k} from {e + 1}", "ms": verify(k, e), "of_full": verify(k, e) / full}
              for e in exits for k in range(1, positions + 1)]
    ideal = [{"exit": e, "draft_head": s, "drafts": r, "tokens": r,
              "expected_speedup": r * full / (r * draft(e, s) + verify(r, e)),
              "if_memory_bound": r * full / (r * draft(e, s) + memory_bound[3](r, e))}
             for e in exits for s in sorted({"full"} | {s for s in sizes if s}, key=str) for r in range(1, positions)]
    rows = [{**modelled(run, row, exits, config.vocab_size, full, draft, climb, verify),
             "if_memory_bound": modelled(run, row, exits, config.vocab_size, *memory_bound)["expected_speedup"]}
            for run in runs for row in run["rows"]]
    note = BORROWED.format(sources=", ".join(f"{r['task']} ({r['source']})" for r in runs) or "nothing",
                           preset=a.preset, blocks=a.blocks, n=n)

    print_table(pieces_rows, ["piece", "ms", "ms_q1", "ms_q3", "of_one_position"])
    print(f"\noverhead per pass (step - {a.blocks} x block@1 - lm_head@1): {overhead_raw:.2f} ms\n")
    print_table(steps, ["step", "ms", "of_full"])
    print("\nideal cycles (r drafts at one exit, all accepted; no borrowed data):")
    print_table(ideal, ["exit", "draft_head", "drafts", "expected_speedup", "if_memory_bound"])
    if rows:
        print(f"\n{note}:")
        print_table(rows, ["task", "setting", "borrowed_acceptance", "borrowed_tokens_per_verification",
                           "smollm2_measured_speedup", "ms_per_token", "expected_speedup", "if_memory_bound"])
        best = {}
        for r in rows:
            if r["expected_speedup"] > best.get(r["task"], {"expected_speedup": 0})["expected_speedup"]:
                best[r["task"]] = r
        for task, r in best.items():
            print(f"best expected on {task}: {r['setting']} {r['expected_speedup']:.3f}x (modelled, borrowed "
                  "acceptance)")
    save(a.out, "speculative_7b", a, rows, note=note, pieces=pieces_rows, overhead_ms=overhead_raw, steps=steps,
         ideal=ideal, exit_layers=exits, n_layers=n, emission=emission, policy=policy)


if __name__ == "__main__":
    main()
