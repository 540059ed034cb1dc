"""Confidence stopping: stop drafting once the draft's probability of its own token is low."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods import register_method
from .base import DraftLengthPolicy, DraftStep, check_draft_length


@register_method("confidence", summary="stop when the draft's probability of its token < threshold")
@dataclass
class ConfidenceStop(DraftLengthPolicy):
    threshold: float = 0.4
    max_k: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        check_draft_length("max_k", self.max_k)

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.full_like(slots, self.max_k)

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        return step.token_probs < self.threshold
