"""GPU checks: the engine, sampling and train-head on CUDA, with the tiny models of the CPU tests.

They run only on a machine with a CUDA GPU (skipped elsewhere, CI included):
``python -m pytest -q tests/test_cuda.py`` there. Together they take well under a minute.
"""

import json

import pytest
import test_engine_greedy as greedy_tests
import test_train_head as head_tests
import torch
from conftest import hf_greedy, make_engine, perturbed_copy, tiny_llama

from specadapt.engine import RequestConfig
from specadapt.heads import AcceptanceHead, load_head, read_head_config, save_head
from specadapt.methods import make_method
from specadapt.heads import train_head

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = greedy_tests.PROMPTS
pair_dir, prompts_file = head_tests.pair_dir, head_tests.prompts_file  # the train-head tests' fixtures

LOSSLESS = ["autoregressive", "fixed:1", "fixed:4", "heuristic", "confidence:threshold=0.05",
            "dynamic-confidence", "adaedl", "adasd-stop"]


@pytest.fixture(scope="module")
def cuda_target():
    return tiny_llama(0).to("cuda")


@pytest.fixture(scope="module")
def cuda_drafts():
    return {"close": perturbed_copy(tiny_llama(0), 0.2).to("cuda"), "random": tiny_llama(1).to("cuda")}


def cuda_greedy(model, prompt, n):
    """The model's own greedy output from transformers' generate, its inputs made on the GPU."""
    with torch.device(model.device):
        return hf_greedy(model, prompt, n)


def assert_sane(r, n):
    s = r.stats
    assert len(r.token_ids) == s.generated_tokens == n and r.finish_reason == "length"
    assert 0 <= s.accepted <= s.drafted and s.generated_tokens == s.accepted + s.rounds
    assert all(0 <= t < 64 for t in r.token_ids)


# ---------------------------------------------------------------- fp32 greedy: lossless


@pytest.mark.parametrize("method", LOSSLESS)
@pytest.mark.parametrize("draft_name", ["close", "random"])
def test_greedy_equals_target_generate_on_cuda(method, draft_name, cuda_target, cuda_drafts):
    engine = make_engine(cuda_target, cuda_drafts[draft_name])
    assert engine.device.type == "cuda"
    results = engine.generate(PROMPTS, make_method(method), RequestConfig(max_new_tokens=24))
    for prompt, r in zip(PROMPTS, results):
        assert r.token_ids == cuda_greedy(cuda_target, prompt, 24)
        assert r.lossless
        assert_sane(r, 24)
    if draft_name == "close" and method != "autoregressive":
        assert sum(r.stats.accepted for r in results) > 0  # the verify-and-accept path ran on the GPU


# ---------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible_on_cuda(cuda_target, cuda_drafts):
    greedy_tests.test_seeded_sampling_is_reproducible(cuda_target, cuda_drafts["close"])


def test_batch_equals_single_when_sampling_on_cuda(cuda_target, cuda_drafts):
    greedy_tests.test_batch_equals_single_when_sampling(cuda_target, cuda_drafts["close"])


# ---------------------------------------------------------------- bf16


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_bf16_runs_with_sane_stats(temperature, tmp_path):
    target = tiny_llama(0).to("cuda", torch.bfloat16)
    draft = perturbed_copy(tiny_llama(0), 0.2).to("cuda", torch.bfloat16)
    torch.manual_seed(0)
    head = save_head(AcceptanceHead(32, 1), tmp_path / "head")
    engine = make_engine(target, draft)
    config = RequestConfig(max_new_tokens=20, temperature=temperature, seed=3)
    for method in ["fixed:4", "heuristic", "dynamic-confidence", "adaedl", "adasd-stop", "adasd"]:
        results = engine.generate(PROMPTS, make_method(method), config)
        assert all(r.stats.drafted > 0 for r in results), method
        for r in results:
            assert_sane(r, 20)
    results = engine.generate(PROMPTS, make_method("specdecpp", head=str(head), threshold=0.5), config)
    for r in results:
        assert_sane(r, 20)


# ---------------------------------------------------------------- train-head on the GPU


def assert_decodes_like_the_target_on_cuda(checkpoints, head_dir):
    """The head loads, the decoder (fp32, on the GPU) uses it, and its greedy output equals the target's."""
    assert isinstance(load_head(head_dir), AcceptanceHead)
    method, r, target = head_tests.assert_decodes_like_the_target(checkpoints, head_dir, device="cuda")
    assert method.policy._model.out.weight.device.type == "cuda"  # the policy ran the head on the GPU
    assert r.token_ids == cuda_greedy(target, [5, 6, 7], 12)


@pytest.mark.parametrize("settings", [{"responses": "target"}, {"head_input": "producing", "num_blocks": 1}],
                         ids=["consumed", "producing"])
def test_train_head_on_cuda_gives_a_head_the_decoder_uses(settings, pair_dir, prompts_file, tmp_path):
    result = train_head(head_tests.config_for(pair_dir, prompts_file, tmp_path / "out", device="cuda", **settings))
    config = read_head_config(result.head_dir)
    assert config["hidden_size"] == 32 and config["input"] == settings.get("head_input", "consumed")
    report = json.loads((result.output / "report.json").read_text())
    assert report["training"]["steps"] > 0 and report["training"]["curves"]["dev"]
    assert len(list((result.output / "data" / "labels").glob("*.safetensors"))) == 10
    assert_decodes_like_the_target_on_cuda(pair_dir, result.head_dir)
