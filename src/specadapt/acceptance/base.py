"""The acceptance interface: *what to accept*.

An acceptance rule is a batched function of the drafted tokens, the draft and
target distributions and per-request random generators. It returns how many
draft tokens each row accepts and the token emitted after them (a correction
on rejection, a bonus token when everything was accepted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import ClassVar

import torch

from ..sampling import SamplingParams


@dataclass
class Proposal:
    """One round's drafted tokens and what verification computed for them."""

    draft_tokens: torch.Tensor  # [b, K] (K may be 0); entries past a row's length are padding
    draft_lens: torch.Tensor  # [b] long, tokens each row actually drafted (<= K)
    draft_probs: torch.Tensor | None  # [b, K, V] q each token was drafted from (softmax of raw logits when greedy; None if K == 0)
    target_logits: torch.Tensor  # [b, K + 1, V] raw target logits
    target_probs: torch.Tensor | None  # [b, K + 1, V] processed p (None when greedy)
    params: SamplingParams
    generators: list[torch.Generator]  # one per row
    slots: torch.Tensor | None = None  # [b] the requests' state slots (for rules that keep per-request statistics)


@dataclass
class Verdict:
    num_accepted: torch.Tensor  # [b] long
    next_token: torch.Tensor  # [b] long, emitted after the accepted tokens
    accepted_mask: torch.Tensor  # [b, K] bool
    # Per-token values the rule computed anyway ([b, K] each, e.g. AdaSD's "js_distance"), handed to the
    # policy's observe() so it need not compute them again.
    token_scores: dict[str, torch.Tensor] = field(default_factory=dict)


class AcceptanceRule(ABC):
    name: ClassVar[str]
    lossless: ClassVar[bool]
    reads_draft_probs: ClassVar[bool] = True  # False: the loop need not stack the round's [b, K, V] draft probs

    @abstractmethod
    def __call__(self, proposal: Proposal) -> Verdict: ...

    def settings(self) -> dict:
        return asdict(self) if is_dataclass(self) else {}


def first_rejection(accept: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Given per-token decisions [b, K] and row lengths [b], return (accepted count, mask of the accepted prefix)."""
    K = accept.shape[1]
    in_range = torch.arange(K, device=accept.device)[None, :] < lens[:, None]
    prefix = (accept & in_range).long().cumprod(dim=1).bool()
    return prefix.sum(dim=1), prefix
