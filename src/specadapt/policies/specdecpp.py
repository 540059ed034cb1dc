"""SpecDec++ stopping (arXiv 2405.19715): stop drafting once a trained head says a rejection is likely.

A trained :class:`~specadapt.heads.AcceptanceHead` maps the draft's hidden state
at a draft token's position to P̂(the target accepts that token). Over a round
the policy keeps ``cum = Π P̂_i`` and stops once ``1 - cum > threshold``, never
before ``min_k`` drafted tokens and always at ``max_k``. ``threshold``, ``min_k`` and
``max_k`` default to the values `specadapt tune-head` recorded in the head's config.
Verification is the standard lossless rule.

One-step lag (as in the official code): the hidden state at token k's position
only exists once the draft has consumed token k, i.e. in the forward that yields
token k + 1. At step k the policy sees ``DraftStep.hidden`` = the state computed
when token k - 1 was fed, so the factor multiplied in at step k is P̂(token k - 1
accepted); at step 1 that state belongs to the last committed token, whose
factor is 1.

A head trained with ``input="producing"`` or ``"features"`` (see :mod:`specadapt.heads`)
has no lag: at step k it reads the features of ``DraftStep.probs``, the distribution
token k was drawn from (and, producing, ``DraftStep.hidden``, the state that produced
token k), so every step's factor, the first one included, is P̂(token k accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecAdaptError
from ..heads import AcceptanceHead, builtin_heads, distribution_features, load_head, read_head_config, resolve_head
from ..methods import register_method
from .base import DraftLengthPolicy, DraftStep, check_draft_length

DEFAULT_THRESHOLD = 0.7  # the paper's sample script; reported best overall
FROM_HEAD = -1.0
DEFAULT_MIN_K = 2
DEFAULT_MAX_K = 20


@register_method("specdecpp", summary="SpecDec++: stop when a trained head's P(some draft token rejected) > threshold")
@dataclass
class SpecDecPP(DraftLengthPolicy):
    head: str = ""  # head folder or built-in head name; "": the built-in head of the default pair
    threshold: float = FROM_HEAD  # -1: the threshold recorded in the head's config (by tune-head), else 0.7
    min_k: int = 0  # 0: the min_k recorded in the head's config (by tune-head), else 2
    max_k: int = 0  # 0: the max_k recorded in the head's config (by tune-head), else 20

    needs_hidden = True

    def __post_init__(self) -> None:
        resolved = resolve_head(self.head)
        if resolved is None:
            shipped = ", ".join(builtin_heads())
            raise SpecAdaptError(
                "method 'specdecpp' needs a trained acceptance head for your draft model: pass --head DIR "
                "(or the setting head=DIR, e.g. 'specdecpp:head=DIR'), or train one with `specadapt train-head`"
                + (f" (built-in heads: {shipped})." if shipped else ".")
            )
        self.head = str(resolved)
        self._head_config = read_head_config(self.head)  # fail fast on a bad folder; weights load on first use
        if self.threshold == FROM_HEAD:
            self.threshold = float(self._head_config.get("threshold", DEFAULT_THRESHOLD))
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) (exclusive), got {self.threshold!r}; 0.7 is the paper's best overall")
        if self.min_k == 0:
            self.min_k = int(self._head_config.get("min_k", DEFAULT_MIN_K))
        if self.max_k == 0:
            self.max_k = int(self._head_config.get("max_k", DEFAULT_MAX_K))
        check_draft_length("max_k", self.max_k)
        if not 1 <= self.min_k <= self.max_k:
            raise ValueError(f"need 1 <= min_k <= max_k, got min_k={self.min_k}, max_k={self.max_k}")
        self._model: AcceptanceHead | None = None
        self._cum: torch.Tensor | None = None

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        self._cum = None  # a new round: the product starts over
        return torch.full_like(slots, self.max_k)

    def _head_for(self, hidden: torch.Tensor) -> AcceptanceHead:
        size = hidden.shape[-1]
        expected = self._head_config["hidden_size"]
        if size != expected:
            raise SpecAdaptError(
                f"the acceptance head {self.head} expects hidden size {expected}, but the draft's hidden states have "
                f"size {size}: the head was trained for another draft model"
                + (f" ({self._head_config['draft']})" if self._head_config.get("draft") else "")
                + ". Pass --head with a head trained for this draft (`specadapt train-head` makes one)."
            )
        if self._model is None:
            self._model = load_head(self.head, device=hidden.device, dtype=hidden.dtype).requires_grad_(False)
        elif self._model.out.weight.device != hidden.device or self._model.out.weight.dtype != hidden.dtype:
            self._model.to(device=hidden.device, dtype=hidden.dtype)
        return self._model

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        if step.hidden is None:
            raise SpecAdaptError("method 'specdecpp' needs the draft's hidden states, but the engine did not provide them.")
        head = self._head_for(step.hidden)
        b = step.slots.shape[0]
        if self._cum is None:
            self._cum = torch.ones(b, dtype=torch.float32, device=step.hidden.device)
        with torch.inference_mode():
            if head.reads_features:
                features = distribution_features(step.probs, step.tokens).to(step.hidden.device)
                self._cum = self._cum * head.accept_prob(step.hidden, features)
            elif step.position > 1:  # lagged: step 1's state is the last committed token's, whose factor is 1
                self._cum = self._cum * head.accept_prob(step.hidden)
        if step.position >= self.max_k:
            return torch.ones(b, dtype=torch.bool, device=step.slots.device)
        if step.position < self.min_k:
            return torch.zeros(b, dtype=torch.bool, device=step.slots.device)
        return (1.0 - self._cum > self.threshold).to(step.slots.device)
