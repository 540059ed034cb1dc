"""The draft-length interface (*how many tokens to draft*) and the round protocol that drives it.

A round, for the requests in a batch, runs in this order (:func:`draft_round`
and :func:`finish_round` are the protocol; the engine, the offline replay and
the tests all drive policies through them):

1. ``max_length(slots)``: an upper bound on each request's draft length;
2. after every drafted token, ``should_stop(step)``: stop drafting this request?
3. after verification, ``observe(outcome)``: the round's drafted steps and what
   the target accepted, so the policy can update its statistics.

Requests are identified by *slots*: small integers the engine gives each
request when it joins (``begin(slots)``) and reuses once it has left, so a
policy can keep per-request state in tensors indexed by slot.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Callable, ClassVar

import torch

from ..sampling import entropy

# Nothing else bounds some adaptive policies; this keeps a round's work finite.
MAX_DRAFT_TOKENS = 64


def check_draft_length(name: str, value: int) -> None:
    """A draft-length setting must lie in [1, MAX_DRAFT_TOKENS] (the engine never drafts more per round)."""
    if not isinstance(value, int) or not 1 <= value <= MAX_DRAFT_TOKENS:
        raise ValueError(f"{name} must be an integer in [1, {MAX_DRAFT_TOKENS}] (the most draft tokens a round may hold), "
                         f"got {value!r}")


@dataclass
class DraftStep:
    """What the policy sees right after the draft proposed token ``position`` of a round."""

    position: int  # 1-based index of the token just drafted in this round
    tokens: torch.Tensor  # [b] the drafted tokens (0 in rows that had stopped)
    probs: torch.Tensor  # [b, V] draft distribution the token came from (processed q; softmax of raw logits when greedy)
    hidden: torch.Tensor | None  # [b, H] draft's last hidden state at the previous input position (one-step lag)
    slots: torch.Tensor  # [b] the requests' state slots
    drafting: torch.Tensor  # [b] bool: rows that had not stopped before this step
    looked_up: bool = False  # prompt lookup proposed this step's tokens (no draft forward ran; ``probs`` one-hot)

    @property
    def token_probs(self) -> torch.Tensor:
        """[b] the draft's probability of the token it just drafted."""
        return self.probs.gather(1, self.tokens[:, None]).squeeze(1)

    @cached_property
    def entropy(self) -> torch.Tensor:
        """[b] entropy (nats) of ``probs``: computed once, read by ``should_stop`` and again by ``observe``."""
        return entropy(self.probs.float())


@dataclass
class DraftBlock:
    """One round's drafted tokens: the steps in order and how many each row drafted."""

    steps: list[DraftStep]
    lens: torch.Tensor  # [b] long, tokens each row drafted (<= K)

    @property
    def K(self) -> int:
        return len(self.steps)

    @cached_property
    def tokens(self) -> torch.Tensor:
        """[b, K]; entries past a row's length are padding."""
        if not self.steps:
            return torch.zeros((self.lens.shape[0], 0), dtype=torch.long, device=self.lens.device)
        return torch.stack([s.tokens for s in self.steps], 1)

    @cached_property
    def probs(self) -> torch.Tensor | None:
        """[b, K, V] the distribution each token was drafted from (None if K == 0)."""
        return torch.stack([s.probs for s in self.steps], 1) if self.steps else None


@dataclass(frozen=True)
class RoundCost:
    """What one round cost, measured by the engine (a policy that prices its drafts reads it)."""

    draft_s: float  # the draft's steps (prompt lookups included), without prefill of joining prompts
    target_s: float  # the target's pass over its pending tokens and the drafts
    target_width: int  # tokens per row the target was fed before the drafts: 1 in a round after the first
    # tokens per row the draft model was fed in the round, all its forwards together: one per forward, plus the
    # accepted tokens it had not seen (looked-up tokens catch up here, in the draft's next forward)
    draft_fed: int


