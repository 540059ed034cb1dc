"""Deterministic tests of the acceptance rules with hand-built distributions."""

import torch

from specadapt.acceptance import GreedyAcceptance, Proposal, SpeculativeSampling
from specadapt.acceptance.base import first_rejection
from specadapt.sampling import SamplingParams


def one_hot(ids, V=6):
    return torch.nn.functional.one_hot(torch.tensor(ids), V).float()


def test_first_rejection_respects_lengths():
    accept = torch.tensor([[True, True, False, True], [True, True, True, True], [True, True, True, True]])
    n, mask = first_rejection(accept, torch.tensor([4, 4, 2]))
    assert n.tolist() == [2, 4, 2]
    assert mask.tolist()[2] == [True, True, False, False]


def test_greedy_rule_counts_matches_and_corrects():
    logits = (one_hot([[2, 3, 1, 0], [2, 3, 1, 5]]) * 10)  # target argmax per position
    drafts = torch.tensor([[2, 3, 0], [2, 3, 1]])
    v = GreedyAcceptance()(Proposal(drafts, torch.tensor([3, 3]), None, logits, None, SamplingParams(), []))
    assert v.num_accepted.tolist() == [2, 3]
    assert v.next_token.tolist() == [1, 5]  # correction on row 0, bonus on row 1


def test_speculative_rule_residual_path_is_exact():
    # Position 1: p == q -> always accepted. Position 2: p(x)=0 -> always rejected,
    # and the residual max(0, p - q) is all on token 4.
    p = torch.tensor([[[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0, 0.4, 0.6, 0], [1 / 6] * 6]])
    q = torch.tensor([[[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0.5, 0.4, 0.1, 0]]])
    drafts = torch.tensor([[1, 2]])
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        v = SpeculativeSampling()(Proposal(drafts, torch.tensor([2]), q, p.log(), p, SamplingParams(1.0), [g]))
        assert v.num_accepted.tolist() == [1]
        assert v.next_token.tolist() == [4]
        assert v.accepted_mask.tolist() == [[True, False]]


def test_speculative_rule_bonus_path_is_exact():
    p = torch.stack([one_hot([3]), one_hot([5]), one_hot([2])], 1)
    q = torch.stack([one_hot([3]), one_hot([5])], 1)
    g = torch.Generator().manual_seed(0)
    v = SpeculativeSampling()(Proposal(torch.tensor([[3, 5]]), torch.tensor([2]), q, p, p, SamplingParams(1.0), [g]))
    assert v.num_accepted.tolist() == [2]
    assert v.next_token.tolist() == [2]


def test_speculative_rule_ignores_tokens_past_row_length():
    # Row drafted only 1 token; the padding token 0 at position 2 must not count, and the
    # bonus comes from position 2's target distribution.
    p = torch.stack([one_hot([3]), one_hot([1]), one_hot([4])], 1)
    q = torch.stack([one_hot([3]), one_hot([0])], 1)
    g = torch.Generator().manual_seed(0)
    v = SpeculativeSampling()(Proposal(torch.tensor([[3, 0]]), torch.tensor([1]), q, p, p, SamplingParams(1.0), [g]))
    assert v.num_accepted.tolist() == [1]
    assert v.next_token.tolist() == [1]
