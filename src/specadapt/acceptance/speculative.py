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


@dataclass
class SpeculativeSampling(AcceptanceRule):
    name = "speculative"
    lossless = True

    def __call__(self, proposal: Proposal) -> Verdict:
        p, q, x = proposal.target_probs, proposal.draft_probs, proposal.draft_tokens
        b, K = x.shape
        if K == 0:
            accept = torch.zeros((b, 0), dtype=torch.bool, device=x.device)
        else:
            px = p[:, :K].gather(2, x[:, :, None]).squeeze(2)
            qx = q.gather(2, x[:, :, None]).squeeze(2)
            # One uniform per drafted token, from each request's own generator, so a
            # request's random stream does not depend on the rest of the batch.
            u = torch.ones((b, K), device=x.device)
            for i, g in enumerate(proposal.generators):
                d = int(proposal.draft_lens[i])
                u[i, :d] = torch.rand(d, generator=g, device=x.device)
            accept = u * qx < px  # u < p/q without dividing
        n, mask = first_rejection(accept, proposal.draft_lens)
        next_token = torch.empty(b, dtype=torch.long, device=x.device)
        for i, g in enumerate(proposal.generators):
            j = int(n[i])
            rejected = j < int(proposal.draft_lens[i])
            dist = residual(p[i, j], q[i, j]) if rejected else p[i, j]
            next_token[i] = sample(dist, g)
        return Verdict(n, next_token, mask)
