"""AdaSD's JS-distance acceptance rule (lossy), paired with :class:`specadapt.policies.adasd.AdaSD`.

Per drafted token x_i with target distribution p_i and draft distribution q_i:

- standard test: u_i * q_i(x_i) < p_i(x_i) with u_i uniform from the request's
  generator (sampling), or x_i == argmax p_i (greedy);
- JS test: d_i = JS distance(p_i, q_i) (base 2) < T_V, where T_V comes from the
  policy's statistics for this request (or the shared statistics); never passes
  while the statistics are cold (T_V = -inf) or when p_i(x_i) = 0 (support guard);
- ``combine = "or"``: accept if either test passes; ``"replace"``: only the JS test
  once warm (the standard test while cold).

At the first rejected position j the emitted token is a sample of the standard
residual norm(max(0, p_j - q_j)) (greedy: argmax p_j); if every token is accepted
the bonus token is a sample of p_{K+1} (greedy: its argmax).

Distributions. Sampling: p and q are the processed distributions (temperature,
top-k, top-p), the same the lossless rule uses; the support guard is p_i(x_i) > 0.
Greedy: the JS distance uses the soft distributions (softmax of raw target logits,
and the draft's softmax the tokens were drafted from), the same ones the
policy's statistics use; the support guard uses the softmax of the raw target
logits restricted by the user's top-k / top-p (at temperature 1), so with neither
set every token is in the support.

The rule is lossy: ``lossless = False``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..sampling import SamplingParams, js_distance, process_logits
from .base import AcceptanceRule, Proposal, Verdict, first_rejection
from .speculative import emit_after, uniforms

COMBINE_MODES = ("or", "replace")


class JSStatistics(Protocol):
    """What the rule needs from the statistics AdaSD keeps per request (or shared), by state slot."""

    def warm(self, slots: torch.Tensor) -> torch.Tensor: ...  # [b] bool: past the cold start

    def js_threshold(self, slots: torch.Tensor) -> torch.Tensor: ...  # [b] T_V (-inf while cold)


class AdaSDAcceptance(AcceptanceRule):
    name = "adasd-js"
    lossless = False

    def __init__(self, statistics: JSStatistics, combine: str = "or") -> None:
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
        self.statistics = statistics
        self.combine = combine

    def settings(self) -> dict:
        return {
            "combine": self.combine,
            "threshold": "T_V = (mean JS distance of accepted + mean of rejected) / 2, base 2",
            "support_guard": "never JS-accept a token with target probability 0 after top-k/top-p",
            "after_rejection": "standard residual norm(max(0, p - q)); greedy: argmax p",
        }

    def __call__(self, proposal: Proposal) -> Verdict:
        x, lens, params = proposal.draft_tokens, proposal.draft_lens, proposal.params
        b, K = x.shape
        device = x.device
        greedy = params.greedy
        scores: dict[str, torch.Tensor] = {}
        if K == 0:
            accept = torch.zeros((b, 0), dtype=torch.bool, device=device)
        else:
            if greedy:
                p_soft = proposal.target_logits[:, :K].float().softmax(-1)
                q_soft = proposal.draft_probs.float()
                standard = x == proposal.target_logits[:, :K].argmax(-1)
                if params.top_k or params.top_p < 1.0:
                    restricted = process_logits(proposal.target_logits[:, :K], SamplingParams(1.0, params.top_k, params.top_p))
                    support = restricted.gather(2, x[:, :, None]).squeeze(2) > 0
                else:
                    support = torch.ones((b, K), dtype=torch.bool, device=device)
            else:
                p_soft, q_soft = proposal.target_probs[:, :K], proposal.draft_probs
                px = p_soft.gather(2, x[:, :, None]).squeeze(2)
                qx = q_soft.gather(2, x[:, :, None]).squeeze(2)
                standard = uniforms(proposal) * qx < px
                support = px > 0
            d = scores["js_distance"] = js_distance(p_soft, q_soft)  # [b, K]; the policy's statistics reuse it
            warm = self.statistics.warm(proposal.slots).to(device)[:, None]
            t_v = self.statistics.js_threshold(proposal.slots).to(device)[:, None]
            js_ok = warm & (d.double() < t_v) & support
            if self.combine == "or":
                accept = standard | js_ok
            else:
                accept = torch.where(warm, js_ok, standard)
        n, mask = first_rejection(accept, lens)
        if greedy:
            next_token = proposal.target_logits.argmax(-1).gather(1, n[:, None]).squeeze(1)
        else:
            next_token = emit_after(proposal, n)
        return Verdict(n, next_token, mask, scores)
