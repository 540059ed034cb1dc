"""`specadapt target-responses`: the target's own answers to train prompts, as distillation data."""

from __future__ import annotations

import json

import pytest
from conftest import save_tiny_checkpoint

from specadapt.distill.data import Pair, encode_pair, load_train_pairs
from specadapt.distill.responses import ResponseSettings, train_prompts, write_target_responses
from specadapt.errors import SpecAdaptError

# 62 words + <unk> and </s>: every id of the tiny model's 64 decodes to text
WORDS = ["the", "cat", "sat", "on", "a", "mat", "solve", "problem", "step", "by", *(f"w{i}" for i in range(52))]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    from specadapt.api import SpecDecoder

    path = tmp_path_factory.mktemp("tiny") / "target"
    save_tiny_checkpoint(path, 0, WORDS)
    return SpecDecoder.from_pretrained(str(path), None, dtype="float32", device="cpu")


def test_train_prompts_alternate_and_never_hold_a_test_prompt():
    from specadapt.bench.datasets import load_dataset

    prompts = train_prompts(["spec-bench", "gsm8k"])
    assert [p.dataset for p in prompts[:4]] == ["spec-bench", "gsm8k", "spec-bench", "gsm8k"]
    texts = {p.text for p in prompts}
    for name in ("gsm8k", "spec-bench", "mt-bench"):
        for split in ("test", "tune"):
            assert not texts & {ex.messages[-1]["content"] for ex in load_dataset(name, None, split)}, (name, split)
    assert not any("math_reasoning" in p.id for p in prompts)  # GSM8K test problems inside spec-bench


def test_answers_are_the_targets_greedy_output_and_a_rerun_resumes(decoder, tmp_path):
    out = tmp_path / "answers.jsonl"
    settings = ResponseSettings(datasets=["gsm8k"], limit=5, max_new_tokens=4, batch_size=2)
    summary = write_target_responses(decoder, "tiny", out, settings)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["answered"] == 5 and len(rows) == 5 and summary["remaining"] == 0
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in train_prompts(["gsm8k"], 5))  # batches by length
    for row in rows:  # batched answers equal each prompt generated alone, greedy
        assert row["chat"] is False  # no chat template: plain text, as generate and distill read it
        alone = decoder.generate(row["prompt"], method="autoregressive", max_new_tokens=4)
        assert row["response"] == alone.text and row["tokens"] == len(alone.token_ids)
        assert row["finished"] == (alone.finish_reason == "eos")
    # a rerun with a larger limit answers only the new prompts; another length limit is refused
    summary = write_target_responses(decoder, "tiny", out, ResponseSettings(datasets=["gsm8k"], limit=7, max_new_tokens=4))
    assert (summary["answered"], summary["already"]) == (2, 5) and len(out.read_text().splitlines()) == 7
    before = out.read_text()
    # a line cut off by a crash is dropped, and that prompt answered again
    out.write_text(before + before.splitlines()[0][:20])
    summary = write_target_responses(decoder, "tiny", out, ResponseSettings(datasets=["gsm8k"], limit=7, max_new_tokens=4))
    assert (summary["answered"], summary["already"]) == (0, 7) and out.read_text() == before
    with pytest.raises(SpecAdaptError, match="holds answers of target 'tiny' with max_new_tokens 4"):
        write_target_responses(decoder, "tiny", out, ResponseSettings(datasets=["gsm8k"], limit=7, max_new_tokens=5))
    assert out.read_text() == before  # nothing written
    # the file is distillation data, cut-off answers marked
    pairs = load_train_pairs(str(out))
    assert [p.finished for p in pairs] == [json.loads(line)["finished"] for line in before.splitlines()]


def test_a_users_prompt_file_mixes_with_a_dataset(decoder, tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"prompt": "the cat sat", "id": "a"}) + "\n" + json.dumps({"prompt": "on a mat", "chat": False}) + "\n")
    prompts = train_prompts([str(mine), "gsm8k"], 3)
    assert [(p.id, p.chat) for p in prompts] == [("a", None), ("gsm8k/200", None), ("mine.jsonl/2", False)]
    out = tmp_path / "answers.jsonl"
    write_target_responses(decoder, "tiny", out, ResponseSettings(datasets=[str(mine)], max_new_tokens=3))
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["mine.jsonl/2"]["response"] == decoder.generate("on a mat", method="autoregressive", max_new_tokens=3).text


