"""Load rules: how many tokens a round may draft, given how many requests run (the draft-length cap of the
server's rounds and of ``SpeculativeEngine.generate``'s greedy batches).

Speculation trades draft passes, and verification of tokens that may be rejected, for fewer target passes.
At batch size 1 a target pass over K + 1 tokens costs about as much as over one, so drafting pays; as the
batch grows the target pass gets dearer per token and the extra positions stop being free, so drafting pays
less and eventually loses (vLLM and TensorRT-LLM likewise cut or switch off speculation under load).

A rule picks, before each round, a cap ``K_cap`` on every request's draft length (``None``: no cap, ``0``: a
target-only round); the method's own policy still decides within the cap (:class:`LoadCap` wraps it). A cap
only shortens drafts, so outputs never change: greedy output stays token-identical to ``generate()``, sampled
output keeps exactly the target's distribution (which sample a seed gives depends on the draft lengths, as it
does for any change of method).

- :class:`AutoLoad` (``spec_load="auto"``, the default) measures the round costs online and picks the cap
  that maximises expected tokens per second for the current batch (see its docstring); estimates age, and a
  batch size kept target-only is re-probed now and then, so one bad measurement cannot switch drafting off for good;
- :class:`StaticLoad` (``spec_load="static"``): above ``spec_max_batch`` requests, at most ``spec_load_k``;
- :class:`NoLoad` (``spec_load="off"``): never caps.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import torch

from .engine import Request, RoundRecord
from .methods import Method, MethodEntry
from .policies.base import MAX_DRAFT_TOKENS, DraftLengthPolicy, DraftStep, RoundOutcome

LOAD_RULES = ("auto", "static", "off")
WARMUP_DRAFT = 4  # rounds a rule has not measured yet draft at most this many tokens (the server's warm-up's too)
FILL_WEIGHT = 0.3  # a new measurement's weight in the running average of the draft's fill cost per token
MAX_PROBE_GAP = 8  # probes where drafting keeps losing grow rarer, down to one every 8 * probe_every rounds
PLAIN_WIDTH = 2  # a draft's first forward in a plain round feeds one or two pending tokens (more: it catches up)


class LoadCap(DraftLengthPolicy):
    """A method's policy, with an outside bound on the draft length: ``cap`` None = no bound, 0 = draft nothing.
    ``bound`` keeps the policy's own bounds of the last round (what a cap can cut)."""

    def __init__(self, inner: DraftLengthPolicy) -> None:
        self.inner = inner
        self.cap: int | None = None
        self.bound: torch.Tensor | None = None

    @property
    def needs_hidden(self) -> bool:  # type: ignore[override]
        return self.inner.needs_hidden

    @property
    def reads_scores(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.reads_scores

    @property
    def stops_early(self) -> bool:
        return self.inner.stops_early

    @property
    def reads_cost(self) -> bool:
        return self.inner.reads_cost

    def begin(self, slots: torch.Tensor) -> None:
        self.inner.begin(slots)

    def max_length(self, slots: torch.Tensor) -> torch.Tensor:
        self.bound = self.inner.max_length(slots)
        return self.bound if self.cap is None else self.bound.clamp_max(self.cap)

    def last_bound(self) -> int | None:
        """The largest draft length the policy allowed in the last round it drafted (None before any)."""
        return None if self.bound is None or not self.bound.numel() else int(self.bound.max())

    def should_stop(self, step: DraftStep) -> torch.Tensor:
        return self.inner.should_stop(step)

    def observe(self, outcome: RoundOutcome) -> None:
        self.inner.observe(outcome)

    def settings(self) -> dict:
        return self.inner.settings()


def load_capped(method: Method) -> tuple[Method, LoadCap]:
    """The same method with its policy wrapped in :class:`LoadCap`; the acceptance rule still sees the original policy."""
    cap = LoadCap(method.policy)
    entry = method.entry
    wrapped = MethodEntry(entry.name, entry.policy_cls, entry.summary, entry.needs_draft,
                          make_rule=lambda params, _policy: method.rule(params))
    return Method(wrapped, cap, method.spec, method.lookup), cap


class LoadRule(Protocol):
    @property
    def ready(self) -> bool:
        """Whether the rule can decide yet (a rule that learns costs online has measured them)."""

    def decide(self, rows: Sequence[Request], bound: int | None, priced: bool = False) -> int | None:
        """The draft-length cap for the next round over ``rows`` (``bound``: the policy's last largest bound;
        ``priced``: the policy measures its rounds' cost and prices each drafted token itself)."""

    def observe(self, record: RoundRecord) -> None:
        """What the round just run did and cost."""


class NoLoad:
    """Never caps: every round drafts what the method's policy asks for."""

    ready = True

    def decide(self, rows: Sequence[Request], bound: int | None, priced: bool = False) -> int | None:
        return None

    def observe(self, record: RoundRecord) -> None:
        pass


class StaticLoad(NoLoad):
    """A fixed threshold: while more than ``max_batch`` requests run, rounds draft at most ``load_k`` tokens."""

    def __init__(self, max_batch: int, load_k: int = 0) -> None:
        self.max_batch, self.load_k = max_batch, load_k

    def decide(self, rows: Sequence[Request], bound: int | None, priced: bool = False) -> int | None:
        return self.load_k if len(rows) > self.max_batch else None


class CostCurve:
    """Seconds for a forward pass over ``x`` positions (rows x tokens per row, padding included), learned from
    measurements: a running average per measured ``x`` (large ``x`` in ~10% buckets), linear in between.

    Beyond the largest measured ``x`` it extends the last segment's slope (flat with a single point), so an
    unmeasured shape looks no dearer than the evidence says: the rule then tries it and learns its real cost.
    Below the smallest it extends the first segment (no cheaper than proportional to ``x``, no dearer than flat).

    Estimates age: with ``half_life`` (in rounds), an average's weight against a new measurement halves every
    ``half_life`` rounds its point went unmeasured (``now``: the round of the measurement), so a measurement after
    a long gap mostly replaces a stale average (e.g. one a transient load spike inflated) instead of being
    averaged into it. Measurements in consecutive rounds are averaged with weight ``weight`` as without aging."""

    def __init__(self, weight: float = 0.2, half_life: float | None = None) -> None:
        self.weight = weight
        self.half_life = half_life
        self.points: dict[int, tuple[float, int, int]] = {}  # bucket -> (average seconds, samples, last round)

    @staticmethod
    def bucket(x: int) -> int:
        return x if x <= 64 else int(round(1.1 ** round(math.log(x, 1.1))))

    def add(self, x: int, seconds: float, now: int = 0) -> None:
        key = self.bucket(max(1, x))
        mean, n, last = self.points.get(key, (seconds, 0, now))
        weight = max(self.weight, 1 / (n + 1))
        if self.half_life and n:  # the old average fades with the rounds skipped since it was last measured
            weight = 1 - (1 - weight) * 0.5 ** (max(0, now - last - 1) / self.half_life)
        self.points[key] = (mean + weight * (seconds - mean), n + 1, now)

    def __bool__(self) -> bool:
        return bool(self.points)

    def __call__(self, x: int) -> float:
        xs = sorted(self.points)
        x = max(1, x)
        if x <= xs[0]:  # the first segment's line, between proportional to x and flat
            lo = self.points[xs[0]][0]
            if len(xs) == 1:
                return lo
            slope = (self.points[xs[1]][0] - lo) / (xs[1] - xs[0])
            return min(lo, max(lo * x / xs[0], lo - slope * (xs[0] - x)))
        for lo, hi in zip(xs, xs[1:]):
            if x <= hi:
                a, b = self.points[lo][0], self.points[hi][0]
                return a + (b - a) * (x - lo) / (hi - lo)
        if len(xs) == 1:
            return self.points[xs[0]][0]
        lo, hi = xs[-2], xs[-1]
        a, b = self.points[lo][0], self.points[hi][0]
        return b + max(0.0, (b - a) / (hi - lo)) * (x - hi)


class AcceptanceModel:
    """What a draft-length cap K buys, from the method's recent rounds (counts decay by ``1 - 1/window`` a round).

    Two per-position hazards: ``go_i``, the chance a request drafts position i given it drafted i - 1 and the round
    went on to i (its own policy may stop it earlier: AdaEDL, AdaSD, SpecDec++ do, per request), and ``h_i``, the
    chance draft i is accepted given it was drafted and 1..i-1 were (accepted at i / drafted at i after i - 1
    accepted). With ``q_j = go_1 * ... * go_j`` and ``S_j = h_1 * ... * h_j``:

    - tokens per request and round: ``E(K) = 1 + sum_j q_j * S_j``;
    - draft steps a round of B requests runs (the longest draft): ``steps(K, B) = sum_j 1 - (1 - q_j)^B``.

    So a policy that stops most requests early yields little beyond that point, while a large batch still runs
    nearly K steps (someone goes on). Positions never reached use the pooled acceptance and go on always.
    This follows the method's real behaviour (bursty, position-dependent), not an i.i.d. guess."""

    def __init__(self, window: int = 100) -> None:
        self.decay = 1 - 1 / window
        size = MAX_DRAFT_TOKENS + 1  # index i: position i (1-based)
        self.tried, self.accepted = [0.0] * size, [0.0] * size
        self.could, self.went = [0.0] * size, [0.0] * size  # could draft position i (drafted i - 1, the round reached i); did

    def __bool__(self) -> bool:
        return sum(self.tried) > 0

    def add(self, drafted: Sequence[int], accepted: Sequence[int]) -> None:
        K = max(drafted, default=0)  # the round ran its longest draft's steps
        if not K:
            return
        for counts in (self.tried, self.accepted, self.could, self.went):
            counts[:] = [c * self.decay for c in counts]
        for d, n in zip(drafted, accepted):
            for i in range(1, min(d, n + 1) + 1):
                self.tried[i] += 1
                self.accepted[i] += i <= n
            for i in range(1, min(d + 1, K) + 1):
                self.could[i] += 1
                self.went[i] += i <= d

    def _hazards(self, K: int) -> tuple[list[float], list[float]]:
        """``q_j`` and ``S_j`` for j = 1..K."""
        pooled = sum(self.accepted) / sum(self.tried)
        q, S, go, survive = [], [], 1.0, 1.0
        for i in range(1, K + 1):
            go *= self.went[i] / self.could[i] if self.could[i] >= 1 else 1.0
            survive *= self.accepted[i] / self.tried[i] if self.tried[i] >= 1 else pooled
            q.append(go)
            S.append(survive)
        return q, S

    def curves(self, K_max: int, B: int) -> tuple[list[float], list[float]]:
        """``E(K)`` and ``steps(K, B)`` for K = 0..K_max, from one pass over the hazards."""
        q, S = self._hazards(K_max)
        E, steps = [1.0], [0.0]
        for a, b in zip(q, S):
            E.append(E[-1] + a * b)
            steps.append(steps[-1] + 1 - (1 - a) ** B)
        return E, steps

    def expected_tokens(self, K: int) -> float:
        return self.curves(K, 1)[0][K]

    def expected_steps(self, K: int, B: int) -> float:
        return self.curves(K, B)[1][K]


class AutoLoad:
    """The draft-length cap that maximises expected tokens per second for this round's batch, from costs measured
    online.

    For B requests, each with up to ``w_t`` tokens the target has not seen and ``w_d`` the draft has not seen, a
    cap K is worth ``B * E(K) / cost(K)`` tokens per second, where

    - ``E(K)``: tokens per request per round, and ``s = steps(K, B)``: the draft steps such a round runs
      (:class:`AcceptanceModel`, from the method's recent rounds: its acceptance and where its policy stops);
    - ``cost(0) = T(B * w_t)``: a target-only round (no draft pass at all);
    - ``cost(K) = T(B * (w_t + s)) + s * D(B) + catch_up / rounds`` for K > 0: the target pass over the drafts too,
      s draft steps, and the draft catching up on tokens it skipped in target-only rounds (a pass over
      ``B * w_d`` positions, priced as ``D(B) * T(B * w_d) / T(B)``; plus, for each request that joined while
      the batch was target-only, a pass over its n unseen tokens alone, ``f * n``) spread over the rounds the
      requests have left (``room / E(K)``), so a request near its end is not switched back to drafting. Only if a
      plain round at this batch size would draft, though: otherwise later rounds keep the batch target-only, and
      this round alone must pay for feeding the draft (a prompt's first round would otherwise feed the draft its
      prompt for one round's worth of drafts);
    - ``f``: seconds per token of feeding the draft prompts apart, measured on its fill passes (running average);
      until one is measured, a prompt of n tokens is priced as ``T(n) * D(1) / T(1)``, which underprices it several
      times over (the int4 draft's step costs about a tenth of the target's, its prefill about half:
      ``benchmarks/results/prefill_cost.json``). It used to be a ratio to ``T(n)``, but ``T`` is learned from rounds
      of a few to a few dozen positions and only extrapolated to a prompt's hundreds, so the price of the same
      prompt moved with that extrapolation; at 8 clients with 256-token answers one wave of requests was kept
      target-only throughout and the next drafted (``serve_load_long_tune.json``; ``BENCHMARKS.md``);
    - ``T(x)``: the target pass over x positions (:class:`CostCurve`, fed by every round, prefill rounds included);
      ``D(B)``: one draft step at batch B, booked only from plain rounds, whose first draft forward feeds at most
      ``PLAIN_WIDTH`` pending tokens per row (a round that also catches up or prefills many pending tokens is not
      the cost of a step, and is not booked); an unmeasured B is scaled from the nearest measured one along ``T``,
      and no less than in proportion to B above it (:meth:`step_cost`). Where that estimate keeps the batch
      target-only but the lowest plausible one (along ``T`` only) would draft, the rule runs a probe round
      (below) to measure it.

    The best K (from 0 to the policy's own bound) wins if it beats target-only by more than ``margin`` (a
    fraction); K_cap = 0 is a target-only round. A round that feeds the target a prompt (a fresh batch) is judged
    by the seconds it saves instead (:meth:`best_cap`). Until both a draft step and the target have been measured the
    rule does not cap (the method runs as it is, which measures them).

    With ``defer`` (``--spec-auto-defer``), a lone request whose policy prices its own drafts (``priced``:
    ``marginal:cost=auto``, which fits each round's seconds and drafts a token only while its predicted acceptance
    pays for it) is not capped when drafting wins: the rule's model prices an average token at an average
    acceptance, the policy each token at its own, from the same rounds' costs. The rule still decides whether to
    draft at all (a policy drafts at least one token) and still caps a batch, where a row's draft steps hold up the
    others, which no row's policy prices. Not the default: side by side on tune prompts at one client (AVX2) the
    policy's longer rounds (about 6 tokens each against about 4 under the cap) gave the same throughput as the
    rule's cap, 1.53x against 1.54x target-only (``BENCHMARKS.md``).

    Exploration: a batch size kept target-only measures no draft step, so one bad measurement (a step slowed by a
    transient load spike, a first call's warm-up) would keep drafting off there for good. So estimates age (a
    :class:`CostCurve` with a half-life of ``probe_every / 4`` rounds), and when the rule would pick 0 at a batch
    size whose last plain draft-step measurement is ``gap`` or more rounds old (``probe_every`` at first; or,
    never measured there, older than the rule's first one), and no request's draft is more than
    ``probe_every + PLAIN_WIDTH`` tokens behind (about what ``probe_every`` target-only rounds leave; a request
    that joined with a longer prompt would make the probe a costly catch-up), it runs a probe round with cap 1,
    the cheapest round that measures a step. A probe that had to catch the draft up is not booked, so the next
    round probes again, now plain, and its fresh measurement mostly replaces the stale estimate; the rule then
    decides on it. Each probe whose fresh measurement keeps the batch size target-only doubles its ``gap``, the
    rounds until the next probe there (up to ``MAX_PROBE_GAP`` times ``probe_every``; a round that drafts resets
    it): where drafting really loses (a CPU without native bf16, a large batch) probes grow rare. The backlog
    bound does not grow with the gap: a catch-up costs about the same share of the rounds it skipped however many
    they were (about a twentieth on a CPU without native bf16), and a newcomer's prompt is no backlog to probe
    with. The cost is at most about two one-token drafting rounds every ``probe_every`` rounds, and falls from
    there; ``probe_every=0`` never probes (and nothing ages).
    ``probes`` counts the probe rounds chosen. ``timing(record) -> (draft_s, target_s)`` replaces the measured
    seconds (tests inject a cost model; the default reads the round's own timings).
    """

    def __init__(self, margin: float = 0.05, window: int = 100,
                 timing: Callable[[RoundRecord], tuple[float, float]] | None = None, probe_every: int = 32,
                 defer: bool = False) -> None:
        self.margin = margin
        self.defer = defer
        self.probe_every = probe_every
        self.half_life = probe_every / 4 if probe_every else None
        self.target = CostCurve(half_life=self.half_life)
        self.draft_step: dict[int, CostCurve] = {}  # batch size -> a one-point curve (its running average)
        # Of a plain round's draft seconds, the first forward's (it feeds each row's one or two pending tokens) and each
        # later step's (one token a row): batch size -> a one-point curve each (see draft_cost).
        self.draft_first: dict[int, CostCurve] = {}
        self.draft_later: dict[int, CostCurve] = {}
        self.measured_at: dict[int, int] = {}  # batch size -> round of its last plain draft-step measurement
        self.first_measured: int | None = None  # round of the first plain draft-step measurement at any size
        self.rounds = 0  # rounds observed (the clock estimates age by)
        self.probes = 0
        self.probe_gap: dict[int, int] = {}  # batch size -> rounds between its probes, if not probe_every
        self.probing: set[int] = set()  # batch sizes whose last decision was a probe not yet judged
        self.fill_per_token: float | None = None  # f: seconds per token of the draft's fill passes
        self.acceptance = AcceptanceModel(window)
        self.timing = timing or (lambda record: (record.draft_s, record.target_s))

    def observe(self, record: RoundRecord) -> None:
        self.rounds += 1
        draft_s, target_s = self.timing(record)
        self.target.add(record.rows * (record.target_width + record.K), target_s, self.rounds)
        if record.K and record.draft_width <= PLAIN_WIDTH:  # a plain round: K steps of one or two tokens
            curve = self.draft_step.setdefault(record.rows, CostCurve(half_life=self.half_life))
            curve.add(1, draft_s / record.K, self.rounds)
            if 0 < record.draft_first_s <= draft_s:
                self._book(self.draft_first, record.rows, record.draft_first_s)
                if record.K > 1:
                    self._book(self.draft_later, record.rows, (draft_s - record.draft_first_s) / (record.K - 1))
            self.measured_at[record.rows] = self.rounds
            if self.first_measured is None:
                self.first_measured = self.rounds
        if record.draft_fill_tokens:
            per = record.draft_fill_s / record.draft_fill_tokens
            f = self.fill_per_token
            self.fill_per_token = per if f is None else f + FILL_WEIGHT * (per - f)
        self.acceptance.add(record.drafted, record.accepted)

    def _book(self, curves: dict[int, CostCurve], B: int, seconds: float) -> None:
        curves.setdefault(B, CostCurve(half_life=self.half_life)).add(1, seconds, self.rounds)

    def summary(self) -> dict:
        """What the rule has learned (for a benchmark's record): the draft step's seconds per batch size, the
        target pass's seconds per position count, expected tokens per round for a few caps, probes run."""
        return {
            "draft_step_s": {B: curve(1) for B, curve in sorted(self.draft_step.items())},
            "draft_first_s": {B: curve(1) for B, curve in sorted(self.draft_first.items())},
            "draft_later_s": {B: curve(1) for B, curve in sorted(self.draft_later.items())},
            "target_s": {x: point[0] for x, point in sorted(self.target.points.items())},
            "expected_tokens": {K: self.acceptance.expected_tokens(K) for K in (1, 2, 4, 8, 16)} if self.acceptance else {},
            "probes": self.probes,
            "probe_gap": dict(sorted(self.probe_gap.items())),
            "draft_fill_s_per_token": self.fill_per_token,
        }

    def step_cost(self, B: int, low: bool = False) -> float:
        """Seconds of one draft step at batch size B. An unmeasured B is scaled from the nearest measured one
        along the target's curve (``low``: the lowest plausible estimate) and, above it, by default no less
        than in proportion to B: a quantized draft's step can grow much faster with the batch than the target's."""
        if B in self.draft_step:
            return self.draft_step[B](1)
        near = min(self.draft_step, key=lambda b: (abs(b - B), b))
        scale = self.target(B) / self.target(near)
        return self.draft_step[near](1) * (max(scale, B / near) if B > near and not low else scale)

    def draft_cost(self, B: int, steps: float, low: bool = False) -> float:
        """Seconds of a round's ``steps`` draft steps at batch size B: the first forward, which feeds each row its
        one or two pending tokens, plus the later one-token steps, where both were measured; at a batch size whose
        later steps were not (its rounds drafted one token), they are the first forward's cost times the ratio
        measured at the nearest batch size that has both. A first forward over two tokens a row costs about two
        later steps once a batch fills the int4 kernel's tiles of four rows (its cost grows with the rows from four
        on: ``benchmarks/results/int4_rows_wide.json``), so pricing every step like the one step of one-token rounds
        kept batches of 8 at one token a round, where rounds of two or three made more (``BENCHMARKS.md``, "The rule
        pricing prompts per token"). Without those timings (a GPU), ``steps`` times :meth:`step_cost`."""
        both = [b for b in self.draft_later if b in self.draft_first]
        if B not in self.draft_first or not both:
            return steps * self.step_cost(B, low)
        first = self.draft_first[B](1)
        if B in self.draft_later:
            later = self.draft_later[B](1)
        else:
            near = min(both, key=lambda b: (abs(b - B), b))
            later = first * self.draft_later[near](1) / self.draft_first[near](1)
        return first + later * max(0.0, steps - 1)

    def rates(self, B: int, w_t: int, w_d: int, room: float, K_max: int, unfed: Sequence[int] = (),
              low: bool = False) -> list[float]:
        """Expected tokens per second for caps 0..K_max (``unfed``: lengths of prompts the draft has yet to see;
        ``low``: with the lowest plausible draft-step cost of an unmeasured batch size)."""
        rates = [B / self.target(B * w_t)]
        step = self.step_cost(B, low)
        catch_up = step * max(0.0, self.target(B * w_d) / self.target(B) - 1) if w_d > PLAIN_WIDTH else 0.0
        # Each unseen prompt is fed in a pass of its own: f per token, or before f is measured the target's pass
        # over it scaled as the draft's step is to the target's.
        if self.fill_per_token is not None:
            catch_up += self.fill_per_token * sum(unfed)
        else:
            catch_up += self.step_cost(1) / self.target(1) * sum(self.target(n) for n in unfed)
        # Feeding the draft is paid back over the rounds that go on drafting; if plain rounds at this batch size
        # would not draft (a costly verification, a slow draft), this round alone has to pay for it.
        later = catch_up > 0 and self._by_rate(self.rates(B, 1, 1, room, K_max, (), low)) > 0
        E, steps = self.acceptance.curves(K_max, B)
        for K in range(1, K_max + 1):
            spread = max(1.0, room / E[K]) if later else 1.0
            cost = self.target(B * (w_t + steps[K])) + self.draft_cost(B, steps[K], low) + catch_up / spread
            rates.append(B * E[K] / cost)
        return rates

    def best_cap(self, B: int, w_t: int, w_d: int, room: float, K_max: int, unfed: Sequence[int] = (),
                 low: bool = False) -> int:
        """The cap worth most this round (0: target-only). A round that feeds the target one token per row is
        judged by its tokens per second: the best cap must beat target-only by ``margin``. A round that also feeds
        the target a prompt is a one-off, and its own target-only rate says nothing of what its extra tokens are
        worth: it makes one token per row in a long pass, so nearly anything that makes more would look better.
        So it is judged by the seconds it saves against making those tokens at the rate of the round that would
        follow it (the same rows, one token each), and must save ``margin`` of its target-only cost."""
        rates = self.rates(B, w_t, w_d, room, K_max, unfed, low)
        if w_t <= 1:
            return self._by_rate(rates)
        after = self.rates(B, 1, w_d, room, K_max, unfed, low)
        per_token = 1 / after[self._by_rate(after)]
        E = self.acceptance.curves(K_max, B)[0]
        saved = [B * E[K] * (per_token - 1 / rates[K]) for K in range(K_max + 1)]
        best = max(range(1, K_max + 1), key=saved.__getitem__)
        return best if saved[best] - saved[0] > self.margin * B / rates[0] else 0

    def _by_rate(self, rates: list[float]) -> int:
        """The cap of the highest rate, if it beats target-only (``rates[0]``) by ``margin``; else 0."""
        best = max(range(1, len(rates)), key=rates.__getitem__)
        return best if rates[best] > rates[0] * (1 + self.margin) else 0

    def probe_due(self, B: int, w_d: int) -> bool:
        """Whether a round the rule would keep target-only at batch size B should probe drafting instead: the
        draft-step estimate there is ``gap`` or more rounds old and the draft's backlog ``w_d`` is small."""
        if not self.probe_every or w_d > self.probe_every + PLAIN_WIDTH:
            return False
        since = self.measured_at.get(B, self.first_measured)
        return since is not None and self.rounds - since >= self.probe_gap.get(B, self.probe_every)

    @property
    def ready(self) -> bool:
        """Whether the rule has measured a draft step, the target and the method's acceptance (until then it does
        not cap)."""
        return bool(self.target and self.draft_step and self.acceptance)

    def decide(self, rows: Sequence[Request], bound: int | None, priced: bool = False) -> int | None:
        if not rows or not self.ready:
            return None
        # No bound yet (the policy has not drafted since the batch began, e.g. after rounds that only prefilled):
        # decide over every length a round may draft. Deciding nothing here let such a round draft uncapped.
        K_max = min(MAX_DRAFT_TOKENS if bound is None else bound, max(r.room for r in rows) - 1)
        if K_max <= 0:
            return None
        w_t = max(len(r.target_pending) for r in rows)
        # fed apart (Batch), not padded, and only from where the draft's prefix cache stops
        unfed = [len(r.draft_pending) - r.draft_reused for r in rows if r.draft_unfed]
        w_d = max((len(r.draft_pending) for r in rows if not r.draft_unfed), default=0)
        room = sum(r.room for r in rows) / len(rows)
        B = len(rows)
        best = self.best_cap(B, w_t, w_d, room, K_max, unfed)
        if not best:
            if B not in self.draft_step and self.best_cap(B, w_t, w_d, room, K_max, unfed, low=True):
                self.probes += 1  # unmeasured, and a cheap enough step would make drafting pay: measure it
                return 1
            if self.probe_due(B, max([w_d, *unfed])):  # a probe would also feed the unseen prompts
                self.probes += 1
                self.probing.add(B)
                return 1
            if B in self.probing and self.measured_at.get(B) == self.rounds:  # the probe measured: still a loss
                self.probing.discard(B)
                self.probe_gap[B] = min(2 * self.probe_gap.get(B, self.probe_every), MAX_PROBE_GAP * self.probe_every)
            return 0
        self.probing.discard(B)
        self.probe_gap.pop(B, None)
        if priced and B == 1 and self.defer:  # a lone request: its policy's prices are fitted on these very rounds
            return None
        return None if best == K_max else best


def make_load_rule(spec_load: str, *, spec_max_batch: int = 8, spec_load_k: int = 0, spec_auto_margin: float = 0.05,
                   spec_auto_window: int = 100, spec_auto_probe_every: int = 32, spec_auto_defer: bool = False) -> LoadRule:
    if spec_load == "auto":
        return AutoLoad(spec_auto_margin, spec_auto_window, probe_every=spec_auto_probe_every, defer=spec_auto_defer)
    if spec_load == "static":
        return StaticLoad(spec_max_batch, spec_load_k)
    if spec_load == "off":
        return NoLoad()
    raise ValueError(f"spec_load must be one of {', '.join(LOAD_RULES)}, got {spec_load!r}")
