"""The worker thread: one :class:`~specadapt.engine.Batch`, continuous batching, cancellation, load rule.

A Batch is not thread-safe, so exactly one thread (started here) touches it. HTTP handlers hand
requests over with :meth:`Scheduler.submit` (a locked queue) and get events back through the
``on_event`` callback they supply (called on the worker thread; the app forwards it into its event
loop with ``call_soon_threadsafe``).

Each loop iteration: apply cancellations, admit waiting requests into free rows (they join the
running batch at this round, each with its own sampling parameters and limits), run one round,
hand out finished results. A round that raises fails the requests that joined in it (or, if none
did, every request in it); the others resume in a rebuilt batch, and the worker carries on.

Load rule (:mod:`specadapt.load`): before each round a rule picks a cap on the draft length for the requests
in it, and :class:`~specadapt.load.LoadCap` (wrapping the method's policy) applies it; the policy still decides
within the cap. The default (``spec_load="auto"``, :class:`~specadapt.load.AutoLoad`) measures the round costs
online and picks the cap that maximises expected tokens per second for the current batch size, 0 (a
target-only round) when drafting loses, with a one-token probe round now and then where it has kept a batch
size target-only for ``spec_auto_probe_every`` rounds (so a stale estimate is re-measured); ``"static"``
caps at ``spec_load_k`` above ``spec_max_batch`` requests. A cap only shortens drafts, so outputs do not
change (the draft catches up on tokens it skipped the next time it drafts). Rules do not apply to
target-only methods.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..engine import GenerationResult, Request, RequestConfig, RoundRecord, SpeculativeEngine
from ..methods import Method
from ..load import WARMUP_DRAFT, AutoLoad, LoadCap, LoadRule, load_capped  # noqa: F401  (re-exported)
from .metrics import ServeMetrics

log = logging.getLogger("specadapt.serve")
HISTORY = 10_000  # admissions and rounds kept in Scheduler.joins / batch_sizes


class QueueFull(Exception):
    """No row and no queue place for another request."""


@dataclass(eq=False)  # compared by identity
class Job:
    """One request as the worker sees it. ``on_event(kind, payload)`` is called on the worker thread with
    ``("tokens", (ids, logprobs))`` (``logprobs``: those tokens' :class:`~specadapt.logprobs.TokenLogprob` entries, or None when the
    request asked for none), then ``("done", JobResult)`` or ``("error", (status, message))``."""

    prompt: list[int]
    config: RequestConfig
    on_event: Callable[[str, Any], None]
    seed: int | None = None
    arrival: float = field(default_factory=time.perf_counter)
    id: int = field(default_factory=itertools.count().__next__)
    request: Request | None = None
    joined_at: float | None = None
    joined_round: int | None = None
    first_token_at: float | None = None
    load_capped_rounds: int = 0
    done: bool = False
    internal: bool = False  # the server's own warm-up request: not counted in /metrics


@dataclass(eq=False)
class _InternalJob(Job):
    """A request of the server's own (the warm-up): a thread waits on ``finished``."""

    on_event: Callable[[str, Any], None] | None = None  # type: ignore[assignment]  (its own handle)
    internal: bool = True
    finished: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None

    def __post_init__(self) -> None:
        self.on_event = self.handle

    def handle(self, kind: str, payload: Any) -> None:
        if kind == "error":
            self.failure = payload[1]
        if kind in ("done", "error"):
            self.finished.set()


@dataclass
class JobResult:
    result: GenerationResult
    load_capped_rounds: int
    ttft_s: float | None
    e2e_s: float


