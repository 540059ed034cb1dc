"""The one decoding loop: rounds of draft -> verify -> commit over per-request state.

A :class:`Batch` holds the running requests, one row each in both models' KV
caches. Every :meth:`Batch.step` is one round for all of them:

1. **draft**: the draft proposes up to a policy-chosen number of tokens per
   request (:func:`~specadapt.policies.base.draft_round`);
2. **verify**: one target forward over every request's unseen tokens and drafts;
   the acceptance rule decides per request how many drafts stand and which token
   follows them; the policy is told (``observe``);
3. **commit**: accepted tokens go to each request's output, rejected drafts are
   rolled back from the caches, finished requests leave the batch.

Requests may join between rounds (:meth:`Batch.add`). A fresh batch's prompts are
fed in the first round's forward passes (apart, in groups, when their lengths
differ too much to share one pass); a prompt joining a running batch is fed
in a pass of its own (all but its last token: to the target before the round, to
the draft when it first drafts for the request), so the running rows are not
padded to its length. The loop knows
nothing about any method: a :class:`~specadapt.methods.Method` supplies the
draft-length policy and the acceptance rule. Target-only decoding is the same
loop with a policy that drafts nothing.

Invariant between rounds, per request: each model's cache holds the sequence
except the tokens it has not been fed yet (``target_pending``/``draft_pending``).
For the target that is the token emitted last round; for the draft, the same
token preceded by the last draft token when the whole block was accepted.
"""

from __future__ import annotations

import heapq
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .acceptance import AcceptanceRule, Proposal, Verdict
from .errors import SpecAdaptError
from .logprobs import MAX_TOP_LOGPROBS, TokenLogprob, check_logprobs, score_tokens
from .lookup import lookup_next
from .methods import Method
from .models.draft_vocab import head_ids, output_width
from .models.graphed import make_runner
from .models.prefix import PrefixStore
from .models.quant import quantization_of
from .models.runner import ModelRunner, left_pad, share_one_pass
from .policies.base import DraftBlock, DraftStep, RoundCost, draft_round, finish_round
from .sampling import SamplingParams, process_logits, sample
from .stats import RequestStats

if TYPE_CHECKING:
    from .load import LoadRule


MAX_SEED = 2**63 - 2**20  # request i of a batch uses seed + i: leave room below torch's int64 limit


