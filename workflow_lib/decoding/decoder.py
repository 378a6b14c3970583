"""The exit-aware greedy decoder (Algorithm 1 of the paper, docs/policies.md): a batch of prompts decoded together,
every row exiting on its own decision; batch size 1 is a batch of one row.

- Prefill: the prompts' full-depth pass (prefill.py), once for every threshold and every decoder that decodes them
  (`decode_shared`): the exit cells, the oracle, the baseline and the pruning depths of one model start from it.
- Each decode step is `step.Step` (the one place where a token exits). Stateful heads keep one state row per batch
  row and step only the rows that reach them.
- A row that finishes (EOS, stop string, max tokens) leaves the batch: its cache, head-state and position rows
  are dropped, so it costs nothing further.
With exits disabled (no heads, or threshold > 1) this is plain greedy decoding and matches
`model.generate(do_sample=False)` token for token, batched or not (tests/test_decoder.py, tests/test_batch.py); every
row gets exactly the tokens, exits and costs of the reference batch-1 loop in tests/reference_decoder.py.
Per row the result is a `DecodeResult` (token ids, exit layers, stop reason, one cost per decode step at that row's
own context length); decode_seconds is the row's latency (decode start to its last token) and
`batch_decode_seconds` the whole batch's, which is what throughput divides by.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from transformers import DynamicCache

from . import speculative
from .accounting import crf_exact, crf_paper
from .core import DecodeResult, DecoderCore
from .kv_cache import reserve
from .prefill import Prefill, Rows, validate_prompts
from .step import Step

__all__ = ["DecodeResult", "ExitDecoder"]


class ExitDecoder(DecoderCore):
    """Greedy early-exit decoding on a Mistral, Llama, Qwen2 or Mamba-2 backbone; see the module docstring, and
    DecoderCore for the arguments (`emission`: one of choices.EMISSION_RULES; `translators`: the `translator` rule's)."""

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 64, stop_strings: list[str] | None = None,
                 tokenizer=None, eos_token_id=None) -> DecodeResult:
        """Greedy-decode up to `max_new_tokens` after `input_ids` (1, T): `generate_batch` on a batch of one row.

        Stops at an EOS id (`eos_token_id`: int or list; None takes the model's generation config, [] disables
        it) or once the decoded generated text contains a stop string (needs `tokenizer`); the stopping token is
        kept in `token_ids` and cutting the text at the stop string is the caller's job.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape (1, T>=1) (batch size 1), got {tuple(input_ids.shape)}")
        return self.generate_batch([input_ids[0].tolist()], max_new_tokens, stop_strings, tokenizer, eos_token_id)[0]

    def generate_batch(self, prompts, max_new_tokens: int = 64, stop_strings: list[str] | None = None,
                       tokenizer=None, eos_token_id=None, climbing_only: bool | None = None) -> list[DecodeResult]:
        """Decode a list of prompts (token-id lists, any lengths) together at the decoder's threshold, each row
        exiting on its own decision; one result per prompt."""
        return self.generate_batch_thresholds(prompts, [self.threshold], max_new_tokens, stop_strings, tokenizer,
                                              eos_token_id, climbing_only)[0]

    @torch.no_grad()
    def generate_batch_thresholds(self, prompts: Sequence[Sequence[int]], thresholds: Sequence[float],
                                  max_new_tokens: int = 64, stop_strings: list[str] | None = None, tokenizer=None,
                                  eos_token_id=None, climbing_only: bool | None = None) -> list[list[DecodeResult]]:
        """Greedy-decode every prompt (a list of token-id lists, any lengths) together at each of `thresholds`, from
        one prefill: result i holds one `DecodeResult` per prompt, what a decoder built with threshold thresholds[i]
        gives it (`climbing_only`: see step.py; None: True on a CPU, False on a GPU). Several thresholds need exit
        heads (the oracle, a bound rather than a method, has no threshold: it decodes at one point).
        """
        thresholds = [float(t) for t in thresholds]
        if not thresholds:
            raise ValueError("thresholds must not be empty")
        if len(thresholds) > 1 and (not self.exits_enabled or self.oracle_exits
                                    or not all(0 <= t <= 1 for t in thresholds)):
            raise ValueError("several thresholds need a decoder with exit heads and thresholds in [0, 1] "
                             f"(got {thresholds}, exits {'on' if self.exits_enabled else 'off'})")
        return decode_shared([(self, t) for t in thresholds], prompts, max_new_tokens, stop_strings, tokenizer,
                             eos_token_id, climbing_only)

    def decode(self, batch: Rows, cache: DynamicCache, states: dict, logits: torch.Tensor, threshold: float,
               max_new_tokens: int, stop_strings, tokenizer, eos_token_id, climbing_only: bool,
               prefill_seconds: float) -> list[DecodeResult]:
        """Decode a prefilled batch (`logits` (B, V): the prefill's last position) at `threshold`; consumes `batch`,
        `cache` and `states`. With max_draft set, the exits draft and the full model verifies (speculative.py)."""
        reserve(cache, max_new_tokens + (self.max_draft or 0) + 1)  # one allocation, not a doubling, per layer
        if self.max_draft is not None and self.exits_enabled:
            return speculative.decode(self, batch, cache, states, logits, threshold, max_new_tokens, stop_strings,
                                      tokenizer, eos_token_id, prefill_seconds)
        p = self.parts
        eos = self.eos_ids(eos_token_id)
        last = p.n_layers - 1
        n = len(batch.rows)
        device = batch.device
        token_ids: list[list[int]] = [[] for _ in range(n)]
        exit_layers: list[list[int]] = [[] for _ in range(n)]
        costs: list[list] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        latency = [0.0] * n
        tok = self.next_token(logits, None if batch.seq is None else batch.seq[:, :batch.width])  # (B,)
        for r, t in enumerate(tok.tolist()):
            token_ids[r].append(t)
            exit_layers[r].append(last)

        start = time.perf_counter()
        step_no = 0  # tokens generated so far by every row still decoding, minus one
        while True:
            keep = []
            for i, row in enumerate(batch.rows):
                reasons[row] = self.stop_reason(token_ids[row], eos, stop_strings, tokenizer)
                if reasons[row] is None and len(token_ids[row]) >= max_new_tokens:
                    reasons[row] = "max_new_tokens"
                if reasons[row] is None:
                    keep.append(i)
                else:
                    latency[row] = time.perf_counter() - start
            if not keep:
                break
            if len(keep) < len(batch.rows):  # finished rows leave the batch
                tok = tok[batch.keep(keep, cache, states, self.heads)]
            pos_in_seq = batch.width + step_no  # column of `tok` in the padded sequence
            if batch.seq is not None:
                batch.seq[:, pos_in_seq] = tok
            if batch.mask is not None:
                batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=-1)  # (B, L+1)
            step = Step(self, cache, len(batch.rows), threshold, climbing_only)
            logits, exits, macs, translations = step(tok, batch.positions, states, batch.mask)
            tok = self.next_token(logits, None if batch.seq is None else batch.seq[:, :pos_in_seq + 1])  # (B,)
            positions = batch.positions[:, 0].tolist()  # one host read per step, not one per row
            for i, (row, t) in enumerate(zip(batch.rows, tok.tolist())):
                token_ids[row].append(t)
                exit_layers[row].append(exits[i])
                pos = positions[i]  # the position this step read; it attended to pos + 1 positions
                costs[row].append(self.token_cost(exits[i], pos + 1, macs[i], translations[i]))
            batch.positions = batch.positions + 1
            step_no += 1
        self.sync(device)
        decode_seconds = time.perf_counter() - start
        return [DecodeResult(token_ids[r], exit_layers[r], reasons[r], costs[r], crf_exact(costs[r]),
                             crf_paper(costs[r]), latency[r], prefill_seconds, batch_size=n,
                             batch_decode_seconds=decode_seconds)
                for r in range(n)]


@torch.no_grad()
def decode_shared(runs: Sequence[tuple[ExitDecoder, float]], prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                  stop_strings: list[str] | None = None, tokenizer=None, eos_token_id=None,
                  climbing_only: bool | None = None) -> list[list[DecodeResult]]:
    """Every prompt decoded by each (decoder, threshold) of `runs`, in that order, all from one full-depth pass of the
    prompts (prefill.Prefill: the decoders share one model; a pruned one gets its own blocks after its dropped range,
    a stateful head its primed state). Result i holds one `DecodeResult` per prompt, what runs[i] gives it decoding
    alone. The prompt runs at full depth whatever decodes it: on the embedded grid prefill was 68% of evaluation time
    (4,994 of 7,369 s, long few-shot prompts and short answers). Each result reports its prefill seconds: the shared
    pass's plus what its own start took (a copy of the cache, a pruned model's last blocks)."""
    if not runs:
        raise ValueError("runs must not be empty")
    first = runs[0][0]
    prompts = validate_prompts(first, prompts, max_new_tokens)
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    device = first.parts.lm_head.weight.device
    if climbing_only is None:
        climbing_only = device.type == "cpu"
    prefill = Prefill([d for d, _ in runs], prompts, max_new_tokens)
    results = []
    for k, (decoder, threshold) in enumerate(runs):
        rows, cache, states, logits, seconds = prefill.start(decoder, last=k == len(runs) - 1)
        results.append(decoder.decode(rows, cache, states, logits, threshold, max_new_tokens, stop_strings,
                                      tokenizer, eos_token_id, climbing_only, seconds))
    return results
