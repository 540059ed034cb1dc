"""The target's own answers to training prompts, as distillation data (``specadapt target-responses``).

DistillSpec (Zhou et al., 2024) finds that a draft distilled on text the *target* generated agrees with it
more than one distilled on a dataset's reference answers: at decoding time the draft has to predict the
target's text, not a human's. This module writes the target's greedy answers to the ``train`` split of the
benchmark's datasets (the same prompt format the benchmark reports on, never a test prompt), or to a user's
own prompts (``.jsonl`` files, as ``--data`` of ``train-head`` reads them), as a ``.jsonl`` file that ``specadapt distill --data FILE`` trains on: one line per prompt, ``{"id", "prompt", "chat",
"response", "finished"}``. ``finished`` is false for an answer cut at ``max_new_tokens`` or a stop string,
so training adds no end-of-turn token the target never wrote.

The target alone generates, in batches (the engine lets finished rows leave); every answer is appended as
soon as its batch ends, so an interrupted or time-limited run resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SpecAdaptError
from ..io import read_jsonl_tolerant

# One user turn each (the benchmark's prompt format), so a line's prompt is that turn's text; sharegpt: the first
# human turn of ShareGPT conversations (chat like MT-Bench's, none of its questions).
RESPONSE_DATASETS = ("gsm8k", "humaneval", "spec-bench", "mt-bench", "sharegpt")


@dataclass
class ResponseSettings:
    """What ``target-responses`` generates; validated on construction."""

    datasets: list[str] = field(default_factory=lambda: ["spec-bench", "humaneval", "gsm8k"], metadata={
        "help": "Prompts to answer, alternating one by one: benchmark datasets' train splits "
                f"({', '.join(RESPONSE_DATASETS)}; spec-bench's holds MT-Bench's; its math_reasoning rows, GSM8K test "
                "problems, are left out; sharegpt: first turns of ShareGPT conversations, needs specadapt[train]) or "
                ".jsonl files of your own prompts (\"prompt\", optional \"chat\")."})
    limit: int | None = field(default=None, metadata={"help": "Answer at most N prompts (of the alternating mix)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Length limit of an answer."})
    max_prompt_tokens: int = field(default=384, metadata={
        "help": "Skip longer prompts (distill's --max-length truncates whole sequences)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts generated together."})
    time_limit: float | None = field(default=None, metadata={
        "help": "Minutes: start no new batch after this (rerun to resume)."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's)."})

    def __post_init__(self) -> None:
        unknown = [d for d in self.datasets if d not in RESPONSE_DATASETS and not _is_prompt_file(d)]
        if unknown or not self.datasets:
            raise SpecAdaptError(f"--datasets: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                                 f"use some of {', '.join(RESPONSE_DATASETS)} or the path of an existing .jsonl file.")
        for name in ("max_new_tokens", "max_prompt_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise SpecAdaptError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.limit is not None and self.limit < 1:
            raise SpecAdaptError(f"--limit must be >= 1 (or omitted for every prompt), got {self.limit}.")
        if self.time_limit is not None and self.time_limit <= 0:
            raise SpecAdaptError(f"--time-limit must be a positive number of minutes, got {self.time_limit}.")


def _is_prompt_file(name: str) -> bool:
    return name.endswith(".jsonl") and Path(name).expanduser().is_file()


@dataclass(frozen=True)
class _Prompt:
    id: str
    dataset: str
    text: str  # the user turn
    stop: tuple[str, ...]
    chat: bool | None = None  # None: the chat template if the tokenizer has one


def train_prompts(datasets: Sequence[str], limit: int | None = None) -> list[_Prompt]:
    """The prompts of ``datasets`` (train splits; a .jsonl file: all of it), alternating one by one (the first
    ``limit`` of the mix)."""
    from ..bench.datasets import load_dataset
    from ..sources import load_source, read_jsonl_prompts

    lists = []
    for name in datasets:
        if name not in RESPONSE_DATASETS:  # the user's own prompts
            lists.append([_Prompt(r.id, name, r.prompt, (), r.chat) for r in read_jsonl_prompts(Path(name).expanduser())])
            continue
        if name == "sharegpt":  # chat turns like the benchmark's: plain text for a model without a template
            lists.append([_Prompt(r.id, name, r.prompt, ()) for r in load_source(name, limit)])
            continue
        rows = []
        for ex in load_dataset(name, None, "train"):
            if name == "spec-bench" and ex.category == "math_reasoning":
                continue  # GSM8K *test* problems at scattered indices (bench/splits.py): never train on them
            if len(ex.messages) != 1:  # few-shot GSM8K would need the whole conversation in the file
                raise SpecAdaptError(f"{ex.id}: a prompt of {len(ex.messages)} turns cannot be written as one.")
            rows.append(_Prompt(ex.id, name, ex.messages[0]["content"], tuple(ex.stop)))
        lists.append(rows)
    mixed = [p for group in itertools.zip_longest(*lists) for p in group if p is not None]
    return mixed[:limit] if limit else mixed


def _read_done(out: Path, target: str, settings: ResponseSettings) -> set[str]:
    """Ids already answered in ``out``; an error if the file holds anything but this target's answers of this
    length limit. A last line cut off by a crash is dropped (only then is the file changed)."""
    rows = read_jsonl_tolerant(out)
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    for n, row in enumerate(rows, start=1):
        made_by = (row.get("target"), row.get("max_new_tokens")) if isinstance(row, dict) else (None, None)
        if made_by != (target, settings.max_new_tokens):
            raise SpecAdaptError(
                f"{out} holds answers of target {made_by[0]!r} with max_new_tokens {made_by[1]} (line {n}), "
                f"not {target!r} with {settings.max_new_tokens}: give another --out (nothing is overwritten)."
            )
    if len(rows) < text.count("\n"):  # a complete line that is not JSON: not a cut-off last line
        raise SpecAdaptError(f"{out} line {len(rows) + 1} is not JSON: not a file this command wrote; "
                             "give another --out (nothing is overwritten).")
    if not text.endswith("\n") and text:
        read_jsonl_tolerant(out, repair=True)  # appending after half a line would spoil the next one too
    return {row["id"] for row in rows}


def write_target_responses(
    decoder, target_name: str, out: Path, settings: ResponseSettings,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Append the target's greedy answers to ``out`` for every train prompt not yet in it; a summary.

    ``decoder``: a :class:`specadapt.SpecDecoder` (a draft, if loaded, is not used: the target generates
    alone). Batches hold one dataset's prompts (they share its stop strings), sorted by length."""
    from ..engine import RequestConfig
    from ..methods import make_method
    from ..text import has_chat_template

    out = Path(out)
    done = _read_done(out, target_name, settings)
    prompts = [p for p in train_prompts(settings.datasets, settings.limit) if p.id not in done]
    template = has_chat_template(decoder.tokenizer)  # the benchmark's chat turns; plain text for a model without
    chat = {p.id: template if p.chat is None else p.chat for p in prompts}
    ids = {p.id: decoder.encode(p.text, chat=chat[p.id]) for p in prompts}
    skipped = [p for p in prompts if len(ids[p.id]) > settings.max_prompt_tokens]
    todo = [p for p in prompts if len(ids[p.id]) <= settings.max_prompt_tokens]
    batches = []
    for name in settings.datasets:  # per dataset in mix order, then sorted by length within a run of prompts
        mine = [p for p in todo if p.dataset == name]
        for i in range(0, len(mine), 4 * settings.batch_size):
            chunk = sorted(mine[i : i + 4 * settings.batch_size], key=lambda p: len(ids[p.id]))
            batches += [chunk[j : j + settings.batch_size] for j in range(0, len(chunk), settings.batch_size)]
    # Interleave the datasets' batches so that a time limit leaves a mix.
    per = [[b for b in batches if b[0].dataset == name] for name in settings.datasets]
    batches = [b for group in itertools.zip_longest(*per) for b in group if b is not None]

    method = make_method("autoregressive")
    out.parent.mkdir(parents=True, exist_ok=True)
    started, written, tokens, empty, stopped_early = time.perf_counter(), 0, 0, 0, False
    with out.open("a", encoding="utf-8") as f:
        for batch in batches:
            if settings.time_limit is not None and time.perf_counter() - started > settings.time_limit * 60:
                stopped_early = True
                break
            config = RequestConfig(settings.max_new_tokens, 0.0, 0, 1.0, None, batch[0].stop)
            results = decoder.engine.generate([ids[p.id] for p in batch], method, config, None)
            for p, r in zip(batch, results):
                if not r.text.strip():  # nothing to train on (distill refuses empty answers); rare, redone on resume
                    empty += 1
                    continue
                row = {"id": p.id, "dataset": p.dataset, "prompt": p.text, "chat": chat[p.id], "response": r.text,
                       "finished": r.finish_reason == "eos", "tokens": len(r.token_ids),
                       "target": target_name, "max_new_tokens": settings.max_new_tokens}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                tokens += len(r.token_ids)
            f.flush()
            written += len(batch)
            if progress is not None:
                progress(written, len(todo))
    seconds = time.perf_counter() - started
    return {"out": str(out), "answered": written - empty, "already": len(done), "skipped_long_prompts": len(skipped),
            "remaining": len(todo) - written, "empty_answers": empty, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else None, "stopped_by_time_limit": stopped_early,
            "settings": asdict(settings)}
