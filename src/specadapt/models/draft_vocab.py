"""A cheaper draft: restrict its output head to a subset of the vocabulary.

On a memory-bound CPU or small GPU batch the draft's output head (vocabulary x
hidden) is a large share of a draft step: 151,936 x 896 weights for
Qwen2.5-0.5B. Computing logits for the most frequent tokens only makes every
draft step cheaper. It stays lossless: the draft samples from the restricted
``q`` and the verifier uses that same ``q``; tokens outside the subset are
simply never proposed (the target still emits them as corrections).

BPE vocabularies number merges roughly by frequency, so the lowest ids are the
commonest tokens; special tokens are always kept.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class SubsetHead(nn.Module):
    """Computes logits for ``ids`` only; every other token gets -inf."""

    def __init__(self, head: nn.Module, ids: torch.Tensor) -> None:
        super().__init__()
        weight = head.weight.detach()
        self.vocab_size = weight.shape[0]
        self.register_buffer("ids", ids.to(weight.device))
        self.weight = nn.Parameter(weight[ids].clone(), requires_grad=False)
        bias = getattr(head, "bias", None)
        self.bias = nn.Parameter(bias.detach()[ids].clone(), requires_grad=False) if bias is not None else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.new_full((*hidden.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.ids, nn.functional.linear(hidden, self.weight, self.bias))


def restrict_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, size: int) -> int:
    """Keep the ``size`` lowest token ids plus all special tokens in ``model``'s output head.

    Returns the number of tokens kept. ``size`` >= the vocabulary leaves the model unchanged."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    if size >= vocab:
        return vocab
    special = set(tokenizer.all_special_ids) | {i for i in tokenizer.added_tokens_decoder if i < vocab}
    keep = torch.tensor(sorted(set(range(size)) | special), dtype=torch.long)
    model.lm_head = SubsetHead(head, keep)  # the attribute the HF causal-LM forward calls
    model.config.tie_word_embeddings = False
    return len(keep)
