"""Logits processing shared by target and draft, and distribution helpers.

Pure tensor functions. Target and draft go through the *same* processing so
that the draft samples from exactly the ``q`` the verifier uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SpecAdaptError


MIN_TEMPERATURE = 1e-6  # below this, logits / temperature overflows fp32 for ordinary logits
# Top-p looks for the nucleus among this many most likely tokens first (then more, then all): see outside_nucleus.
NUCLEUS_CANDIDATES = (256, 4096)


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise SpecAdaptError(
                f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}."
            )
        if math.isinf(self.temperature):
            raise SpecAdaptError("temperature must be finite; use a value such as 0.7, or 0 for greedy.")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise SpecAdaptError(
                f"temperature {self.temperature!r} is too small: logits divided by it overflow. "
                f"Use 0 for greedy decoding, or at least {MIN_TEMPERATURE}."
            )
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise SpecAdaptError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}.")
        if not isinstance(self.top_p, (int, float)) or math.isnan(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise SpecAdaptError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def process_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, top-k and top-p to ``logits`` [..., V] and return fp32 probabilities.

    For greedy decoding the result is the one-hot distribution of the argmax (the
    limit of temperature -> 0), so lossless verification reduces to greedy matching.
    """
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        logits = logits.masked_fill(outside_nucleus(logits.softmax(-1), params.top_p), float("-inf"))
    return logits.softmax(-1)


def outside_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The tokens top-p drops from ``probs`` [..., V] (bool, same shape): in order of probability, a token is dropped
    when the mass strictly before it already reaches ``top_p`` (the most likely token is always kept).

    On a CPU the nucleus is looked for among the ``NUCLEUS_CANDIDATES`` most likely tokens first, and a row goes on
    to a larger candidate set, then a full sort, only where the candidates' mass falls short of ``top_p`` (every token
    past them has at least their mass before it, so none of them is kept otherwise). The result is a full sort's.
    It runs on every draft step and every verified position; on this project's CPU a full sort of the 152K
    vocabulary took 7-9 ms a row and this 0.4-0.6 ms (BENCHMARKS.md, ``benchmarks/top_p_cost.py``)."""
    flat = probs.reshape(-1, probs.shape[-1])
    vocab = flat.shape[-1]
    # Only on a CPU: on a GPU the sort is one kernel call, while asking which rows fell short would make the host wait
    # for the device on every call (the engine avoids such syncs there; neither way was timed on a GPU).
    candidates = [k for k in NUCLEUS_CANDIDATES if k < vocab] if flat.device.type == "cpu" else []
    drop, rows = None, None  # rows: those still to be decided (None: all)
    for k in candidates + [vocab]:
        part = flat if rows is None else flat[rows]
        values, order = part.topk(k, dim=-1) if k < vocab else part.sort(dim=-1, descending=True)
        mass = values.cumsum(-1)  # a full sort's first k sums: the same values added in the same order
        decided = torch.ones_like(part, dtype=torch.bool).scatter_(-1, order, mass - values >= top_p)
        if rows is None:
            drop = decided
        else:
            drop[rows] = decided
        short = mass[:, -1] < top_p  # rows whose nucleus goes beyond these k tokens: decided again, with more
        if k == vocab or not short.any():
            break
        rows = (torch.arange(len(flat), device=flat.device) if rows is None else rows)[short]
    return drop.reshape(probs.shape)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id from each row of ``probs`` [V] or [B, V]."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon distance (sqrt of the divergence, base-2 logs, in [0, 1]).

    Computed as H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2: three passes with
    one log each over the vocabulary instead of two KL terms with four logs: AdaSD
    computes it twice per round over [K, V] (acceptance and statistics).
    """
    m = 0.5 * (p + q)
    h = torch.special.entr
    jsd = h(m).sum(-1) - 0.5 * (h(p).sum(-1) + h(q).sum(-1))
    return (jsd / math.log(2)).clamp(0.0, 1.0).sqrt()
