"""Monte Carlo losslessness: speculative sampling emits exactly the target's distribution.

Tiny models over an 8-token vocabulary, peaky random distributions, 3 generated
tokens. The exact target distribution is enumerated from the target model (all
8 + 64 prefixes). From N independent requests (each with its own generator) we
test, per configuration, the marginal of each of the 3 positions and the joint of
each consecutive pair with a chi-square goodness-of-fit test at p > 1e-4.

Bound: 5 tests x 15 configurations = 75 tests; under losslessness the chance
that any fails is <= 75 x 1e-4 = 0.75% (Bonferroni), and the seeds are fixed,
so the outcome is deterministic. Power: the same check rejects a broken rule that
accepts every draft token (p < 1e-4), see ``test_check_detects_a_lossy_rule``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from specadapt.acceptance import AcceptanceRule, Proposal, Verdict
from specadapt.engine import RequestConfig
from specadapt.methods import Method, MethodEntry, make_method
from specadapt.policies import DraftLengthPolicy, DraftStep
from specadapt.sampling import SamplingParams, process_logits

from conftest import make_engine

V, N, LENGTH = 8, 12000, 3
PROMPT = [1, 2, 3]
ALPHA = 1e-4


@dataclass
class RandomStop(DraftLengthPolicy):
    """Stops after each drafted token with probability p_stop (its own generator), at most max_k."""

    p_stop: float = 0.4
    max_k: int = 4

    def begin(self, slots) -> None:
        self._g = torch.Generator().manual_seed(99)

    def max_length(self, slots):
        return torch.full_like(slots, self.max_k)

    def should_stop(self, step: DraftStep):
        return torch.rand(step.slots.shape, generator=self._g) < self.p_stop


class AcceptAll(AcceptanceRule):
    """A deliberately lossy rule: emits the draft's tokens (for checking the test's power)."""

    name, lossless = "accept-all", False

    def __call__(self, proposal: Proposal) -> Verdict:
        from specadapt.sampling import sample

        b, K = proposal.draft_tokens.shape
        nxt = torch.stack([sample(proposal.target_probs[i, int(proposal.draft_lens[i])], g) for i, g in enumerate(proposal.generators)])
        mask = torch.arange(K)[None, :] < proposal.draft_lens[:, None]
        return Verdict(proposal.draft_lens.clone(), nxt, mask)


def method(name: str) -> Method:
    if name == "random-stop":
        return Method(MethodEntry("random-stop", RandomStop, "", True, None), RandomStop())
    if name == "accept-all":
        return Method(MethodEntry("accept-all", RandomStop, "", True, lambda params, policy: AcceptAll()), RandomStop(0.3, 3))
    return make_method(name)




def exact_joint(target, params: SamplingParams) -> np.ndarray:
    """P(x1, x2, x3) under the target with the given logits processing, shape [V, V, V]."""
    seqs = torch.tensor([PROMPT + [a, b] for a in range(V) for b in range(V)])
    with torch.no_grad():
        logits = target(seqs).logits[:, -3:]  # predicts x1 | prompt, x2 | x1, x3 | x1 x2
    probs = process_logits(logits, params).double().numpy().reshape(V, V, 3, V)
    p1 = probs[0, 0, 0]
    p2 = probs[:, 0, 1]  # [x1, x2]
    p3 = probs[:, :, 2]  # [x1, x2, x3]
    return p1[:, None, None] * p2[:, :, None] * p3


def chi2_pvalue(observed: np.ndarray, expected_probs: np.ndarray) -> float:
    expected_probs = expected_probs.ravel() / expected_probs.sum()
    observed, expected = observed.ravel(), expected_probs * observed.sum()
    small = expected < 5  # merge sparse cells so the chi-square approximation holds
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    assert observed[~keep].sum() == 0, "emitted a token the target gives probability 0"
    return float(chisquare(observed[keep], expected[keep]).pvalue)


def run_checks(target, draft, method_name: str, params: SamplingParams, seed: int) -> list[float]:
    engine = make_engine(target, draft)
    config = RequestConfig(max_new_tokens=LENGTH, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, seed=seed)
    results = engine.generate([PROMPT] * N, method(method_name), config)
    samples = np.array([r.token_ids for r in results])
    assert samples.shape == (N, LENGTH)
    joint = exact_joint(target, params)
    counts = np.zeros((V, V, V))
    np.add.at(counts, (samples[:, 0], samples[:, 1], samples[:, 2]), 1)
    return [
        chi2_pvalue(counts.sum((1, 2)), joint.sum((1, 2))),
        chi2_pvalue(counts.sum((0, 2)), joint.sum((0, 2))),
        chi2_pvalue(counts.sum((0, 1)), joint.sum((0, 1))),
        chi2_pvalue(counts.sum(2), joint.sum(2)),
        chi2_pvalue(counts.sum(0), joint.sum(0)),
    ]


SAMPLING = {
    "t1.0": SamplingParams(1.0),
    "t0.7-topk4": SamplingParams(0.7, top_k=4),
    "t1.3-topp0.8": SamplingParams(1.3, top_p=0.8),
}


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("method_name", ["fixed:1", "fixed:3", "heuristic:initial_k=2", "confidence:threshold=0.5", "random-stop"])
def test_emitted_distribution_matches_target(pair, method_name, sampling):
    target, draft = pair
    pvalues = run_checks(target, draft, method_name, SAMPLING[sampling], seed=1000)
    assert min(pvalues) > ALPHA, pvalues


def test_check_detects_a_lossy_rule(pair):
    target, draft = pair
    pvalues = run_checks(target, draft, "accept-all", SAMPLING["t1.0"], seed=1000)
    assert min(pvalues) < ALPHA, pvalues


def test_pair_is_not_trivial(pair):
    """The draft must disagree with the target for the test to mean anything."""
    target, draft = pair
    seqs = torch.tensor([PROMPT])
    with torch.no_grad():
        p = target(seqs).logits[0, -1].softmax(-1)
        q = draft(seqs).logits[0, -1].softmax(-1)
    overlap = torch.minimum(p, q).sum()
    assert 0.2 < overlap < 0.9, overlap
