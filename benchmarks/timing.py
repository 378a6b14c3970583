"""Shared benchmark plumbing: interleaved repeats, medians with spread, a printed table, JSON with provenance.

Compared runs are interleaved (every repeat runs each variant once, in an order rotated by the repeat index) so
that drift in machine load or clock speed lands on all variants alike; reported numbers are medians over repeats
with the quartiles and extremes as the spread.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from any folder

from workflow_lib.artifacts import provenance, write_json  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_common_args(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="weights dtype (default: float32 on cpu, bfloat16 on cuda)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per variant (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the repeats (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=out, help=f"JSON results file (default: {out})")


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Validate the common flags before any model is built; return device and dtype."""
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"error: --repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall seconds of fn() with the device drained before and after, and fn's return value."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def interleaved(variants: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Run every variant once per round, rounds rotated; each callable returns its own measurement."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(variants[name]())
        # a 7B round on a CPU takes minutes: show progress (stderr keeps stdout the results table)
        print(f"round {r + 1}/{repeats} done, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return samples


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and extremes of a list of repeats."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values),
            "n": len(values)}


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain fixed-width table of the chosen columns (floats to 3 significant decimals)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def save(path: str, benchmark: str, args: argparse.Namespace, rows: list[dict], **extra) -> None:
    """Results + the exact flags, environment and commit, written atomically."""
    env = {"torch_threads": torch.get_num_threads(),
           "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    write_json(path, {"benchmark": benchmark, "rows": rows, "environment": env, **extra,
                      **provenance(vars(args), args.seed)})
    print(f"wrote {path}")
