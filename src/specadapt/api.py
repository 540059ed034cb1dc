"""The Python API: load a target/draft pair once, then generate.

>>> from specadapt import SpecDecoder
>>> dec = SpecDecoder.from_pretrained()                      # built-in Qwen2.5-Coder 1.5B / 0.5B pair
>>> out = dec.generate("def fib(n):", method="fixed:4", max_new_tokens=64)
>>> out.text, out.stats.mean_accepted_length
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable, Sequence, Union, overload

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .engine import RequestConfig, GenerationResult, SpeculativeEngine
from .errors import SpecAdaptError, SpecAdaptWarning
from .methods import Method, make_method
from .models import loading, zoo
from .models.draft_vocab import FULL, check_draft_vocab, output_width, read_ranking, restrict_vocabulary, shipped_ranking
from .models.hardware import keep_float32_copies_where_they_pay, slow_bf16_warning
from .models.quant import check_scheme, quantize_model, resolve_scheme
from .text import as_messages, encode_chat

# The fastest lossless method of those replayed on tune prompts with the default (int4) draft that needs no
# trained head, so it works for any pair (benchmarks/results/tune_int4/replay.json, CHOICES.md there).
DEFAULT_METHOD = "adaedl+lookup"  # chosen on tune prompts: benchmarks/results/tune_lookup/CHOICES.md


def _ranking(spec: str, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor | None:
    """Token ids by frequency for a restricted draft head: "frequency" (shipped, else None), "lowest" (None), a file."""
    if spec == "frequency":
        return shipped_ranking(tokenizer)
    if spec == "lowest":
        return None
    return read_ranking(spec, tokenizer)


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
            tv, dv = output_width(target), output_width(draft)
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
        draft_vocab: int | str | None = zoo.DEFAULT_DRAFT_VOCAB,
        draft_vocab_ranking: str = "frequency",
        draft_quant: str = zoo.DEFAULT_DRAFT_QUANT,
        draft_group_size: int | None = None,
        target_quant: str = "none",
        target_group_size: int | None = None,
        float32_copies: bool | str = "auto",
    ) -> "SpecDecoder":
        """Load by built-in name, local folder, .gguf file or Hub id. ``draft=None`` loads the target only.

        Cheaper drafts, all lossless (the verifier uses the exact distribution the draft sampled from):
        ``draft_vocab``: restrict the draft's output head to that many token ids plus the special tokens,
        the most frequent ones by ``draft_vocab_ranking`` ("frequency": the ranking shipped for the
        tokenizer, else the lowest ids; "lowest"; or a ranking file); "full" (or None) keeps the full vocabulary.
        ``draft_quant``: weight-only quantization of the draft's linear layers ("none", "int8", "int4";
        ``draft_group_size`` for int4, default 32; CPU), or "auto": int4 on CPU, none on a GPU. See :mod:`specadapt.models.draft_vocab` and
        :mod:`specadapt.models.quant`.

        ``target_quant`` (with ``target_group_size``): the same quantization of the target. That changes the
        model being decoded: outputs are lossless w.r.t. the quantized target, not the float one, and every
        result records it (``result.settings["target_quant"]``).

        ``float32_copies``: on a CPU without native bf16, a bf16 target keeps a float32 copy of its weights where
        memory allows (:func:`specadapt.models.hardware.keep_float32_copies`), for the blocks of tokens it multiplies:
        "auto" with a draft (verification blocks), True also without one (a server's batches), False never."""
        check_scheme(draft_quant, draft_group_size, "draft")  # before loading anything
        if float32_copies not in ("auto", True, False):
            raise SpecAdaptError(f"float32_copies must be 'auto', True or False, got {float32_copies!r}.")
        check_scheme(target_quant, target_group_size, "target")
        draft_vocab = check_draft_vocab(draft_vocab)
        tokenizer = loading.load_tokenizer(target)
        if draft is not None:
            loading.check_same_tokenizer(tokenizer, loading.load_tokenizer(draft), (target, draft))
        target_model = loading.load_model(target, dtype, device)
        copied = False
        if target_quant != "none":
            quantize_model(target_model, target_quant, target_group_size, "target")
        elif float32_copies is True or (float32_copies == "auto" and draft is not None):
            copied = keep_float32_copies_where_they_pay(target_model)  # verification blocks: see models/hardware.py
        draft_model = loading.load_model(draft, dtype, target_model.device) if draft is not None else None
        plain = target_quant == "none" and not copied
        slow = slow_bf16_warning(target_model.dtype, target_model.device) if plain else None
        if draft_model is not None and slow:
            warnings.warn(slow, SpecAdaptWarning, stacklevel=2)
        if draft_model is not None and draft_vocab != FULL:  # before quantizing: the smaller head is quantized
            restrict_vocabulary(draft_model, tokenizer, draft_vocab, _ranking(draft_vocab_ranking, tokenizer))
        draft_quant = resolve_scheme(draft_quant, target_model.device)
        if draft_model is not None and draft_quant != "none":
            quantize_model(draft_model, draft_quant, draft_group_size if draft_quant == "int4" else None)
        return cls(target_model, tokenizer, draft_model, (target, draft))

    @property
    def context_window(self) -> int | None:
        """Tokens a sequence may span: the smaller of the models' ``max_position_embeddings`` (None if unknown)."""
        limits = [getattr(m.config, "max_position_embeddings", None) for m in (self.target, self.draft) if m is not None]
        limits = [n for n in limits if isinstance(n, int) and n > 0]
        return min(limits) if limits else None

    def encode(self, prompt: str | Sequence[dict], chat: bool = False) -> list[int]:
        """Tokenise a prompt; with ``chat`` wrap it as a user turn with the model's chat template.

        A list of chat messages (``{"role": ..., "content": ...}``) always goes through the template."""
        if isinstance(prompt, str) and not prompt.strip():
            raise SpecAdaptError("the prompt is empty; give some text to continue.")
        if isinstance(prompt, str) and not chat:
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return encode_chat(self.tokenizer, as_messages(prompt), self.names[0])

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
        logprobs: int | None = None,
    ) -> GenerationResult | list[GenerationResult]:
        """Generate for one prompt (returns one result) or a batch of prompts (returns a list).

        A prompt is text (tokenised here; ``chat`` applies the chat template), a list of token ids, or a
        list of chat messages (``{"role": ..., "content": ...}``, always through the chat template).
        ``logprobs``: each result's ``logprobs`` holds every generated token's log-probability under the target and
        this many most likely alternatives (:mod:`specadapt.logprobs`).
        Safe to call from several threads: calls run one at a time."""
        config = RequestConfig(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop), logprobs=logprobs)
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
            vocab = output_width(self.target)
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
        window = self.context_window
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
