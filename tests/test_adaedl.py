"""AdaEDL: entropy-bound stopping with an online lambda (lossless)."""

from __future__ import annotations

import math

import pytest
import torch

from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.policies import DraftStep
from specadapt.policies.adaedl import acceptance_bound

from conftest import play_round
from test_losslessness import ALPHA, SAMPLING, run_checks

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [42]]




def dist_with_entropy_order(n: int) -> torch.Tensor:
    """A distribution uniform over n of 8 tokens: entropy ln(n)."""
    d = torch.zeros(8)
    d[:n] = 1.0 / n
    return d


def bound_of(n: int, gamma: float = 0.2) -> float:
    return 1.0 - math.sqrt(gamma * math.log(n))


def test_bound_formula_and_stop():
    probs = torch.stack([dist_with_entropy_order(n) for n in (1, 2, 4, 8)])
    assert acceptance_bound(probs, 0.2).tolist() == pytest.approx([bound_of(n) for n in (1, 2, 4, 8)], abs=1e-6)
    assert acceptance_bound(probs, 0.5).tolist() == pytest.approx([bound_of(n, 0.5) for n in (1, 2, 4, 8)], abs=1e-6)
    policy = make_method("adaedl:lambda_init=0.5").policy
    rows = torch.arange(4)
    policy.begin(rows)
    assert policy.max_length(rows).tolist() == [32] * 4
    # bounds: 1.0, 0.628, 0.473, 0.355 -> stop below 0.5
    stop = policy.should_stop(DraftStep(1, torch.zeros(4, dtype=torch.long), probs, None, rows, torch.ones(4, dtype=torch.bool)))
    assert stop.tolist() == [False, False, True, True]


def play(policy, rows, ns, accepted, drafted):
    """One round: each row's k-th token comes from a distribution uniform over ns[row][k] tokens."""
    K = max(len(n) for n in ns)
    probs = torch.stack([torch.stack([dist_with_entropy_order(n[k] if k < len(n) else 1) for n in ns]) for k in range(K)], 1)
    block = play_round(policy, rows, probs, accepted, limit=drafted)
    assert block.lens.tolist() == drafted  # the script agrees with the policy's stopping


def test_lambda_update_rule():
    lam0, lr = 0.5, 0.25
    policy = make_method(f"adaedl:lambda_init={lam0},lr={lr}").policy
    policy.begin(torch.arange(4))
    rows = torch.tensor([3, 2, 1, 0])
    # bounds: n=1 -> 1.0, n=2 -> 0.628, n=4 -> 0.473, n=8 -> 0.355 (lambda = 0.5)
    play(
        policy,
        rows,
        ns=[[1, 2, 2], [1, 8], [2, 4], [1, 1]],
        accepted=[1, 2, 1, 2],
        drafted=[3, 2, 2, 2],
    )
    lam = policy.threshold(torch.arange(4)).tolist()
    # original row 3: first rejected token (position 2) had bound 0.628 >= 0.5 -> too late, move up
    assert lam[3] == pytest.approx(lam0 + lr * (bound_of(2) - lam0))
    # row 2: all accepted and the last bound 0.355 < 0.5 ended the round -> too early, move down
    assert lam[2] == pytest.approx(lam0 + lr * (bound_of(8) - lam0))
    # row 1: the bound (0.473 < 0.5) stopped at the rejected token -> right, unchanged
    assert lam[1] == pytest.approx(lam0)
    # row 0: all accepted, drafting ended by the cap with high bounds -> unchanged
    assert lam[0] == pytest.approx(lam0)


def test_lambda_shared_scope_and_clipping():
    lr = 0.5
    policy = make_method(f"adaedl:lambda_init=0.5,lr={lr},lambda_min=0.4,scope=shared").policy
    rows = torch.arange(3)
    policy.begin(rows)
    # row 0: too late with bound 1.0 (clipped to lambda_max = 1); row 1: too early with bound 0.355 (clipped to 0.4);
    # row 2: too late with bound 0.628
    play(policy, rows, ns=[[1], [8], [2]], accepted=[0, 1, 0], drafted=[1, 1, 1])
    lam = 0.5
    for target in (1.0, 0.4, bound_of(2)):  # batch order
        lam = lam + lr * (target - lam)
    assert policy.threshold(rows).tolist() == pytest.approx([lam] * 3)
    policy.begin(torch.tensor([0]))  # a new request keeps the shared lambda
    assert policy.threshold(torch.tensor([0])).item() == pytest.approx(lam)


@pytest.mark.parametrize("spec", ["adaedl:gamma=0", "adaedl:gamma=-0.2", "adaedl:lr=1.5", "adaedl:lambda_init=1.2",
                                  "adaedl:max_k=0", "adaedl:scope=batch"])
def test_bad_settings(spec):
    with pytest.raises(SpecAdaptError):
        make_method(spec)


def test_lossless_monte_carlo(pair):
    target, draft = pair
    # shared lambda: it moves between rounds with every row's outcome
    pvalues = run_checks(target, draft, "adaedl:scope=shared,lr=0.3", SAMPLING["t1.3-topp0.8"], seed=1000)
    assert min(pvalues) > ALPHA, pvalues