class Scheduler:
    def __init__(self, engine: SpeculativeEngine, method: Method, *, max_batch_size: int = 8, max_queue: int = 64,
                 load_rule: LoadRule | None = None, metrics: ServeMetrics | None = None,
                 early_first_token: bool = False) -> None:
        self.engine = engine
        self.method, self.cap = load_capped(method)
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.load_rule = load_rule if load_rule is not None else AutoLoad()
        self.metrics = metrics
        self._new_batch = lambda: engine.batch(self.method, early_first_token)  # see SpeculativeEngine.batch
        self.batch = self._new_batch()
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}  # by job id, in join order
        self._cancels: list[Job] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        # What tests and operators can look at (recent history only: a server runs for a long time):
        # rounds run, for each admission (round, rows already running), the rows in each round and the
        # load rule's cap for it (None: none).
        self.rounds = 0
        self.joins: deque[tuple[int, int]] = deque(maxlen=HISTORY)
        self.batch_sizes: deque[int] = deque(maxlen=HISTORY)
        self.caps: deque[int | None] = deque(maxlen=HISTORY)
        self.records: deque[RoundRecord | None] = deque(maxlen=HISTORY)  # what each round did and cost

    # --- called from any thread --------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="specadapt-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def warm_up(self, prompt: list[int], max_tokens: int, timeout: float = 600.0) -> bool:
        """Decode two short greedy requests of the server's own (after :meth:`start`, before traffic), the second
        joining the first after two rounds, and wait for them. A kernel's first calls are slow, and the load rule
        would otherwise decide the first burst of requests blind: until it has measured a draft step it does not
        cap, so a fresh server's first round over several new requests drafts and feeds the draft every waiting
        prompt (measured: a tenth of the throughput lost at four clients on a CPU without native bf16,
        BENCHMARKS.md). Warm-up rounds draft ``WARMUP_DRAFT`` tokens whatever the rule says, so they measure a
        draft step alone and in a batch of two even where every draft is accepted, and the joining request's
        prompt is fed to the draft apart, which measures what feeding the draft a prompt costs. Not counted in
        /metrics. Returns whether both finished within ``timeout`` (a failure is logged; the server serves on)."""
        deadline = time.monotonic() + timeout
        first = self._submit_internal(prompt, max_tokens)
        while not first.done and (first.joined_round is None or self.rounds < first.joined_round + 2):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        jobs = [first, self._submit_internal(prompt, max(2, max_tokens // 2))]
        for job in jobs:
            if not job.finished.wait(max(0.0, deadline - time.monotonic())):
                self.cancel(job)
                log.warning("the warm-up did not finish within %.0f s; serving without it.", timeout)
                return False
            if job.failure:
                log.warning("the warm-up failed (%s); serving without it.", job.failure)
                return False
        return True

    def _submit_internal(self, prompt: list[int], max_tokens: int) -> _InternalJob:
        job = _InternalJob(list(prompt), RequestConfig(max_new_tokens=max_tokens))
        self.submit(job)
        return job

    def submit(self, job: Job) -> None:
        """Queue a request; raises :class:`QueueFull` when every row is taken and the queue is full."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down.")
            if len(self._running) + len(self._waiting) >= self.max_batch_size + self.max_queue:
                raise QueueFull(
                    f"the server is at capacity ({self.max_batch_size} running, {self.max_queue} waiting); retry later.")
            self._waiting.append(job)
            self._publish_load()
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the request from the queue, or free its row before the next round."""
        with self._cond:
            if job.done:
                return
            if job in self._waiting:
                self._waiting.remove(job)
                job.done = True
                self._publish_load()
            else:
                self._cancels.append(job)
                self._cond.notify_all()

    # --- the worker thread -------------------------------------------------------------------------

    def _publish_load(self) -> None:
        if self.metrics is not None:
            self.metrics.set_load(len(self._running), len(self._waiting))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._cancels or self._running):
                    self._cond.wait()
                if self._stopping:
                    break
            try:
                self._iterate()
            except Exception:  # a bug outside the round itself: fail what ran, keep serving
                log.error("the worker loop failed:\n%s", traceback.format_exc())
                with self._cond:
                    self._fail_all(500, "the server failed while running this request; the request was ended.")
                    self.batch = self._new_batch()
                    self._publish_load()
        with self._cond:
            self._fail_all(503, "the server is shutting down.", waiting=True)

    def _iterate(self) -> None:
        """Cancellations, admissions, then one round."""
        with self._cond:
            cancels, self._cancels = self._cancels, []
            for job in cancels:
                if self._running.pop(job.id, None) is not None:
                    self.batch.cancel(job.request)
                    self._record(job, "cancelled")
            free = self.max_batch_size - len(self._running)
            for _ in range(min(free, len(self._waiting))):
                self._admit(self._waiting.popleft())
            self._publish_load()
        if self._running:
            self._round()
        elif self.batch.active:  # only cancelled rows left: this drops them and frees their caches now
            self.batch.step()

    def _admit(self, job: Job) -> None:
        try:
            job.request = self.batch.add(job.prompt, job.config, seed=job.seed,
                                         on_tokens=lambda ids, job=job: self._on_tokens(job, ids))
        except Exception as exc:  # a request the handlers' checks let through: only it fails
            self._fail(job, 400, str(exc))
            return
        job.joined_at, job.joined_round = time.perf_counter(), self.rounds
        self.joins.append((self.rounds, len(self._running)))
        self._running[job.id] = job

    def _on_tokens(self, job: Job, ids: list[int]) -> None:
        # Runs inside Batch.step: it must never raise, or the round would be left half committed.
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
        scored = job.request.logprobs  # the engine has added this round's entries
        try:
            job.on_event("tokens", (ids, None if scored is None else scored[len(scored) - len(ids):]))
        except Exception:  # the handler's event loop is gone: treat it as a disconnect
            with self._cond:
                self._cancels.append(job)

    def _round(self) -> None:
        self.batch.last_round = None
        try:
            self.batch.admit()  # joining prompts are prefilled first: the load rule sees the round as it will run
            self.cap.cap = self._load_cap()
            capped = self.cap.cap is not None
            self.batch_sizes.append(len(self._running))
            self.caps.append(self.cap.cap)
            finished = self.batch.step()
        except Exception as exc:
            self._recover(exc)
            return
        self.rounds += 1
        self.records.append(self.batch.last_round)
        if self.batch.last_round is not None and self.method.needs_draft:
            self.load_rule.observe(self.batch.last_round)
        if capped:
            for job in self._running.values():
                job.load_capped_rounds += 1
        if not finished:
            return
        with self._cond:
            for request in finished:
                job = next(j for j in self._running.values() if j.request is request)
                del self._running[job.id]
                self._finish(job)
            self._publish_load()

    def _load_cap(self) -> int | None:
        """The load rule's draft-length cap for this round (None: none; target-only methods are never capped)."""
        if not self.method.needs_draft:
            return None
        if any(job.internal for job in self._running.values()):  # the warm-up drafts, to measure what drafting costs
            return WARMUP_DRAFT
        rows = [job.request for job in self._running.values()]
        try:
            return self.load_rule.decide(rows, self.cap.last_bound(), priced=self.cap.reads_cost)
        except Exception:  # a cap only saves time: a rule that fails must not fail the requests
            log.error("the load rule failed; this round runs uncapped:\n%s", traceback.format_exc())
            return None

    def _recover(self, exc: Exception) -> None:
        """A round raised. The requests that joined in it are the suspects (anything new came with them); they
        fail. The others resume in a fresh batch (the old caches may be half updated) from where they were.
        When nobody joined, the failure cannot be pinned on anyone: the whole round fails."""
        log.error("a decoding round failed:\n%s", traceback.format_exc())
        message = (f"decoding failed on the server ({type(exc).__name__}: {exc}); the request was ended, "
                   "the server carries on.")
        with self._cond:
            joined = [j for j in self._running.values() if j.joined_round == self.rounds]
            for job in joined or list(self._running.values()):
                del self._running[job.id]
                self._fail(job, 500, message)
            self.batch = self._new_batch()
            for job in list(self._running.values()):
                try:
                    self._resume(job)
                except Exception as again:  # noqa: BLE001
                    del self._running[job.id]
                    self._fail(job, 500, f"{message} (resuming it failed too: {again})")
            self._publish_load()

    def _resume(self, job: Job) -> None:
        """Re-add a running request to the (new) batch: it is fed its prompt and output so far again, and keeps
        its output, statistics, random generator and start time, so it goes on as if nothing happened
        (a sampled request's generator may have advanced in the failed round)."""
        old = job.request
        new = self.batch.add(old.prompt + old.output, old.config, seed=old.seed, on_tokens=old.on_tokens)
        new.prompt, new.output, new.stats, new.generator, new.started, new.logprobs = (
            old.prompt, old.output, old.stats, old.generator, old.started, old.logprobs)
        job.request = new

    def _finish(self, job: Job) -> None:
        now = time.perf_counter()
        result = self.batch.result(job.request)
        self._record(job, result.finish_reason, now)
        self._emit(job, "done", JobResult(result, job.load_capped_rounds,
                                          None if job.first_token_at is None else job.first_token_at - job.arrival,
                                          now - job.arrival))

    def _record(self, job: Job, reason: str, now: float | None = None) -> None:
        job.done = True
        if self.metrics is None or job.request is None or job.internal:
            return
        now = now if now is not None else time.perf_counter()
        stats = job.request.stats
        self.metrics.record_request(stats, reason, job.load_capped_rounds)  # cancelled too: the drafting happened
        if reason == "cancelled":  # latencies of requests nobody waited for would only blur the histograms
            return
        ttft = None if job.first_token_at is None else job.first_token_at - job.arrival
        tpot = (now - job.first_token_at) / (stats.generated_tokens - 1) if ttft is not None and stats.generated_tokens > 1 else None
        queue = None if job.joined_at is None else job.joined_at - job.arrival
        self.metrics.record_latency(ttft, tpot, now - job.arrival, queue)

    def _fail(self, job: Job, status: int, message: str) -> None:
        job.done = True
        self._emit(job, "error", (status, message))

    def _fail_all(self, status: int, message: str, waiting: bool = False) -> None:
        for job in list(self._running.values()) + (list(self._waiting) if waiting else []):
            self._fail(job, status, message)
        self._running.clear()
        if waiting:
            self._waiting.clear()

    @staticmethod
    def _emit(job: Job, kind: str, payload: Any) -> None:
        try:
            job.on_event(kind, payload)
        except Exception:  # the client's event loop is gone; nobody is waiting for this result
            pass
