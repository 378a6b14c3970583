"""The degenerate-output rule (docs/evaluation.md) and the validity of a grid point.

A generation is degenerate when it reaches the token limit without a stop (EOS or stop string), or when
its text is one token repeated. A grid point whose degenerate share passes the configured limit is
flagged invalid; it is kept in the records and tables with the flag, never dropped.
"""
from __future__ import annotations


def is_degenerate(token_ids: list[int], stop_reason: str) -> bool:
    if stop_reason == "max_new_tokens":
        return True
    # The token that stopped the generation (EOS, or the one completing a stop string) is not part of the text.
    text_ids = token_ids[:-1] if stop_reason in ("eos", "stop_string") else token_ids
    return len(text_ids) >= 2 and len(set(text_ids)) == 1


def degenerate_summary(flags: list[bool], limit: float) -> dict:
    """Count, share, the limit, and `valid` (share <= limit) over a grid point's generations."""
    if not 0.0 <= limit <= 1.0:
        raise ValueError(f"degenerate share limit must be in [0, 1], got {limit}")
    count = sum(flags)
    share = count / len(flags) if flags else 0.0
    return {"count": count, "share": share, "limit": limit, "valid": share <= limit}
