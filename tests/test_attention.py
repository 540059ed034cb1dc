"""The packed grouped-query attention (``specadapt_sdpa``) computes what transformers' SDPA computes."""

from __future__ import annotations

import copy

import pytest
import torch

from specadapt.engine import RequestConfig
from specadapt.methods import make_method
from specadapt.models.attention import NAME, use_packed_attention
from specadapt.models.runner import ModelRunner

from conftest import hf_greedy, make_engine, perturbed_copy, tiny_llama


def _packed(model):
    out = copy.deepcopy(model)
    use_packed_attention(out)
    return out


@pytest.fixture(scope="module")
def models():
    stock = tiny_llama(5, vocab=64, layers=2, init_range=0.3)
    assert stock.config._attn_implementation == "sdpa" and stock.config.num_key_value_heads < stock.config.num_attention_heads
    return stock, _packed(stock)


def _steps(model) -> list[torch.Tensor]:
    """Logits of the runner's typical calls: a batch with left padding, one-token steps, a verification block,
    a rejected tail (a hole) and the next step over it."""
    g = torch.Generator().manual_seed(0)
    runner = ModelRunner(model)
    runner.add_rows(2)
    prompt = torch.randint(0, 64, (2, 12), generator=g)
    valid = torch.ones_like(prompt)
    valid[0, :5] = 0
    out = [runner.forward(prompt, valid, keep=12)[0]]
    for _ in range(3):
        out.append(runner.forward(torch.randint(0, 64, (2, 1), generator=g))[0])
    out.append(runner.forward(torch.randint(0, 64, (2, 6), generator=g), keep=6)[0])
    runner.keep_tail(6, torch.tensor([2, 6]))
    out.append(runner.forward(torch.randint(0, 64, (2, 1), generator=g))[0])
    single = ModelRunner(model)  # batch 1, no holes: the mask-free path
    single.add_rows(1)
    single.forward(prompt[1:])
    out.append(single.forward(torch.randint(0, 64, (1, 1), generator=g))[0])
    out.append(single.forward(torch.randint(0, 64, (1, 5), generator=g), keep=5)[0])
    return out


def test_packed_attention_matches_sdpa(models):
    stock, packed = models
    assert packed.config._attn_implementation == NAME
    for a, b in zip(_steps(stock), _steps(packed), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["fixed:4", "adaedl"])
def test_greedy_with_packed_attention_equals_target_generate(method):
    """A batch of prompts of different lengths (left padding, rejected drafts as holes) stays token-identical."""
    target = _packed(tiny_llama(0))
    draft = _packed(perturbed_copy(tiny_llama(0), 0.2))
    prompts = [[3, 14, 15, 9, 2, 6], [5, 1], [7, 7, 8, 60, 2, 11, 40, 33, 9]]
    results = make_engine(target, draft).generate(prompts, make_method(method), RequestConfig(max_new_tokens=30))
    for prompt, result in zip(prompts, results):
        assert result.token_ids == hf_greedy(target, prompt, 30)


def test_other_attention_is_left_alone():
    model = tiny_llama(0)
    model.set_attn_implementation("eager")
    use_packed_attention(model)
    assert model.config._attn_implementation == "eager"
