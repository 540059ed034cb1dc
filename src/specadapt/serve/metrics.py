"""Prometheus metrics, named like vLLM's so existing dashboards carry over (prefix ``specadapt:``).

Each app has its own :class:`CollectorRegistry` (several apps can live in one process, e.g. in tests).
The spec-decode counters are sums of the per-request statistics returned in ``usage.spec_decode``,
cancelled requests included (their drafting work happened).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

from ..stats import RequestStats

PREFIX = "specadapt:"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None, prefix_cache: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model_name = model_name
        self.prefix_cache = prefix_cache  # whether prompts are looked up in one (queries count only then)
        r, m = self.registry, ["model_name"]

        def counter(name: str, doc: str, labels: list[str] = m) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=r)

        self.num_drafts = counter("spec_decode_num_drafts", "Rounds in which a request drafted at least one token.")
        self.num_draft_tokens = counter("spec_decode_num_draft_tokens", "Draft tokens proposed.")
        self.num_accepted_tokens = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted by the target.")
        self.accepted_per_pos = counter(
            "spec_decode_num_accepted_tokens_per_pos", "Draft tokens accepted at each position (0 = first) of a round.",
            m + ["position"])
        self.load_capped_rounds = counter(
            "spec_decode_load_capped_rounds", "Request-rounds whose drafting the load rule capped (--spec-load).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed.")
        # vLLM's names: their ratio is the prefix cache's hit rate, in tokens
        self.prefix_cache_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits", "Prompt tokens the prefix cache held (copied, not fed).")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.request_success = counter("request_success", "Requests finished, by finish reason.", m + ["finished_reason"])
        self.request_rejected = counter(
            "request_rejected", "Requests answered with an error, by reason (queue_full, or the HTTP status).", m + ["reason"])
        self.running = Gauge(PREFIX + "num_requests_running", "Requests in the running batch.", m, registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Requests waiting for a batch row.", m, registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time from arrival to the first token.",
                              m, buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(PREFIX + "time_per_output_token_seconds",
                              "Per request: (finish - first token) / (output tokens - 1).", m, buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Time from arrival to the last token.",
                             m, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(PREFIX + "request_queue_time_seconds", "Time from arrival to joining the batch.",
                                    m, buckets=LATENCY_BUCKETS, registry=r)

    def record_request(self, stats: RequestStats, finish_reason: str, load_capped_rounds: int) -> None:
        name = self.model_name
        if stats.position_reached:
            self.num_drafts.labels(name).inc(stats.position_reached[0])
        self.num_draft_tokens.labels(name).inc(stats.drafted)
        self.num_accepted_tokens.labels(name).inc(stats.accepted)
        for position, n in enumerate(stats.position_accepted):
            self.accepted_per_pos.labels(name, str(position)).inc(n)
        self.load_capped_rounds.labels(name).inc(load_capped_rounds)
        self.prompt_tokens.labels(name).inc(stats.prompt_tokens)
        if self.prefix_cache:
            self.prefix_cache_queries.labels(name).inc(stats.prompt_tokens)
            self.prefix_cache_hits.labels(name).inc(stats.cached_prompt_tokens)
        self.generation_tokens.labels(name).inc(stats.generated_tokens)
        self.request_success.labels(name, finish_reason).inc()

    def record_latency(self, ttft: float | None, tpot: float | None, e2e: float, queue: float | None) -> None:
        name = self.model_name
        if ttft is not None:
            self.ttft.labels(name).observe(ttft)
        if tpot is not None:
            self.tpot.labels(name).observe(tpot)
        if queue is not None:
            self.queue_time.labels(name).observe(queue)
        self.e2e.labels(name).observe(e2e)

    def set_load(self, running: int, waiting: int) -> None:
        self.running.labels(self.model_name).set(running)
        self.waiting.labels(self.model_name).set(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)
