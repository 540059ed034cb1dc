"""Marginal-value stopping: draft while S_k * a_next >= cost * R (lossless)."""

from __future__ import annotations

import copy

import pytest
import torch

from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.bench.replay import Trajectory, replay
from specadapt.engine import RequestConfig
from specadapt.policies import RoundCost
from specadapt.policies.marginal import AUTO_PRIOR, BINS, COST_RANGE, COST_WINDOW, PRIOR, TERM_PRIORS, CostFit

from conftest import make_engine, play_round
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


def test_a_cost_that_is_neither_a_number_nor_auto_is_named():
    with pytest.raises(SpecAdaptError) as err:
        make_method("marginal:cost=cheap")
    assert str(err.value) == ("method 'marginal:cost=cheap': cost must be a number in (0, 1] (a drafted token's cost "
                              "in target passes) or 'auto' (measured), got 'cheap'")


def test_cost_fit_recovers_the_price_of_a_draft_step():
    # Rounds cost 0.4 s plus 0.12 s per draft step: a step is 0.3 of a round without drafts.
    fit = CostFit((AUTO_PRIOR,))
    for i in range(COST_WINDOW):
        K = 1 + i % 12
        fit.add((K,), 0.4 + 0.12 * K)
    assert fit.price((1,)) == pytest.approx(0.3, rel=0.05)  # the prior (0.15) still weighs two rounds' worth
    # A window of rounds at another price replaces the old ones.
    for i in range(COST_WINDOW):
        K = 1 + i % 12
        fit.add((K,), 0.2 + 0.01 * K)
    assert fit.price((1,)) == pytest.approx(0.05, rel=0.05)


def test_cost_fit_leaves_out_spikes():
    # A kernel compiled on a width's first use makes its round take seconds; timing noise only ever adds.
    spiked, clean = CostFit((AUTO_PRIOR,)), CostFit((AUTO_PRIOR,))
    for i in range(12):
        K = 1 + i % 6
        spiked.add((K,), 0.4 + 0.12 * K + (4.0 if i in (1, 7) else 0.0))
        if i not in (1, 7):
            clean.add((K,), 0.4 + 0.12 * K)
    assert spiked.price((1,)) == pytest.approx(clean.price((1,)))
    assert clean.price((1,)) == pytest.approx(0.3, rel=0.1)  # ten rounds: the prior (0.15) still weighs a little


def test_cost_fit_of_rounds_that_cost_nothing_without_drafts_keeps_a_price_in_range():
    fit = CostFit((AUTO_PRIOR,))
    for K, seconds in ((1, 0.01), (10, 10.0), (20, 30.0)):  # the line's intercept is negative: no price to read
        fit.add((K,), seconds)
        assert COST_RANGE[0] <= fit.price((1,)) <= COST_RANGE[1]


def test_cost_fit_without_spread_in_the_draft_length_keeps_the_prior():
    fit = CostFit((AUTO_PRIOR,))
    assert fit.price((1,)) == AUTO_PRIOR
    for _ in range(30):
        fit.add((4,), 0.7)  # always 4 steps: a and b cannot be told apart
    assert fit.price((1,)) == pytest.approx(AUTO_PRIOR)


def test_cost_fit_prices_draft_forwards_verified_width_and_catch_up_apart():
    # 0.4 s a round, 0.1 s a draft forward, 0.08 s a verified position, 0.02 s a caught-up token: a draft-model
    # token costs (0.1 + 0.08) / 0.4 = 0.45 target passes, a looked-up one (0.08 + 0.02) / 0.4 = 0.25.
    fit = CostFit(TERM_PRIORS)
    assert fit.price((1, 1, 0)) == pytest.approx(sum(TERM_PRIORS[:2]))  # unmeasured: the priors
    for i in range(COST_WINDOW):
        K = 1 + i % 7
        F, C = ((K, i % 2), (0, 0), (1, 3 * K))[i % 3]  # drafted; looked up; caught up on the last lookups
        fit.add((F, K, C), 0.4 + 0.1 * F + 0.08 * K + 0.02 * C)
    assert fit.price((1, 1, 0)) == pytest.approx(0.45, rel=0.05)
    assert fit.price((0, 1, 1)) == pytest.approx(0.25, rel=0.05)


def test_cost_fit_of_draft_rounds_alone_prices_a_draft_token_whatever_the_split():
    # Without lookups F = K: the data give b + d, the priors split it; a draft-model token's price is the data's.
    fit = CostFit(TERM_PRIORS)
    for i in range(COST_WINDOW):
        K = 1 + i % 6
        fit.add((K, K, i % 2), 0.3 + 0.15 * K)
    assert fit.price((1, 1, 0)) == pytest.approx(0.5, rel=0.05)


def test_a_terms_setting_other_than_1_or_3_is_named():
    with pytest.raises(SpecAdaptError) as err:
        make_method("marginal:cost=auto,terms=2")
    assert str(err.value) == ("method 'marginal:cost=auto,terms=2': terms must be 1 (one price per drafted token) or 3 "
                              "(draft forwards, verified width and catch-up priced apart), got 2")


