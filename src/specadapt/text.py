"""Prompts to token ids, the same way everywhere: decoding, benchmarks, head training and distillation."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from .errors import SpecAdaptError


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def wants_chat(tokenizer: PreTrainedTokenizerBase, chat: bool | None) -> bool:
    """Whether a prompt goes through the chat template: ``chat`` (None: yes), and only if the tokenizer has one."""
    return has_chat_template(tokenizer) if chat is None else chat and has_chat_template(tokenizer)


def as_messages(prompt: str | Sequence[dict]) -> list[dict]:
    """A text prompt as one user turn; chat messages as they are."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def plain_text(prompt: str | Sequence[dict]) -> str:
    """The text of a prompt without a template: the text itself, or the last message's content."""
    return prompt if isinstance(prompt, str) else str(prompt[-1]["content"])


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], model: str | None = None) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template, ready for the assistant's turn.

    ``model`` names the model in the error raised when the tokenizer has no template."""
    if not messages or not any(str(m.get("content", "")).strip() for m in messages):
        raise SpecAdaptError("the chat messages are empty; give some text to continue.")
    if not has_chat_template(tokenizer):
        name = f"model {model!r}" if model else "the tokenizer"
        raise SpecAdaptError(f"{name} has no chat template; give plain text without --chat.")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | Sequence[dict], chat: bool | None = None) -> list[int]:
    """Prompt ids as the engine sees them: through the chat template if ``chat`` (None: if the tokenizer has one)
    and the tokenizer has a template, else the plain text with the tokenizer's special tokens."""
    if wants_chat(tokenizer, chat):
        return encode_chat(tokenizer, as_messages(prompt))
    return list(tokenizer(plain_text(prompt), add_special_tokens=True)["input_ids"])
