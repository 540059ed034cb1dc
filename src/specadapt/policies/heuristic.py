"""The +2/-1 heuristic (Hugging Face's "heuristic" schedule).

After each round: K += 2 if every drafted token was accepted, else K = max(1, K - 1).
K is kept per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods import register_method
from ._scoped import ScopedState
from .base import DraftLengthPolicy, RoundOutcome, check_draft_length


@register_method("heuristic", summary="K += 2 when all drafts are accepted, else K -= 1 (per request)")
@dataclass
class Heuristic(DraftLengthPolicy):
    initial_k: int = 5
    max_k: int = 20

    def __post_init__(self) -> None:
        check_draft_length("max_k", self.max_k)
        if not 1 <= self.initial_k <= self.max_k:
            raise ValueError("need 1 <= initial_k <= max_k")
        self._k = ScopedState("request", {"k": self.initial_k})

    def begin(self, slots: torch.Tensor) -> None:
        self._k.begin(slots)

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        index = self._k.index(slots)  # first: it moves the state to slots' device
        return self._k["k"][index].long()

    def observe(self, outcome: RoundOutcome) -> None:
        index = self._k.index(outcome.slots)
        all_accepted = (outcome.accepted == outcome.drafted) & (outcome.drafted > 0)
        k = self._k["k"][index]
        self._k["k"][index] = torch.where(all_accepted, k + 2, (k - 1).clamp_min(1)).clamp_max(self.max_k)
