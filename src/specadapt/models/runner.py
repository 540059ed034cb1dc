"""A model plus its KV cache, fed a few tokens at a time, with rollback.

The cache holds one slot per fed token and row. ``mask`` marks the slots that
belong to each row's sequence: left padding, and draft tokens the target
rejected, are holes (0) that attention skips. Positions come from the mask, so
holes do not shift positions. Rejected slots at the end of every row are
cropped, so with batch size 1 the cache never has holes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from .decode_step import MAX_TOKENS as LEAN_MAX_TOKENS
from .decode_step import DecodeStep
from .prefix import PrefixStore


def left_pad(seqs: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [b, width] and a 0/1 mask of the real ones, each sequence right-aligned."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    valid = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            valid[i, width - len(s) :] = 1
    return ids.to(device), valid.to(device)


MAX_PADDING = 0.25  # sequences fed together are padded by at most this share of their tokens


def length_groups(lengths: Sequence[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices of ``lengths`` in groups of similar length, each padded to its longest by at most ``max_padding`` of
    the group's tokens (sorted, shortest first): the passes that feed these sequences waste little on padding."""
    groups: list[list[int]] = []
    total = 0  # tokens in the last group
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and lengths[i] * (len(groups[-1]) + 1) <= (1 + max_padding) * (total + lengths[i]):
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


def share_one_pass(lengths: Sequence[int]) -> bool:
    """Whether sequences of these lengths can be fed together without much padding (one :func:`length_groups`)."""
    return len(length_groups(lengths)) <= 1


