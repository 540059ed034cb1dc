"""Fixed draft length K (standard speculative decoding) and target-only decoding (K = 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods import register_method
from .base import DraftLengthPolicy, check_draft_length


@register_method("fixed", summary="draft exactly k tokens per round (standard speculative decoding)")
@dataclass
class FixedLength(DraftLengthPolicy):
    k: int = 4

    def __post_init__(self) -> None:
        if self.k == 0:
            raise ValueError("k must be >= 1 (use the 'autoregressive' method for target-only decoding)")
        check_draft_length("k", self.k)

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.full_like(slots, self.k)


@register_method("autoregressive", needs_draft=False, summary="target-only decoding through the same loop (the baseline)")
@dataclass
class Autoregressive(DraftLengthPolicy):
    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(slots)
