"""AdaEDL (arXiv 2410.18351): early draft stopping from an entropy-based lower bound on acceptance.

After each drafted token k the policy computes the bound

    beta_k = 1 - sqrt(gamma * H(q_k))        (H in nats, gamma = 0.2)

on the probability that the token is accepted, and stops drafting when
beta_k < lambda (the token that triggered the stop stays in the block).
Verification is the standard lossless rule, so the method is lossless.

The paper adapts lambda online but the exact rule is unconfirmed (methods.md
section 4, [U]). This implementation uses a mistake-driven moving average that
moves lambda toward the bound value that would have separated the round's
accepted tokens from its rejected one. After each round, per request:

- "too late": the first rejected token r had a bound beta_r >= lambda (the
  bound did not flag it, so drafting went on past it unless a cap ended the
  round): ``lambda <- lambda + lr * (beta_r - lambda)`` (moves up);
- "too early": every drafted token was accepted and the bound of the last one
  beta_m was < lambda (the bound ended the round): ``lambda <- lambda + lr *
  (beta_m - lambda)`` (moves down);
- otherwise (the bound stopped at the rejected token, or drafting ended at
  max_k, EOS or the token budget with everything accepted) lambda is unchanged.

Here lambda is the value the round's stopping decisions used, and the target
beta is first clipped to [lambda_min, lambda_max], so lambda stays in that
range. The fixed point balances the two kinds of mistakes, weighted by how far
the bound was on the wrong side of lambda. With scope "shared" the rows of a
batch update the single lambda one after another in batch order within a
round: ``lambda <- (1 - lr)^n lambda + sum_i lr (1 - lr)^(n - i) beta_i``.

Entropies come from the distribution each token was drafted from: the
processed q when sampling, the softmax of the raw draft logits when greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods import register_method
from ..sampling import entropy
from ._scoped import ScopedState, check_scope
from .base import DraftLengthPolicy, DraftStep, RoundOutcome


def acceptance_bound(probs: torch.Tensor, gamma: float) -> torch.Tensor:
    """AdaEDL's lower bound 1 - sqrt(gamma * H(q)) on the acceptance probability, over the last dim."""
    return 1.0 - (gamma * entropy(probs.float())).clamp_min(0.0).sqrt()


@register_method(
    "adaedl",
    summary="AdaEDL: stop when the entropy bound 1 - sqrt(gamma*H(q)) < lambda, lambda adapted online (lossless)",
)
@dataclass
class AdaEDL(DraftLengthPolicy):
    lambda_init: float = 0.5
    gamma: float = 0.2
    lr: float = 0.1
    lambda_min: float = 0.0
    lambda_max: float = 1.0
    max_k: int = 16
    scope: str = "request"

    name = "adaedl"
    keeps_state = True

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise ValueError("gamma must be > 0")
        if not 0.0 <= self.lr <= 1.0:
            raise ValueError("lr must be in [0, 1]")
        if not self.lambda_min <= self.lambda_init <= self.lambda_max:
            raise ValueError("need lambda_min <= lambda_init <= lambda_max")
        if self.max_k < 1:
            raise ValueError("max_k must be >= 1")
        check_scope(self.scope)
        self._state = ScopedState(self.scope, {"lambda": self.lambda_init})
        self._lambda_round = torch.empty(0)
        self._bounds: list[torch.Tensor] = []

    def reset(self, batch_size: int) -> None:
        self._state.reset(batch_size)
        self._bounds = []

    def threshold(self, rows: torch.Tensor) -> torch.Tensor:
        """Current lambda per row."""
        slots = self._state.slots(rows)  # first: it moves the state to rows' device
        return self._state["lambda"][slots].clone()

    def max_length(self, rows: torch.Tensor) -> torch.Tensor:
        self._bounds = []
        self._lambda_round = self.threshold(rows)
        return torch.full_like(rows, self.max_k)

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        bound = acceptance_bound(step.probs, self.gamma)
        self._bounds.append(bound)
        return bound.double() < self._lambda_round

    def observe(self, outcome: RoundOutcome) -> None:
        K = outcome.draft_tokens.shape[1]
        if K == 0:
            return
        if len(self._bounds) != K:
            raise RuntimeError("adaedl: observe() without the round's should_stop() calls")
        bounds = torch.stack(self._bounds, 1).double()  # [b, K]
        lam_round = self._lambda_round  # the lambda the stopping decisions used
        n, m = outcome.accepted, outcome.drafted
        rejected = n < m
        last = (m - 1).clamp_min(0)
        b_rej = bounds.gather(1, n.clamp_max(K - 1)[:, None]).squeeze(1)
        b_last = bounds.gather(1, last[:, None]).squeeze(1)
        late = rejected & (b_rej >= lam_round)
        early = ~rejected & (m > 0) & (b_last < lam_round)
        target = torch.where(late, b_rej, b_last).clamp(self.lambda_min, self.lambda_max)
        update = late | early
        slots = self._state.slots(outcome.rows)[update]
        target = target[update]
        lam = self._state["lambda"]
        if self.scope == "request":  # one slot per row
            lam[slots] = lam[slots] + self.lr * (target - lam[slots])
        elif target.numel():  # the rows update the shared lambda one after another, in batch order
            steps = target.numel()
            decay = (1.0 - self.lr) ** torch.arange(steps - 1, -1, -1, device=target.device, dtype=torch.float64)
            lam[0] = (1.0 - self.lr) ** steps * lam[0] + (self.lr * decay * target).sum()
