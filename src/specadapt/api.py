"""The Python API: load a target/draft pair once, then generate.

>>> from specadapt import SpecDecoder
>>> dec = SpecDecoder.from_pretrained()                      # built-in Qwen2.5-Coder 1.5B / 0.5B pair
>>> out = dec.generate("def fib(n):", method="fixed:4", max_new_tokens=64)
>>> out.text, out.stats.mean_accepted_length
"""

from __future__ import annotations

from typing import Callable, Sequence, overload

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
    def generate(self, prompt: str | Sequence[int], **kwargs) -> GenerationResult: ...
    @overload
    def generate(self, prompt: Sequence[str] | Sequence[Sequence[int]], **kwargs) -> list[GenerationResult]: ...

    def generate(
        self,
        prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
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

        A prompt is text (tokenised here; ``chat`` applies the chat template) or a list of token ids."""
        config = RequestConfig(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop))
        single = isinstance(prompt, str) or (len(prompt) > 0 and all(isinstance(t, int) for t in prompt))
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise SpecAdaptError("no prompts given.")
        ids = [self.encode(p, chat) if isinstance(p, str) else list(p) for p in prompts]
        results = self.engine.generate(ids, make_method(method), config, on_tokens)
        return results[0] if single else results
