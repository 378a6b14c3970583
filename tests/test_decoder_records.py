"""The decoder's results on a recorded sample of cells stay bit-identical across refactors: every policy of each
backbone family, every emission rule, trained-like heads of each type at several thresholds from one prefill, the
oracle, pruning, exits off, batch sizes 5 (padded) and 1. `tests/data/decoder_records.json` was written by `record()` at commit
793a329, before the batch-1 decoder and the batched one became one; regenerate it only for an intended change
(`python tests/test_decoder_records.py`), and say why in the commit.

What is compared per row: the token ids, the exit layer of each token, the stop reason and every decode step's
exact MACs (spent and full, integers) and paper block counts: no tolerance.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY  # noqa: E402
from test_decoder import random_translators  # noqa: E402

from workflow_lib.decoding.decoder import ExitDecoder  # noqa: E402
from workflow_lib.models.backbone import build_backbone, preset_config  # noqa: E402
from workflow_lib.models.heads import build_heads  # noqa: E402

RECORDS = Path(__file__).resolve().parent / "data" / "decoder_records.json"
PROMPTS = [[1, 17, 250, 33, 980, 4, 77, 512, 9], [1, 40, 300], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
           [1, 901, 56, 2, 88, 61], [3]]
EXITS = [2, 4, 6]
THRESHOLDS = [0.3, 0.5, 0.7]
POLICIES = {"mistral": ["recompute", "copy", "copy_prev"], "llama": ["recompute"], "mamba2": ["recompute", "skip"]}


def cells() -> list[dict]:
    """Every cell: arch, policy, emission, and heads (type, seed) or the oracle, or pruning, or exits off; each policy
    of each family meets every emission rule once with heads and once as the oracle."""
    rules = ["last_block", "lens", "translator"]
    out = []
    for arch, policies in POLICIES.items():
        for i, policy in enumerate(policies):
            for j in range(3 if arch == "mistral" else 1):  # mistral: every policy under every rule
                out.append(dict(arch=arch, policy=policy, emission=rules[(i + j) % 3], head="calm", seed=1))
                out.append(dict(arch=arch, policy=policy, emission=rules[(i + j + 1) % 3], oracle=True))
        out.append(dict(arch=arch, policy=policies[-1], emission="last_block", head="mamba", seed=2, alone=True))
        out.append(dict(arch=arch, policy=policies[0], emission="translator", head="ffn", seed=3))
        out.append(dict(arch=arch, policy=policies[0], emission="translator", head="softmax", seed=0))
        out.append(dict(arch=arch, policy=policies[0], emission="last_block", head="saturation", seed=0))
        out.append(dict(arch=arch, policy=policies[0], emission="last_block", head="calm", seed=1, prune=2))
        out.append(dict(arch=arch, policy=None, emission="last_block", exits_off=True))
    return out


def cell_name(cell: dict) -> str:
    return "/".join(f"{k}={v}" for k, v in cell.items())


def summary(result) -> dict:
    return {"token_ids": result.token_ids, "exit_layers": result.exit_layers, "stop_reason": result.stop_reason,
            "costs": [[c.macs_spent, c.macs_full, c.blocks_spent_paper, c.blocks_full_paper] for c in result.costs]}


def run_cell(cell: dict, model) -> dict:
    """The cell decoded with all prompts together (batch size 5, padded) and, for cells marked `alone`, each prompt
    alone (batch size 1): {batch size: [[row summary per prompt] per threshold]}."""
    translators = random_translators(EXITS) if cell["emission"] == "translator" else None
    if cell.get("exits_off"):
        heads, thresholds, kwargs = None, [2.0], {}
    elif cell.get("oracle"):
        heads, thresholds, kwargs = None, [2.0], {"oracle_exits": EXITS}
    else:
        heads = build_heads(cell["head"], 256, [2, 4] if cell.get("prune") else EXITS, seed=cell["seed"]).eval()
        thresholds, kwargs = THRESHOLDS, {"prune": cell.get("prune", 0)}
    decoder = ExitDecoder(model, heads, threshold=thresholds[0], policy=cell["policy"], emission=cell["emission"],
                          translators=translators, **kwargs)
    options = dict(max_new_tokens=8, eos_token_id=[])
    with torch.no_grad():
        out = {"5": [[summary(r) for r in rows] for rows in decoder.generate_batch_thresholds(PROMPTS, thresholds,
                                                                                             **options)]}
        if cell.get("alone"):  # batch size 1 too
            alone = [decoder.generate_batch_thresholds([p], thresholds, **options) for p in PROMPTS]
            out["1"] = [[summary(rows[t][0]) for rows in alone] for t in range(len(thresholds))]
    return out


def models() -> dict:
    return {arch: build_backbone(preset_config(f"tiny-{arch}"), seed=0, device="cpu", dtype=torch.float32)
            for arch in POLICIES}


def record() -> None:
    built = models()
    RECORDS.parent.mkdir(exist_ok=True)
    RECORDS.write_text(json.dumps({cell_name(c): run_cell(c, built[c["arch"]]) for c in cells()}, indent=None) + "\n")


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(RECORDS.read_text())


@pytest.mark.parametrize("arch", list(POLICIES))
def test_records_bit_identical(request, recorded, arch):
    model = request.getfixturevalue(TINY[arch])
    mine = [c for c in cells() if c["arch"] == arch]
    assert {cell_name(c) for c in mine} <= set(recorded)
    exited = 0
    for cell in mine:
        got, want = run_cell(cell, model), recorded[cell_name(cell)]
        assert got == want, cell_name(cell)
        exited += sum(layer < 7 for rows in want["5"] for row in rows for layer in row["exit_layers"])
    assert exited > 100  # the sample exercises exits, not only full-depth tokens


if __name__ == "__main__":
    record()
