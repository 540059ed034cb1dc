"""Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

Accept draft token x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first
rejection emit a sample of norm(max(0, p - q)); if all are accepted emit a bonus
sample of p_{K+1}. The emitted tokens are distributed exactly as the target's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling import sample
from .base import AcceptanceRule, Proposal, Verdict, first_rejection


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); falls back to p when the residual has no mass (p == q)."""
    r = (p - q).clamp_min(0.0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(1e-30), p)


def uniforms(proposal: Proposal) -> torch.Tensor:
    """One uniform per drafted token [b, K] (1.0 past a row's length), drawn from each request's own
    generator so that a request's random stream does not depend on the rest of the batch."""
    x = proposal.draft_tokens
    u = torch.ones(x.shape, device=x.device)
    for i, g in enumerate(proposal.generators):
        d = int(proposal.draft_lens[i])
        u[i, :d] = torch.rand(d, generator=g, device=x.device)
    return u


def emit_after(proposal: Proposal, n: torch.Tensor) -> torch.Tensor:
    """The token emitted after ``n`` accepted drafts: a residual sample at a rejection, else a bonus sample."""
    p, q = proposal.target_probs, proposal.draft_probs
    out = torch.empty(n.shape[0], dtype=torch.long, device=n.device)
    for i, g in enumerate(proposal.generators):
        j = int(n[i])
        rejected = j < int(proposal.draft_lens[i])
        out[i] = sample(residual(p[i, j], q[i, j]) if rejected else p[i, j], g)
    return out


@dataclass
class SpeculativeSampling(AcceptanceRule):
    name = "speculative"
    lossless = True

    def __call__(self, proposal: Proposal) -> Verdict:
        p, q, x = proposal.target_probs, proposal.draft_probs, proposal.draft_tokens
        if x.shape[1] == 0:
            accept = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        else:
            K = x.shape[1]
            px = p[:, :K].gather(2, x[:, :, None]).squeeze(2)
            qx = q.gather(2, x[:, :, None]).squeeze(2)
            accept = uniforms(proposal) * qx < px  # u < p/q without dividing
        n, mask = first_rejection(accept, proposal.draft_lens)
        return Verdict(n, emit_after(proposal, n), mask)
