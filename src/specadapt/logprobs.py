"""Log-probabilities of the generated tokens under the target (OpenAI's ``logprobs``).

Every token speculative decoding emits was scored by the target's verification pass: an accepted draft token
at its position in the block, the token after the last accepted one (a correction or the bonus) at the next.
So the log-probabilities cost one ``log_softmax`` over positions the target computed anyway, and they are the
target's own: in float32, the same numbers target-only decoding gives for the same tokens (tested).

They are the target model's raw distribution (temperature 1, no top-k / top-p), as vLLM reports by default:
a sampled token's log-probability does not depend on the sampling settings that picked it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import SpecAdaptError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the ``top`` most likely tokens at its position (id, logprob),
    most likely first (empty unless asked for)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    def to_dict(self) -> dict:
        return {"token_id": self.token_id, "logprob": self.logprob, "top": [list(pair) for pair in self.top]}


def check_logprobs(value: int | None) -> None:
    """``None`` (off) or how many alternatives to report per token, 0 to ``MAX_TOP_LOGPROBS``."""
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_TOP_LOGPROBS):
        raise SpecAdaptError(f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}] (the most likely alternatives "
                             f"to report per token; 0: the chosen token's only) or None, got {value!r}.")


def score_tokens(logits: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """``tokens[i]``'s log-probability under ``logits[i]`` ([n, V], one position per token), with the ``top`` most
    likely tokens at each position."""
    if not tokens:
        return []
    logp = logits[: len(tokens)].float().log_softmax(-1)
    chosen = logp.gather(1, torch.tensor(list(tokens), device=logp.device)[:, None])[:, 0].tolist()
    if not top:
        return [TokenLogprob(t, lp) for t, lp in zip(tokens, chosen)]
    values, ids = logp.topk(top, dim=-1)
    return [TokenLogprob(t, lp, tuple(zip(i, v))) for t, lp, i, v in zip(tokens, chosen, ids.tolist(), values.tolist())]
