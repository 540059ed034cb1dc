"""The Python API: load a target/draft pair once, then generate.

>>> from specadapt import SpecDecoder
>>> dec = SpecDecoder.from_pretrained()                      # built-in Qwen2.5-Coder 1.5B / 0.5B pair
>>> out = dec.generate("def fib(n):", method="fixed:4", max_new_tokens=64)
>>> out.text, out.stats.mean_accepted_length
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence, Union, overload

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .engine import RequestConfig, GenerationResult, SpeculativeEngine
from .errors import SpecAdaptError
from .methods import Method, make_method
from .models import loading, zoo
from .models.draft_vocab import restrict_vocabulary

DEFAULT_METHOD = "fixed:4"


def _logits_width(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    return getattr(head, "vocab_size", head.weight.shape[0])  # a SubsetHead still emits full-width logits


class SpecDecoder:
    """A target model, an optional draft model sharing its tokenizer, and the engine that runs them."""

    def __init__(
        self,
        target: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        draft: PreTrainedModel | None = None,
        names: tuple[str, str | None] = ("target", "draft"),
    ) -> None:
        self.target, self.draft, self.tokenizer, self.names = target, draft, tokenizer, names
        if draft is not None:
            tv, dv = _logits_width(target), _logits_width(draft)
            if tv != dv:
                raise SpecAdaptError(
                    f"draft {names[1]!r} has {dv} output logits but target {names[0]!r} has {tv}: "
                    "speculative decoding needs the same vocabulary; pick a draft of the target's family."
                )
        self.engine = SpeculativeEngine(target, draft, tokenizer, loading.eos_token_ids(target, tokenizer))
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        target: str = zoo.DEFAULT_TARGET,
        draft: str | None = zoo.DEFAULT_DRAFT,
        *,
        dtype: str | torch.dtype = "bfloat16",
        device: str | torch.device = "auto",
        draft_vocab: int | None = None,
    ) -> "SpecDecoder":
        """Load by built-in name, local folder, .gguf file or Hub id. ``draft=None`` loads the target only.

        ``draft_vocab``: restrict the draft's output head to that many lowest token ids plus the
        special tokens (see :mod:`specadapt.models.draft_vocab`); None keeps the full vocabulary."""
        tokenizer = loading.load_tokenizer(target)
        if draft is not None:
            loading.check_same_tokenizer(tokenizer, loading.load_tokenizer(draft), (target, draft))
        target_model = loading.load_model(target, dtype, device)
        draft_model = loading.load_model(draft, dtype, target_model.device) if draft is not None else None
        if draft_model is not None and draft_vocab is not None:
            if draft_vocab < 1:
                raise SpecAdaptError(f"draft_vocab must be >= 1 (or None for the full vocabulary), got {draft_vocab}.")
            restrict_vocabulary(draft_model, tokenizer, draft_vocab)
        return cls(target_model, tokenizer, draft_model, (target, draft))

    def encode(self, prompt: str | Sequence[dict], chat: bool = False) -> list[int]:
        """Tokenise a prompt; with ``chat`` wrap it as a user turn with the model's chat template.

        A list of chat messages (``{"role": ..., "content": ...}``) always goes through the template."""
        if not isinstance(prompt, str):
            return self._apply_chat_template(list(prompt))
        if not prompt.strip():
            raise SpecAdaptError("the prompt is empty; give some text to continue.")
        if chat:
            return self._apply_chat_template([{"role": "user", "content": prompt}])
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def _apply_chat_template(self, messages: list[dict]) -> list[int]:
        if not messages or not any(str(m.get("content", "")).strip() for m in messages):
            raise SpecAdaptError("the chat messages are empty; give some text to continue.")
        if not getattr(self.tokenizer, "chat_template", None):
            raise SpecAdaptError(f"model {self.names[0]!r} has no chat template; give plain text without --chat.")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    @overload
    def generate(self, prompt: str | Sequence[int] | Sequence[dict], **kwargs) -> GenerationResult: ...
    @overload
    def generate(self, prompt: Sequence[str | Sequence[int] | Sequence[dict]], **kwargs) -> list[GenerationResult]: ...

    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
        *,
        method: str | Method = DEFAULT_METHOD,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        chat: bool = False,
        on_tokens: Callable[[int, list[int]], None] | None = None,
    ) -> GenerationResult | list[GenerationResult]:
        """Generate for one prompt (returns one result) or a batch of prompts (returns a list).

        A prompt is text (tokenised here; ``chat`` applies the chat template), a list of token ids, or a
        list of chat messages (``{"role": ..., "content": ...}``, always through the chat template).
        Safe to call from several threads: calls run one at a time."""
        config = RequestConfig(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop))
        single = _is_one_prompt(prompt)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise SpecAdaptError("no prompts given.")
        ids = [self._prompt_ids(p, chat, max_new_tokens) for p in prompts]
        method = make_method(method)
        with self._lock:  # a method's policy state and the models' caches serve one batch at a time
            results = self.engine.generate(ids, method, config, on_tokens)
        return results[0] if single else results

    def _prompt_ids(self, prompt: Prompt, chat: bool, max_new_tokens: int) -> list[int]:
        """Token ids of one prompt, checked against the vocabulary and the context window."""
        if isinstance(prompt, dict):
            raise SpecAdaptError("a single chat message must be given inside a list: [{'role': 'user', 'content': ...}].")
        if isinstance(prompt, str) or (len(prompt) > 0 and all(isinstance(m, dict) for m in prompt)):
            ids = self.encode(prompt, chat)
        elif all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            vocab = _logits_width(self.target)
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise SpecAdaptError(f"token id {bad[0]} is outside the model's vocabulary [0, {vocab}).")
        else:
            raise SpecAdaptError(
                "a prompt must be text, a list of token ids or a list of chat messages ({'role': ..., 'content': ...}); "
                f"got {type(prompt).__name__} holding {sorted({type(x).__name__ for x in prompt})}."
            )
        if not ids:
            raise SpecAdaptError("every prompt must contain at least one token (got an empty prompt).")
        window = getattr(self.target.config, "max_position_embeddings", None)
        if window and len(ids) + max_new_tokens > window:
            raise SpecAdaptError(
                f"the prompt has {len(ids)} tokens and max_new_tokens is {max_new_tokens}: together more than the "
                f"model's context window of {window} tokens. Shorten the prompt or lower max_new_tokens."
            )
        return ids


Prompt = Union[str, Sequence[int], Sequence[dict]]


def _is_one_prompt(prompt) -> bool:
    """One prompt (text, token ids, chat messages, a lone message dict) rather than a batch of them."""
    if isinstance(prompt, (str, dict)):
        return True
    items = list(prompt)
    return bool(items) and all(isinstance(x, (int, dict)) for x in items)
