"""Prompt lookup beside the draft model (``METHOD+lookup``): the match, the method strings, greedy token identity
(fp32) and the emitted distribution when sampling."""

from __future__ import annotations

import numpy as np
import pytest
import test_losslessness as mc
from conftest import hf_greedy, make_engine

from specadapt.engine import Batch, RequestConfig
from specadapt.errors import SpecAdaptError
from specadapt.lookup import DEFAULT_NGRAM, lookup_next
from specadapt.methods import make_method


def test_lookup_takes_the_token_after_the_latest_earlier_match():
    assert lookup_next([5, 6, 7, 1, 5, 6, 8, 2, 5, 6], 2) == 8  # the latest of two earlier matches
    assert lookup_next([5, 6, 7, 1, 5, 6, 8, 2, 5, 6], 3) is None  # (2, 5, 6) occurred nowhere before
    assert lookup_next([3, 3, 3], 2) == 3  # an earlier match may overlap the final tokens
    assert lookup_next([1, 2], 2) is None and lookup_next([], 1) is None


def test_method_strings_take_lookup_and_refuse_what_cannot_use_it():
    assert make_method("adaedl+lookup").lookup == DEFAULT_NGRAM
    method = make_method("fixed:4+lookup=3")
    assert (method.lookup, method.spec, method.policy.k) == (3, "fixed:k=4+lookup=3", 4)
    assert method.describe(mc.SamplingParams())["prompt_lookup"] == 3
    assert make_method("adaedl").lookup == 0 and "prompt_lookup" not in make_method("adaedl").describe(mc.SamplingParams())
    for bad in ("adaedl+lookup=0", "adaedl+foo", "adaedl+lookup+lookup", "adaedl+lookup=x"):
        with pytest.raises(SpecAdaptError, match=r"after the method only \+lookup or \+lookup=N"):
            make_method(bad)
    with pytest.raises(SpecAdaptError, match="cannot take \\+lookup: it drafts nothing"):
        make_method("autoregressive+lookup")
    with pytest.raises(SpecAdaptError, match="reads the draft model's hidden state"):
        make_method("specdecpp+lookup", head="")


@pytest.fixture
def lookups(monkeypatch):
    """Counts the steps at which prompt lookup proposed the tokens of every drafting row."""
    hits = []
    original = Batch._look_up

    def spy(self, texts, drafting):
        out = original(self, texts, drafting)
        hits.append(out is not None)
        return out

    monkeypatch.setattr(Batch, "_look_up", spy)
    return hits


# Prompts that repeat themselves, as code answers repeat their prompt; the tiny models' greedy outputs loop too.
PROMPTS = [[3, 4, 5, 6, 3, 4, 5, 6, 3, 4], [9, 10, 9, 10, 9], [11, 12, 13, 14, 15, 11, 12], [20, 21, 22, 20, 21]]


@pytest.mark.parametrize("method", ["fixed:1+lookup=1", "fixed:4+lookup=2", "adaedl+lookup=2", "marginal+lookup=1",
                                    "marginal:cost=auto+lookup=2",
                                    "heuristic+lookup=3"])
@pytest.mark.parametrize("draft_name", ["close_draft", "random_draft"])
def test_greedy_with_lookup_equals_target_generate(method, draft_name, target, request, lookups):
    engine = make_engine(target, request.getfixturevalue(draft_name))
    for prompts in (PROMPTS[:1], PROMPTS):  # alone, and four rows that look up in lockstep
        lookups.clear()
        # the policies' own draft lengths (no load rule), so that lookup steps run in the batch too
        results = engine.generate(prompts, make_method(method), RequestConfig(max_new_tokens=30), load_rule="off")
        for prompt, result in zip(prompts, results):
            assert result.token_ids == hf_greedy(target, prompt, 30)
            assert result.stats.generated_tokens == 30 == result.stats.accepted + result.stats.rounds
        assert any(lookups) and not all(lookups)  # both kinds of step ran


