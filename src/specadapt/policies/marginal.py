"""Marginal-value stopping: draft one more token only while it is expected to pay for itself.

Speculative decoding maximises a long-run rate: tokens per unit of cost, a round costing one target pass plus
``cost`` per drafted token (a draft step and the extra verified position, in target passes). By the standard
argument for such renewal processes, a round should go on drafting while the next token's expected yield
exceeds what its cost buys at the rate the request already achieves:

    draft token k + 1  iff  S_k * a_next  >=  cost * R

- ``S_k``: the probability that tokens 1..k are all accepted, the product of their predicted acceptances;
- ``a_next``: the predicted acceptance of the token not yet drafted, taken as the last token's (a draft's
  confidence runs in stretches);
- ``R``: the request's recent tokens per unit cost (accepted + 1 per round, over 1 + cost * drafted), so an
  easy request (code) drafts on at a lower survival than a hard one (chat), and ``cost`` sets how much a
  token must be worth: a cheap draft (low ``cost``) drafts longer.

A token's acceptance is predicted from the draft's probability of it, calibrated online: acceptance counts per
probability bin (shared by all requests, older rounds fading), starting from the draft's own probability.
Verification is the standard lossless rule, so the method is lossless.

``cost=auto`` measures the cost instead of taking it as a setting: the engine hands each round's seconds to the
policy, which fits round seconds = a + b * K over recent rounds (K: the round's draft steps) and drafts with
cost = b / a. That is the fit the fixed default came from (a timed tune run on one CPU), made online, so the
rule follows the machine it runs on: on a CPU without native bf16 a draft-model token measured two to six times
the AVX512 CPU's 0.15 (``BENCHMARKS.md``, "A measured price per draft token"). One term prices both kinds of
drafted token, so with ``+lookup`` a stretch of looked-up tokens (no draft forward) lowers the price for as long
as its rounds stay in the window. Draft lengths then depend on measured time, so two runs
may draft differently; the output is the target's all the same (greedy: token-identical in float32; in bf16 a
near-tie can fall either way with the verification's width, as for any change of draft length).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch

from ..methods import register_method
from ._scoped import ScopedState
from .base import DraftLengthPolicy, DraftStep, RoundOutcome, check_draft_length

BINS = 20  # calibration bins over the draft's probability of its token
PRIOR = 2.0  # pseudo-counts per bin at the draft's own probability (the bin's centre)
TABLE_DECAY = 0.995  # per round: the calibration follows the recent ~200 rounds
RATE_DECAY = 0.8  # per round of a request: its rate follows its recent ~5 rounds
COST_WINDOW = 48  # cost=auto: the fit reads the last 48 rounds
COST_SPIKE = 1.5  # cost=auto: a round this many times its estimate is a spike, left out of the fit
COST_PRIOR = 2.0  # cost=auto: the prior cost's weight, as two rounds one draft step apart (data soon outweigh it)
COST_RANGE = (0.01, 1.0)  # cost=auto: a fitted cost outside this is noise (a drafted token is never dearer than a round)
AUTO_PRIOR = 0.15  # cost=auto: the cost until rounds have been measured (the default pair on AVX512, as fitted)


@register_method("marginal",
                 summary="draft while the next token's expected yield exceeds its cost at the request's rate (lossless)")
@dataclass
class MarginalStop(DraftLengthPolicy):
    # A drafted token's cost in target passes (draft step + one more verified position). 0.15: the default pair on
    # CPU with the int4 draft, fitted on tune prompts (benchmarks/results/tune_marginal/CHOICES.md). "auto": measured
    # online from the rounds' seconds (see the module docstring).
    cost: float | str = 0.15
    max_k: int = 32

    def __post_init__(self) -> None:
        self._fit = CostFit(AUTO_PRIOR) if self.cost == "auto" else None
        if self._fit is None:
            given = self.cost
            try:
                self.cost = float(given)
            except (TypeError, ValueError):
                self.cost = math.nan  # fails the range check below, with the value as given
            if not 0.0 < self.cost <= 1.0:
                raise ValueError(f"cost must be a number in (0, 1] (a drafted token's cost in target passes) or "
                                 f"'auto' (measured), got {given!r}")
        check_draft_length("max_k", self.max_k)
        centres = (torch.arange(BINS, dtype=torch.float64) + 0.5) / BINS
        self._tried = torch.zeros(BINS, dtype=torch.float64)
        self._accepted = torch.zeros(BINS, dtype=torch.float64)
        self._prior = centres * PRIOR
        self._rate = ScopedState("request", {"tokens": 1.0, "cost": 1.0})  # start at the target-only rate
        self._survival: torch.Tensor | None = None  # [b] S_k of the round being drafted

    @property
    def reads_cost(self) -> bool:
        return self._fit is not None

    @property
    def token_cost(self) -> float:
        """A drafted token's cost in target passes: the setting, or with ``cost=auto`` the current fit."""
        return self._fit.cost() if self._fit is not None else self.cost  # type: ignore[return-value]

    def settings(self) -> dict:
        return {**super().settings(), **({"measured_cost": self.token_cost} if self._fit is not None else {})}

    def begin(self, slots: torch.Tensor) -> None:
        self._rate.begin(slots)

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.full_like(slots, self.max_k)

    def _bins(self, token_probs: torch.Tensor) -> torch.Tensor:
        """Each probability's calibration bin (and the table moved to the probabilities' device)."""
        if self._tried.device != token_probs.device:
            device = token_probs.device
            self._tried, self._accepted, self._prior = (t.to(device) for t in (self._tried, self._accepted, self._prior))
        return (token_probs.double() * BINS).long().clamp(0, BINS - 1)

    def acceptance(self, token_probs: torch.Tensor) -> torch.Tensor:
        """Predicted acceptance of tokens the draft gave these probabilities (float64, same shape)."""
        bins = self._bins(token_probs)
        return (self._accepted[bins] + self._prior[bins]) / (self._tried[bins] + PRIOR)

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        a = self.acceptance(step.token_probs)
        self._survival = a if step.position == 1 or self._survival is None else self._survival * a
        index = self._rate.index(step.slots)
        rate = self._rate["tokens"][index] / self._rate["cost"][index]
        return self._survival * a < self.token_cost * rate  # a: the next token's acceptance, predicted as this one's

    def observe(self, outcome: RoundOutcome) -> None:
        K = outcome.block.K
        if K == 0:
            return
        probs = torch.stack([s.token_probs for s in outcome.steps], 1)  # [b, K]
        n, m = outcome.accepted, outcome.drafted
        position = torch.arange(K, device=n.device)[None, :]
        judged = position < torch.minimum(m, n + 1)[:, None]  # drafted, and every token before it accepted
        accepted = position < n[:, None]
        bins = self._bins(probs)
        for table, counted in ((self._tried, judged), (self._accepted, accepted)):  # weights, not a mask: no host sync
            table.mul_(TABLE_DECAY).index_add_(0, bins.flatten(), counted.flatten().double())
        if self._fit is not None and outcome.cost is not None and outcome.cost.target_width == 1:  # not a prompt's round
            self._fit.add(K, outcome.cost.draft_s + outcome.cost.target_s)
        index = self._rate.index(outcome.slots)
        for name, amount in (("tokens", n + 1), ("cost", 1 + self.token_cost * m)):
            values = self._rate[name]
            values[index] = RATE_DECAY * values[index] + amount.double()


