"""Every option of the server, its default and its help text, in one place (the CLI reads them from here); the
model options are :class:`~specadapt.models.settings.ModelSettings`', shared with ``generate`` and ``bench``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..api import DEFAULT_METHOD
from ..errors import SpecAdaptError
from ..methods import HEAD_HELP, Method, make_method, with_head
from ..models.settings import ModelSettings
from ..load import LOAD_RULES, LoadRule, make_load_rule


@dataclass
class ServeSettings(ModelSettings):
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (127.0.0.1: this machine only)."})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on."})
    method: str = field(default=DEFAULT_METHOD, metadata={"help": "Decoding method for every request, e.g. fixed:4, heuristic, autoregressive (see `specadapt methods`)."})
    head: str = field(default="", metadata={"help": HEAD_HELP})
    model_name: str = field(default="", metadata={"help": "Model id clients send and /v1/models lists (default: the target's name)."})
    max_batch_size: int = field(default=8, metadata={"help": "Most requests decoded together; more wait in the queue."})
    max_queue: int = field(default=64, metadata={"help": "Most requests waiting for a batch row; beyond that the server answers 503 with Retry-After."})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "Largest request body accepted (bytes); larger ones get 413."})
    spec_load: str = field(default="auto", metadata={"help": (
        "Load rule, how much rounds may draft as the batch grows (speculation pays less the more requests run): "
        "auto = per round, the draft-length cap that maximises expected tokens/s for the current batch size, from "
        "costs and acceptance measured online (0 = a target-only round when drafting loses); static = at most "
        "--spec-load-k tokens while more than --spec-max-batch requests run; off = never cap. Outputs never change.")})
    spec_max_batch: int = field(default=8, metadata={"help": (
        "--spec-load static: while more than this many requests run, rounds draft at most --spec-load-k tokens.")})
    spec_load_k: int = field(default=0, metadata={"help": (
        "--spec-load static: most draft tokens per round while the rule applies (0 = target-only rounds).")})
    spec_auto_margin: float = field(default=0.05, metadata={"help": (
        "--spec-load auto: drafting must promise this much more throughput than a target-only round (0.05 = 5%) "
        "to be chosen, so that noise in the measured costs does not make it draft at a loss.")})
    spec_auto_window: int = field(default=100, metadata={"help": (
        "--spec-load auto: rounds over which the method's acceptance is mainly measured (older rounds fade).")})
    spec_auto_probe_every: int = field(default=32, metadata={"help": (
        "--spec-load auto: a batch size kept target-only gets a probe round (a one-token draft) once its draft-step "
        "cost is this many rounds old and the draft is not far behind, so one bad measurement (a load spike, a "
        "warm-up) cannot switch drafting off for good; each probe that confirms the loss doubles the wait there "
        "(up to 8 times this); cost estimates fade with a half-life of a quarter of this. "
        "0 = never probe.")})
    spec_auto_defer: bool = field(default=False, metadata={
        "help": "--spec-load auto: while a single request runs under a method whose policy measures and prices its own "
                "drafts (marginal:cost=auto), the rule only decides whether to draft and leaves how far to the policy "
                "(measured: no faster than the rule's cap on tune prompts; BENCHMARKS.md)."})
    warmup_tokens: int = field(default=32, metadata={"help": (
        "Before taking traffic, decode two short requests of the server's own with this many tokens (not counted in "
        "/metrics), so that --spec-load auto has measured the draft's and the target's costs before the first burst "
        "of requests instead of drafting blind (measured on AVX2: 0.98x target-only at four clients on fresh servers "
        "against 0.86x without; a tie at one client; BENCHMARKS.md). 0 = no warm-up.")})
    early_first_token: bool = field(default=True, metadata={
        "help": "Draft in a request's first round too. By default that round drafts nothing for it, so its first "
                "token comes with its prompt's prefill, as without a draft; this switch saves that round and makes the "
                "first token wait for the draft's prefill and a block of drafts.",
        "flag": "--fused-first-round", "negated": True})
    prefix_cache_tokens: int = field(default=4096, metadata={"help": (
        "Keep the models' cache of up to this many tokens of recent prompts (about 40 KB a token for the default "
        "pair), so a prompt that starts as an earlier one did (the chat template's system turn, a shared "
        "instruction) is fed only from where they part; 0 = off. Measured on unused GSM8K test prompts: target-only "
        "1.12x the throughput at 8 clients, time to first token 7.3 -> 4.9 s, no difference at 1-4 (BENCHMARKS.md).")})
    retry_after_s: int = field(default=1, metadata={"help": "Seconds a client is told to wait (Retry-After) when the queue is full."})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level: critical, error, warning, info, debug."})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SpecAdaptError(f"port must be in 0..65535 (0: any free port), got {self.port}.")
        for name in ("max_batch_size", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise SpecAdaptError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("max_queue", "spec_max_batch", "spec_load_k", "retry_after_s", "warmup_tokens", "prefix_cache_tokens"):
            if getattr(self, name) < 0:
                raise SpecAdaptError(f"{name} must be >= 0, got {getattr(self, name)}.")
        super().__post_init__()
        if self.spec_load not in LOAD_RULES:
            raise SpecAdaptError(f"spec_load must be one of {', '.join(LOAD_RULES)}, got {self.spec_load!r}.")
        if not 0 <= self.spec_auto_margin < 1:
            raise SpecAdaptError(f"spec_auto_margin must be in [0, 1) (a fraction), got {self.spec_auto_margin}.")
        if self.spec_auto_window < 1:
            raise SpecAdaptError(f"spec_auto_window must be >= 1, got {self.spec_auto_window}.")
        if self.spec_auto_probe_every < 0:
            raise SpecAdaptError(f"spec_auto_probe_every must be >= 0 (0: never probe), got {self.spec_auto_probe_every}.")

    def make_method(self) -> Method:
        """The method every request runs: ``method``, given ``head`` where one is set (a clear error for a bad one)."""
        return make_method(with_head(self.method, self.head, only_specdecpp=True))

    def load_rule(self) -> "LoadRule":
        """A fresh load rule as these settings describe it (one per server: it learns that server's costs)."""
        return make_load_rule(self.spec_load, spec_max_batch=self.spec_max_batch, spec_load_k=self.spec_load_k,
                              spec_auto_margin=self.spec_auto_margin, spec_auto_window=self.spec_auto_window,
                              spec_auto_probe_every=self.spec_auto_probe_every, spec_auto_defer=self.spec_auto_defer)

    @property
    def served_name(self) -> str:
        return self.model_name or self.target

    @staticmethod
    def help(name: str) -> str:
        return next(f.metadata["help"] for f in fields(ServeSettings) if f.name == name)
