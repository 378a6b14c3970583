"""The top-k relaxation exit labels on hand-made logits, both directions, several k."""
import pytest
import torch

from workflow_lib.choices import LABEL_RULES
from workflow_lib.training.labels import RANK_CAP, exit_labels, label_ranks, labels_from_ranks

# Vocabulary of 5 tokens. The full model's ranking: 2 > 0 > 4 > 1 > 3.
FULL = torch.tensor([3.0, 1.0, 5.0, 0.0, 2.0])
# Intermediate predictions, each with its own ranking (top-1 first):
INTERMEDIATE = torch.tensor([
    [0.0, 0.0, 9.0, 0.0, 1.0],  # a: 2 > 4 > ...          top-1 = full top-1
    [8.0, 0.0, 1.0, 0.0, 0.0],  # b: 0 > 2 > ...          top-1 = full model's 2nd; full top-1 is its 2nd
    [0.0, 0.0, 2.0, 9.0, 5.0],  # c: 3 > 4 > 2 > ...      top-1 = full model's last; full top-1 is its 3rd
    [0.0, 7.0, 0.0, 0.0, 0.0],  # d: 1 > (0,2,3,4 tied)   top-1 = full model's 4th; full top-1 tied 2nd..5th
])


@pytest.mark.parametrize("k, expected", [(1, [1, 0, 0, 0]), (2, [1, 1, 0, 0]), (3, [1, 1, 0, 0]),
                                         (4, [1, 1, 0, 1]), (5, [1, 1, 1, 1])])
def test_intermediate_in_oracle_topk(k, expected):
    labels = exit_labels(INTERMEDIATE, FULL, "intermediate_in_oracle_topk", k)
    assert labels.tolist() == expected


@pytest.mark.parametrize("k, expected", [(1, [1, 0, 0, 0]), (2, [1, 1, 0, 1]), (3, [1, 1, 1, 1]),
                                         (15, [1, 1, 1, 1])])
def test_oracle_in_intermediate_topk(k, expected):
    # d: the full model's token 2 ties with three others below token 1, so by strict rank it is 2nd (ties in its favour)
    labels = exit_labels(INTERMEDIATE, FULL, "oracle_in_intermediate_topk", k)
    assert labels.tolist() == expected


def test_directions_differ():
    # Row c: intermediate top-1 (token 3) is the full model's last, but the full top-1 (token 2) is 3rd for the exit.
    a = exit_labels(INTERMEDIATE[2], FULL, "intermediate_in_oracle_topk", 3)
    b = exit_labels(INTERMEDIATE[2], FULL, "oracle_in_intermediate_topk", 3)
    assert (a.item(), b.item()) == (0, 1)


def test_k1_is_argmax_agreement_both_ways():
    g = torch.Generator().manual_seed(0)
    inter, full = torch.randn(3, 4, 6, 50, generator=g), torch.randn(4, 6, 50, generator=g)  # (E,B,T,V), (B,T,V)
    agree = (inter.argmax(-1) == full.argmax(-1)).long()  # (E, B, T)
    for rule in LABEL_RULES:
        assert torch.equal(exit_labels(inter, full, rule, 1), agree)


def test_vectorised_over_exits_matches_per_position_loop():
    g = torch.Generator().manual_seed(1)
    inter, full = torch.randn(2, 3, 5, 20, generator=g), torch.randn(3, 5, 20, generator=g)  # (E,B,T,V), (B,T,V)
    for rule in LABEL_RULES:
        for k in (1, 3, 7):
            labels = exit_labels(inter, full, rule, k)
            assert labels.shape == (2, 3, 5) and labels.dtype == torch.long
            for e in range(2):
                for b in range(3):
                    for t in range(5):
                        i, o = inter[e, b, t], full[b, t]
                        if rule == "intermediate_in_oracle_topk":
                            want = i.argmax() in o.topk(k).indices
                        else:
                            want = o.argmax() in i.topk(k).indices
                        assert labels[e, b, t].item() == int(want)


def test_larger_k_never_removes_a_positive():
    g = torch.Generator().manual_seed(2)
    inter, full = torch.randn(4, 64, 30, generator=g), torch.randn(4, 64, 30, generator=g)
    for rule in LABEL_RULES:
        ratios = [exit_labels(inter, full, rule, k).float().mean().item() for k in (1, 2, 5, 30)]
        assert ratios == sorted(ratios) and ratios[-1] == 1.0


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_is_a_clear_error(k):
    with pytest.raises(ValueError, match="k >= 1"):
        exit_labels(INTERMEDIATE, FULL, "intermediate_in_oracle_topk", k)


def test_unknown_rule_and_vocab_mismatch():
    with pytest.raises(ValueError, match="unknown label rule"):
        exit_labels(INTERMEDIATE, FULL, "oracle_topk", 1)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        exit_labels(INTERMEDIATE, FULL[:4], "intermediate_in_oracle_topk", 1)


@pytest.mark.parametrize("rule", LABEL_RULES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_stored_ranks_give_exactly_the_labels(rule, k):
    """The label cache stores two ranks per token; every rule and k read back from them equals exit_labels."""
    assert labels_from_ranks(label_ranks(INTERMEDIATE, FULL), rule, k).tolist() == \
        exit_labels(INTERMEDIATE, FULL, rule, k).tolist()
    torch.manual_seed(0)
    intermediate = torch.randint(0, 4, (3, 2, 7, 11)).float()  # (E, B, T, V): small integers, many ties
    full = torch.randint(0, 4, (2, 7, 11)).float()  # (B, T, V)
    ranks = label_ranks(intermediate, full)  # (E, B, T, 2)
    assert ranks.dtype == torch.int16 and ranks.shape == (3, 2, 7, 2)
    assert torch.equal(labels_from_ranks(ranks, rule, k), exit_labels(intermediate, full, rule, k))


def test_stored_ranks_refuse_a_k_past_their_cap():
    ranks = label_ranks(INTERMEDIATE, FULL)
    with pytest.raises(ValueError, match="cap"):
        labels_from_ranks(ranks, LABEL_RULES[0], RANK_CAP + 1)
