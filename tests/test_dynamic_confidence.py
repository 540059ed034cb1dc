"""Hugging Face dynamic speculation: confidence stopping with an ROC-refitted threshold (lossless)."""

from __future__ import annotations

import pytest
import torch

from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.policies.dynamic_confidence import roc_threshold

from conftest import play_round
from test_losslessness import ALPHA, SAMPLING, run_checks

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [42]]
ACCEPTED = [0.9, 0.8, 0.7, 0.35, 0.3]
REJECTED = [0.6, 0.2, 0.1, 0.05]




def cost_by_definition(t, accepted, rejected, fn_cost=3.0):
    fpr = sum(s >= t for s in rejected) / len(rejected)  # rejected tokens drafting continued past
    fnr = sum(s < t for s in accepted) / len(accepted)  # accepted tokens that would stop drafting
    return fpr + fn_cost * fnr


def test_roc_threshold_minimises_fpr_plus_3_fnr():
    scores = torch.tensor(ACCEPTED + REJECTED)
    labels = torch.tensor([True] * len(ACCEPTED) + [False] * len(REJECTED))
    t, cost = roc_threshold(scores, labels)
    # by hand: t = 0.3 keeps every accepted token (FNR 0) and passes only 0.6 among rejected (FPR 1/4)
    assert t == pytest.approx(0.3) and cost == pytest.approx(0.25)
    best = min(cost_by_definition(c, ACCEPTED, REJECTED) for c in ACCEPTED + REJECTED)
    assert cost == pytest.approx(best)
    # a different weighting moves the optimum
    t1, _ = roc_threshold(scores, labels, fn_cost=0.5)
    assert cost_by_definition(t1, ACCEPTED, REJECTED, 0.5) == pytest.approx(
        min(cost_by_definition(c, ACCEPTED, REJECTED, 0.5) for c in ACCEPTED + REJECTED)
    )
    assert t1 == pytest.approx(0.7)  # FPR 0 + 0.5 * 2/5 = 0.2 < 0.25


def test_roc_threshold_random_histories_match_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = (torch.rand(40, generator=g) * 20).round() / 20  # ties on purpose
        labels = torch.rand(40, generator=g) < 0.6
        labels[0], labels[1] = True, False
        t, cost = roc_threshold(scores, labels)
        acc, rej = scores[labels].tolist(), scores[~labels].tolist()
        costs = {c: cost_by_definition(c, acc, rej) for c in set(scores.tolist())}
        best = min(costs.values())
        assert cost == pytest.approx(best)
        assert t == pytest.approx(max(c for c, v in costs.items() if abs(v - best) < 1e-12))  # ties -> largest


def one_round(policy, rows, scores, accepted):
    """One round: row j's k-th token has draft probability scores[j][k]; a row may draft one token past its
    script (probability 1), so the returned lengths show where the policy itself stopped."""
    K = max(len(s) for s in scores) + 1
    probs = torch.zeros(len(scores), K, 4)
    probs[:, :, 0] = torch.tensor([s + [1.0] * (K - len(s)) for s in scores])
    probs[:, :, 1] = 1.0 - probs[:, :, 0]
    return play_round(policy, rows, probs, accepted, limit=[len(s) + 1 for s in scores]).lens.tolist()


def test_policy_refits_on_its_history():
    policy = make_method("dynamic-confidence:min_each=2").policy
    policy.begin(torch.arange(2))
    rows = torch.tensor([1])
    # round 1: three accepted, then a rejection (0.6), then a token after it that is never verified (0.01);
    # the policy stops at 0.01 (< 0.4)
    assert one_round(policy, rows, [[0.9, 0.8, 0.7, 0.6, 0.01]], accepted=[3]) == [5]
    # rounds 2 and 3: 0.35 and 0.3 stop the round and are accepted -> 5 positives, 1 negative: threshold unchanged
    # (had the unverified 0.01 been recorded, 2 negatives after round 1 would have refit it to 0.7)
    assert one_round(policy, rows, [[0.35]], accepted=[1]) == [1]
    assert one_round(policy, rows, [[0.3]], accepted=[1]) == [1]
    assert policy.current_threshold(torch.tensor([0, 1])).tolist() == pytest.approx([0.4, 0.4])
    # round 4: rejected 0.05 -> positives 0.9, 0.8, 0.7, 0.35, 0.3; negatives 0.6, 0.05.
    # Refit: t = 0.3 keeps every positive (FNR 0) and passes 0.6 (FPR 1/2): cost 0.5, the minimum
    assert one_round(policy, rows, [[0.05]], accepted=[0]) == [1]
    assert policy.current_threshold(torch.tensor([0, 1])).tolist() == pytest.approx([0.4, 0.3])  # row 0 untouched
    # the new threshold drives stopping: 0.32 continues (>= 0.3), 0.25 stops
    assert one_round(policy, rows, [[0.32, 0.25]], accepted=[2]) == [2]
    policy.begin(rows)  # a new request in this slot starts over
    assert policy.current_threshold(torch.tensor([1])).item() == pytest.approx(0.4)
    assert one_round(policy, rows, [[0.32]], accepted=[1]) == [1]  # 0.32 < 0.4 stops again


def test_shared_scope_pools_requests():
    policy = make_method("dynamic-confidence:min_each=2,scope=shared").policy
    policy.begin(torch.arange(2))
    # the policy (threshold 0.4) stops row 0 at 0.2; row 1 drafts 0.8, 0.6 and its extra token
    assert one_round(policy, torch.tensor([0, 1]), [[0.9, 0.2], [0.8, 0.6]], accepted=[1, 1]) == [2, 3]
    # pooled: positives 0.9, 0.8; negatives 0.2, 0.6 -> threshold 0.8 (FPR 0, FNR 0)
    assert policy.current_threshold(torch.tensor([0, 1])).tolist() == pytest.approx([0.8, 0.8])
    policy.begin(torch.arange(5))
    assert policy.current_threshold(torch.tensor([4])).item() == pytest.approx(0.8)


@pytest.mark.parametrize("spec", ["dynamic-confidence:threshold=1.5", "dynamic-confidence:min_each=0",
                                  "dynamic-confidence:fn_cost=0", "dynamic-confidence:max_k=0",
                                  "dynamic-confidence:scope=x"])
def test_bad_settings(spec):
    with pytest.raises(SpecAdaptError):
        make_method(spec)


def test_lossless_monte_carlo(pair):
    target, draft = pair
    pvalues = run_checks(target, draft, "dynamic-confidence:scope=shared", SAMPLING["t1.0"], seed=1000)
    assert min(pvalues) > ALPHA, pvalues