def test_lookup_tokens_cost_no_draft_forward(target, monkeypatch):
    """With the draft equal to the target every proposal is accepted; a looked-up token is one the draft model
    did not compute, so the model runs fewer forwards than there are drafted tokens."""
    from specadapt.models.runner import ModelRunner

    calls = []
    forward = ModelRunner.forward
    monkeypatch.setattr(ModelRunner, "forward", lambda self, *a, **k: calls.append(self.model) or forward(self, *a, **k))
    engine = make_engine(target, target)
    plain = engine.generate(PROMPTS[:1], make_method("fixed:6"), RequestConfig(max_new_tokens=40))[0]
    plain_calls = len(calls)
    calls.clear()
    looked = engine.generate(PROMPTS[:1], make_method("fixed:6+lookup=2"), RequestConfig(max_new_tokens=40))[0]
    assert looked.token_ids == plain.token_ids == hf_greedy(target, PROMPTS[0], 40)
    assert len(calls) < plain_calls


def test_the_engine_marks_looked_up_steps_and_counts_what_the_draft_was_fed(target, close_draft):
    """A looked-up step is flagged and its proposal is a point mass; the draft model is fed one token per forward
    plus what it has not seen, so after an accepted stretch of lookups it catches up in one wide forward."""
    method = make_method("marginal:cost=auto+lookup=2")
    seen = []
    observe = method.policy.observe
    method.policy.observe = lambda outcome: (seen.append(outcome), observe(outcome))
    make_engine(target, close_draft).generate(PROMPTS[:1], method, RequestConfig(max_new_tokens=30))
    steps = [s for o in seen for s in o.steps]
    assert any(s.looked_up for s in steps) and not all(s.looked_up for s in steps)
    assert all(bool((s.probs.max(-1).values == 1).all()) for s in steps if s.looked_up)
    forwards = [sum(not s.looked_up for s in o.steps) for o in seen]
    fed = [o.cost.draft_fed for o in seen]
    assert all(f >= n for f, n in zip(fed, forwards)) and all(f == 0 for f, n in zip(fed, forwards) if n == 0)
    assert any(f > n + 1 for f, n in zip(fed[1:], forwards[1:]) if n), (fed, forwards)  # a catch-up


@pytest.mark.parametrize("sampling", ["t1.0", "t1.3-topp0.8"])
@pytest.mark.parametrize("method_name", ["fixed:3+lookup=1", "adaedl+lookup=1"])
def test_sampling_with_lookup_emits_the_targets_distribution(pair, method_name, sampling, monkeypatch, lookups):
    """Every token of the 8-token vocabulary is in the prompt, so after the first token every row has a lookup
    proposal (a point mass) at every step: the rounds mix model steps and looked-up ones."""
    monkeypatch.setattr(mc, "PROMPT", list(range(mc.V)))
    target, draft = pair
    pvalues = mc.run_checks(target, draft, method_name, mc.SAMPLING[sampling], seed=2000)
    assert min(pvalues) > mc.ALPHA, pvalues
    assert any(lookups) and not all(lookups)


def test_the_sampling_check_sees_a_lookup_that_skips_verification(pair, monkeypatch):
    """Power: emitting looked-up tokens unverified (a rule that accepts every proposal) is caught."""
    monkeypatch.setattr(mc, "PROMPT", list(range(mc.V)))
    entry = mc.MethodEntry("accept-all", mc.RandomStop, "", True, lambda params, policy: mc.AcceptAll())
    monkeypatch.setattr(mc, "method", lambda name: mc.Method(entry, mc.RandomStop(0.3, 3), "accept-all+lookup=1", 1))
    target, draft = pair
    pvalues = mc.run_checks(target, draft, "accept-all", mc.SAMPLING["t1.0"], seed=2000)
    assert min(pvalues) < mc.ALPHA
    assert np.isfinite(pvalues).all()