class CostFit:
    """Round seconds = a + b * K (K: the round's draft steps), least squares over the last ``COST_WINDOW`` rounds,
    shrunk towards ``b = prior * a`` with the weight of ``COST_PRIOR`` rounds one step apart; ``cost() = b / a``,
    a drafted token's cost in target passes. Without spread in K the data cannot tell a from b, and the prior
    decides; the more K varies, the more the data do.

    A round's time is noisy upwards only (another process, a kernel compiled on a width's first use: seconds
    where a round takes a fraction of one), so rounds more than ``COST_SPIKE`` times the first fit's estimate
    are left out of a second fit, which is the one used."""

    def __init__(self, prior: float) -> None:
        self.prior = prior
        self.rounds: deque[tuple[int, float]] = deque(maxlen=COST_WINDOW)  # (K, seconds)
        self._cost = prior

    def add(self, K: int, seconds: float) -> None:
        self.rounds.append((K, seconds))
        a, b = self.line(self.rounds)
        kept = [(k, y) for k, y in self.rounds if y <= COST_SPIKE * (a + b * k)]
        a, b = self.line(kept or self.rounds)
        self._cost = self.prior if a <= 0 else min(max(b / a, COST_RANGE[0]), COST_RANGE[1])

    def cost(self) -> float:
        return self._cost

    def line(self, rounds: Sequence[tuple[int, float]]) -> tuple[float, float]:
        """Intercept a and slope b of (K, seconds) ``rounds``, with the prior as pseudo-data: b = prior * a, solved
        with the normal equation."""
        n = len(rounds)
        mk, my = sum(k for k, _ in rounds) / n, sum(y for _, y in rounds) / n
        sxx = sum((k - mk) ** 2 for k, _ in rounds)
        sxy = sum((k - mk) * (y - my) for k, y in rounds)
        b = (sxy + COST_PRIOR * self.prior * my) / (sxx + COST_PRIOR * (1 + self.prior * mk))
        return my - b * mk, b
