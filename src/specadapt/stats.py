"""Per-request statistics and their identities.

Identities (tested): generated_tokens = accepted + rounds, so the mean accepted
length (tokens per target call, bonus included) = 1 + accepted / rounds, and
acceptance rate = accepted / drafted. Target-only decoding gives 1.0.

Timings are wall-clock: the first round includes the prompt (prefill). In a
batch, a request's draft and target times are those of the batched passes it
took part in, and ``total_time_s`` runs from the start of the batch to the
round in which the request finished (its latency).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestStats:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of them, tokens the target's prefix cache held (copied, not fed)
    generated_tokens: int = 0
    rounds: int = 0  # target forward passes after the prompt
    drafted: int = 0
    accepted: int = 0
    # position_reached[k]: rounds in which draft token k+1 was proposed and tokens 1..k were accepted;
    # position_accepted[k]: rounds in which token k+1 was accepted.
    position_reached: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)
    draft_time_s: float = 0.0
    target_time_s: float = 0.0
    total_time_s: float = 0.0

    def record_round(self, drafted: int, accepted: int, emitted: int) -> None:
        """One round: ``drafted`` proposed, ``accepted`` accepted, ``emitted`` tokens kept in the output
        (fewer than accepted + 1 when EOS, a stop string or max_new_tokens cut the round short)."""
        accepted = min(accepted, emitted - 1)
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.generated_tokens += emitted
        grow = drafted - len(self.position_reached)
        if grow > 0:
            self.position_reached += [0] * grow
            self.position_accepted += [0] * grow
        for k in range(min(drafted, accepted + 1)):
            self.position_reached[k] += 1
        for k in range(accepted):
            self.position_accepted[k] += 1

    def add(self, other: RequestStats) -> None:
        """Pool another request's counts and times into this one (per-position counts included)."""
        for name in ("prompt_tokens", "cached_prompt_tokens", "generated_tokens", "rounds", "drafted", "accepted",
                     "draft_time_s", "target_time_s", "total_time_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.position_reached, other.position_reached),
                             (self.position_accepted, other.position_accepted)):
            mine += [0] * (len(theirs) - len(mine))
            for k, n in enumerate(theirs):
                mine[k] += n

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_accepted_length(self) -> float | None:
        return 1.0 + self.accepted / self.rounds if self.rounds else None

    @property
    def mean_draft_length(self) -> float | None:
        return self.drafted / self.rounds if self.rounds else None

    @property
    def per_position_acceptance(self) -> list[float | None]:
        return [a / r if r else None for a, r in zip(self.position_accepted, self.position_reached)]

    @property
    def verification_rate(self) -> float | None:
        return self.rounds / self.generated_tokens if self.generated_tokens else None

    @property
    def discard_rate(self) -> float | None:
        return (self.drafted - self.accepted) / self.generated_tokens if self.generated_tokens else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.generated_tokens / self.total_time_s if self.total_time_s > 0 else None

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "mean_draft_length": self.mean_draft_length,
            "per_position_acceptance": self.per_position_acceptance,
            "verification_rate": self.verification_rate,
            "discard_rate": self.discard_rate,
            "draft_time_s": self.draft_time_s,
            "target_time_s": self.target_time_s,
            "total_time_s": self.total_time_s,
            "tokens_per_second": self.tokens_per_second,
        }
