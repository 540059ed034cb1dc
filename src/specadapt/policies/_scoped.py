"""State for adaptive policies that is kept per request or shared across requests.

``scope = "request"``: one slot per row of the batch, fresh at every ``generate``
call (``reset``). ``scope = "shared"``: a single slot that every row reads and
updates, kept on the policy instance across ``generate`` calls (so a method
object reused for many prompts keeps learning).
"""

from __future__ import annotations

import torch

SCOPES = ("request", "shared")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")


class ScopedState:
    """Named float64 tensors with one slot per request (scope "request") or a single slot (scope "shared")."""

    def __init__(self, scope: str, initial: dict[str, float]) -> None:
        check_scope(scope)
        self.scope = scope
        self.initial = dict(initial)
        self.values: dict[str, torch.Tensor] = {}

    def reset(self, batch_size: int) -> None:
        if self.scope == "request" or not self.values:
            slots = batch_size if self.scope == "request" else 1
            device = next(iter(self.values.values())).device if self.values else torch.device("cpu")
            self.values = {
                k: torch.full((slots,), float(v), dtype=torch.float64, device=device) for k, v in self.initial.items()
            }

    def slots(self, rows: torch.Tensor) -> torch.Tensor:
        """Slot index of each row (the row itself, or 0 when shared); moves the state to ``rows``' device."""
        if not self.values:
            raise RuntimeError("policy used before reset(batch_size)")
        some = next(iter(self.values.values()))
        if some.device != rows.device:
            self.values = {k: v.to(rows.device) for k, v in self.values.items()}
        return rows.long() if self.scope == "request" else torch.zeros_like(rows, dtype=torch.long)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.values[name] = value

    def add(self, name: str, slots: torch.Tensor, amounts: torch.Tensor) -> None:
        """values[name][slots] += amounts, summing repeated slots (a shared slot gets every row's amount)."""
        self.values[name].index_add_(0, slots, amounts.to(torch.float64))
