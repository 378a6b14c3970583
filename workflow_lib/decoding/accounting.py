"""Compute accounting: multiply-accumulates (MACs) per generated token, and the two CRFs (docs/accounting.md).

exact: MACs counted from the model config for one new token at batch size 1:
  attention block (Mistral, Llama, Qwen2)
                 q, k, v, o projections (K/V at num_key_value_heads * head_dim: GQA) + attention over the context,
                 or over the sliding window where the config has one (scores and weighted sum, every query head;
                 GQA shares K/V but not the dot products) + SwiGLU MLP (gate, up, down). Biases (Qwen2's q/k/v,
                 Llama's optional ones) are adds, not MACs.
  Mamba-2 block  in_proj (gate, x, B, C, dt) + depthwise conv1d + SSM state update and readout (+ D skip)
                 + gated RMSNorm + out_proj.
  Not counted (well under 0.1% of a block): the pre-block RMSNorms, rotary, residual adds, activations,
  softmax, embedding lookup (a gather, no MACs).
  full token     every block + the LM head; the final norm is not counted. Tied embeddings (SmolLM2) change
                 nothing: the LM head product still runs over the whole vocabulary.
  heads          every head a token evaluated, its `macs_per_token` (models/heads.py): the softmax rule pays
                 one LM-head product per exit (0.6 of a Mistral-7B block), the saturation rule a cosine (3 d);
                 the final norm each head's input goes through is not counted.
  recompute      per skipped block. Attention: k_proj + v_proj of the exit hidden state (the input norm and
                 rotary are not counted). Mamba-2: the rows of in_proj that feed the state (x, B, C and dt; not
                 the gate, which only scales the block's output) + conv1d + the SSM state update (no readout,
                 no gated norm, no out_proj). The estimate "about 0.7 of a block" counts the whole in_proj;
                 the rows actually needed make it ~0.40 of a Codestral block.
  translations   the `translator` emission rule: one d x d product (the bias add is no MAC) per translation that
                 ran: once per token that exits, or once per evaluated exit for a head that reads the emitted
                 distribution through the translator (the softmax rule), the exit then reusing it.
paper: blocks counted, recompute charged 1/6 of a block (Transformer) or 9/26 (Mamba), heads and translations
ignored.

Exit at block e (0-based) of n, by emission rule (models/translators.py):
  last_block  blocks 0..e run, e+1..n-2 are skipped (filled by the policy), block n-1 runs.
  lens, translator  blocks 0..e run, e+1..n-1 are skipped, the last one included (the policy fills them all).
exit_layer == n-1 is a full-depth token (every block runs under every rule). The final norm and LM head run once
per token under every rule. CRF = sum(full cost) / sum(spent cost) over the decode steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from transformers import PretrainedConfig

from ..models.backbone import architecture, family
from ..choices import EMISSION_RULES

# Per backbone family: which missing-state policies do work for a skipped block (True) and which only move or keep
# state (False).
POLICY_RECOMPUTES: dict[str, dict[str, bool]] = {
    "transformer": {"recompute": True, "copy": False, "copy_prev": False},
    "mamba2": {"recompute": True, "skip": False},
}
# The paper's charge for recomputing one skipped block, as a fraction of a block.
PAPER_RECOMPUTE_FRACTION: dict[str, Fraction] = {"transformer": Fraction(1, 6), "mamba2": Fraction(9, 26)}


@dataclass(frozen=True)
class TokenCost:
    """The cost of one generated token: exact MACs and the paper's block count, spent and for the full model."""

    macs_spent: int
    macs_full: int
    blocks_spent_paper: float
    blocks_full_paper: float


