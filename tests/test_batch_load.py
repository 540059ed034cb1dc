"""A batch decoded by ``SpeculativeEngine.generate`` runs under a load rule, as the server's requests do."""

import pytest

from specadapt.engine import RequestConfig
from specadapt.load import WARMUP_DRAFT, AutoLoad
from specadapt.methods import make_method

from conftest import hf_greedy, make_engine

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [42]]


class Recording:
    """A load rule that always answers ``cap`` and records what it is asked and told."""

    ready = True

    def __init__(self, cap: int | None) -> None:
        self.cap, self.asked, self.seen = cap, [], []

    def decide(self, rows, bound, priced=False):
        self.asked.append(len(rows))
        return self.cap

    def observe(self, record):
        self.seen.append(record)


class Watching(AutoLoad):
    """The default rule, recording the rounds it is told of."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def observe(self, record):
        self.seen.append(record)
        super().observe(record)


@pytest.mark.parametrize("method", ["fixed:4", "adaedl", "adaedl+lookup"])
def test_a_greedy_batch_is_capped_by_the_rule_and_stays_the_targets_greedy_output(target, close_draft, method):
    rule = Recording(1)
    results = make_engine(target, close_draft).generate(PROMPTS, make_method(method), RequestConfig(max_new_tokens=24),
                                                        load_rule=rule)
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == hf_greedy(target, prompt, 24)
        assert result.settings["load_rule"] == "Recording"
    assert rule.asked[0] == len(PROMPTS) and len(rule.seen) == len(rule.asked)
    assert max(r.K for r in rule.seen) == 1  # every round, down to the last request's


def test_a_rule_that_has_measured_nothing_lets_a_round_draft_at_most_the_warm_up_length(target, close_draft):
    rule = Watching()
    make_engine(target, close_draft).generate(PROMPTS, make_method("fixed:7"), RequestConfig(max_new_tokens=24),
                                              load_rule=rule)
    assert rule.seen[0].K == 0  # as in the server, a request's first round only prefills
    assert rule.seen[1].K == WARMUP_DRAFT  # fixed:7, capped until the rule has measured a draft step
    assert rule.ready


def test_a_batch_runs_under_a_fresh_auto_rule_by_default(target, close_draft):
    results = make_engine(target, close_draft).generate(PROMPTS, make_method("adaedl"), RequestConfig(max_new_tokens=12))
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == hf_greedy(target, prompt, 12)
        assert result.settings["load_rule"] == "AutoLoad"


def test_sampled_batches_single_prompts_and_target_only_run_without_a_rule(target, close_draft):
    engine = make_engine(target, close_draft)
    rule = Recording(0)
    sampled = engine.generate(PROMPTS, make_method("fixed:3"), RequestConfig(max_new_tokens=12, temperature=0.9, seed=4),
                              load_rule=rule)
    alone = engine.generate([PROMPTS[0]], make_method("fixed:3"), RequestConfig(max_new_tokens=12), load_rule=rule)
    plain = engine.generate(PROMPTS, make_method("autoregressive"), RequestConfig(max_new_tokens=12), load_rule=rule)
    assert rule.asked == []
    assert all("load_rule" not in r.settings for r in [*sampled, *alone, *plain])
    assert sampled[0].stats.drafted > 0


def test_an_unknown_load_rule_name_is_refused(target, close_draft):
    from specadapt.errors import SpecAdaptError

    with pytest.raises(SpecAdaptError, match=r"load_rule must be 'auto', 'off' or a load rule object, got 'static'"):
        make_engine(target, close_draft).generate(PROMPTS, make_method("fixed:2"), RequestConfig(max_new_tokens=4),
                                                  load_rule="static")
