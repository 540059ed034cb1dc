"""The draft-length interface: *how many tokens to draft*.

A policy is asked once per round for an upper bound (``max_length``), then after
every drafted token whether to stop (``should_stop``), and afterwards it is told
what the target accepted (``observe``). Everything is batched: ``rows`` holds the
indices, in the original batch, of the requests still running, so a policy can
keep per-request state in tensors of the original batch size.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class DraftStep:
    """What the policy sees right after the draft proposed token ``position`` of a round."""

    position: int  # 1-based index of the token just drafted in this round
    tokens: torch.Tensor  # [b] the drafted tokens
    probs: torch.Tensor  # [b, V] draft distribution the token came from (softmax of raw logits when greedy)
    hidden: torch.Tensor | None  # [b, H] draft's last hidden state at the previous input position (one-step lag)
    rows: torch.Tensor  # [b] indices of these requests in the original batch
    drafting: torch.Tensor  # [b] bool: rows that had not stopped before this step


@dataclass
class RoundOutcome:
    """What verification decided for one round, given to ``observe``."""

    rows: torch.Tensor  # [b]
    drafted: torch.Tensor  # [b] number of draft tokens each row proposed
    accepted: torch.Tensor  # [b] number of those the target accepted
    draft_tokens: torch.Tensor  # [b, K]
    draft_probs: torch.Tensor | None  # [b, K, V] soft draft distributions (None if K == 0)
    target_probs: torch.Tensor | None  # [b, K + 1, V] soft target distributions (None if not computed)
    accepted_mask: torch.Tensor  # [b, K] bool, per-token decisions (False past the first rejection)


class DraftLengthPolicy(ABC):
    """Base class. Subclasses are dataclasses whose fields are their settings.

    ``keeps_state`` says whether the policy learns across rounds; ``scope``
    (where present) says whether that state is reset per request or shared.
    """

    name: ClassVar[str]
    keeps_state: ClassVar[bool] = False
    needs_hidden: ClassVar[bool] = False
    needs_target_probs: ClassVar[bool] = False

    def reset(self, batch_size: int) -> None:
        """Called at the start of each ``generate`` call with the batch size."""

    def max_length(self, rows: torch.Tensor) -> torch.Tensor:
        """Upper bound on this round's draft length for each row ([b] long)."""
        raise NotImplementedError

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        """After each drafted token: [b] bool, True to stop drafting (the token stays in the block)."""
        return torch.zeros_like(step.rows, dtype=torch.bool)

    def observe(self, outcome: RoundOutcome) -> None:
        """Told after verification how many tokens each row got accepted."""

    def settings(self) -> dict:
        """The policy's settings, recorded with every result."""
        from dataclasses import asdict, is_dataclass

        return asdict(self) if is_dataclass(self) else {}