class CostModel:
    """MACs of one decode step of a transformer or Mamba-2 backbone, from its config alone (no weights needed)."""

    def __init__(self, config: PretrainedConfig):
        self.arch = architecture(config)
        self.family = family(self.arch)
        self.n_layers = config.num_hidden_layers
        d = config.hidden_size
        self.lm_head_macs = d * config.vocab_size  # tied or not, the product runs
        self.translation_macs = d * d  # one tuned-lens translator (models/translators.py)
        self.sliding_window = None
        if self.family == "transformer":
            head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
            q_dim = config.num_attention_heads * head_dim  # query heads
            kv_dim = config.num_key_value_heads * head_dim  # shared K/V heads (GQA)
            self.sliding_window = getattr(config, "sliding_window", None)
            self.kv_proj_macs = 2 * d * kv_dim
            self.fixed_block_macs = d * q_dim + self.kv_proj_macs + q_dim * d + 3 * d * config.intermediate_size
            self.attn_macs_per_position = 2 * q_dim  # q.k score + weight * v, for every query head
            self.recompute_block_macs = self.kv_proj_macs
        else:
            inner = int(config.expand * d)
            n_state = config.n_groups * config.state_size
            conv_dim = inner + 2 * n_state  # x, B, C go through the conv
            state_in_proj = d * (conv_dim + config.num_heads)  # rows for x, B, C and dt
            gate_in_proj = d * inner
            conv = conv_dim * config.conv_kernel  # depthwise: one kernel per channel
            ssm_update = 2 * inner * config.state_size  # decay exp(dt A) * h, plus dt * x * B, per state element
            ssm_readout = inner * config.state_size + inner  # C . h, plus the D skip
            gated_norm = 4 * inner  # gate multiply, square, normalise, weight
            self.attn_macs_per_position = 0
            self.fixed_block_macs = (gate_in_proj + state_in_proj + conv + ssm_update + ssm_readout + gated_norm
                                     + inner * d)  # last term: out_proj
            self.recompute_block_macs = state_in_proj + conv + ssm_update

    def _check_policy(self, policy: str) -> bool:
        known = POLICY_RECOMPUTES[self.family]
        if policy not in known:
            raise ValueError(f"policy {policy!r} does not fit a {self.arch} backbone; choose from {', '.join(known)}")
        return known[policy]

    def block_macs(self, context_len: int) -> int:
        """One block, one new token that attends to `context_len` positions (itself included)."""
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1 (the new token itself), got {context_len}")
        attended = min(context_len, self.sliding_window) if self.sliding_window else context_len
        return self.fixed_block_macs + self.attn_macs_per_position * attended

    def full_token_macs(self, context_len: int) -> int:
        """The full model for one new token: every block and the LM head."""
        return self.n_layers * self.block_macs(context_len) + self.lm_head_macs

    def recompute_macs(self, policy: str = "recompute") -> int:
        """Work one skipped block costs under `policy` (0 for policies that copy or keep state)."""
        return self.recompute_block_macs if self._check_policy(policy) else 0

    def token_cost(self, exit_layer: int, context_len: int, policy: str, head_macs: list[int],
                   prune: int = 0, emission: str = "last_block", translations: int = 0) -> TokenCost:
        """Cost of one generated token that stopped at block `exit_layer` (n-1 = full depth), having evaluated
        heads costing `head_macs`, in a model with `prune` blocks dropped before the last, emitted under `emission`
        with `translations` translator products run."""
        n = self.n_layers
        if not 0 <= prune <= n - 1:
            raise ValueError(f"prune must be in 0..{n - 1} for {n} layers, got {prune}")
        if not (0 <= exit_layer < n - 1 - prune or exit_layer == n - 1):
            raise ValueError(f"exit_layer {exit_layer} out of range: an exit runs at blocks 0..{n - 2 - prune} "
                             f"(with {prune} pruned), or n-1 = {n - 1} for a full-depth token")
        if emission not in EMISSION_RULES:
            raise ValueError(f"unknown emission rule {emission!r}; choose one of {', '.join(EMISSION_RULES)}")
        if translations < 0 or (translations and emission != "translator"):
            raise ValueError(f"{translations} translations do not fit the {emission!r} emission rule")
        recomputes = self._check_policy(policy)
        block = self.block_macs(context_len)
        exits = exit_layer < n - 1
        # blocks up to the exit, + the last one where it runs (at full depth, and on an exit under last_block)
        ran = (exit_layer + 1 if exits else n - 1 - prune) + (not exits or emission == "last_block")
        skipped = n - ran - prune  # skipped blocks that exist in the (pruned) model, filled by the policy
        recompute_frac = PAPER_RECOMPUTE_FRACTION[self.family] if recomputes else 0
        return TokenCost(
            macs_spent=(ran * block + skipped * self.recompute_macs(policy) + sum(head_macs)
                        + translations * self.translation_macs + self.lm_head_macs),
            macs_full=self.full_token_macs(context_len),
            blocks_spent_paper=float(ran + skipped * recompute_frac),
            blocks_full_paper=float(n),
        )

    def climb_macs(self, blocks: int, context_len: int, head_macs: list[int], translations: int = 0) -> int:
        """Speculative drafting: a token that ran `blocks` blocks and these heads, and emitted nothing (it did not exit
        by the deepest exit layer; the verification runs the rest)."""
        return blocks * self.block_macs(context_len) + sum(head_macs) + translations * self.translation_macs

    def verify_macs(self, start_block: int, context_lens: list[int]) -> int:
        """Speculative verification: blocks start_block .. n-1, the final norm and the LM head, once per position
        (`context_lens`: the positions each attends to, itself included)."""
        return sum((self.n_layers - start_block) * self.block_macs(c) + self.lm_head_macs for c in context_lens)

    def rerun_macs(self, context_lens: list[int]) -> int:
        """Every block on these positions, no LM head (a Mamba-2 rollback re-runs the kept positions)."""
        return sum(self.n_layers * self.block_macs(c) for c in context_lens)

    def pruned_token_cost(self, n_pruned: int, context_len: int) -> TokenCost:
        """One token of the layer-pruning baseline: `n_pruned` blocks before the last dropped, no exits."""
        return self.token_cost(self.n_layers - 1, context_len, "recompute", [], prune=n_pruned)

    def pruned_crf_paper(self, n_pruned: int) -> float:
        """n / (n - k): the block-count CRF of dropping k blocks."""
        return crf_paper([self.pruned_token_cost(n_pruned, 1)])

    def pruned_crf_exact(self, n_pruned: int, context_lens: list[int]) -> float:
        """Exact CRF of dropping k blocks over decode steps with these context lengths (the LM head is kept)."""
        return crf_exact([self.pruned_token_cost(n_pruned, c) for c in context_lens])


def crf_exact(costs: list[TokenCost]) -> float:
    """Full-model MACs over MACs spent, summed over decode steps; 1.0 for a run with no decode step."""
    spent = sum(c.macs_spent for c in costs)
    return sum(c.macs_full for c in costs) / spent if spent else 1.0


def crf_paper(costs: list[TokenCost]) -> float:
    """The paper's block-count CRF over decode steps; 1.0 for a run with no decode step."""
    spent = sum(c.blocks_spent_paper for c in costs)
    return sum(c.blocks_full_paper for c in costs) / spent if spent else 1.0


def summarize(costs: list[TokenCost]) -> dict:
    """Per-run totals and both CRFs (for JSON results)."""
    return {
        "tokens": len(costs),
        "macs_spent": sum(c.macs_spent for c in costs),
        "macs_full": sum(c.macs_full for c in costs),
        "crf_exact": crf_exact(costs),
        "crf_paper": crf_paper(costs),
    }
