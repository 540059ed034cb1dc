"""Greedy verification: accept while the draft token equals the target's argmax."""

from __future__ import annotations

from dataclasses import dataclass

from .base import AcceptanceRule, Proposal, Verdict, first_rejection


@dataclass
class GreedyAcceptance(AcceptanceRule):
    name = "greedy"
    lossless = True
    reads_draft_probs = False  # argmax matching: the draft's tokens are enough

    def __call__(self, proposal: Proposal) -> Verdict:
        best = proposal.target_logits.argmax(-1)  # [b, K + 1]
        K = proposal.draft_tokens.shape[1]
        n, mask = first_rejection(proposal.draft_tokens == best[:, :K], proposal.draft_lens)
        return Verdict(n, best.gather(1, n[:, None]).squeeze(1), mask)
