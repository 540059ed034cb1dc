"""Weight-only int8/int4 drafts (specadapt.models.quant): kernel accuracy, losslessness, errors.

Tiny fp32 Llamas (hidden 32, MLP 64) so that int4 group size 32 fits every layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from specadapt.engine import RequestConfig
from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.models.draft_vocab import SubsetHead, restrict_vocabulary
from specadapt.models.quant import Int4Linear, Int8Linear, check_scheme, quantization_of, quantize_model, resolve_scheme, wide_rows
from specadapt.sampling import SamplingParams, process_logits

from conftest import hf_greedy, make_engine, perturbed_copy
from test_losslessness import chi2_pvalue

ALPHA = 1e-4


class NoSpecialTokens:
    """What restrict_vocabulary needs from a tokenizer, for the id-only tiny models."""

    all_special_ids: list[int] = []
    added_tokens_decoder: dict[int, str] = {}


def _linear(n: int, k: int, bias: bool, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(k, n, bias=bias).requires_grad_(False)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.2, 5.0, k))  # columns of different scales, like real weights
    return layer


# --- the quantized linear layer ----------------------------------------------------------------

INT4_CASES = [(16, 32, 32, False), (40, 64, 32, True), (64, 256, 64, False), (96, 256, 128, True), (48, 512, 256, False), (200, 896, 32, True)]


@pytest.mark.parametrize("n,k,group,bias", INT4_CASES)
def test_int4_linear_matches_its_dequantized_weight(n, k, group, bias):
    layer = _linear(n, k, bias, seed=n + k)
    original = layer.weight.clone()
    q = Int4Linear.from_linear(layer, group)
    assert torch.equal(layer.weight, original)  # the float layer is left as it was
    w, wq = layer.weight.detach(), q.dequantized_weight()
    # Rounding to the nearest of 16 levels: each weight moves by at most half a step, (max - min) / 30 of its group,
    # plus the rounding of its bf16 scale and zero (a float32 layer computes in bf16 too).
    groups = w.reshape(n, k // group, group)
    half_step = ((groups.amax(-1) - groups.amin(-1)) / 30).repeat_interleave(group, 1)
    assert bool(((wq - w).abs() <= half_step * 1.01 + 4 * 2**-8 * float(w.abs().max())).all())
    x = torch.randn(3, 5, k)
    reference = nn.functional.linear(x, wq, layer.bias)
    # A float32 layer computes in bf16 (the kernel's fast path) and returns float32: within bf16 rounding.
    y = q(x)
    assert q.scale_and_zero.dtype == torch.bfloat16 and y.dtype == torch.float32
    assert float((y - reference).abs().max()) <= 0.02 * float(reference.abs().max()) + 1e-2
    # bf16 activations (what the real draft uses): within bf16 rounding of the reference.
    qb = Int4Linear.from_linear(copy.deepcopy(layer).to(torch.bfloat16), group)
    yb = qb(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16 and yb.shape == (3, 5, n)
    ref_b = nn.functional.linear(x, qb.dequantized_weight(), None if layer.bias is None else layer.bias.bfloat16().float())
    assert float((yb.float() - ref_b).abs().max()) <= 0.02 * float(ref_b.abs().max()) + 1e-2


@pytest.mark.parametrize("n,k,group,bias", INT4_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_on_many_rows_uses_the_same_weight(n, k, group, bias, dtype):
    """From wide_rows() rows on (a batch, a prompt), the layer multiplies by its kept dequantized weight: the
    same weight the kernel computes with, so the many-row path agrees with the kernel row by row."""
    q = Int4Linear.from_linear(_linear(n, k, bias, seed=n + k).to(dtype), group)
    w = q.dequantized_weight()
    # bf16 (a float32 layer computes in bf16 too): q * scale (up to about twice the largest weight) and + low are
    # each rounded, by 2^-8 relative.
    assert q.scale_and_zero.dtype == torch.bfloat16
    torch.testing.assert_close(q.wide.float(), w, rtol=0, atol=4 * 2**-8 * float(w.abs().max()))
    x = torch.randn(wide_rows(torch.bfloat16, torch.device("cpu")), k, dtype=dtype)  # both dtypes compute in bf16
    one_by_one = torch.cat([q(row[None]) for row in x])  # under the threshold: the kernel
    many = q(x)
    tol = 0.02 * float(one_by_one.float().abs().max()) + 1e-2
    assert many.dtype == dtype and float((many.float() - one_by_one.float()).abs().max()) <= tol


@pytest.mark.parametrize("n,k,bias", [(16, 32, False), (40, 64, True), (7, 100, True), (200, 896, False)])
def test_int8_linear_matches_its_dequantized_weight(n, k, bias):
    layer = _linear(n, k, bias, seed=n * k)
    original = layer.weight.clone()
    q = Int8Linear.from_linear(layer)
    assert torch.equal(layer.weight, original)
    w, wq = layer.weight.detach(), q.dequantized_weight()
    half_step = w.abs().amax(1, keepdim=True) / 254  # symmetric, 127 levels each side, one scale per row
    assert bool(((wq - w).abs() <= half_step * 1.01 + 1e-7).all())
    x = torch.randn(4, k)
    torch.testing.assert_close(q(x), nn.functional.linear(x, wq, layer.bias), rtol=1e-4, atol=1e-4 * k**0.5)
    assert q.weight.shape == (n, k) and q.weight.device.type == "meta"  # shape only: the float weight is gone


def test_fp32_activations_into_a_bf16_quantized_layer_come_back_fp32():
    q = Int4Linear.from_linear(_linear(32, 64, True, 0).to(torch.bfloat16), 32)
    y = q(torch.randn(2, 64))
    assert y.dtype == torch.float32 and y.shape == (2, 32)


# --- whole drafts: greedy token identity ---------------------------------------------------------

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]


def _draft(target, scheme: str, ranked: bool) -> nn.Module:
    draft = perturbed_copy(target, 0.2)
    if ranked:  # a frequency-ranked head: 40 of 64 ids, not the lowest ones
        ranking = torch.randperm(64, generator=torch.Generator().manual_seed(5))
        assert restrict_vocabulary(draft, NoSpecialTokens(), 40, ranking) == 40
    report = quantize_model(draft, scheme)
    assert report.layers == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, plus the head
    # fp32 weights: int8 keeps 8 bits and a scale per row; int4 layers keep q packed (4 bits) and dequantized in
    # bf16 (16, for many rows), the head packed only
    assert report.bytes_after < report.bytes_before / (3 if scheme == "int8" else 1.5)
    return draft


@pytest.fixture(scope="module")
def drafts(target) -> dict:
    return {(s, r): _draft(target, s, r) for s in ("int4", "int8") for r in (False, True)}


@pytest.mark.parametrize("method", ["fixed:4", "heuristic", "adaedl", "adasd-stop"])
@pytest.mark.parametrize("scheme,ranked", [("int4", False), ("int8", False), ("int4", True), ("int8", True)])
def test_greedy_with_quantized_draft_equals_target(method, scheme, ranked, target, drafts):
    draft = drafts[(scheme, ranked)]
    results = make_engine(target, draft).generate(PROMPTS, make_method(method), RequestConfig(max_new_tokens=20))
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == hf_greedy(target, prompt, 20)
        assert result.lossless
    assert 0.0 < sum(r.stats.acceptance_rate for r in results) / len(results) < 1.0  # a real, partial agreement


def test_int4_subset_head_proposes_only_kept_tokens(target, drafts):
    draft = drafts[("int4", True)]
    head = draft.get_output_embeddings()
    assert isinstance(head, SubsetHead) and isinstance(head.proj, Int4Linear)
    with torch.no_grad():
        logits = draft(torch.tensor([PROMPTS[0]])).logits[0, -1]
    kept = torch.isfinite(logits)
    assert int(kept.sum()) == 40 and bool(kept[head.ids].all())
    assert head.weight.shape == (40, 32)


# --- Monte Carlo: a quantized, restricted draft, drafts of 3-4 tokens ----------------------------

V, N_REQ, LENGTH = 8, 12000, 4
MC_PROMPT = [1, 2, 3]


def _exact_marginals(target, params: SamplingParams) -> np.ndarray:
    """P(x1..x4) under the target, [V, V, V, V], by enumerating all 8^3 prefixes."""
    seqs = torch.tensor([MC_PROMPT + [a, b, c] for a in range(V) for b in range(V) for c in range(V)])
    with torch.no_grad():
        logits = target(seqs).logits[:, -4:]
    p = process_logits(logits, params).double().numpy().reshape(V, V, V, 4, V)
    p1, p2, p3, p4 = p[0, 0, 0, 0], p[:, 0, 0, 1], p[:, :, 0, 2], p[:, :, :, 3]
    return p1[:, None, None, None] * p2[:, :, None, None] * p3[:, :, :, None] * p4


@pytest.fixture(scope="module")
def mc_draft(pair):
    """The peaky 8-token draft of test_losslessness, its head cut to 5 ranked ids, then int4."""
    draft = copy.deepcopy(pair[1])
    restrict_vocabulary(draft, NoSpecialTokens(), 5, [6, 1, 4, 0, 3, 7, 2, 5])
    quantize_model(draft, "int4")
    return draft


def test_quantized_restricted_draft_is_lossless(pair, mc_draft):
    """One configuration (fixed:3, temperature 1) keeps the file fast; tests/test_losslessness.py covers
    the other sampling settings and policies with a float draft."""
    target, sampling = pair[0], SamplingParams(1.0)
    config = RequestConfig(max_new_tokens=LENGTH, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, seed=2024)
    results = make_engine(target, mc_draft).generate([MC_PROMPT] * N_REQ, make_method("fixed:3"), config)
    samples = np.array([r.token_ids for r in results])
    assert samples.shape == (N_REQ, LENGTH)
    drafted = sum(r.stats.drafted for r in results) / max(1, sum(r.stats.rounds for r in results))
    assert drafted > 1.5  # the first round drafts 3 tokens (4 to generate), later ones what room is left
    assert sum(r.stats.position_reached[2] for r in results if len(r.stats.position_reached) > 2) > 100  # 3rd drafted tokens judged
    joint = _exact_marginals(target, sampling)
    counts = np.zeros((V,) * 4)
    np.add.at(counts, tuple(samples.T), 1)
    pvalues = [chi2_pvalue(counts.sum(tuple(j for j in range(4) if j != i)), joint.sum(tuple(j for j in range(4) if j != i))) for i in range(4)]
    pvalues += [chi2_pvalue(counts.sum(tuple(j for j in range(4) if j not in (i, i + 1))), joint.sum(tuple(j for j in range(4) if j not in (i, i + 1)))) for i in range(3)]
    assert min(pvalues) > ALPHA, pvalues  # 7 tests at 1e-4: <= 0.07% false alarms (fixed seed: deterministic)
    # The draft never proposes the 3 ids outside its head, but the target still emits them.
    assert set(np.unique(samples)) - {6, 1, 4, 0, 3}


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_scheme_and_bad_group_sizes(target):
    draft = copy.deepcopy(target)
    with pytest.raises(SpecAdaptError, match="unknown draft quantization 'int3'.*none, int8, int4"):
        quantize_model(draft, "int3")
    with pytest.raises(SpecAdaptError, match="group size 48 is not supported.*32, 64, 128, 256"):
        quantize_model(draft, "int4", 48)
    with pytest.raises(SpecAdaptError, match=r"group size 64 does not divide the layer 'model.layers.0.self_attn.q_proj''s in_features 32: use a group size that divides it \(32\)"):
        quantize_model(draft, "int4", 64)
    with pytest.raises(SpecAdaptError, match="applies to int4 only"):
        check_scheme("int8", 32)
    assert all(type(m) is not Int4Linear for m in draft.modules())  # a failed call changed nothing
    assert quantize_model(draft, "none").layers == 0


def test_auto_is_int4_on_cpu_none_on_gpu_and_for_the_draft_only(target):
    assert (resolve_scheme("auto", "cpu"), resolve_scheme("auto", "cuda:0"), resolve_scheme("int8", "cuda")) == ("int4", "none", "int8")
    draft = copy.deepcopy(target)
    assert quantize_model(draft, "auto", 32).scheme == "int4" and quantization_of(draft) == ("int4", 32)
    with pytest.raises(SpecAdaptError, match=r"unknown target quantization 'auto'; use one of: none, int8, int4\.$"):
        check_scheme("auto", role="target")
    result = make_engine(target, draft).generate(PROMPTS[:1], make_method("fixed:2"), RequestConfig(max_new_tokens=4))[0]
    assert (result.settings["draft_quant"], result.settings["draft_group_size"]) == ("int4", 32)  # what was timed


def test_models_that_cannot_be_quantized(target):
    with pytest.raises(SpecAdaptError, match="has no torch.nn.Linear layers.*use draft quantization 'none'"):
        quantize_model(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)), "int8")
    from transformers.pytorch_utils import Conv1D  # GPT-2 style layers

    with pytest.raises(SpecAdaptError, match="Conv1D modules, which are not supported"):
        quantize_model(nn.Sequential(Conv1D(8, 32)), "int4")
    with pytest.raises(SpecAdaptError, match="can only quantize a torch nn.Module"):
        quantize_model("model", "int4")  # type: ignore[arg-type]
    draft = copy.deepcopy(target)
    quantize_model(draft, "int4")
    with pytest.raises(SpecAdaptError, match="already quantized"):
        quantize_model(draft, "int8")
    with pytest.raises(SpecAdaptError, match="restrict the vocabulary once, and before quantizing"):
        restrict_vocabulary(draft, NoSpecialTokens(), 10)
    with pytest.raises(SpecAdaptError, match="only float32/bfloat16/float16"):
        quantize_model(nn.Sequential(nn.Linear(32, 16).to(torch.float64)), "int4")


# --- a real model (fp32 SmolLM2-135M; fetched once, like tests/test_real_model.py) -------------------


@pytest.mark.real_model
def test_real_fp32_target_with_int4_ranked_draft_is_token_exact():
    from specadapt import SpecDecoder
    from specadapt.models import loading
    from specadapt.models.draft_vocab import kept_ids

    name = "smollm2-135m-instruct"
    tokenizer = loading.load_tokenizer(name)
    target = loading.load_model(name, "float32", "cpu")
    draft = copy.deepcopy(target)
    draft.model.layers = draft.model.layers[:24]  # a cheaper, partly agreeing draft (as in test_real_model.py)
    draft.config.num_hidden_layers = 24
    ids = tokenizer("def fibonacci(n):\n    # the n-th number\n", add_special_tokens=False)["input_ids"]
    ranking = torch.tensor(sorted(set(ids)) + list(range(20000)))  # a ranking that is not "lowest ids first"
    restrict_vocabulary(draft, tokenizer, 12000, ranking)
    assert isinstance(draft.get_output_embeddings(), SubsetHead)
    quantize_model(draft, "int4", 64)
    decoder = SpecDecoder(target, tokenizer, draft, (name, "int4-subset"))
    prompt = decoder.encode("Write a Python function that returns the factorial of n.", chat=True)
    result = decoder.generate(prompt, method="fixed:4", max_new_tokens=24)
    assert result.token_ids == hf_greedy(target, prompt, 24, eos=tokenizer.eos_token_id)[: len(result.token_ids)]
    assert len(result.token_ids) == 24 or result.finish_reason == "eos"
    assert 0.05 < result.stats.acceptance_rate < 1.0
    assert kept_ids(tokenizer, 49152, 12000, ranking).numel() >= 12000


def test_decoder_loads_an_int4_frequency_ranked_draft_and_refuses_bad_settings_before_loading(tmp_path):
    """The API's draft options end to end on tiny checkpoints: greedy output equals the target's own."""
    from specadapt import SpecDecoder
    from specadapt.models.quant import Int4Linear

    from conftest import save_tiny_checkpoint

    words = [f"w{i}" for i in range(62)]
    save_tiny_checkpoint(tmp_path / "target", 0, words)
    save_tiny_checkpoint(tmp_path / "draft", 1, words)
    with pytest.raises(SpecAdaptError, match="int3"):
        SpecDecoder.from_pretrained(str(tmp_path / "nowhere"), None, draft_quant="int3")  # checked before loading
    dec = SpecDecoder.from_pretrained(str(tmp_path / "target"), str(tmp_path / "draft"), dtype="float32", device="cpu",
                                      draft_vocab=40, draft_vocab_ranking="lowest", draft_quant="int4")
    assert any(isinstance(m, Int4Linear) for m in dec.draft.modules())
    fast = dec.generate("w1 w2 w3", method="fixed:4", max_new_tokens=12)
    assert fast.token_ids == dec.generate("w1 w2 w3", method="autoregressive", max_new_tokens=12).token_ids
    assert (fast.settings["draft_quant"], fast.settings["draft_head_ids"]) == ("int4", 40)  # the draft that ran
