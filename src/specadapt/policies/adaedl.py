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
from .base import DraftLengthPolicy, DraftStep, RoundOutcome, check_draft_length


def acceptance_bound(probs: torch.Tensor, gamma: float) -> torch.Tensor:
    """AdaEDL's lower bound 1 - sqrt(gamma * H(q)) on the acceptance probability, over the last dim."""
    return bound_of_entropy(entropy(probs.float()), gamma)


def bound_of_entropy(h: torch.Tensor, gamma: float) -> torch.Tensor:
    return 1.0 - (gamma * h).clamp_min(0.0).sqrt()


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
    max_k: int = 32  # chosen with the int4 draft on tune prompts (benchmarks/results/tune_int4/replay.json); was 16
    scope: str = "request"

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise ValueError("gamma must be > 0")
        if not 0.0 <= self.lr <= 1.0:
            raise ValueError("lr must be in [0, 1]")
        if not self.lambda_min <= self.lambda_init <= self.lambda_max:
            raise ValueError("need lambda_min <= lambda_init <= lambda_max")
        check_draft_length("max_k", self.max_k)
        check_scope(self.scope)
        self._state = ScopedState(self.scope, {"lambda": self.lambda_init})

    def begin(self, slots: torch.Tensor) -> None:
        self._state.begin(slots)

    def threshold(self, slots: torch.Tensor) -> torch.Tensor:
        """Current lambda per row (it changes only in ``observe``, so it is the value the round stops by)."""
        index = self._state.index(slots)  # first: it moves the state to slots' device
        return self._state["lambda"][index].clone()

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.full_like(slots, self.max_k)

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        return bound_of_entropy(step.entropy, self.gamma).double() < self.threshold(step.slots)

    def observe(self, outcome: RoundOutcome) -> None:
        K = outcome.block.K
        if K == 0:
            return
        bounds = torch.stack([bound_of_entropy(s.entropy, self.gamma) for s in outcome.steps], 1).double()  # [b, K]
        lam_round = self.threshold(outcome.slots)  # the lambda the stopping decisions used
        n, m = outcome.accepted, outcome.drafted
        rejected = n < m
        last = (m - 1).clamp_min(0)
        b_rej = bounds.gather(1, n.clamp_max(K - 1)[:, None]).squeeze(1)
        b_last = bounds.gather(1, last[:, None]).squeeze(1)
        late = rejected & (b_rej >= lam_round)
        early = ~rejected & (m > 0) & (b_last < lam_round)
        target = torch.where(late, b_rej, b_last).clamp(self.lambda_min, self.lambda_max)
        update = late | early
        index = self._state.index(outcome.slots)[update]
        target = target[update]
        lam = self._state["lambda"]
        if self.scope == "request":  # one slot per row
            lam[index] = lam[index] + self.lr * (target - lam[index])
        elif target.numel():  # the rows update the shared lambda one after another, in batch order
            steps = target.numel()
            decay = (1.0 - self.lr) ** torch.arange(steps - 1, -1, -1, device=target.device, dtype=torch.float64)
            lam[0] = (1.0 - self.lr) ** steps * lam[0] + (self.lr * decay * target).sum()
