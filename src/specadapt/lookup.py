"""Prompt lookup: propose the token that followed the last occurrence of the text's final n tokens.

Code answers repeat their prompt (a function's signature and docstring, the names it uses), so along the
target's own output the token after an earlier occurrence of the last few tokens is very often the next one:
on HumanEval tune prompts 99% of the proposals of a 12-token match are the target's token and 72% of the
positions have one (BENCHMARKS.md, "Prompt lookup beside the draft"). Such a token costs no draft step. The
engine proposes it in place of the draft model's token wherever every drafting row has one, and feeds the
draft model the looked-up tokens in its next forward; the proposal is a point mass, so verification stays
lossless (greedy: the target's argmax decides; sampling: accepted with probability p(token)).
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_NGRAM = 12  # "+lookup" alone: the match length chosen on tune prompts (benchmarks/results/tune_lookup/CHOICES.md)


def lookup_next(tokens: Sequence[int], n: int) -> int | None:
    """The token that followed the most recent earlier occurrence of ``tokens``' last ``n`` tokens (None if none)."""
    if len(tokens) <= n:
        return None
    key = list(tokens[-n:])
    last = key[-1]
    for j in range(len(tokens) - 2, n - 2, -1):  # j: where an earlier occurrence would end
        if tokens[j] == last and list(tokens[j - n + 1 : j + 1]) == key:
            return tokens[j + 1]
    return None
