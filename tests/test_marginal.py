"""Marginal-value stopping: draft while S_k * a_next >= cost * R (lossless)."""

from __future__ import annotations

import pytest
import torch

from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.policies.marginal import BINS, PRIOR

from conftest import play_round
from test_losslessness import ALPHA, SAMPLING, run_checks


def confident(p: float, K: int, rows: int = 1, V: int = 8) -> torch.Tensor:
    """[rows, K, V]: every step puts probability p on token 0 (the drafted token), the rest spread evenly."""
    d = torch.full((V,), (1 - p) / (V - 1))
    d[0] = p
    return d.expand(rows, K, V).clone()


def test_fresh_policy_stops_where_survival_times_next_falls_below_cost():
    # Fresh: acceptance predicted at the bin centre of p, rate R = 1 (one token per target pass).
    policy = make_method("marginal:cost=0.15,max_k=32").policy
    rows = torch.arange(1)
    policy.begin(rows)
    a = 0.725  # p = 0.72 lies in bin 14 of 20, centre 0.725
    block = play_round(policy, rows, confident(0.72, 32), accepted=[0], clip=True)
    # go on after token k while a^k * a >= 0.15: a^5 = 0.200, a^6 = 0.145 < 0.15 -> stop after token 5
    expected = next(k for k in range(1, 33) if a ** (k + 1) < 0.15)
    assert block.lens.tolist() == [expected] == [5]


def test_cheaper_tokens_draft_longer():
    lens = []
    for cost in (0.05, 0.15, 0.5):
        policy = make_method(f"marginal:cost={cost}").policy
        rows = torch.arange(1)
        policy.begin(rows)
        lens.append(int(play_round(policy, rows, confident(0.72, 32), accepted=[0], clip=True).lens[0]))
    assert lens[0] > lens[1] > lens[2] >= 1, lens


def test_calibration_learns_that_unsure_tokens_are_accepted():
    # The draft gives its tokens 0.32 (bin 6, centre 0.325) but the target accepts every one: the policy learns it.
    policy = make_method("marginal:cost=0.15").policy
    rows = torch.arange(1)
    policy.begin(rows)
    first = play_round(policy, rows, confident(0.32, 32), accepted=[32], clip=True).lens.tolist()
    assert first == [1]  # 0.325 * 0.325 < 0.15: stop after one token
    for _ in range(30):
        block = play_round(policy, rows, confident(0.32, 32), accepted=[32], clip=True)
    bin6 = policy.acceptance(torch.tensor([0.32]))
    assert float(bin6) > 0.9
    assert int(block.lens[0]) > 8


def test_calibration_counts_only_judged_tokens():
    # Tokens after the first rejection were never judged: they must not count as rejected.
    policy = make_method("marginal:cost=0.15").policy
    rows = torch.arange(1)
    policy.begin(rows)
    high = confident(0.97, 4)
    high[0, 2:, 0], high[0, 2:, 1] = 0.52, 0.45  # tokens 3-4 from bin 10
    play_round(policy, rows, high, accepted=[1], limit=[4])  # token 1 accepted, token 2 rejected, 3-4 unjudged
    # bin 19 (centre 0.975): 2 judged, 1 accepted, on top of the prior's pseudo-counts
    assert float(policy.acceptance(torch.tensor([0.97]))) == pytest.approx((1 + 0.975 * PRIOR) / (2 + PRIOR))
    centre = (int(0.52 * BINS) + 0.5) / BINS  # bin 10: nothing judged, still the prior
    assert float(policy.acceptance(torch.tensor([0.52]))) == pytest.approx(centre)


def test_rate_is_per_request():
    # An easy request (everything accepted) reaches a high rate R and so stops earlier on unsure tokens
    # than a hard one would at the same survival.
    policy = make_method("marginal:cost=0.15").policy
    rows = torch.arange(2)
    policy.begin(rows)
    for _ in range(5):
        play_round(policy, rows, confident(0.97, 8, rows=2), accepted=[8, 0], limit=[8, 1], clip=True)
    block = play_round(policy, rows, confident(0.72, 32, rows=2), accepted=[0, 0], clip=True)
    easy, hard = block.lens.tolist()
    assert easy < hard, (easy, hard)


@pytest.mark.parametrize("spec", ["marginal:cost=0", "marginal:cost=1.5", "marginal:cost=-0.1", "marginal:max_k=0"])
def test_bad_settings(spec):
    with pytest.raises(SpecAdaptError):
        make_method(spec)


def test_lossless_monte_carlo(pair):
    target, draft = pair
    # a low cost drafts long blocks, so positions past 2 are exercised
    pvalues = run_checks(target, draft, "marginal:cost=0.02", SAMPLING["t1.3-topp0.8"], seed=1000)
    assert min(pvalues) > ALPHA, pvalues
