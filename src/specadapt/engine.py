"""The one decoding loop: draft -> verify -> accept -> roll back, batched.

It knows nothing about any specific method: a :class:`~specadapt.methods.Method`
supplies the draft-length policy and the acceptance rule. Target-only decoding
is the same loop with a policy that drafts nothing.

Invariants between rounds, per request (row): each model's cache holds the
sequence except the tokens it has not been fed yet. For the target that is the
token emitted last round (the whole prompt before the first round); for the
draft, ``pending``: the same token, preceded by the last draft token when the
whole block was accepted. Pending tokens go first into the next forward pass.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .acceptance import Proposal
from .errors import SpecAdaptError
from .methods import Method
from .models.runner import ModelRunner
from .policies import DraftStep, RoundOutcome
from .sampling import SamplingParams, process_logits, sample
from .stats import RequestStats

# Nothing else bounds some adaptive policies; this keeps a round's work finite.
MAX_DRAFT_TOKENS = 64


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # request i of a batch uses seed + i
    stop_strings: Sequence[str] = ()
    eos_token_ids: Sequence[int] | None = None  # None: the model's own

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SpecAdaptError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        if any(not s for s in self.stop_strings):
            raise SpecAdaptError("stop strings must be non-empty.")
        self.sampling  # validates temperature / top-k / top-p

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p)


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids only
    text: str
    finish_reason: str  # "eos" | "stop" | "length"
    stats: RequestStats
    seed: int
    method: dict = field(default_factory=dict)

    @property
    def lossless(self) -> bool:
        return bool(self.method.get("lossless", True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _left_pad(seqs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    valid = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            valid[i, width - len(s) :] = 1
    return ids.to(device), valid.to(device)


class SpeculativeEngine:
    """Runs any registered method on a target (and optional draft) model."""

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        self.target = target
        self.draft = draft
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.device = target.device

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        method: Method,
        config: GenerationConfig,
        on_tokens: Callable[[int, list[int]], None] | None = None,
    ) -> list[GenerationResult]:
        """Generate for a batch of tokenised prompts. ``on_tokens(i, ids)`` streams each round's new tokens."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise SpecAdaptError("every prompt must contain at least one token (got an empty prompt).")
        if method.needs_draft and self.draft is None:
            raise SpecAdaptError(f"method {method.name!r} needs a draft model; load one or use 'autoregressive'.")
        params = config.sampling
        rule = method.rule(params)
        policy = method.policy
        description = method.describe(params)
        eos = torch.tensor(
            list(config.eos_token_ids) if config.eos_token_ids is not None else self.eos_token_ids,
            dtype=torch.long,
            device=self.device,
        )
        eos_ids = set(eos.tolist())
        B = len(prompts)
        base_seed = config.seed if config.seed is not None else secrets.randbelow(2**31 - B)
        generators = [torch.Generator(device=self.device).manual_seed(base_seed + i) for i in range(B)]
        stats = [RequestStats(prompt_tokens=len(p)) for p in prompts]
        outputs: list[list[int]] = [[] for _ in range(B)]
        finish = ["length"] * B
        use_draft = method.needs_draft
        policy.reset(B)

        start = time.perf_counter()
        target = ModelRunner(self.target)
        target.reset(B)
        draft = ModelRunner(self.draft, want_hidden=policy.needs_hidden) if use_draft else None
        if draft is not None:
            draft.reset(B)
        rows = torch.arange(B, device=self.device)
        # Tokens each model has not seen yet: the whole prompt at first, so the first
        # round's forward passes double as prefill (no separate prompt pass).
        target_pending: list[list[int]] = [list(p) for p in prompts]
        pending: list[list[int]] = [list(p) for p in prompts]

        while rows.numel():
            b = rows.numel()
            active = rows.tolist()
            remaining = torch.tensor([config.max_new_tokens - len(outputs[i]) for i in active], device=self.device)
            caps = torch.minimum(policy.max_length(rows).clamp(0, MAX_DRAFT_TOKENS), remaining - 1)
            if not use_draft:
                caps = torch.zeros_like(caps)
            row_generators = [generators[i] for i in active]

            # Draft: propose up to caps[i] tokens per row.
            t0 = time.perf_counter()
            tokens: list[torch.Tensor] = []
            soft: list[torch.Tensor] = []
            q: list[torch.Tensor] = []
            lens = torch.zeros(b, dtype=torch.long, device=self.device)
            fed_pending = 0
            if int(caps.max()) > 0:
                pend_ids, pend_valid = _left_pad(pending, self.device)
                fed_pending = pend_ids.shape[1]
                logits, hidden = draft.forward(pend_ids, pend_valid)
                drafting = caps > 0
                for k in range(1, int(caps.max()) + 1):
                    step_logits = logits[:, -1]
                    if params.greedy:
                        tok = step_logits.argmax(-1)
                        # fp32: in bf16 a confident token's q rounds to 1 and 1 - q (a head feature) to 0.
                        probs = step_logits.float().softmax(-1)
                    else:
                        probs = process_logits(step_logits, params)
                        tok = step_logits.argmax(-1)
                        for j in torch.nonzero(drafting).flatten().tolist():
                            tok[j] = sample(probs[j], row_generators[j])
                        q.append(probs)
                    tok = torch.where(drafting, tok, 0)
                    tokens.append(tok)
                    soft.append(probs)
                    lens += drafting.long()
                    step = DraftStep(k, tok, probs, hidden[:, -1] if hidden is not None else None, rows, drafting)
                    stop = policy.should_stop(step) | (k >= caps) | torch.isin(tok, eos)
                    drafting = drafting & ~stop
                    if not bool(drafting.any()):
                        break
                    logits, hidden = draft.forward(tok[:, None])
            K = len(tokens)
            draft_tokens = torch.stack(tokens, 1) if K else torch.zeros((b, 0), dtype=torch.long, device=self.device)
            _sync(self.device)
            t1 = time.perf_counter()

            # Verify: one target pass over the tokens it has not seen and the drafts.
            tp_ids, tp_valid = _left_pad(target_pending, self.device)
            fed_target = tp_ids.shape[1]
            target_logits, _ = target.forward(
                torch.cat([tp_ids, draft_tokens], 1), torch.cat([tp_valid, torch.ones_like(draft_tokens)], 1), keep=K + 1
            )
            _sync(self.device)
            t2 = time.perf_counter()
            target_probs = None if params.greedy else process_logits(target_logits, params)
            verdict = rule(
                Proposal(
                    draft_tokens,
                    lens,
                    torch.stack(q, 1) if q else None,
                    target_logits,
                    target_probs,
                    params,
                    row_generators,
                )
            )
            n = verdict.num_accepted
            if K:
                want_probs = policy.needs_target_probs
                policy.observe(
                    RoundOutcome(
                        rows,
                        lens,
                        n,
                        draft_tokens,
                        torch.stack(soft, 1) if want_probs and K else None,
                        (target_probs if target_probs is not None else target_logits.softmax(-1)) if want_probs else None,
                        verdict.accepted_mask,
                    )
                )

            # Commit accepted tokens + the emitted token; roll back the rest.
            target.keep_tail(fed_target + K, fed_target + n)
            if fed_pending:
                draft.keep_tail(fed_pending + K - 1, fed_pending + n.clamp_max(K - 1))
            n_list, next_list, lens_list = n.tolist(), verdict.next_token.tolist(), lens.tolist()
            drafted_rows = draft_tokens.tolist()
            keep_rows = []
            for j, i in enumerate(active):
                new = drafted_rows[j][: n_list[j]] + [next_list[j]]
                new, reason = self._truncate(outputs[i], new, eos_ids, config)
                outputs[i].extend(new)
                stats[i].record_round(lens_list[j], n_list[j], len(new))
                stats[i].draft_time_s += t1 - t0
                stats[i].target_time_s += t2 - t1
                if on_tokens is not None and new:
                    on_tokens(i, new)
                if reason is None:
                    keep_rows.append(j)
                    target_pending[j] = [next_list[j]]
                    if fed_pending:
                        pending[j] = ([drafted_rows[j][K - 1]] if n_list[j] == K else []) + [next_list[j]]
                    else:
                        pending[j].append(next_list[j])
                else:
                    finish[i] = reason
                    stats[i].total_time_s = time.perf_counter() - start
            if len(keep_rows) < b:
                keep = torch.tensor(keep_rows, dtype=torch.long, device=self.device)
                rows = rows[keep]
                pending = [pending[j] for j in keep_rows]
                target_pending = [target_pending[j] for j in keep_rows]
                target.select_rows(keep)
                if draft is not None:
                    draft.select_rows(keep)

        return [
            GenerationResult(
                outputs[i],
                self.tokenizer.decode(outputs[i], skip_special_tokens=True),
                finish[i],
                stats[i],
                base_seed + i,
                description,
            )
            for i in range(B)
        ]

    def _truncate(
        self, done: list[int], new: list[int], eos_ids: set[int], config: GenerationConfig
    ) -> tuple[list[int], str | None]:
        """Cut ``new`` at the first EOS, stop string or the max_new_tokens budget; say why it ended."""
        reason = None
        for t, token in enumerate(new):
            if token in eos_ids:
                new, reason = new[: t + 1], "eos"
                break
        if config.stop_strings:
            for t in range(1, len(new) + 1):
                text = self.tokenizer.decode(done[-64:] + new[:t])
                if any(s in text for s in config.stop_strings):
                    new, reason = new[:t], "stop"
                    break
        room = config.max_new_tokens - len(done)
        if len(new) >= room:
            new, reason = new[:room], reason or "length"
        return new, reason
