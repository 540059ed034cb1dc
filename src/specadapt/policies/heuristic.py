"""The +2/-1 heuristic (Hugging Face's "heuristic" schedule).

After each round: K += 2 if every drafted token was accepted, else K = max(1, K - 1).
K is kept per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods import register_method
from .base import DraftLengthPolicy, RoundOutcome


@register_method("heuristic", summary="K += 2 when all drafts are accepted, else K -= 1 (per request)")
@dataclass
class Heuristic(DraftLengthPolicy):
    initial_k: int = 5
    max_k: int = 20

    name = "heuristic"
    keeps_state = True

    def __post_init__(self) -> None:
        if not 1 <= self.initial_k <= self.max_k:
            raise ValueError("need 1 <= initial_k <= max_k")
        self._k = torch.empty(0, dtype=torch.long)

    def reset(self, batch_size: int) -> None:
        self._k = torch.full((batch_size,), self.initial_k, dtype=torch.long)

    def max_length(self, rows: torch.Tensor) -> torch.Tensor:
        return self._k.to(rows.device)[rows]

    def observe(self, outcome: RoundOutcome) -> None:
        rows = outcome.rows.cpu()
        all_accepted = (outcome.accepted == outcome.drafted).cpu() & (outcome.drafted > 0).cpu()
        k = self._k[rows]
        self._k[rows] = torch.where(all_accepted, k + 2, (k - 1).clamp_min(1)).clamp_max(self.max_k)
