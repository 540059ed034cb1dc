"""Log-probabilities of generated tokens (RequestConfig.logprobs): the target's own, whatever the method (fp32)."""

import pytest
import torch

from specadapt.engine import RequestConfig
from specadapt.errors import SpecAdaptError
from specadapt.logprobs import MAX_TOP_LOGPROBS, score_tokens
from specadapt.methods import make_method

from conftest import make_engine

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]


def target_logprobs(model, prompt: list[int], output: list[int]) -> torch.Tensor:
    """[len(output), V]: the target's log-softmax at each output position, from one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + output])).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) + len(output) - 1].log_softmax(-1)


@pytest.mark.parametrize("method", ["autoregressive", "fixed:4", "adaedl", "fixed:3+lookup=1"])
@pytest.mark.parametrize("top", [0, 3])
def test_each_token_gets_the_targets_own_logprob_and_alternatives(method, top, target, close_draft):
    results = make_engine(target, close_draft).generate(
        PROMPTS, make_method(method), RequestConfig(max_new_tokens=17, logprobs=top), load_rule="off")
    assert method == "autoregressive" or sum(r.stats.accepted for r in results) > 0
    for prompt, result in zip(PROMPTS, results):
        expected = target_logprobs(target, prompt, result.token_ids)
        assert [e.token_id for e in result.logprobs] == result.token_ids
        got = torch.tensor([e.logprob for e in result.logprobs])
        want = expected.gather(1, torch.tensor(result.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        for entry, row in zip(result.logprobs, expected):
            assert len(entry.top) == top
            if top:
                values, ids = row.topk(top)
                assert [i for i, _ in entry.top] == ids.tolist()
                torch.testing.assert_close(torch.tensor([v for _, v in entry.top]), values, atol=1e-5, rtol=0)
                assert entry.top[0][0] == entry.token_id  # greedy: the chosen token is the most likely one


def test_speculative_and_target_only_report_the_same_logprobs(target, close_draft):
    engine = make_engine(target, close_draft)
    config = RequestConfig(max_new_tokens=20, logprobs=2)
    alone = engine.generate(PROMPTS, make_method("autoregressive"), config)
    spec = engine.generate(PROMPTS, make_method("fixed:5"), config, load_rule="off")
    for a, s in zip(alone, spec):
        assert s.token_ids == a.token_ids and s.stats.accepted > 0
        for x, y in zip(a.logprobs, s.logprobs):
            assert x.token_id == y.token_id and [i for i, _ in x.top] == [i for i, _ in y.top]
            assert abs(x.logprob - y.logprob) < 1e-5


def test_sampled_tokens_get_the_raw_distributions_logprob(target, close_draft):
    config = RequestConfig(max_new_tokens=16, temperature=0.7, top_k=20, seed=5, logprobs=0)
    result = make_engine(target, close_draft).generate([PROMPTS[0]], make_method("fixed:3"), config)[0]
    expected = target_logprobs(target, PROMPTS[0], result.token_ids)
    want = expected.gather(1, torch.tensor(result.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor([e.logprob for e in result.logprobs]), want, atol=1e-5, rtol=0)


def test_a_round_cut_short_keeps_one_entry_per_kept_token(target):
    # The draft is the target: every round accepts 4 + 1 tokens, and max_new_tokens=7 cuts the second round.
    result = make_engine(target, target).generate([PROMPTS[0]], make_method("fixed:4"),
                                                  RequestConfig(max_new_tokens=7, logprobs=1), load_rule="off")[0]
    assert len(result.token_ids) == 7 and [e.token_id for e in result.logprobs] == result.token_ids


def test_off_by_default(target, close_draft):
    result = make_engine(target, close_draft).generate([PROMPTS[0]], make_method("fixed:2"), RequestConfig(8))[0]
    assert result.logprobs is None


@pytest.mark.parametrize("bad", [-1, MAX_TOP_LOGPROBS + 1, 2.0, True, "3"])
def test_bad_logprobs_get_a_clear_error(bad):
    with pytest.raises(SpecAdaptError, match=r"logprobs must be an integer in \[0, 20\]"):
        RequestConfig(8, logprobs=bad)


def test_score_tokens_of_nothing_is_empty():
    assert score_tokens(torch.zeros(3, 5), [], 2) == []
