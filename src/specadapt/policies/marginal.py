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
policy, which fits them by least squares over recent rounds and prices a drafted token from the fit. With
``terms=3`` (the default) round seconds = a + b * F + d * K + c * C, where F is the round's draft-model forwards,
K its drafted tokens (the target verifies K + 1 positions) and C the tokens the draft model caught up on (the
accepted tokens it had not seen, looked-up ones above all). A token the draft model proposed costs
(b + d) / a target passes; a looked-up token costs no forward, but its verified position and its later catch-up,
(d + c) / a. The rule prices the next token as the kind of the last one (lookups come in stretches). With
``terms=1`` the fit is round seconds = a + b * K and every drafted token costs b / a, as first shipped: on a CPU
without native bf16 a draft-model token measured two to six times the AVX512 CPU's 0.15, and a stretch of
looked-up tokens pulled that one price down (to as little as 0.01) for as long as its rounds stayed in the
window, and three terms drafted faster (``BENCHMARKS.md``, "A measured price per draft token" and "Draft-model and
looked-up tokens priced apart"). Draft lengths depend on measured time, so two runs may
draft differently; the output is the target's all the same (greedy: token-identical in float32; in bf16 a
near-tie can fall either way with the verification's width, as for any change of draft length).
"""

from __future__ import annotations

import math
import operator
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
AUTO_PRIOR = 0.15  # cost=auto, terms=1: the cost until rounds have been measured (the default pair on AVX512, as fitted)
# cost=auto, terms=3: each term's prior, in target passes. A draft forward 0.13 and a verified position 0.02 (the
# default pair on AVX512: the int4 draft's step 40 ms, the target's pass 302 ms, and 285 ms when it verifies 8, so
# width is nearly free), adding up to AUTO_PRIOR; a caught-up token 0.01 (a wide forward of the draft: cheap per token).
TERM_PRIORS = (0.13, 0.02, 0.01)
# cost=auto, per `terms`: the fit's priors, and the weights of its terms (terms=1: K; terms=3: F, K, C; see
# round_terms) that price a draft-model token and a looked-up one.
PRICING = {1: ((AUTO_PRIOR,), (1,), (1,)), 3: (TERM_PRIORS, (1, 1, 0), (0, 1, 1))}


@register_method("marginal",
                 summary="draft while the next token's expected yield exceeds its cost at the request's rate (lossless)")
@dataclass
class MarginalStop(DraftLengthPolicy):
    # A drafted token's cost in target passes (draft step + one more verified position). 0.15: the default pair on
    # CPU with the int4 draft, fitted on tune prompts (benchmarks/results/tune_marginal/CHOICES.md). "auto": measured
    # online from the rounds' seconds (see the module docstring).
    cost: float | str = 0.15
    max_k: int = 32
    # cost=auto: 3 prices draft-model and looked-up tokens apart (forwards, verified width, catch-up), 1 prices every
    # drafted token alike (one line over the draft steps). See the module docstring.
    terms: int = 3

    def __post_init__(self) -> None:
        if self.terms not in PRICING:
            raise ValueError(f"terms must be 1 (one price per drafted token) or 3 (draft forwards, verified width and "
                             f"catch-up priced apart), got {self.terms!r}")
        self._fit = None
        if self.cost == "auto":
            self._fit = CostFit(PRICING[self.terms][0])
        else:
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
        """A draft-model token's cost in target passes: the setting, or with ``cost=auto`` the current fit."""
        if self._fit is None:
            return self.cost  # type: ignore[return-value]
        return self._fit.price(PRICING[self.terms][1])

    @property
    def lookup_cost(self) -> float:
        """A looked-up token's cost in target passes (with ``terms=1`` or a fixed cost: the same as a drafted one)."""
        if self._fit is None:
            return self.cost  # type: ignore[return-value]
        return self._fit.price(PRICING[self.terms][2])

    def settings(self) -> dict:
        measured = {}
        if self._fit is not None:
            measured = {"measured_cost": self.token_cost}
            if self.terms == 3:
                measured["measured_lookup_cost"] = self.lookup_cost
        return {**super().settings(), **measured}

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
        price = self.lookup_cost if step.looked_up else self.token_cost  # the next token's kind, as this one's
        return self._survival * a < price * rate  # a: the next token's acceptance, predicted as this one's

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
        cost = outcome.cost
        if self._fit is not None and cost is not None and cost.target_width == 1:  # not a prompt's round
            self._fit.add(round_terms(outcome) if self.terms == 3 else (K,), cost.draft_s + cost.target_s)
        looked_up = sum((s.drafting.long() for s in outcome.steps if s.looked_up), torch.zeros_like(m))
        spent = 1 + self.token_cost * (m - looked_up) + self.lookup_cost * looked_up
        index = self._rate.index(outcome.slots)
        for name, amount in (("tokens", n + 1), ("cost", spent)):
            values = self._rate[name]
            values[index] = RATE_DECAY * values[index] + amount.double()


def round_terms(outcome: RoundOutcome) -> tuple[int, int, int]:
    """A timed round's terms for the three-term fit: draft-model forwards F, drafted tokens K (verified positions)
    and tokens the draft model caught up on C (fed beyond one per forward: accepted tokens it had not seen)."""
    forwards = sum(not s.looked_up for s in outcome.steps)
    return forwards, outcome.block.K, max(outcome.cost.draft_fed - forwards, 0)


class CostFit:
    """Round seconds = a + sum_j b_j * x_j (x: a round's terms, e.g. its draft steps), least squares over the last
    ``COST_WINDOW`` rounds, each slope shrunk towards ``b_j = prior_j * a`` with the weight of ``COST_PRIOR``
    rounds one unit apart. ``price(w)`` = sum_j w_j * b_j / a: what w_j of each term cost in target passes. Without
    spread in a term the data cannot tell its slope from the intercept (or from a term that moves with it), and
    the prior decides; the more the terms vary, the more the data do.

    A round's time is noisy upwards only (another process, a kernel compiled on a width's first use: seconds
    where a round takes a fraction of one), so rounds more than ``COST_SPIKE`` times the first fit's estimate
    are left out of a second fit, which is the one used."""

    def __init__(self, priors: Sequence[float]) -> None:
        self.priors = tuple(priors)
        self.rounds: deque[tuple[tuple[float, ...], float]] = deque(maxlen=COST_WINDOW)  # (terms, seconds)
        self.a, self.b = 1.0, self.priors  # until a round is measured: the priors

    def add(self, terms: Sequence[float], seconds: float) -> None:
        self.rounds.append((tuple(map(float, terms)), float(seconds)))
        a, b = self.line(self.rounds)
        kept = [(x, y) for x, y in self.rounds if y <= COST_SPIKE * (a + sum(map(operator.mul, b, x)))]
        self.a, self.b = self.line(kept or self.rounds)

    def price(self, weights: Sequence[float]) -> float:
        if self.a <= 0:  # no fixed cost to measure against: the priors
            return sum(map(operator.mul, self.priors, weights))
        relative = sum(map(operator.mul, self.b, weights)) / self.a
        return min(max(relative, COST_RANGE[0]), COST_RANGE[1])

    def line(self, rounds: Sequence[tuple[Sequence[float], float]]) -> tuple[float, tuple[float, ...]]:
        """Intercept a and slopes b of (terms, seconds) ``rounds``, with the prior as pseudo-data: the centred
        normal equations plus ``COST_PRIOR`` times b_j - prior_j * a = 0, where a = mean(y) - mean(x) . b."""
        x = torch.tensor([t for t, _ in rounds], dtype=torch.float64)  # [n, J]
        y = torch.tensor([s for _, s in rounds], dtype=torch.float64)
        mx, my = x.mean(0), y.mean()
        xc = x - mx
        p = torch.tensor(self.priors, dtype=torch.float64)
        lhs = xc.T @ xc + COST_PRIOR * (torch.eye(len(p), dtype=torch.float64) + p[:, None] * mx[None, :])
        try:
            b = torch.linalg.solve(lhs, xc.T @ (y - my) + COST_PRIOR * p * my)
        except torch.linalg.LinAlgError:  # degenerate rounds: no fixed cost to read, so price() keeps the priors
            return 0.0, self.priors
        return float(my - mx @ b), tuple(b.tolist())
