"""State for adaptive policies that is kept per request or shared across requests.

``scope = "request"``: one slot per request, fresh whenever a request takes it
(``begin``). ``scope = "shared"``: a single slot that every request reads and
updates, kept on the policy instance for its lifetime (so a method object
reused for many prompts keeps learning).
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
        self.values: dict[str, torch.Tensor] = {
            k: torch.full((1,), float(v), dtype=torch.float64) for k, v in self.initial.items()
        }

    def begin(self, slots: torch.Tensor) -> None:
        """Fresh values for requests taking ``slots`` (kept when shared); the state moves to ``slots``' device here,
        so that ``state[name][state.index(slots)]`` indexes a tensor already on it."""
        self._move_to(slots.device)
        if self.scope == "shared" or slots.numel() == 0:
            return
        size = int(slots.max()) + 1
        for k, v in self.values.items():
            if v.shape[0] < size:
                v = torch.cat([v, v.new_zeros(size - v.shape[0])])
            v[slots.long()] = float(self.initial[k])
            self.values[k] = v

    def index(self, slots: torch.Tensor) -> torch.Tensor:
        """Where each request's values are (its slot, or 0 when shared); moves the state to ``slots``' device."""
        self._move_to(slots.device)
        return slots.long() if self.scope == "request" else torch.zeros_like(slots, dtype=torch.long)

    def _move_to(self, device: torch.device) -> None:
        if next(iter(self.values.values())).device != device:
            self.values = {k: v.to(device) for k, v in self.values.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]

    def set(self, name: str, index: torch.Tensor, values: torch.Tensor) -> None:
        """values[name][index] = values."""
        self.values[name][index] = values.to(torch.float64)

    def add(self, name: str, index: torch.Tensor, amounts: torch.Tensor) -> None:
        """values[name][index] += amounts, summing repeated indices (a shared slot gets every row's amount)."""
        self.values[name].index_add_(0, index, amounts.to(torch.float64))