@dataclass
class RoundOutcome:
    """What verification decided for one round, given to ``observe``."""

    slots: torch.Tensor  # [b]
    block: DraftBlock  # the round's drafted steps
    accepted: torch.Tensor  # [b] number of drafted tokens the target accepted
    accepted_mask: torch.Tensor  # [b, K] bool, per-token decisions (False past the first rejection)
    # [b, K] per-token values the acceptance rule computed (its Verdict's token_scores, e.g. "js_distance")
    token_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    cost: RoundCost | None = None  # None where nothing was timed (an offline replay)

    @property
    def steps(self) -> list[DraftStep]:
        return self.block.steps

    @property
    def drafted(self) -> torch.Tensor:
        return self.block.lens

    @property
    def draft_tokens(self) -> torch.Tensor:
        return self.block.tokens

    @property
    def draft_probs(self) -> torch.Tensor | None:
        return self.block.probs


class DraftLengthPolicy(ABC):
    """Base class. Subclasses are dataclasses whose fields are their settings."""

    needs_hidden: ClassVar[bool] = False
    # Names of the acceptance rule's token_scores that observe() reads (a replay, which has no rule, refuses such policies).
    reads_scores: ClassVar[tuple[str, ...]] = ()

    @property
    def reads_cost(self) -> bool:
        """Whether ``observe`` needs the round's measured cost (a replay, which times nothing, refuses such policies)."""
        return False

    @property
    def stops_early(self) -> bool:
        """Whether ``should_stop`` can end a round before ``max_length`` (else the engine need not check every step)."""
        return type(self).should_stop is not DraftLengthPolicy.should_stop

    def begin(self, slots: torch.Tensor) -> None:
        """New requests took these slots: give them fresh per-request state."""

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        """Upper bound on this round's draft length for each row ([b] long)."""
        raise NotImplementedError

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        """After each drafted token: [b] bool, True to stop drafting (the token stays in the block)."""
        return torch.zeros_like(step.slots, dtype=torch.bool)

    def observe(self, outcome: RoundOutcome) -> None:
        """Told after verification what each row drafted and got accepted."""

    def settings(self) -> dict:
        """The policy's settings, recorded with every result."""
        return asdict(self)


# propose(k, previous step or None, rows still drafting) -> (tokens, probs, hidden, looked_up) of step k, or None to
# end the round.
Proposer = Callable[[int, "DraftStep | None", torch.Tensor],
                    "tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool] | None"]


def draft_round(
    policy: DraftLengthPolicy,
    slots: torch.Tensor,
    limit: torch.Tensor,
    propose: Proposer,
    is_eos: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check_every_step: bool = True,
) -> DraftBlock:
    """Draft one round: ask the policy for its bounds, then propose tokens until every row has stopped.

    A row stops after a token when the policy says so, at its bound (``max_length``, capped by
    ``MAX_DRAFT_TOKENS`` and ``limit``), or after an EOS token. ``check_every_step=False`` skips the
    "has every row stopped?" test (a host sync on GPU) and drafts up to the largest bound instead;
    the block's lengths are the same either way.
    """
    caps = torch.minimum(policy.max_length(slots).clamp(0, MAX_DRAFT_TOKENS), limit)
    lens = torch.zeros_like(slots, dtype=torch.long)
    steps: list[DraftStep] = []
    longest = int(caps.max()) if caps.numel() else 0
    drafting = caps > 0
    for k in range(1, longest + 1):
        proposal = propose(k, steps[-1] if steps else None, drafting)
        if proposal is None:
            break
        tokens, probs, hidden, looked_up = proposal
        tokens = torch.where(drafting, tokens, 0)
        step = DraftStep(k, tokens, probs, hidden, slots, drafting, looked_up)
        steps.append(step)
        lens += drafting.long()
        stop = policy.should_stop(step) | (k >= caps)
        if is_eos is not None:
            stop |= is_eos(tokens)
        drafting = drafting & ~stop
        if check_every_step and not bool(drafting.any()):
            break
    return DraftBlock(steps, lens)


def finish_round(
    policy: DraftLengthPolicy,
    slots: torch.Tensor,
    block: DraftBlock,
    accepted: torch.Tensor,
    accepted_mask: torch.Tensor,
    token_scores: dict[str, torch.Tensor] | None = None,
    cost: RoundCost | None = None,
) -> None:
    """Tell the policy what verification decided and what the round cost (nothing to tell when no row drafted)."""
    if block.K:
        policy.observe(RoundOutcome(slots, block, accepted, accepted_mask, token_scores or {}, cost))