@dataclass
class RequestConfig:
    """What one request asks for: its length limit, sampling parameters and stop conditions."""

    max_new_tokens: int = field(default=128, metadata={"help": "Exact maximum number of generated tokens."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_k: int = field(default=0, metadata={"help": "Keep only the k most likely tokens (0 = off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    seed: int | None = field(default=None, metadata={"help": "Random seed for sampling (default: a random one, recorded)."})
    stop_strings: Sequence[str] = ()
    eos_token_ids: Sequence[int] | None = None  # None: the model's own
    logprobs: int | None = field(default=None, metadata={
        "help": "Report each generated token's log-probability under the target, and this many most likely "
                f"alternatives (0-{MAX_TOP_LOGPROBS}); off by default."})

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SpecAdaptError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise SpecAdaptError("stop strings must be non-empty text.")
        check_logprobs(self.logprobs)
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < MAX_SEED):
            raise SpecAdaptError(f"seed must be an integer in [0, {MAX_SEED - 1}] (or None for a random one), got {self.seed!r}.")
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
    settings: dict = field(default_factory=dict)  # the method, its settings and acceptance rule; both models' quantization
    logprobs: list[TokenLogprob] | None = None  # one per generated token, if the request asked (RequestConfig.logprobs)

    @property
    def lossless(self) -> bool:
        return bool(self.settings.get("lossless", True))


@dataclass
class RoundRecord:
    """What one round did and what it cost (``Batch.last_round``), for a caller that adapts to load."""

    rows: int  # requests in the round
    K: int  # draft steps run (0: a target-only round)
    draft_width: int  # tokens per row the draft's first forward fed (its pending tokens; 0: the draft did not run)
    target_width: int  # tokens per row the target pass fed before the drafts
    draft_s: float
    target_s: float
    drafted: list[int]  # per row
    accepted: list[int]  # per row
    prefill_s: float = 0.0  # prefill of joining prompts: the target's before the round, the draft's in it (apart)
    draft_fill_tokens: int = 0  # of those, the tokens fed to the draft apart (a catch-up) ...
    draft_fill_s: float = 0.0  # ... and the seconds they took
    draft_first_s: float = 0.0  # of draft_s, the draft model's first forward (its pending tokens); 0: not timed (GPU)


@dataclass
class Request:
    """Everything the loop keeps about one running request."""

    prompt: list[int]
    config: RequestConfig
    seed: int
    slot: int  # the policy's per-request state slot
    generator: torch.Generator
    eos: frozenset[int]
    on_tokens: Callable[[list[int]], None] | None = None
    output: list[int] = field(default_factory=list)
    stats: RequestStats = field(default_factory=RequestStats)
    target_pending: list[int] = field(default_factory=list)  # tokens the target has not been fed yet
    draft_pending: list[int] = field(default_factory=list)  # tokens the draft has not been fed yet
    draft_reused: int = 0  # of the prompt, tokens the draft's prefix cache held when the request joined
    logprobs: list[TokenLogprob] | None = None  # one per output token, if the request asked for them
    finish_reason: str | None = None  # "eos" | "stop" | "length" | "cancelled"; None while running
    started: float = field(default_factory=time.perf_counter)

    @property
    def room(self) -> int:
        return self.config.max_new_tokens - len(self.output)

    @property
    def draft_unfed(self) -> bool:
        """The draft has seen nothing of this request yet (it joined a running batch and was not drafted for)."""
        return len(self.draft_pending) == len(self.prompt) + len(self.output)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SpeculativeEngine:
    """Runs any registered method on a target (and optional draft) model."""

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: Sequence[int] = (),
        prefix_cache_tokens: int = 0,
    ) -> None:
        """``prefix_cache_tokens``: see :meth:`keep_prefixes`."""
        self.target = target
        self.draft = draft
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.device = target.device
        # Read from the model itself, however it was built: a quantized target is another model, so every
        # result says which one it is lossless with respect to.
        scheme, group = quantization_of(target)
        self.target_quant = {"target_quant": scheme, "target_group_size": group}
        # The draft's quantization and head change speed only, but a measurement must say which draft it timed.
        scheme, group = quantization_of(draft) if draft is not None else ("none", None)
        self.draft_setup = {"draft_quant": scheme, "draft_group_size": group,
                            "draft_head_ids": head_ids(draft) if draft is not None else None}
        self.keep_prefixes(prefix_cache_tokens)

    def keep_prefixes(self, max_tokens: int) -> None:
        """Keep up to ``max_tokens`` tokens of recently fed prompts per model (0: none, the default), so that a prompt
        starting as an earlier one did (a chat template's system turn, a task's instruction) feeds the models only
        the rest; the batches this engine runs from now on share the stores. See :mod:`specadapt.models.prefix`."""
        if max_tokens < 0:
            raise SpecAdaptError(f"the prefix cache must hold >= 0 tokens (0: none), got {max_tokens}.")
        self.prefixes = {name: PrefixStore(max_tokens) if max_tokens and model is not None else None
                         for name, model in (("target", self.target), ("draft", self.draft))}

    def batch(self, method: Method, early_first_token: bool = False) -> "Batch":
        """An empty batch running ``method``; add requests, then call ``step()`` until it is empty.

        ``early_first_token``: a request's first round drafts nothing for it, so its first token comes with its
        prompt's prefill, as in target-only decoding, not after the draft's prefill and a block of drafts (a
        server's time to first token; it costs one round without drafting per request)."""
        return Batch(self, method, early_first_token)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        method: Method,
        config: RequestConfig | Sequence[RequestConfig],
        on_tokens: Callable[[int, list[int]], None] | None = None,
        load_rule: "LoadRule | str" = "auto",
    ) -> list[GenerationResult]:
        """Generate for tokenised prompts, batched; ``on_tokens(i, ids)`` streams each round's new tokens.

        One ``config`` for all prompts gives prompt i the seed ``config.seed + i``; a list gives each its own.

        Several greedy prompts run under a load rule, as the server's requests do: a batch's round lasts until its
        last row stops drafting and every row pays for every draft step and verified position, so left to
        themselves adaptive policies make long rounds that cost more than they yield (``BENCHMARKS.md``, "Does any
        draft length pay at 8 rows?"). The rule caps each round's draft length at what pays for the batch's size
        (``"auto"``: a fresh :class:`specadapt.load.AutoLoad`, which lets a round draft at most ``WARMUP_DRAFT``
        until it has measured a draft step, measured faster than one kept over earlier batches; a rule object; or
        ``"off"``: the policy's own lengths, as for one prompt). As in the server, a request's first round under a
        rule only prefills. A greedy output is the target's whatever the draft lengths. A batch with a sampled
        request runs uncapped: which sample a seed gives depends on the draft lengths, and a rule's depend on
        measured time."""
        if not prompts:
            raise SpecAdaptError("no prompts given.")
        configs = [config] * len(prompts) if isinstance(config, RequestConfig) else list(config)
        if len(configs) != len(prompts):
            raise SpecAdaptError(f"got {len(configs)} request configs for {len(prompts)} prompts.")
        from .load import WARMUP_DRAFT, AutoLoad, load_capped  # load.py builds on this module's types

        if isinstance(load_rule, str) and load_rule not in ("auto", "off"):
            raise SpecAdaptError(f"load_rule must be 'auto', 'off' or a load rule object, got {load_rule!r}.")
        rule = cap = None
        if len(prompts) > 1 and method.needs_draft and all(c.sampling.greedy for c in configs) and load_rule != "off":
            rule = AutoLoad() if load_rule == "auto" else load_rule
            method, cap = load_capped(method)
        base_seed = secrets.randbelow(2**31 - len(prompts))
        # Under a rule, as in the server, a request's first round only prefills: that round feeds every prompt and
        # ran uncapped for a rule that priced it (32 draft steps over 8 fresh prompts, twice target-only's round).
        batch = self.batch(method, early_first_token=rule is not None)
        requests = []
        for i, (prompt, cfg) in enumerate(zip(prompts, configs)):
            seed = base_seed + i if cfg.seed is None else cfg.seed + (i if cfg is config else 0)
            stream = (lambda ids, i=i: on_tokens(i, ids)) if on_tokens is not None else None
            requests.append(batch.add(prompt, cfg, seed=seed, on_tokens=stream))
        while batch.active:
            if rule is None:
                batch.step()
                continue
            batch.admit()  # prompts first: the rule prices the round as it will run
            cap.cap = rule.decide(batch.requests, cap.last_bound(), cap.reads_cost) if rule.ready else WARMUP_DRAFT
            batch.last_round = None
            batch.step()
            if batch.last_round is not None:
                rule.observe(batch.last_round)
        results = [batch.result(r) for r in requests]
        if rule is not None:
            for result in results:
                result.settings["load_rule"] = type(rule).__name__
        return results


class Batch:
    """The requests running one method together, and the two models' caches (one row per request)."""

    def __init__(self, engine: SpeculativeEngine, method: Method, early_first_token: bool = False) -> None:
        self.engine = engine
        self.method = method
        self.early_first_token = early_first_token
        self.policy = method.policy
        self.device = engine.device
        self.target = make_runner(engine.target, exact=True, prefixes=engine.prefixes["target"])
        self.draft: ModelRunner | None = None
        if method.needs_draft:
            if engine.draft is None:
                raise SpecAdaptError(f"method {method.name!r} needs a draft model; load one or use 'autoregressive'.")
            self.draft = make_runner(engine.draft, want_hidden=self.policy.needs_hidden, prefixes=engine.prefixes["draft"])
            self._vocab = output_width(engine.draft)  # a looked-up token's point mass has the draft's width
        self.requests: list[Request] = []  # row i of both caches is requests[i] (once joined)
        self._joining: list[Request] = []  # added since the last round: no cache rows or policy state yet
        self._free_slots: list[int] = []  # slots of requests that left (a heap: the smallest is reused first)
        self._next_slot = 0
        self._rules: dict[SamplingParams, AcceptanceRule] = {}
        self.last_round: RoundRecord | None = None
        self._prefill_s = 0.0  # prefill of joining prompts since the last round
        self._draft_fill = (0, 0.0)  # of it, the draft's: tokens fed apart, seconds
        self._draft_first_s = 0.0  # this round's first draft forward (a load rule prices later steps apart from it)

    # --- requests joining and leaving ------------------------------------------------------------

    def add(
        self,
        prompt: Sequence[int],
        config: RequestConfig,
        seed: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> Request:
        """A new request; it joins the batch at the next round."""
        if len(prompt) == 0:
            raise SpecAdaptError("every prompt must contain at least one token (got an empty prompt).")
        seed = seed if seed is not None else config.seed if config.seed is not None else secrets.randbelow(2**31)
        if self._free_slots:
            slot = heapq.heappop(self._free_slots)
        else:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
        eos = config.eos_token_ids if config.eos_token_ids is not None else self.engine.eos_token_ids
        request = Request(
            list(prompt), config, seed, slot, torch.Generator(device=self.device).manual_seed(seed), frozenset(eos),
            on_tokens, stats=RequestStats(prompt_tokens=len(prompt)),
            target_pending=list(prompt), draft_pending=list(prompt),
            logprobs=None if config.logprobs is None else [],
        )
        self._joining.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """End a request now (e.g. its client went away): it leaves the batch before the next round."""
        if request.finish_reason is None:
            request.finish_reason = "cancelled"
            request.stats.total_time_s = time.perf_counter() - request.started
        if request in self._joining:
            self._joining.remove(request)
            heapq.heappush(self._free_slots, request.slot)

    @property
    def active(self) -> int:
        """Requests running or about to join."""
        return len(self.requests) + len(self._joining)

    def admit(self) -> None:
        """Give the requests added since the last round their cache rows and fresh policy state (``step`` does it
        first thing; a caller that decides something about the round from its requests calls it before).

        Joining a running batch, a prompt is fed to the target now, in a pass of its own; the draft sees it only
        when it next drafts for the request (then also in a pass of its own), so rounds kept target-only under
        load spend nothing on it. A fresh batch's prompts are fed in its first round, unless their lengths differ
        so much that one pass would be mostly padding, or a prefix cache keeps what is fed: then they are fed the
        same way, in groups."""
        if not self._joining:
            return
        joining, self._joining = self._joining, []
        self.target.add_rows(len(joining))
        if self.draft is not None:
            self.draft.add_rows(len(joining))
        running = len(self.requests)
        self.requests += joining
        if running or self.target.prefixes is not None or not share_one_pass([len(r.target_pending) for r in joining]):
            # prefill the target apart, so no row is padded to a much longer prompt's length (and prefixes are kept)
            self._feed_apart(self.target, list(range(running, len(self.requests))))
        if self.draft is not None:  # what feeding the draft will cost, for a caller that prices it (a load rule)
            for r in joining:
                r.draft_reused = self.draft.reusable(r.draft_pending[:-1])
        self.policy.begin(torch.tensor([r.slot for r in joining], device=self.device))

    def result(self, request: Request) -> GenerationResult:
        text = self.engine.tokenizer.decode(request.output, skip_special_tokens=True)
        settings = {**self.method.describe(request.config.sampling), **self.engine.target_quant, **self.engine.draft_setup}
        return GenerationResult(request.output, text, request.finish_reason or "length", request.stats, request.seed, settings,
                                request.logprobs)

    # --- one round -------------------------------------------------------------------------------

    def step(self) -> list[Request]:
        """One round for every request in the batch; returns the requests that finished in it."""
        if any(r.finish_reason == "cancelled" for r in self.requests):
            self._keep_rows([j for j, r in enumerate(self.requests) if r.finish_reason is None])
        self.admit()
        if not self.requests:
            return []
        slots = torch.tensor([r.slot for r in self.requests], device=self.device)
        t0, prefill = time.perf_counter(), self._prefill_s
        block, fed_draft, fed_block = self._draft(slots)
        _sync(self.device)
        t1 = time.perf_counter()
        target_logits, fed_target = self._verify(block)
        _sync(self.device)
        t2 = time.perf_counter()
        verdict = self._accept(slots, block, target_logits)
        draft_s, target_s = t1 - t0 - (self._prefill_s - prefill), t2 - t1  # a joined prompt's feed is prefill
        finish_round(self.policy, slots, block, verdict.num_accepted, verdict.accepted_mask, verdict.token_scores,
                     RoundCost(draft_s, target_s, fed_target, fed_draft + fed_block))
        return self._commit(block, verdict, target_logits, fed_draft, fed_block, fed_target, draft_s, target_s)

    def _groups(self) -> list[tuple[SamplingParams, torch.Tensor | slice]]:
        """Rows with equal sampling parameters, as an index (a plain slice when all rows agree)."""
        rows: dict[SamplingParams, list[int]] = {}
        for i, r in enumerate(self.requests):
            rows.setdefault(r.config.sampling, []).append(i)
        if len(rows) == 1:
            return [(next(iter(rows)), slice(None))]
        return [(params, torch.tensor(idx, device=self.device)) for params, idx in rows.items()]

    def _draft(self, slots: torch.Tensor) -> tuple[DraftBlock, int, int]:
        """Propose each request's draft tokens; returns the block, how many pending tokens the draft model was fed
        (0: it did not run) and how many of the block's tokens it was fed (all but the last, unless prompt lookup
        proposed the last ones)."""
        # A request's last token is the target's, never a draft; so is its first, with early_first_token.
        room = [0 if self.early_first_token and not r.output else r.room - 1 for r in self.requests]
        if self.draft is None or max(room) <= 0:
            return DraftBlock([], torch.zeros_like(slots)), 0, 0
        # Built at the first proposal only: a round whose bound is 0 for every row (a target-only round under a
        # load cap) does no drafting work at all, not even padding the tokens the draft has yet to see.
        fed = fed_block = 0
        groups = eos = None
        unfed: list[torch.Tensor] = []  # the block's tokens the draft model has not been fed yet ([b] each)
        texts = [r.prompt + r.output for r in self.requests] if self.method.lookup else []

        def propose(k: int, previous: DraftStep | None, drafting: torch.Tensor):
            nonlocal fed, fed_block, groups, eos
            if eos is None:
                eos = self._eos_table()
            if previous is not None:
                unfed.append(previous.tokens)
                for text, token in zip(texts, previous.tokens.tolist()):
                    text.append(token)
            if texts and (looked_up := self._look_up(texts, drafting)) is not None:
                return looked_up, F.one_hot(looked_up, self._vocab).float(), None, True
            if not fed:  # the model's first forward also feeds the pending tokens (the whole prompt at first)
                self._fill_draft()
                ids, valid = left_pad([r.draft_pending for r in self.requests], self.device)
                fed, groups = ids.shape[1], self._groups()
                if unfed:
                    ids = torch.cat([ids, torch.stack(unfed, 1)], 1)
                    valid = torch.cat([valid, torch.ones_like(ids[:, fed:])], 1)
                start = time.perf_counter()
                logits, hidden = self.draft.forward(ids, valid)
                if self.device.type == "cpu":  # on a GPU the call returns before the work is done: not timed
                    self._draft_first_s = time.perf_counter() - start
            else:
                logits, hidden = self.draft.forward(torch.stack(unfed, 1))
            fed_block += len(unfed)
            unfed.clear()
            tokens, probs = self._choose(logits[:, -1], drafting, groups)
            return tokens, probs, hidden[:, -1] if hidden is not None else None, False

        # On GPU, asking "has every row stopped?" after each token is a host sync; skip it when only
        # the round's bound can stop a row (rows that stopped at EOS are masked out either way).
        check = self.device.type != "cuda" or self.policy.stops_early
        limit = torch.tensor(room, device=self.device)
        block = draft_round(self.policy, slots, limit, propose, lambda t: (t[:, None] == eos).any(1), check)
        return block, fed if block.K else 0, fed_block

    def _look_up(self, texts: list[list[int]], drafting: torch.Tensor) -> torch.Tensor | None:
        """Prompt lookup's token for every row ([b]; stopped rows get 0), or None unless every drafting row has one."""
        tokens = []
        for text, active in zip(texts, drafting.tolist()):
            token = lookup_next(text, self.method.lookup) if active else 0
            if token is None:
                return None
            tokens.append(token)
        return torch.tensor(tokens, device=self.device)

    def _fill_draft(self) -> None:
        """Feed the draft, apart from the other rows, the requests it has seen nothing of (they joined a running
        batch, a fresh batch's prompts differ much in length, or a prefix cache keeps what is fed); the draft's
        cache is otherwise padded to their length."""
        unfed = self.draft.unfed_rows()
        if not unfed:
            return
        # A fresh batch's prompts of similar lengths are fed in the round instead.
        if (self.draft.mask.shape[1] > 0 or self.draft.prefixes is not None
                or not share_one_pass([len(self.requests[j].draft_pending) for j in unfed])):
            self._feed_apart(self.draft, unfed)

    def _feed_apart(self, runner: ModelRunner, rows: list[int]) -> None:
        """Feed ``runner`` (the target's or the draft's) these rows' pending tokens but the last (the round needs
        its logits), in passes of their own; the time is prefill, booked to those requests."""
        draft = runner is self.draft
        seqs = [(self.requests[j].draft_pending if draft else self.requests[j].target_pending)[:-1] for j in rows]
        t0 = time.perf_counter()
        copied = runner.fill_rows(rows, seqs)
        _sync(self.device)
        spent = time.perf_counter() - t0
        if draft:
            fed = sum(map(len, seqs)) - sum(copied)
            self._draft_fill = (self._draft_fill[0] + fed, self._draft_fill[1] + spent)
        for j, n in zip(rows, copied):
            r = self.requests[j]
            if draft:
                r.draft_pending = r.draft_pending[-1:]
                r.stats.draft_time_s += spent
            else:
                r.target_pending = r.target_pending[-1:]
                r.stats.target_time_s += spent
                r.stats.cached_prompt_tokens += n
        self._prefill_s += spent

    def _choose(self, logits: torch.Tensor, drafting: torch.Tensor, groups) -> tuple[torch.Tensor, torch.Tensor]:
        """The draft's token per row (argmax when greedy, else a sample from the request's generator) and the
        distribution it came from (fp32: in bf16 a confident token's q rounds to 1 and 1 - q, a head feature, to 0)."""
        tokens = logits.argmax(-1)
        probs = None if len(groups) == 1 else torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        sampled = None
        for params, idx in groups:
            group = logits[idx].float().softmax(-1) if params.greedy else process_logits(logits[idx], params)
            if probs is None:
                probs = group
            else:
                probs[idx] = group
            if not params.greedy:
                if sampled is None:
                    sampled = set(torch.nonzero(drafting).flatten().tolist())
                rows = range(len(self.requests))[idx] if isinstance(idx, slice) else idx.tolist()
                for j, row in enumerate(rows):
                    if row in sampled:
                        tokens[row] = sample(group[j], self.requests[row].generator)
        return tokens, probs

    def _eos_table(self) -> torch.Tensor:
        """[b, E] each request's EOS ids, padded with -1."""
        width = max(1, max(len(r.eos) for r in self.requests))
        table = [sorted(r.eos) + [-1] * (width - len(r.eos)) for r in self.requests]
        return torch.tensor(table, dtype=torch.long, device=self.device)

    def _verify(self, block: DraftBlock) -> tuple[torch.Tensor, int]:
        """One target forward over every request's unseen tokens and drafts: logits [b, K + 1, V]."""
        ids, valid = left_pad([r.target_pending for r in self.requests], self.device)
        drafts = block.tokens
        logits, _ = self.target.forward(
            torch.cat([ids, drafts], 1), torch.cat([valid, torch.ones_like(drafts)], 1), keep=block.K + 1
        )
        return logits, ids.shape[1]

    def _accept(self, slots: torch.Tensor, block: DraftBlock, target_logits: torch.Tensor) -> Verdict:
        """Apply each sampling group's acceptance rule; the verdicts (and the token scores the policy reads) of all rows."""
        b, K = block.tokens.shape
        n = torch.zeros(b, dtype=torch.long, device=self.device)
        next_token = torch.zeros(b, dtype=torch.long, device=self.device)
        mask = torch.zeros((b, K), dtype=torch.bool, device=self.device)
        scores = {name: torch.zeros((b, K), device=self.device) for name in self.policy.reads_scores} if K else {}
        for params, idx in self._groups():
            probs = None if params.greedy else process_logits(target_logits[idx], params)
            rows = range(b)[idx] if isinstance(idx, slice) else idx.tolist()
            rule = self._rule(params)
            draft_probs = block.probs[idx] if K and rule.reads_draft_probs else None
            proposal = Proposal(
                block.tokens[idx], block.lens[idx], draft_probs, target_logits[idx], probs,
                params, [self.requests[i].generator for i in rows], slots[idx],
            )
            verdict = rule(proposal)
            n[idx], next_token[idx], mask[idx] = verdict.num_accepted, verdict.next_token, verdict.accepted_mask
            for name, values in scores.items():
                values[idx] = verdict.token_scores[name]  # the method pairs the policy with a rule that computes it
        return Verdict(n, next_token, mask, scores)

    def _rule(self, params: SamplingParams) -> AcceptanceRule:
        if params not in self._rules:
            self._rules[params] = self.method.rule(params)
        return self._rules[params]

    def _commit(
        self, block: DraftBlock, verdict: Verdict, target_logits: torch.Tensor, fed_draft: int, fed_block: int,
        fed_target: int, draft_s: float, target_s: float,
    ) -> list[Request]:
        """Append accepted tokens + the emitted one (and, where asked, their logprobs from the verification's
        logits at their positions), roll back rejected drafts, let finished requests leave."""
        K, n = block.K, verdict.num_accepted
        self.target.keep_tail(fed_target + K, fed_target + n)
        if fed_draft:  # the model was fed the pending tokens and the block's first fed_block tokens
            self.draft.keep_tail(fed_draft + fed_block, fed_draft + n.clamp_max(fed_block))
        n_list, next_list, lens = n.tolist(), verdict.next_token.tolist(), block.lens.tolist()
        drafted = block.tokens.tolist()
        self.last_round = RoundRecord(len(self.requests), K, fed_draft, fed_target, draft_s, target_s, lens, n_list,
                                      self._prefill_s, *self._draft_fill, self._draft_first_s)
        self._prefill_s, self._draft_fill, self._draft_first_s = 0.0, (0, 0.0), 0.0
        keep, finished = [], []
        for j, r in enumerate(self.requests):
            new, r.finish_reason = self._truncate(r, drafted[j][: n_list[j]] + [next_list[j]])
            r.output.extend(new)
            if r.logprobs is not None:
                r.logprobs.extend(score_tokens(target_logits[j], new, r.config.logprobs))
            r.stats.record_round(lens[j], n_list[j], len(new))
            r.stats.draft_time_s += draft_s
            r.stats.target_time_s += target_s
            if r.on_tokens is not None and new:
                r.on_tokens(new)
            if r.finish_reason is not None:
                r.stats.total_time_s = time.perf_counter() - r.started
                finished.append(r)
                continue
            keep.append(j)
            r.target_pending = [next_list[j]]
            if fed_draft:  # accepted tokens it was not fed (the last drafted one; looked-up ones), then the next
                r.draft_pending = drafted[j][fed_block : n_list[j]] + [next_list[j]]
            else:  # the draft model did not run this round: it still has to see everything
                r.draft_pending += drafted[j][: n_list[j]] + [next_list[j]]
        if finished:
            self._keep_rows(keep)
        return finished

    def _keep_rows(self, keep: list[int]) -> None:
        kept = set(keep)
        for j, r in enumerate(self.requests):
            if j not in kept:
                heapq.heappush(self._free_slots, r.slot)
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.requests = [self.requests[j] for j in keep]
        self.target.select_rows(index)
        if self.draft is not None:
            self.draft.select_rows(index)

    def _truncate(self, request: Request, new: list[int]) -> tuple[list[int], str | None]:
        """Cut ``new`` at the first EOS, stop string or the max_new_tokens budget; say why the request ended."""
        reason = None
        for t, token in enumerate(new):
            if token in request.eos:
                new, reason = new[: t + 1], "eos"
                break
        if request.config.stop_strings:
            done = request.output[-64:]
            for t in range(1, len(new) + 1):
                text = self.engine.tokenizer.decode(done + new[:t])
                if any(s in text for s in request.config.stop_strings):
                    new, reason = new[:t], "stop"
                    break
        if len(new) >= request.room:
            new, reason = new[: request.room], reason or "length"
        return new, reason
