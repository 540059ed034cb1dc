"""AdaSD (arXiv 2512.11280): entropy-based draft stopping and JS-distance acceptance.

Two methods (see the design notes, methods.md section 1):

``adasd-stop`` (lossless): draft until the entropy of the distribution the
latest token came from exceeds ``T_G``, the mean entropy H(q) of previously
rejected draft tokens; the token that triggers the stop stays in the block.
Verification is the standard lossless rule.

``adasd`` (lossy): the same stopping plus the JS acceptance rule of
:mod:`specadapt.acceptance.adasd`: a draft token is also accepted when its JS
distance d = JS(p, q) (base 2, in [0, 1]) is below
``T_V = (mean d of accepted tokens + mean d of rejected tokens) / 2``.

Choices for the open points of methods.md section 1 (each a setting):

- ``n_min`` (5), cold start: until a request (or the shared state) has seen at
  least ``max(n_min, 1)`` accepted AND that many rejected draft tokens, it is
  "cold": T_G = +inf (no entropy stop), no JS acceptance, and each round drafts
  at most ``cold_start_k`` (8) tokens. Once warm, only ``max_k`` (32) bounds a
  round. Both were chosen with the int4 draft on tune prompts (replayed:
  benchmarks/results/tune_int4/replay.json; 4 and 16 before, when a draft step
  cost ~0.38 of a target step instead of ~0.14).
- ``first_rejection_only`` (True): only the first rejected position of a round
  counts as a rejected observation; the positions after it, never verified, are
  ignored. With False they are counted as rejected too.
- ``scope`` ("request" for ``adasd-stop``, "prior" for ``adasd``): statistics
  per request, reset at each ``generate`` call; "shared": one set of statistics
  on the policy instance, updated by every row and kept across ``generate``
  calls; "prior": per request, but each request starts from the shared
  statistics' means worth ``max(n_min, 1)`` observations of each kind (so it is
  warm from its first round once the shared statistics are), and its own
  observations then outweigh them. Each method's default was
  chosen on tune prompts by a rule written before the run
  (benchmarks/results/adasd_cold_start/CHOICES.md): "prior" won for ``adasd``
  on all three tasks; for ``adasd-stop`` it won on HumanEval but lost on GSM8K.
- ``combine`` ("or", ``adasd`` only): accept if the standard test passes OR
  d < T_V; "replace": only the JS test once warm (the standard test while cold).
  The accept/reject labels fed to the statistics are the rule's final decisions.
- Statistics are cumulative sums (no window); means are sums / counts.
- Distributions: the policy uses what the engine hands it, i.e. the processed
  q and p (temperature, top-k, top-p) when sampling and the SOFT distributions
  (softmax of raw logits) when greedy, for both entropies and JS distances.
- Entropies are in nats (T_G is compared with entropies in the same unit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..acceptance.adasd import COMBINE_MODES, AdaSDAcceptance
from ..methods import register_method
from ..sampling import SamplingParams
from ._scoped import SCOPES, ScopedState
from .base import DraftLengthPolicy, DraftStep, RoundOutcome, check_draft_length

ADASD_SCOPES = (*SCOPES, "prior")
# Cumulative sums and counts; thresholds are their means.
STATISTICS = {"n_acc": 0, "n_rej": 0, "h_rej_sum": 0.0, "d_acc_sum": 0.0, "d_rej_sum": 0.0}
SUM_COUNTS = {"h_rej_sum": "n_rej", "d_acc_sum": "n_acc", "d_rej_sum": "n_rej"}  # the count each sum's mean divides by


def _mean(state: ScopedState, name: str, index: torch.Tensor) -> torch.Tensor:
    """The mean behind sum ``name`` at ``index`` (0 before any observation)."""
    return state[name][index] / state[SUM_COUNTS[name]][index].clamp_min(1)


def _past_cold_start(state: ScopedState, index: torch.Tensor, need: int) -> torch.Tensor:
    """[b] bool: at least ``need`` accepted and ``need`` rejected observations at ``index``."""
    return (state["n_acc"][index] >= need) & (state["n_rej"][index] >= need)


@register_method(
    "adasd-stop",
    summary="AdaSD entropy stopping (stop when H(q) > mean H of rejected drafts), lossless verification",
)
@dataclass
class AdaSDStop(DraftLengthPolicy):
    n_min: int = 5
    cold_start_k: int = 8
    max_k: int = 32
    first_rejection_only: bool = True
    scope: str = "request"

    uses_js: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.n_min < 0:
            raise ValueError("n_min must be >= 0")
        check_draft_length("max_k", self.max_k)
        check_draft_length("cold_start_k", self.cold_start_k)
        if self.scope not in ADASD_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(ADASD_SCOPES)}, got {self.scope!r}")
        self._state = ScopedState("request" if self.scope == "prior" else self.scope, STATISTICS)
        # scope "prior": every row's observations also go to one shared pool that new requests start from
        self._pool = ScopedState("shared", STATISTICS) if self.scope == "prior" else None

    # --- statistics (public: the JS acceptance rule reads T_V and warm through them) -------

    def begin(self, slots: torch.Tensor) -> None:
        self._state.begin(slots)
        if self._pool is not None and slots.numel():
            self._start_from_pool(slots)

    def _start_from_pool(self, slots: torch.Tensor) -> None:
        """Scope "prior": new requests take the pool's means, worth max(n_min, 1) observations of each kind
        (nothing while the pool itself has fewer)."""
        pool, state, need = self._pool, self._state, max(self.n_min, 1)
        s = state.index(slots)
        p = pool.index(slots)
        ready = _past_cold_start(pool, p, need)  # tensors: no host sync per join
        for name in STATISTICS:
            prior = need * _mean(pool, name, p) if name in SUM_COUNTS else torch.full_like(pool[name][p], need)
            state.set(name, s, torch.where(ready, prior, state[name][s]))

    def warm(self, slots: torch.Tensor) -> torch.Tensor:
        """[b] bool: requests whose statistics are past the cold start."""
        return _past_cold_start(self._state, self._state.index(slots), max(self.n_min, 1))

    def stop_threshold(self, slots: torch.Tensor) -> torch.Tensor:
        """T_G per request: mean entropy of rejected draft tokens (+inf while cold)."""
        mean = _mean(self._state, "h_rej_sum", self._state.index(slots))
        return torch.where(self.warm(slots), mean, torch.full_like(mean, float("inf")))

    def js_threshold(self, slots: torch.Tensor) -> torch.Tensor:
        """T_V per request: midpoint of the mean JS distances of accepted and rejected tokens (-inf while cold)."""
        s = self._state.index(slots)
        t = (_mean(self._state, "d_acc_sum", s) + _mean(self._state, "d_rej_sum", s)) / 2
        return torch.where(self.warm(slots), t, torch.full_like(t, float("-inf")))

    # --- the draft-length interface ---------------------------------------------------------

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        cold_k = min(self.cold_start_k, self.max_k)
        return torch.where(self.warm(slots), torch.full_like(slots, self.max_k), torch.full_like(slots, cold_k))

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        # T_G changes only in observe(), so it is the same for every step of the round.
        return step.entropy.double() > self.stop_threshold(step.slots)

    def observe(self, outcome: RoundOutcome) -> None:
        K = outcome.block.K
        if K == 0:
            return
        pos = torch.arange(K, device=outcome.slots.device)[None, :]
        n, drafted = outcome.accepted[:, None], outcome.drafted[:, None]
        accepted = pos < n
        if self.first_rejection_only:
            rejected = (pos == n) & (n < drafted)
        else:
            rejected = (pos >= n) & (pos < drafted)
        h = torch.stack([step.entropy for step in outcome.steps], 1)
        amounts = {"n_acc": accepted.sum(1), "n_rej": rejected.sum(1), "h_rej_sum": torch.where(rejected, h, 0.0).sum(1)}
        if self.uses_js:
            d = outcome.token_scores.get("js_distance")
            if d is None:
                raise RuntimeError("adasd: observe() needs the JS distances its acceptance rule computes "
                                   "(RoundOutcome.token_scores['js_distance'])")
            amounts["d_acc_sum"] = torch.where(accepted, d, 0.0).sum(1)
            amounts["d_rej_sum"] = torch.where(rejected, d, 0.0).sum(1)
        for state in (self._state, self._pool):
            if state is not None:
                s = state.index(outcome.slots)
                for name, amount in amounts.items():
                    state.add(name, s, amount)


def _make_rule(params: SamplingParams, policy: "AdaSD") -> AdaSDAcceptance:
    return AdaSDAcceptance(policy, policy.combine)


@register_method(
    "adasd",
    summary="AdaSD: entropy stopping + JS-distance acceptance (lossy; report accuracy next to a lossless baseline)",
    make_rule=_make_rule,
)
@dataclass
class AdaSD(AdaSDStop):
    scope: str = "prior"  # chosen on tune prompts (module docstring)
    combine: str = "or"

    reads_scores = ("js_distance",)
    uses_js = True

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {self.combine!r}")
        super().__post_init__()
