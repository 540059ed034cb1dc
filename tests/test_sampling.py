import re

import pytest
import torch

from specadapt.errors import SpecAdaptError
from specadapt.sampling import NUCLEUS_CANDIDATES, SamplingParams, entropy, js_distance, outside_nucleus, process_logits


def test_greedy_is_one_hot_argmax():
    probs = process_logits(torch.tensor([[0.1, 2.0, -1.0]]), SamplingParams(0.0))
    assert probs.tolist() == [[0.0, 1.0, 0.0]]


def test_top_k_and_top_p_support():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    top_k = process_logits(logits, SamplingParams(1.0, top_k=2))
    assert (top_k > 0).tolist() == [True, True, False, False]
    assert torch.allclose(top_k[:2], torch.tensor([4 / 7, 3 / 7]))
    # top-p 0.75: 0.4 + 0.3 = 0.7 < 0.75, so the third token is needed too.
    top_p = process_logits(logits, SamplingParams(1.0, top_p=0.75))
    assert (top_p > 0).tolist() == [True, True, True, False]
    # top-p 0.7 exactly: mass before the third token reaches it, so two tokens remain.
    assert (process_logits(logits, SamplingParams(1.0, top_p=0.7)) > 0).sum() == 2
    # the most likely token always survives
    assert process_logits(logits, SamplingParams(1.0, top_p=0.01)).tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nucleus_from_candidates_equals_a_full_sort(seed):
    """Top-p looks for the nucleus among the most likely tokens first; on a real vocabulary's width, with nuclei
    inside the first candidate set, inside the second and beyond both (a full sort), it drops exactly the tokens a
    full sort drops."""
    g = torch.Generator().manual_seed(seed)
    vocab = 151936
    scales = torch.tensor([6.0, 1.5, 0.05, 4.0])[:, None]  # peaked, broad, nearly flat, in between
    probs = (torch.randn(4, vocab, generator=g) * scales).softmax(-1)
    values, order = probs.sort(-1, descending=True)  # the definition: mass strictly before a token reaches top_p
    for top_p in (0.5, 0.9, 0.95):
        drop_sorted = values.cumsum(-1) - values >= top_p
        expected = drop_sorted.scatter(-1, order, drop_sorted)
        got = outside_nucleus(probs, top_p)
        assert torch.equal(got, expected)
        if top_p == 0.9:
            sizes = (~got).sum(-1).tolist()
            assert sizes[0] < NUCLEUS_CANDIDATES[0] < sizes[3] < NUCLEUS_CANDIDATES[1] < sizes[1] < sizes[2]
    assert torch.equal(outside_nucleus(probs[0], 0.9), outside_nucleus(probs, 0.9)[0])  # one row, no batch dimension


def test_temperature_scales_logits():
    logits = torch.tensor([1.0, 0.0])
    assert torch.allclose(process_logits(logits, SamplingParams(0.5)), torch.softmax(logits / 0.5, -1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
    ],
)
def test_bad_sampling_parameters(kwargs, message):
    with pytest.raises(SpecAdaptError, match=re.escape(message)):
        SamplingParams(**kwargs)


def test_entropy_and_js_distance():
    u = torch.full((4,), 0.25)
    assert torch.isclose(entropy(u), torch.log(torch.tensor(4.0)))
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.isclose(js_distance(a, b), torch.tensor(1.0))
    assert js_distance(u, u) == 0


def test_js_distance_equals_the_kl_definition_on_vocabulary_sized_distributions():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 16.0])[None, :, None]  # flat to peaked
    logits = torch.randn(2, 6, 50_000, generator=g) * scale
    p = logits.softmax(-1)
    q = (logits + torch.randn(logits.shape, generator=g)).softmax(-1)
    q[0, 0] = p[0, 0]  # identical rows: distance 0
    p64, q64 = p.double(), q.double()
    m = (p64 + q64) / 2

    def kl(a, b):
        return torch.where(a > 0, a * (a / b).log2(), 0.0).sum(-1)

    expected = ((kl(p64, m) + kl(q64, m)) / 2).clamp(0, 1).sqrt()
    got = js_distance(p, q)
    assert got.dtype == torch.float32 and got.shape == (2, 6)
    assert torch.allclose(got.double(), expected, atol=2e-4)
    assert got[0, 0] == 0
