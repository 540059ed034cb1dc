"""Shared fixtures: tiny randomly initialised models (built here) and a minimal tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specadapt.engine import SpeculativeEngine
from specadapt.policies import draft_round, finish_round

# Tiny models run fastest on one thread, and one thread per test process avoids
# OpenMP oversubscription when anything else shares the 2 cores.
torch.set_num_threads(1)


def tiny_llama(seed: int, vocab: int = 64, layers: int = 2, init_range: float = 0.02) -> LlamaForCausalLM:
    """A 2-layer Llama in fp32; larger ``init_range`` gives peakier, more varied distributions."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=init_range,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def perturbed_copy(model: LlamaForCausalLM, scale: float, seed: int = 123) -> LlamaForCausalLM:
    """A draft that agrees with ``model`` often but not always: its weights plus Gaussian noise."""
    draft = tiny_llama(0, model.config.vocab_size, model.config.num_hidden_layers, model.config.initializer_range)
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean())
    return draft


class IdTokenizer:
    """Decodes token ids as space-separated numbers (enough for stop-string tests)."""

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(str(i) for i in ids)


@pytest.fixture(scope="session")
def target() -> LlamaForCausalLM:
    return tiny_llama(0)


@pytest.fixture(scope="session")
def random_draft() -> LlamaForCausalLM:
    return tiny_llama(1)


@pytest.fixture(scope="session")
def close_draft(target) -> LlamaForCausalLM:
    return perturbed_copy(target, 0.2)


@pytest.fixture(scope="session")
def pair() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """Target and draft over an 8-token vocabulary with peaky, different distributions (Monte Carlo tests)."""
    return tiny_llama(0, vocab=8, init_range=0.3), tiny_llama(3, vocab=8, init_range=0.3)


def make_engine(target, draft, eos=()) -> SpeculativeEngine:
    return SpeculativeEngine(target, draft, IdTokenizer(), list(eos))


def hf_greedy(model, prompt: list[int], n: int, eos: int | None = None) -> list[int]:
    """The target's own greedy output via transformers' generate."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def save_tiny_checkpoint(path, seed: int, words: list[str]) -> None:
    """A tiny Llama plus a word-level tokenizer over ``words`` saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    model = tiny_llama(seed, vocab=64)
    model.config.eos_token_id = 1
    model.generation_config.eos_token_id = 1
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def play_round(policy, slots, probs, accepted, limit=None, tokens=None, hidden=None, token_scores=None, clip=False,
               cost=None, looked_up=()):
    """One round of ``policy`` through the engine's round protocol, with scripted drafts.

    Step k proposes ``tokens[:, k-1]`` (default 0) drawn from ``probs[:, k-1]`` [b, K, V] (and ``hidden[:, k-1]``);
    row i drafts at most ``limit[i]`` (default K) tokens, fewer where the policy stops it; ``accepted`` goes to
    ``observe`` (``clip``: at most what each row drafted), with ``token_scores(block)`` as the acceptance rule's
    per-token scores when given, and ``cost(block)`` as the round's measured :class:`RoundCost`; the steps
    numbered in ``looked_up`` are prompt lookup's (no draft forward). Returns the
    :class:`DraftBlock` (its ``lens`` say where each row stopped)."""
    b, K = probs.shape[:2]
    tokens = torch.zeros((b, K), dtype=torch.long) if tokens is None else tokens
    limit = torch.full((b,), K) if limit is None else torch.as_tensor(limit)

    def propose(k, previous, drafting):
        return tokens[:, k - 1], probs[:, k - 1], None if hidden is None else hidden[:, k - 1], k in looked_up

    block = draft_round(policy, slots, limit, propose)
    accepted = torch.as_tensor(accepted)
    if clip:
        accepted = torch.minimum(accepted, block.lens)
    assert bool((accepted <= block.lens).all()), f"the script accepts more than was drafted ({block.lens.tolist()})"
    scores = token_scores(block) if token_scores is not None else None
    finish_round(policy, slots, block, accepted, torch.arange(block.K)[None, :] < accepted[:, None], scores,
                 cost(block) if cost is not None else None)
    return block


def crash_at_checkpoint(monkeypatch, step: int | None = None) -> None:
    """Make distillation stop like a killed process right after it saves a checkpoint (at ``step``, or the
    first one): the checkpoint is written, then KeyboardInterrupt."""
    from specadapt.distill.train import DistillTrainer

    original = DistillTrainer._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if step is None or self.state.global_step == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(DistillTrainer, "_save_checkpoint", save_then_crash)

