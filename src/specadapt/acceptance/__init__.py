"""Acceptance rules: given target and draft distributions, decide what is accepted and emitted."""

from .base import AcceptanceRule, Proposal, Verdict
from .greedy import GreedyAcceptance
from .speculative import SpeculativeSampling

__all__ = ["AcceptanceRule", "Proposal", "Verdict", "GreedyAcceptance", "SpeculativeSampling"]