class ModelRunner:
    def __init__(self, model: PreTrainedModel, want_hidden: bool = False, lean_steps: bool = False,
                 prefixes: PrefixStore | None = None) -> None:
        """``lean_steps``: run blocks of a few tokens through :class:`DecodeStep` where the architecture has one
        (the draft: its logits only need to be the ones it samples from, not bit-equal to transformers').
        ``prefixes``: where :meth:`fill_rows` finds the cache of prefixes fed before, and keeps what it feeds."""
        self.model = model
        self.want_hidden = want_hidden
        self.prefixes = prefixes
        self.lean = DecodeStep.for_model(model) if lean_steps else None
        self.device = model.device
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.cache = DynamicCache(config=model.config)

    def add_rows(self, n: int) -> None:
        """Append ``n`` empty rows (new requests): their history is all holes until they are fed."""
        self.mask = torch.cat([self.mask, self.mask.new_zeros((n, self.mask.shape[1]))])
        if self.cache.get_seq_length() > 0:
            self._rebuild(lambda t: torch.cat([t, t.new_zeros((n, *t.shape[1:]))]))

    def unfed_rows(self) -> list[int]:
        """Rows whose history is all holes: nothing has been fed to them yet."""
        if self.mask.shape[1] == 0:
            return list(range(self.mask.shape[0]))
        return torch.nonzero(~self.mask.bool().any(1)).flatten().tolist()

    def reusable(self, seq: Sequence[int]) -> int:
        """How many of ``seq``'s first tokens :meth:`fill_rows` would copy from the prefix store instead of feeding
        (it feeds at least one)."""
        return self.prefixes.match(seq, len(seq) - 1) if self.prefixes is not None and len(seq) > 1 else 0

    def fill_rows(self, rows: Sequence[int], seqs: Sequence[Sequence[int]]) -> list[int]:
        """Feed ``seqs[i]`` to the unfed row ``rows[i]``, in forwards over these rows alone.

        A prompt joining a running batch: fed as part of a round's forward, a prompt of L tokens would cost every
        row L positions. The sequences go in groups of similar length to feed (:func:`length_groups`), placed flush
        with the cache's end (the rows' history before them stays holes), so the cache grows only where a sequence
        is longer than the cache already is. With a prefix store, the longest prefix it holds is copied, not fed.
        Returns how many tokens of each sequence were copied."""
        skip = [self.reusable(s) for s in seqs]
        for group in length_groups([len(s) - n for s, n in zip(seqs, skip)]):
            self._fill_group([rows[j] for j in group], [seqs[j] for j in group], [skip[j] for j in group])
        return skip

    @torch.inference_mode()
    def _fill_group(self, rows: Sequence[int], seqs: Sequence[Sequence[int]], skip: Sequence[int]) -> None:
        if max((len(s) for s in seqs), default=0) == 0:
            return
        fresh = ModelRunner(self.model)  # the group's own pass, into a cache of its own
        fresh.add_rows(len(seqs))
        if any(skip):
            fresh._start_from_prefixes([self.prefixes.get(s, n) if n else None for s, n in zip(seqs, skip)], skip)
        fresh.forward(*left_pad([s[n:] for s, n in zip(seqs, skip)], self.device))
        if self.prefixes is not None:
            for i, s in enumerate(seqs):
                # the row's tokens, in order (the prefix, then the rest); indexing by them copies
                slots = fresh.mask[i].nonzero().flatten()
                self.prefixes.put(s, [(layer.keys[i][:, slots], layer.values[i][:, slots]) for layer in fresh.cache.layers])
        width = fresh.mask.shape[1]
        if self.mask.shape[1] < width:  # holes in front of every row, so the new sequences fit
            grow = width - self.mask.shape[1]
            self.mask = torch.cat([self.mask.new_zeros((self.mask.shape[0], grow)), self.mask], 1)
            if self.cache.get_seq_length() > 0:
                self._rebuild(lambda t: torch.cat([t.new_zeros((*t.shape[:2], grow, t.shape[3])), t], 2))
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.mask[index, -width:] = fresh.mask
        if self.cache.get_seq_length() == 0:  # nothing fed before: holes everywhere, shaped like the new cache
            b, length = self.mask.shape
            self.cache = DynamicCache(
                [tuple(t.new_zeros((b, t.shape[1], length, t.shape[3])) for t in (layer.keys, layer.values))
                 for layer in fresh.cache.layers], config=self.model.config)
        for layer, new in zip(self.cache.layers, fresh.cache.layers):
            layer.keys[index, :, -width:] = new.keys
            layer.values[index, :, -width:] = new.values

    def _start_from_prefixes(self, stored: list[list[tuple[torch.Tensor, torch.Tensor]] | None], lengths: list[int]) -> None:
        """Begin this (empty) runner's rows with stored prefixes (row i: ``lengths[i]`` tokens, right-aligned;
        holes in front of shorter ones, and the whole row for a row without one)."""
        width = max(lengths)
        like = next(layers for layers in stored if layers is not None)
        self.mask = self.mask.new_zeros((len(lengths), width))
        data = []
        for li, (k0, v0) in enumerate(like):
            keys = k0.new_zeros((len(lengths), k0.shape[0], width, k0.shape[2]))
            values = v0.new_zeros((len(lengths), v0.shape[0], width, v0.shape[2]))
            for i, layers in enumerate(stored):
                if layers is not None:
                    keys[i, :, width - lengths[i]:], values[i, :, width - lengths[i]:] = layers[li]
            data.append((keys, values))
        for i, n in enumerate(lengths):
            self.mask[i, width - n:] = 1
        self.cache = DynamicCache(data, config=self.model.config)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, keep: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Append ``tokens`` [b, n] (``valid`` marks real ones) and return logits for the last ``keep``
        positions [b, keep, V] (fp32) and, if wanted, the last hidden states there [b, keep, H]."""
        positions = self._append(tokens, valid)
        if self.lean is not None and tokens.shape[1] <= LEAN_MAX_TOKENS:
            logits, hidden = self.lean(tokens, self.mask, positions, self.cache, keep)
            return logits, hidden if self.want_hidden else None
        # An all-ones mask lets attention take its unmasked fast path.
        attention_mask = None if bool(self.mask.all()) else self.mask
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=keep,
            output_hidden_states=self.want_hidden,
        )
        hidden = out.hidden_states[-1][:, -keep:] if self.want_hidden else None
        return out.logits.float(), hidden

    def _append(self, tokens: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Add the block's slots to the mask (``valid`` marks real tokens; None: all); returns their positions
        [b, n], counted over each row's real slots."""
        if valid is None:
            valid = torch.ones_like(tokens)
        self.mask = torch.cat([self.mask, valid.long()], dim=1)
        return (self.mask.cumsum(1) - 1).clamp_min(0)[:, -tokens.shape[1] :]

    def keep_tail(self, n_new: int, keep: torch.Tensor) -> None:
        """Of the last ``n_new`` slots, row i keeps its first ``keep[i]``; the rest become holes.

        Trailing slots that are holes in every row are removed from the cache."""
        if n_new == 0:
            return
        idx = torch.arange(n_new, device=self.device)[None, :]
        tail = self.mask[:, -n_new:] * (idx < keep[:, None]).long()
        self.mask = torch.cat([self.mask[:, :-n_new], tail], dim=1)
        drop = n_new - int(keep.max()) if keep.numel() else n_new
        if drop > 0:
            self._crop(drop)
            self.mask = self.mask[:, :-drop]

    def _crop(self, slots: int) -> None:
        self.cache.crop(-slots)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (finished requests leave the batch), then drop leading all-hole columns."""
        if rows.numel() == 0:  # nobody left: start from an empty cache
            self.mask = self.mask[:0, :0]
            self.cache = DynamicCache(config=self.model.config)
            return
        self.mask = self.mask[rows]
        if self.cache.get_seq_length() > 0:
            self.cache.batch_select_indices(rows)
        if self.mask.shape[1] == 0:
            return
        first = int(self.mask.any(0).long().argmax())
        if first > 0:
            self.mask = self.mask[:, first:]
            self._rebuild(lambda t: t[..., first:, :])

    def _rebuild(self, edit) -> None:
        """A new cache holding ``edit(keys)`` / ``edit(values)`` of every layer ([batch, heads, length, dim]):
        DynamicCache can crop its end and select rows, but not grow the batch or drop leading positions."""
        data = [(edit(layer.keys), edit(layer.values)) for layer in self.cache.layers]
        self.cache = DynamicCache(data, config=self.model.config)
