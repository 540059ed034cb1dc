"""eval-draft: teacher-forced acceptance, the greedy replay against real speculative decoding, outputs, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import IdTokenizer, perturbed_copy, save_tiny_checkpoint, tiny_llama

from specadapt.errors import SpecAdaptError
from specadapt.distill.data import EvalPrompt
from specadapt.distill.eval_draft import (
    EvalSettings,
    _expected_tokens_per_round,
    evaluate_drafts,
    run_eval_draft,
    simulate_greedy_rounds,
    teacher_forced,
)

PROMPTS = [EvalPrompt(f"p{i}", tuple(p)) for i, p in enumerate([[3, 9, 4], [10, 2], [7, 7, 1, 30, 5], [44]])]


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(0, init_range=0.3)
    return target, perturbed_copy(target, 0.3), tiny_llama(5, init_range=0.3)


def test_greedy_replay_predicts_real_speculative_decoding_exactly(models, tmp_path):
    target, close, far = models
    settings = EvalSettings(max_new_tokens=20, ks=(1, 3, 5), warmup=False)
    report = evaluate_drafts(target, IdTokenizer(), {"close": close, "far": far, "self": target}, PROMPTS, settings,
                             out=tmp_path, log=lambda m: None)
    for name, entry in report["drafts"].items():
        forced = entry["teacher_forced"]
        assert forced["positions"] == 4 * 20
        # at temperature 0 min(p, q) of one-hot distributions is argmax agreement
        assert forced["expected_acceptance"] == pytest.approx(forced["argmax_agreement"])
        for k in ("1", "3", "5"):
            real, predicted = entry["speculative"][k], forced["predicted"][k]
            assert real["acceptance_rate"] == pytest.approx(predicted["acceptance_rate"]), (name, k)
            assert real["mean_accepted_length"] == pytest.approx(predicted["mean_accepted_length"]), (name, k)
            assert real["output_match_rate"] == 1.0  # greedy speculative decoding is lossless in fp32
    same = report["drafts"]["self"]
    assert same["teacher_forced"]["expected_acceptance"] == 1.0 and same["teacher_forced"]["kl_target_draft"] < 1e-6
    assert same["speculative"]["3"]["acceptance_rate"] == 1.0
    # entropies: the target's own equals itself as a draft; a uniform draft has log(vocab)
    forced = {name: entry["teacher_forced"] for name, entry in report["drafts"].items()}
    assert forced["self"]["draft_entropy"] == pytest.approx(forced["self"]["target_entropy"], rel=1e-5)
    assert len({round(f["target_entropy"], 6) for f in forced.values()}) == 1 and forced["self"]["target_entropy"] > 0
    flat = tiny_llama(6, init_range=0.3)
    torch.nn.init.zeros_(flat.lm_head.weight)
    uniform = teacher_forced(target, {"flat": flat}, [([5, 6], [7, 8, 9])], settings)["flat"]
    assert uniform["draft_entropy"] == pytest.approx(math.log(flat.config.vocab_size), rel=1e-5)
    close_acc = report["drafts"]["close"]["teacher_forced"]["expected_acceptance"]
    assert close_acc > report["drafts"]["far"]["teacher_forced"]["expected_acceptance"]
    # outputs, and the target's responses reused by the next run
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["target_only"]["from_cache"] is False and "| `close` |" in (tmp_path / "eval.md").read_text()
    with pytest.raises(SpecAdaptError, match="already holds an evaluation .*--overwrite"):  # never replaced silently
        evaluate_drafts(target, IdTokenizer(), {"close": close}, PROMPTS, settings, out=tmp_path, log=lambda m: None)
    again = evaluate_drafts(target, IdTokenizer(), {"close": close}, PROMPTS, EvalSettings(max_new_tokens=20, ks=(3,), speculative=False),
                            out=tmp_path, overwrite=True, log=lambda m: None)
    assert again["target_only"]["from_cache"] is True
    assert again["drafts"]["close"]["teacher_forced"]["expected_acceptance"] == pytest.approx(close_acc)
    assert again["drafts"]["close"]["speculative"] == {}
    # a responses file cut short (a crash before its writes were atomic) is decoded again, not a traceback
    responses = tmp_path / "target_responses.json"
    responses.write_text(responses.read_text()[:40])
    third = evaluate_drafts(target, IdTokenizer(), {"close": close}, PROMPTS, EvalSettings(max_new_tokens=20, ks=(3,), speculative=False),
                            out=tmp_path, overwrite=True, log=lambda m: None)
    assert third["target_only"]["from_cache"] is False and json.loads(responses.read_text())["run"]["outputs"]


def test_sampled_acceptance_and_prediction(models):
    target, close, _ = models
    settings = EvalSettings(max_new_tokens=12, temperature=1.0, ks=(4,), speculative=True, warmup=False)
    report = evaluate_drafts(target, IdTokenizer(), {"close": close}, PROMPTS[:2], settings, log=lambda m: None)
    forced = report["drafts"]["close"]["teacher_forced"]
    # deterministic on the tiny pair (CPU, fp32): measured once, checked against the formulas' inputs below
    assert forced["positions"] == 24 and forced["expected_acceptance"] == pytest.approx(0.367542, abs=1e-6)
    assert forced["expected_acceptance"] == pytest.approx(forced["acceptance_t1"])  # T = 1, no top-k/top-p
    assert forced["predicted"]["4"]["mean_accepted_length"] == pytest.approx(1.520393, abs=1e-6)
    assert "output_match_rate" not in report["drafts"]["close"]["speculative"]["4"]


def test_expected_tokens_per_round():
    ones = _expected_tokens_per_round(torch.ones(6), 3)
    assert ones.tolist() == [4, 4, 4, 3, 2, 1]  # drafts are cut at the end of the text
    assert _expected_tokens_per_round(torch.zeros(5), 3).tolist() == [1] * 5
    half = _expected_tokens_per_round(torch.full((10,), 0.5), 2)
    assert half[0] == pytest.approx(1 + 0.5 + 0.25)


def test_greedy_replay_with_eos():
    # the draft agrees up to and including EOS: one round, it stops drafting at EOS, the EOS ends the output
    assert simulate_greedy_rounds([5, 6, 1], [5, 6, 1], 4, 10, eos_ids=[1]) == (3, 2, 1)
    # the draft rejects the first token: one bonus token per round
    assert simulate_greedy_rounds([5, 6], [9, 9], 2, 2) == (1, 0, 2)


def test_run_eval_draft_from_folders_and_bad_input(tmp_path):
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    save_tiny_checkpoint(tmp_path / "target", 0, words)
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in ["the cat", "a dog ran"]) + "\n")
    report = run_eval_draft(str(tmp_path / "target"), ["shallow:1"], str(tmp_path / "prompts.jsonl"), tmp_path / "out",
                            EvalSettings(max_new_tokens=5, ks=(2,)), num_prompts=2, dtype="float32", device="cpu",
                            log=lambda m: None)
    assert report["prompts"] == 2 and report["drafts"]["shallow:1"]["speculative"]["2"]["generated_tokens"] == 10
    assert (tmp_path / "out" / "eval.md").exists()
    save_tiny_checkpoint(tmp_path / "other", 1, ["different", "words"])
    target = str(tmp_path / "target")
    with pytest.raises(SpecAdaptError, match="different tokenizers"):
        run_eval_draft(target, [str(tmp_path / "other")], str(tmp_path / "prompts.jsonl"), tmp_path / "x", log=lambda m: None)
    with pytest.raises(SpecAdaptError, match="not found"):
        run_eval_draft(target, ["shallow:1"], str(tmp_path / "nope.jsonl"), tmp_path / "x", log=lambda m: None)
    with pytest.raises(SpecAdaptError, match="draft lengths >= 1"):
        EvalSettings(ks=(0,))
    with pytest.raises(SpecAdaptError, match="twice"):
        run_eval_draft(target, ["shallow:1", "shallow:1"], "gsm8k", tmp_path / "x", log=lambda m: None)

    from typer.testing import CliRunner

    from specadapt.cli import app

    result = CliRunner().invoke(app, [
        "eval-draft", "--target", target, "--draft", "shallow:1", "--data", str(tmp_path / "prompts.jsonl"),
        "--out", str(tmp_path / "cli"), "--num-prompts", "1", "--max-new-tokens", "4", "--k", "2", "--k", "3",
        "--dtype", "float32", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cli" / "eval.json").read_text())
    assert set(saved["drafts"]["shallow:1"]["speculative"]) == {"2", "3"}


def test_an_earlier_evaluations_target_responses_are_reused_or_refused_by_name(tmp_path):
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    save_tiny_checkpoint(tmp_path / "target", 0, words)
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in ["the cat", "a dog ran"]) + "\n")
    args = (str(tmp_path / "target"), ["shallow:1"], str(tmp_path / "prompts.jsonl"))
    kw = dict(num_prompts=2, dtype="float32", device="cpu")
    settings = EvalSettings(max_new_tokens=5, speculative=False)
    first = run_eval_draft(*args, tmp_path / "first", settings, **kw, log=lambda m: None)
    logs = []
    again = run_eval_draft(*args, tmp_path / "again", settings, **kw, responses_from=tmp_path / "first", log=logs.append)
    assert not first["target_only"]["from_cache"] and again["target_only"]["from_cache"]
    assert f"reusing the target's responses from {tmp_path / 'first' / 'target_responses.json'}" in logs
    assert not any(m.startswith("target-only decoding") for m in logs)
    assert (tmp_path / "again" / "target_responses.json").read_text() == (tmp_path / "first" / "target_responses.json").read_text()
    assert again["drafts"] == first["drafts"]
    with pytest.raises(SpecAdaptError, match=r"holds the target's responses for other max_new_tokens; give the folder"):
        run_eval_draft(*args, tmp_path / "longer", EvalSettings(max_new_tokens=6, speculative=False), **kw,
                       responses_from=tmp_path / "first" / "target_responses.json", log=lambda m: None)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SpecAdaptError, match=r"bad.json is not a target_responses.json that eval-draft wrote"):
        run_eval_draft(*args, tmp_path / "x", settings, **kw, responses_from=tmp_path / "bad.json", log=lambda m: None)
    with pytest.raises(SpecAdaptError, match=r"--target-responses .*nowhere: no target_responses.json there"):
        run_eval_draft(*args, tmp_path / "x", settings, **kw, responses_from=tmp_path / "nowhere", log=lambda m: None)

    from typer.testing import CliRunner

    from specadapt.cli import app

    result = CliRunner().invoke(app, [
        "eval-draft", "--target", args[0], "--draft", "shallow:1", "--data", args[2], "--out", str(tmp_path / "cli"),
        "--num-prompts", "2", "--max-new-tokens", "5", "--no-speculative", "--dtype", "float32", "--device", "cpu",
        "--target-responses", str(tmp_path / "first"),
    ])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "eval.json").read_text())["target_only"]["from_cache"] is True
