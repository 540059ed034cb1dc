"""GPU checks: the engine, sampling, train-head and distill on CUDA, with the tiny models of the CPU tests.

They run only on a machine with a CUDA GPU (skipped elsewhere, CI included):
``python -m pytest -q tests/test_cuda.py`` there. Together they take well under a minute.
"""

import json

import pytest
import test_engine_greedy as greedy_tests
import test_train_head as head_tests
import torch
from conftest import hf_greedy, make_engine, perturbed_copy, tiny_llama
from test_decode_step import _calls, tiny_qwen2
from safetensors.torch import load_file
from test_distill import fast_settings, tiny_setup  # noqa: F401  (tiny_setup is a fixture)

from specadapt.distill.shallow import shallow_copy
from specadapt.distill.train import run_distill
from specadapt.engine import RequestConfig
from specadapt.heads import AcceptanceHead, load_head, read_head_config, save_head, train_head
from specadapt.methods import make_method
from specadapt.models import graphed
from specadapt.models.graphed import GraphedRunner
from specadapt.models.loading import load_model

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


# ---------------------------------------------------------------- the draft's CUDA graph


@pytest.mark.parametrize("make", [lambda: tiny_llama(4, init_range=0.3), lambda: tiny_qwen2(4)], ids=["llama", "qwen2"])
def test_graphed_draft_step_replays_what_the_lean_step_computes(make, monkeypatch):
    """Captured one-token steps and blocks (a cache outgrowing its buffers on the way) give the eager lean step's
    logits and hidden states on the GPU."""
    monkeypatch.setattr(graphed, "MIN_CAPACITY", 8)
    model = make().to("cuda")
    ref_logits, ref_hidden, real = _calls(model, lean=True)
    runner = GraphedRunner(model, want_hidden=True)
    logits, hidden, _ = _calls(model, lean=True, runner=runner)
    assert runner.capture and len(runner.slab.blocks) == 2  # one-token steps and the 6-token block, each a graph
    assert all(block.graph is not None for block in runner.slab.blocks.values())
    for a, b, h_a, h_b, ok in zip(ref_logits, logits, ref_hidden, hidden, real, strict=True):
        torch.testing.assert_close(b[ok], a[ok], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h_b[ok], h_a[ok], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["fixed:4", "adaedl", "autoregressive"])
def test_the_engine_replays_graphs_and_decodes_what_the_eager_steps_decode(method, cuda_target, cuda_drafts,
                                                                           monkeypatch):
    """Requests joining a running batch on the GPU: both models run from CUDA graphs (new ones as the batch
    changes), the outputs are the target's greedy ones, and drafted and accepted counts equal the eager steps'."""
    monkeypatch.setattr(graphed, "MIN_CAPACITY", 8)
    runners = []

    def run(capture: bool):
        def make(model, want_hidden=False, exact=False):
            runners.append(GraphedRunner(model, want_hidden, capture))
            return runners[-1]

        monkeypatch.setattr("specadapt.engine.make_runner", make)
        batch = make_engine(cuda_target, cuda_drafts["close"]).batch(make_method(method))
        requests = [batch.add(PROMPTS[0], RequestConfig(max_new_tokens=24))]
        for round_no in range(80):
            if round_no in (1, 3):
                requests.append(batch.add(PROMPTS[len(requests)], RequestConfig(max_new_tokens=12)))
            batch.step()
        assert batch.active == 0
        return [(r.output, batch.result(r).stats.drafted, batch.result(r).stats.accepted) for r in requests]

    graphs = run(True)
    assert all(r.capture and any(b.graph is not None for b in r.slab.blocks.values()) for r in runners)
    assert graphs == run(False)
    for (output, drafted, accepted), prompt, n in zip(graphs, PROMPTS, (24, 12, 12)):
        assert output == cuda_greedy(cuda_target, prompt, n) and (drafted > 0) == (method != "autoregressive")


def test_the_engine_picks_graphed_runners_on_cuda(cuda_target, cuda_drafts):
    batch = make_engine(cuda_target, cuda_drafts["close"]).batch(make_method("fixed:4"))
    assert all(isinstance(r, GraphedRunner) and r.capture for r in (batch.target, batch.draft))


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


# ---------------------------------------------------------------- distill on the GPU


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_distill_on_cuda_trains_what_the_cpu_trains(lora, tiny_setup):
    """The same `specadapt distill` settings on the GPU and on the CPU: AdaSPEC's two stages (teacher cache,
    reference, selective draft) see the same tokens and steps, keep the same tokens, and train the same (fp32, no
    TF32)."""
    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    summaries = {}
    for device in ("cpu", "cuda"):
        settings = fast_settings(device=device, lora_rank=lora, lora_alpha=8.0)
        summaries[device] = run_distill(target, "shallow:1", data, root / device, settings, log=lambda m: None)
    start = shallow_copy(load_model(target, "bfloat16", "cpu"), 1, torch.float32).state_dict()  # as distill makes it
    for stage in ("reference", "draft"):
        cpu, gpu = (summaries[d]["stages"][stage] for d in ("cpu", "cuda"))
        for counts in (cpu["compute"], gpu["compute"]):
            counts.pop("wall_seconds")
        assert (cpu["compute"], cpu["steps"]) == (gpu["compute"], gpu["steps"]), stage
        logs = [json.loads((root / d / stage / "log_history.json").read_text()) for d in ("cpu", "cuda")]
        steps = [[h for h in log if "loss" in h] for log in logs]
        assert [h.get("kept_fraction") for h in steps[0]] == [h.get("kept_fraction") for h in steps[1]], stage
        noisy = lora and stage == "draft"  # see below: from its second step on, within a few percent
        assert steps[1][0]["loss"] == pytest.approx(steps[0][0]["loss"], rel=1e-3), stage  # same start, same tokens
        assert [h["loss"] for h in steps[1]] == pytest.approx([h["loss"] for h in steps[0]], rel=0.05 if noisy else 1e-3), stage
        a, b = (load_file(root / d / stage / "model.safetensors") for d in ("cpu", "cuda"))
        assert set(a) == set(b)
        if not lora:
            for name in a:
                torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{stage} {name}: {m}")
            continue
        if stage == "draft":
            # LoRA's B starts at 0, so Adam's first steps move each entry of B by about lr * sign(gradient); on this
            # tiny pair the selective stage's gradients are small enough that entries at rounding-noise level flip
            # sign between devices (measured on an H200: 4-10% of the change, 1.9% in the second step's loss).
            continue
        changed = 0
        for name in a:  # what training changed: each adapted weight's change, GPU against CPU
            cpu_delta, gpu_delta = a[name] - start[name], b[name] - start[name]
            if cpu_delta.abs().max() == 0:
                assert torch.equal(b[name], a[name]), name  # not adapted: untouched on both
                continue
            changed += 1
            error = float((gpu_delta - cpu_delta).norm() / cpu_delta.norm())
            assert error < 0.01, (stage, name, error)
        assert changed == 7, stage  # q, k, v, o, gate, up, down of the one layer
