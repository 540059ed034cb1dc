"""Hugging Face's dynamic speculation (DISCO-style), the default of ``transformers``' assisted generation.

Stop drafting once the draft's probability of the token it just drafted is
below a threshold (initially 0.4; the token stays in the block). The threshold
is re-fitted online from the history of verified draft tokens by an ROC
analysis, as in ``transformers``' ``AssistedCandidateGenerator``:

- each verified draft token contributes its score s = q(x) (the draft's
  probability of its own token, from the distribution it was drafted from: the
  processed q when sampling, the softmax of raw logits when greedy) and a label:
  POSITIVE = accepted by the target, NEGATIVE = rejected. Only the first
  rejected position of a round is labelled negative; the tokens drafted after it
  were never verified and are not recorded (as in ``transformers``);
- a threshold t predicts "positive" (keep drafting) when s >= t and "negative"
  (stop: the token is likely rejected) when s < t, so
  FPR(t) = #{negative, s >= t} / #negative  (rejected tokens drafting went on past),
  FNR(t) = #{positive, s < t}  / #positive  (accepted tokens that would stop drafting);
- once the history holds at least ``min_each`` positives AND ``min_each``
  negatives, after every round the threshold becomes the candidate minimising
  FPR(t) + ``fn_cost`` * FNR(t) (fn_cost = 3: HF weighs false positives 25% and
  false negatives 75%). Candidates are the distinct scores in the history (the
  thresholds of ``sklearn.metrics.roc_curve``, which HF uses); ties go to the
  largest candidate (``roc_curve`` lists thresholds in decreasing order and HF
  takes the first ``argmin``).

The history is cumulative (no window). Verification is the standard lossless
rule. ``scope = "request"`` keeps history and threshold per request (HF runs one
request per ``generate`` call); ``"shared"`` keeps one history on the policy
instance across rows and ``generate`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods import register_method
from ._scoped import ScopedState, check_scope
from .base import DraftLengthPolicy, DraftStep, RoundOutcome, check_draft_length


def roc_threshold(scores: torch.Tensor, labels: torch.Tensor, fn_cost: float = 3.0) -> tuple[float, float]:
    """The threshold minimising FPR + fn_cost * FNR over the distinct scores, and that cost.

    ``labels``: True = positive (accepted). A token is predicted positive when score >= threshold.
    Needs at least one positive and one negative.
    """
    scores = scores.double().cpu()
    labels = labels.bool().cpu()
    pos, neg = scores[labels].sort().values, scores[~labels].sort().values
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("need at least one positive and one negative")
    candidates = torch.unique(scores).flip(0)  # decreasing, like roc_curve
    fnr = torch.searchsorted(pos, candidates, side="left").double() / pos.numel()  # positives with s < t
    fpr = (neg.numel() - torch.searchsorted(neg, candidates, side="left")).double() / neg.numel()  # negatives with s >= t
    cost = fpr + fn_cost * fnr
    best = int(torch.argmin(cost))  # first minimum = the largest threshold among ties
    return float(candidates[best]), float(cost[best])


@register_method(
    "dynamic-confidence",
    summary="HF dynamic speculation: stop when q(token) < threshold (0.4), re-fit online by ROC (min FPR + 3 FNR)",
)
@dataclass
class DynamicConfidence(DraftLengthPolicy):
    threshold: float = 0.4
    min_each: int = 10
    fn_cost: float = 3.0
    max_k: int = 20
    scope: str = "request"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        if self.min_each < 1:
            raise ValueError("min_each must be >= 1")
        if not self.fn_cost > 0:
            raise ValueError("fn_cost must be > 0")
        check_draft_length("max_k", self.max_k)
        check_scope(self.scope)
        self._state = ScopedState(self.scope, {"threshold": self.threshold})
        self._history: list[tuple[list[float], list[bool]]] = [([], [])]  # (scores, labels) per slot

    def begin(self, slots: torch.Tensor) -> None:
        self._state.begin(slots)
        if self.scope == "request":
            for slot in slots.tolist():
                self._history += [([], []) for _ in range(slot + 1 - len(self._history))]
                self._history[slot] = ([], [])

    def current_threshold(self, slots: torch.Tensor) -> torch.Tensor:
        """Threshold per row (it changes only in ``observe``, so it is the value the round stops by)."""
        index = self._state.index(slots)  # first: it moves the state to slots' device
        return self._state["threshold"][index].clone()

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.full_like(slots, self.max_k)

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        return step.token_probs.double() < self.current_threshold(step.slots)

    def observe(self, outcome: RoundOutcome) -> None:
        if outcome.block.K == 0:
            return
        scores = torch.stack([s.token_probs.float() for s in outcome.steps], 1).tolist()
        index = self._state.index(outcome.slots).tolist()
        touched = set()
        for j, (n, m) in enumerate(zip(outcome.accepted.tolist(), outcome.drafted.tolist())):
            if m == 0:
                continue
            hist_scores, hist_labels = self._history[index[j]]
            verified = min(n + 1, m)  # the accepted tokens and the first rejected one
            hist_scores.extend(scores[j][:verified])
            hist_labels.extend([True] * n + [False] * (verified - n))
            touched.add(index[j])
        for s in touched:
            self._refit(s)

    def _refit(self, slot: int) -> None:
        hist_scores, hist_labels = self._history[slot]
        n_pos = sum(hist_labels)
        if n_pos >= self.min_each and len(hist_labels) - n_pos >= self.min_each:
            t, _ = roc_threshold(torch.tensor(hist_scores), torch.tensor(hist_labels), self.fn_cost)
            self._state["threshold"][slot] = t
