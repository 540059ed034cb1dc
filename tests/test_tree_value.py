"""benchmarks/tree_value.py: the round-by-round model of chain and tree drafting along a greedy output."""

from __future__ import annotations

import sys

import pytest
from test_cheap_draft import ROOT, load


@pytest.fixture(scope="module")
def tv():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports draft_cost's Stepper, as when run as a script
    try:
        yield load("tree_value")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_runs_of_agreement_count_forward(tv):
    assert tv.runs_of_agreement([True, True, False, True]) == [2, 1, 0, 1, 0]


def test_draft_rows_count_the_chain_and_every_branch_still_drafting(tv):
    assert tv.draft_rows(4, 0, 1) == [1, 1, 1, 1]
    # branches at depths 0 and 1, 3 tokens each: branch 0 feeds at steps 2-3, branch 1 at steps 3-4
    assert tv.draft_rows(4, 2, 3) == [1, 2, 3, 2]
    assert tv.draft_rows(1, 1, 4) == [1, 1, 1, 1]  # the branch outlives a one-token chain


def test_a_chain_takes_its_agreement_plus_the_bonus_each_round(tv):
    match1 = [True, True, False, True, True, True, True, False]
    match2 = [False] * 8
    unit = tv.simulate(match1, match2, 3, 0, 1, lambda n: 0.1 * n, lambda n: 1.0 + 0.01 * n)
    # rounds: from 0 two accepted + bonus (3 tokens); from 3 three accepted + bonus (4); from 7 the last token alone
    assert unit["rounds"] == 3 and unit["tokens"] == 8 and unit["branch_wins"] == 0
    assert unit["seconds"] == pytest.approx((0.3 + 1.04) * 2 + 1.01)


def test_a_branch_holding_the_target_token_continues_along_its_agreement(tv):
    match1 = [True, False, True, True, False, False, False, False, False, False]
    match2 = [False, True, False, False, False, False, False, False, False, False]
    chain = tv.simulate(match1, match2, 4, 0, 1, lambda n: 0.0, lambda n: 1.0)
    tree = tv.simulate(match1, match2, 4, 2, 3, lambda n: 0.0, lambda n: 1.0)
    # the chain: 2 tokens (1 accepted + bonus), then 3 (2 + bonus), then one per round
    assert chain["rounds"] == 7
    # the tree: at depth 1 the chain fails and the branch holds the target's token: 1 + 2 of its own + the bonus
    assert tree["rounds"] == 7 - 1 and tree["branch_wins"] == 1
    costs = []
    tv.simulate(match1, match2, 4, 2, 3, lambda n: 0.0, lambda n: costs.append(n) or 1.0)
    assert costs[0] == 1 + 4 + 2 * 3  # the first round verifies the pending token, the chain and both branches
