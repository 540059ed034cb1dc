"""Reuse the KV cache of prompts that start the same way (a chat template's system prompt, an instruction).

A server's requests often share their first tokens: every chat prompt of the default pair starts with the same
24-token system turn, and a task's prompts with the same instruction (GSM8K's share 49 tokens). Feeding a joining
prompt, a runner looks up the longest block-aligned prefix it has fed before and feeds only the rest; the keys and
values of the shared tokens are copied from the store. They were computed at the same positions after the same
tokens, so the rest sees the same cache up to rounding (a different pass shape), as with any batching.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

BLOCK = 8  # prefixes are matched in whole blocks of this many tokens


class PrefixStore:
    """The keys and values of recently fed sequences, each layer's ``[kv_heads, tokens, head_dim]``, looked up by
    their block-aligned prefixes; the least recently used sequences leave once more than ``max_tokens`` are kept."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._index: dict[tuple[int, ...], tuple[int, ...]] = {}  # a block-aligned prefix -> an entry holding it
        self._tokens = 0
        self.hits = self.reused_tokens = 0  # lookups that found a prefix, and the tokens they did not feed

    def clear(self) -> None:
        """Forget every stored sequence and reset the counts."""
        self._entries.clear()
        self._index.clear()
        self._tokens = self.hits = self.reused_tokens = 0

    def match(self, seq: Sequence[int], limit: int | None = None) -> int:
        """How many of ``seq``'s first tokens (a multiple of ``BLOCK``, at most ``limit``) the store holds."""
        n = min(len(seq), limit if limit is not None else len(seq)) // BLOCK * BLOCK
        while n and tuple(seq[:n]) not in self._index:
            n -= BLOCK
        return n

    def get(self, seq: Sequence[int], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The stored keys and values of ``seq``'s first ``n`` tokens (``n`` from :meth:`match`), per layer."""
        key = self._index[tuple(seq[:n])]
        self._entries.move_to_end(key)
        self.hits += 1
        self.reused_tokens += n
        return [(k[:, :n], v[:, :n]) for k, v in self._entries[key]]

    def put(self, seq: Sequence[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep ``seq``'s keys and values (per layer, ``[kv_heads, len(seq), head_dim]``), its whole blocks only.
        The store keeps views of the tensors it is given: give it copies, not views of a live cache."""
        n = min(len(seq) // BLOCK * BLOCK, self.max_tokens // BLOCK * BLOCK)
        if n == 0:
            return
        key = tuple(seq[:n])
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = [(k[:, :n], v[:, :n]) for k, v in layers]
        self._tokens += n
        for end in range(BLOCK, n + 1, BLOCK):
            self._index[key[:end]] = key  # the newest entry holding a prefix serves it
        while self._tokens > self.max_tokens:
            self._evict(next(iter(self._entries)))

    def _evict(self, key: tuple[int, ...]) -> None:
        del self._entries[key]
        self._tokens -= len(key)
        for end in range(BLOCK, len(key) + 1, BLOCK):
            prefix = key[:end]
            if self._index.get(prefix) == key:
                # another entry may hold the prefix too: the newest such one serves it from now on
                holder = next((other for other in reversed(self._entries) if other[:end] == prefix), None)
                if holder is None:
                    del self._index[prefix]
                else:
                    self._index[prefix] = holder