def test_sharegpt_first_turns_are_prompts_in_the_benchmarks_chat_format(decoder, tmp_path, monkeypatch):
    import io

    from specadapt import sources

    conversations = [{"id": "x", "conversations": [{"from": "human", "value": "the cat sat"}, {"from": "gpt", "value": "ok"}]},
                     {"id": "y", "conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "hi"}]},
                     {"id": "z", "conversations": [{"from": "human", "value": "on a mat"}, {"from": "gpt", "value": "no"}]}]
    monkeypatch.setattr(sources, "_sharegpt", lambda limit: sources.sharegpt_records(io.StringIO(json.dumps(conversations)), limit))
    prompts = train_prompts(["sharegpt", "gsm8k"], 3)
    assert [(p.id, p.dataset, p.text, p.chat) for p in prompts] == [
        ("sharegpt/x", "sharegpt", "the cat sat", None), ("gsm8k/200", "gsm8k", prompts[1].text, None),
        ("sharegpt/z", "sharegpt", "on a mat", None)]  # None: chat if the target has a template (this one has not)
    out = tmp_path / "answers.jsonl"
    write_target_responses(decoder, "tiny", out, ResponseSettings(datasets=["sharegpt"], max_new_tokens=3))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["chat"]) for r in rows] == [("sharegpt/x", False), ("sharegpt/z", False)]
    assert rows[0]["response"] == decoder.generate("the cat sat", method="autoregressive", max_new_tokens=3).text


def test_a_time_limit_stops_before_the_next_batch(decoder, tmp_path):
    settings = ResponseSettings(datasets=["gsm8k"], limit=4, max_new_tokens=2, batch_size=2, time_limit=1e-9)
    summary = write_target_responses(decoder, "tiny", tmp_path / "a.jsonl", settings)
    assert summary["stopped_by_time_limit"] and summary["remaining"] == 4 and summary["answered"] == 0


def test_a_cut_off_answer_gets_no_end_token(tmp_path):
    from transformers import AutoTokenizer

    save_tiny_checkpoint(tmp_path / "m", 0, WORDS)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    whole = encode_pair(tok, Pair("the cat", "sat on a", chat=False), 64)
    cut = encode_pair(tok, Pair("the cat", "sat on a", chat=False, finished=False), 64)
    assert whole.input_ids == cut.input_ids + (tok.eos_token_id,) and cut.input_ids[-1] != tok.eos_token_id


def test_bad_settings_and_files(decoder, tmp_path):
    for kwargs, message in [
        ({"datasets": ["gsm9k"]}, "--datasets: unknown 'gsm9k'; use some of gsm8k, humaneval, spec-bench, mt-bench, sharegpt "
                                  "or the path of an existing .jsonl file."),
        ({"batch_size": 0}, "--batch-size must be >= 1, got 0."),
        ({"limit": 0}, "--limit must be >= 1"),
        ({"time_limit": -1.0}, "--time-limit must be a positive number of minutes, got -1.0."),
    ]:
        with pytest.raises(SpecAdaptError, match=message.replace(".", r"\.").replace("(", r"\(")):
            ResponseSettings(**kwargs)
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text("my notes, not JSON\n")
    with pytest.raises(SpecAdaptError, match="line 1 is not JSON: not a file this command wrote"):
        write_target_responses(decoder, "tiny", foreign, ResponseSettings(datasets=["gsm8k"], limit=1))
    assert foreign.read_text() == "my notes, not JSON\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "the cat", "response": "sat", "finished": "no"}) + "\n")
    with pytest.raises(SpecAdaptError, match='line 1: "finished" must be true or false when given.'):
        load_train_pairs(str(bad))


def test_cli_writes_answers_and_refuses_an_output_that_is_not_jsonl(tmp_path):
    from typer.testing import CliRunner

    from specadapt.cli import app

    save_tiny_checkpoint(tmp_path / "m", 0, WORDS)
    out = tmp_path / "answers.jsonl"
    args = ["target-responses", "--target", str(tmp_path / "m"), "--datasets", "gsm8k,spec-bench", "--limit", "3",
            "--max-new-tokens", "2", "--dtype", "float32", "--device", "cpu", "--out"]
    result = CliRunner().invoke(app, [*args, str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["dataset"] for line in out.read_text().splitlines()].count("gsm8k") == 2
    result = CliRunner().invoke(app, [*args, str(tmp_path / "a.json")])
    assert result.exit_code != 0 and "give a .jsonl file name" in str(result.exception or result.output)