def seconds(a: float, b: float):
    """A round's measured cost as the engine hands it: a + b * K seconds, the draft's share b * K (a forward per
    token, each fed one token)."""
    return lambda block: RoundCost(b * block.K, a, 1, block.K)


def test_auto_cost_drafts_shorter_where_draft_steps_are_dear():
    lens = {}
    for name, b in (("cheap", 0.02), ("dear", 0.3)):  # per step, against a 1 s round without drafts
        policy = make_method("marginal:cost=auto").policy
        rows = torch.arange(1)
        policy.begin(rows)
        for i in range(60):  # rounds of varied length, every token accepted, so the fit sees K spread
            limit = [1 + i % 8]
            play_round(policy, rows, confident(0.97, 8), accepted=limit, limit=limit, cost=seconds(1.0, b))
        assert policy.token_cost == pytest.approx(b, rel=0.1)  # shrunk a little towards the prior (0.15)
        assert policy.settings()["measured_cost"] == policy.token_cost
        lens[name] = int(play_round(policy, rows, confident(0.72, 32), accepted=[0], clip=True).lens[0])
    assert lens["cheap"] > lens["dear"] >= 1, lens


def lookup_cost(block):
    """A round's measured cost for ``play_round``: 1 s, plus 0.05 s per verified position and 0.3 s per draft-model
    forward (a looked-up step has none)."""
    forwards = sum(not s.looked_up for s in block.steps)
    return RoundCost(0.3 * forwards, 1.0 + 0.05 * block.K, 1, forwards)


def mixed_policy(terms: int):
    """A `marginal:cost=auto` policy after 60 rounds of 1-8 accepted tokens, every other round prompt lookup's alone."""
    policy = make_method(f"marginal:cost=auto,terms={terms}").policy
    rows = torch.arange(1)
    policy.begin(rows)
    for i in range(60):
        K = 1 + i % 8
        play_round(policy, rows, confident(0.97, 8), accepted=[K], limit=[K], clip=True, cost=lookup_cost,
                   looked_up=range(1, K + 1) if i % 2 else ())
    return policy


def test_three_terms_keep_the_draft_price_through_a_stretch_of_lookups():
    # One line over the draft steps takes the cheap looked-up rounds for cheap draft steps; three terms do not.
    one, three = mixed_policy(1), mixed_policy(3)
    assert three.token_cost == pytest.approx(0.35, rel=0.1) and three.lookup_cost == pytest.approx(0.05, rel=0.2)
    assert one.token_cost == one.lookup_cost < 0.1  # one price, pulled down by the looked-up rounds
    assert three.settings()["measured_lookup_cost"] == three.lookup_cost


def test_looked_up_tokens_are_priced_as_looked_up_when_deciding_to_stop():
    lens = {}
    for terms in (1, 3):
        policy = mixed_policy(terms)
        # the same state, the same probabilities: proposed by the draft model, or by prompt lookup
        lens[terms] = [int(play_round(copy.deepcopy(policy), torch.arange(1), confident(0.85, 32), accepted=[0],
                                      clip=True, looked_up=looked_up).lens[0]) for looked_up in ((), range(1, 33))]
    assert lens[1][0] == lens[1][1]  # one price: the kind of token does not matter
    assert lens[3][1] > lens[3][0] >= 1, lens  # a looked-up token is cheaper, so lookup drafts on further


def test_auto_cost_ignores_a_prompts_round():
    # The first round feeds the target the whole prompt: its seconds are no draft step's price.
    policy = make_method("marginal:cost=auto").policy
    rows = torch.arange(1)
    policy.begin(rows)
    play_round(policy, rows, confident(0.97, 4), accepted=[4], cost=lambda block: RoundCost(0.1, 30.0, 200, 203))
    assert policy.token_cost == pytest.approx(AUTO_PRIOR)


def test_replay_refuses_a_measured_cost():
    with pytest.raises(SpecAdaptError) as err:
        replay(make_method("marginal:cost=auto"), Trajectory(3, [5, 6], torch.zeros(2, 8), None, 2))
    assert str(err.value) == ("method 'marginal:cost=auto' prices its drafts from the rounds' measured seconds, which "
                              "a replay does not have; give it a fixed cost (e.g. marginal:cost=0.15) or measure it "
                              "with `specadapt bench`.")


def test_engine_hands_each_round_its_measured_cost(target, close_draft):
    method = make_method("marginal:cost=auto")
    seen = []
    observe = method.policy.observe
    method.policy.observe = lambda outcome: (seen.append(outcome.cost), observe(outcome))
    make_engine(target, close_draft).generate([[1, 2, 3, 4, 5]], method, RequestConfig(max_new_tokens=12))
    assert seen[0].target_width == 5 and all(c.target_width == 1 for c in seen[1:])
    assert all(c.draft_s > 0 and c.target_s > 0 for c in seen)


def test_lossless_monte_carlo(pair):
    target, draft = pair
    # a low cost drafts long blocks, so positions past 2 are exercised
    pvalues = run_checks(target, draft, "marginal:cost=0.02", SAMPLING["t1.3-topp0.8"], seed=1000)
    assert min(pvalues) > ALPHA, pvalues
