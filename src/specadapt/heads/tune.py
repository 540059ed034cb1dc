"""``tune_head``: pick the SpecDec++ stopping threshold h (and, optionally, the least
and largest draft lengths ``min_k`` / ``max_k``) by measured throughput, and record them
in the head.

The grid is every threshold times every ``min_k`` (default: 2 only) times every
``max_k`` (default: 20 only). For each dev prompt, every setting of the grid is run
once (the order rotates from prompt to prompt, so slow drifts of the machine's
speed do not favour one setting); tokens/s is
pooled per setting (sum of generated tokens / sum of wall time). The fastest is
written as ``threshold``, ``min_k`` and ``max_k`` into the head's ``config.json``, with the
measurements under ``threshold_tuning``; every other field is kept.

``by="replay"`` (greedy only) measures less and sees more: per dev prompt it times
``fixed:2`` and ``fixed:6`` once, which fit a cost model (seconds = a·drafted +
b·rounds + c·prompt tokens, :class:`specadapt.bench.replay.CostModel`), and replays
every setting on the greedy output (:mod:`specadapt.bench.replay`: exact counts, no
timing noise). Tokens/s per setting is then modelled; fixed K = 1..10 are replayed
beside them as the yardstick, and recorded too. Target-only is not in the fit: on CPU
a one-token target step costs more than a 2-token verification (matrix-vector
kernels), so anchoring the per-round cost there undercharges drafting and favours
long blocks.

Dev prompts: by default those of the training run the head came from
(``OUTPUT/data/prompts.jsonl``, split ``dev``, when the head is ``OUTPUT/head``), else a
JSONL file of ``{"prompt": ...}`` lines, else built-in benchmark datasets
(``datasets=["humaneval", "mt-bench"]``), formatted exactly as `specadapt bench` formats
them (chat messages, stop strings), taken round-robin after skipping the first ``skip``
examples of each, which are the ones ``specadapt bench --limit skip`` reports: the
threshold is then tuned on the workload it is judged on, without seeing those prompts.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import SpecAdaptError
from ..io import read_json, write_json_atomic
from ..policies.base import MAX_DRAFT_TOKENS
from ..policies.specdecpp import DEFAULT_MAX_K, DEFAULT_MIN_K
from ..stats import RequestStats
from ..text import has_chat_template
from .format import CONFIG_FILE, read_head_config

TUNE_BY = ("speed", "replay")
REPLAY_ANCHORS = ("fixed:2", "fixed:6")  # timed per prompt; two draft lengths separate per-round from per-drafted cost
FIXED_REFERENCE = tuple(range(1, 11))


@dataclass
class ThresholdRun:
    """Pooled measurements of one setting (threshold, min_k, max_k): wall-clock seconds and the engine's own counters."""

    threshold: float
    min_k: int = DEFAULT_MIN_K
    max_k: int = DEFAULT_MAX_K
    seconds: float = 0.0
    stats: RequestStats = field(default_factory=RequestStats)

    @property
    def tokens(self) -> int:
        return self.stats.generated_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "threshold": self.threshold,
            "min_k": self.min_k,
            "max_k": self.max_k,
            "tokens": s.generated_tokens,
            "seconds": self.seconds,
            "drafted": s.drafted,
            "accepted": s.accepted,
            "rounds": s.rounds,
            "tokens_per_s": self.tokens_per_s,
            "acceptance_rate": s.acceptance_rate,
            "mean_accepted_length": s.mean_accepted_length,
        }


@dataclass
class TuneResult:
    head: Path
    best: ThresholdRun  # the fastest setting
    runs: list[ThresholdRun]
    prompts: int
    settings: dict[str, Any] = field(default_factory=dict)
    written: bool = False


@dataclass
class TuneSettings:
    """What :func:`tune_head` measures and how; the metadata's help texts are the ``specadapt tune-head`` options'
    (:mod:`specadapt.cli_options`)."""

    target: str | None = field(default=None, metadata={"help": "Target model (default: the one recorded in the head)."})
    draft: str | None = field(default=None, metadata={"help": "Draft model (default: the one recorded in the head)."})
    prompts_file: str | None = field(default=None, metadata={
        "help": "JSONL file of {\"prompt\": ...} lines (default: the training run's dev prompts).", "flag": "--prompts"})
    datasets: list[str] | None = field(default=None, metadata={
        "help": "Instead: comma-separated built-in bench datasets (e.g. humaneval,mt-bench), prompted as `specadapt bench` "
                "prompts them, taken round-robin after --skip."})
    skip: int = field(default=0, metadata={
        "help": "With --datasets: leave out the first N examples of each (those `specadapt bench --limit N` reports)."})
    num_prompts: int = field(default=5, metadata={"help": "Prompts to measure with."})
    thresholds: tuple[float, ...] = field(default=(0.3, 0.5, 0.7, 0.9), metadata={
        "help": "Comma-separated thresholds h to try."})
    min_ks: tuple[int, ...] = field(default=(DEFAULT_MIN_K,), metadata={
        "help": "Comma-separated least draft lengths to try with every threshold (e.g. 1,2: chat often wants 1).",
        "flag": "--min-k", "example": "1,2"})
    max_ks: tuple[int, ...] = field(default=(DEFAULT_MAX_K,), metadata={
        "help": "Comma-separated largest draft lengths to try with every threshold and min_k (e.g. 20,32: code often "
                "drafts to the cap).", "flag": "--max-k", "example": "20,32"})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens generated per prompt and threshold."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    chat: bool | None = field(default=None, metadata={
        "help": "Chat template for --prompts (default: if the tokenizer has one).", "flag": "--chat/--no-chat"})
    dtype: str = field(default="bfloat16", metadata={"help": "bfloat16, float32 or float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N."})
    by: str = field(default="speed", metadata={
        "help": "speed: time every threshold on every prompt; replay (greedy only): time fixed:2 and fixed:6 once per "
                "prompt, replay every threshold and fixed K 1-10 on the greedy output and model their speed (exact "
                "counts, far less noise)."})
    write: bool = field(default=True, metadata={
        "help": "Measure and print, but do not write the threshold into the head.", "flag": "--dry-run", "negated": True})
    progress: bool = True


def resolve_head_dir(head: str | os.PathLike) -> Path:
    """Accept the head folder itself or the train-head output folder holding ``head/``."""
    path = Path(head).expanduser()
    if not (path / CONFIG_FILE).exists() and (path / "head" / CONFIG_FILE).exists():
        path = path / "head"
    read_head_config(path)  # a clear error for anything that is not a head folder
    return path


def dev_prompts_of(head_dir: Path) -> list[list[int]]:
    """The tokenised dev prompts of the training run that wrote ``head_dir`` (empty if there is none)."""
    prompts = head_dir.parent / "data" / "prompts.jsonl"
    if head_dir.name != "head" or not prompts.is_file():
        return []
    from .data import read_prompts

    return [r["prompt_ids"] for r in read_prompts(prompts) if r.get("split") == "dev"]


def benchmark_prompts(datasets: Sequence[str], skip: int, count: int) -> tuple[list[list[dict]], list[tuple[str, ...]]]:
    """``count`` examples of the built-in benchmark ``datasets`` after the first ``skip`` of each, round-robin:
    their chat messages and stop strings, as `specadapt bench` uses them."""
    from ..bench.datasets import load_dataset

    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise SpecAdaptError(f"skip must be a whole number >= 0, got {skip!r}.")
    per = -(-count // len(datasets))
    columns = [load_dataset(name, skip + per)[skip:] for name in datasets]
    examples = [e for row in itertools.zip_longest(*columns) for e in row if e is not None][:count]
    if len(examples) < count:
        raise SpecAdaptError(f"{', '.join(datasets)} hold only {len(examples)} examples after skipping {skip} of each; "
                             "lower --skip or --num-prompts.")
    return [e.messages for e in examples], [tuple(e.stop) for e in examples]


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    grid = [float(h) for h in thresholds]
    if not grid:
        raise SpecAdaptError("no thresholds to try; give e.g. --thresholds 0.3,0.5,0.7,0.9.")
    bad = [h for h in grid if not 0.0 < h < 1.0]
    if bad:
        raise SpecAdaptError(f"thresholds must lie strictly between 0 and 1, got {bad}.")
    return sorted(set(grid))


def _check_min_ks(min_ks: Sequence[int]) -> list[int]:
    grid = sorted({int(k) for k in min_ks})
    if not grid or grid[0] < 1:
        raise SpecAdaptError(f"min_k values must be integers >= 1 (e.g. --min-k 1,2), got {list(min_ks)}.")
    return grid


def _check_max_ks(max_ks: Sequence[int], min_k_grid: list[int]) -> list[int]:
    grid = sorted({int(k) for k in max_ks})
    if not grid or grid[0] < max(min_k_grid) or grid[-1] > MAX_DRAFT_TOKENS:
        raise SpecAdaptError(f"max_k values must be integers from the largest min_k ({max(min_k_grid)}) to "
                             f"{MAX_DRAFT_TOKENS} (e.g. --max-k 20,32), got {list(max_ks)}.")
    return grid


def write_tuning(head_dir: Path, run: ThresholdRun, tuning: dict[str, Any]) -> None:
    """Set ``threshold``, ``min_k``, ``max_k`` (``run``'s) and ``threshold_tuning`` in the head's config.json,
    keeping all other fields."""
    path = head_dir / CONFIG_FILE
    config = read_json(path)
    config["threshold"] = run.threshold
    config["min_k"] = run.min_k
    config["max_k"] = run.max_k
    config["threshold_tuning"] = tuning
    write_json_atomic(path, config)
    read_head_config(head_dir)


def tune_head(
    head: str | os.PathLike,
    settings: TuneSettings | None = None,
    *,
    prompts: Sequence[str] | Sequence[Sequence[int]] | None = None,
    decoder=None,
    on_result: Callable[[ThresholdRun], None] | None = None,
    **changes: Any,
) -> TuneResult:
    """Measure tokens/s of ``specdecpp:head=HEAD,threshold=h,min_k=m,max_k=M`` for each h, m and M and record the fastest
    in the head.

    ``changes`` replace fields of ``settings`` (default :class:`TuneSettings`), e.g. ``thresholds=[0.5, 0.7]``.
    ``target`` / ``draft`` default to the pair recorded in the head's config (else the built-in
    pair); ``decoder`` (a :class:`~specadapt.api.SpecDecoder`) skips loading. ``chat`` applies to
    text prompts (None: use the chat template when the tokenizer has one). ``datasets`` / ``skip``: prompts
    from built-in benchmark datasets (see the module docstring) instead of ``prompts``. ``by``: ``"speed"``
    (time every threshold) or ``"replay"`` (model it; see the module docstring).
    """
    from ..api import SpecDecoder
    from ..engine import RequestConfig
    from ..methods import make_method
    from ..models import zoo

    s = replace(settings or TuneSettings(), **changes)
    head_dir = resolve_head_dir(head)
    config = read_head_config(head_dir)
    grid = _check_thresholds(s.thresholds)
    min_k_grid = _check_min_ks(s.min_ks)
    max_k_grid = _check_max_ks(s.max_ks, min_k_grid)
    if not isinstance(s.num_prompts, int) or s.num_prompts < 1:
        raise SpecAdaptError(f"num_prompts must be >= 1, got {s.num_prompts!r}.")
    RequestConfig(s.max_new_tokens, s.temperature, seed=s.seed)  # fail fast on bad settings
    if s.by not in TUNE_BY:
        raise SpecAdaptError(f"by must be one of {', '.join(TUNE_BY)}, got {s.by!r}.")
    if s.by == "replay" and s.temperature != 0:
        raise SpecAdaptError("tuning by replay needs greedy decoding (temperature 0): only then is every threshold's "
                             "output the target's own. Use --by speed for sampling.")
    if s.by == "replay" and s.num_prompts < 2:
        raise SpecAdaptError("tuning by replay needs at least 2 prompts (their timings fit the cost model); raise --num-prompts.")

    # Prompts before models: a missing prompt set should not cost a model load.
    stops: list[tuple[str, ...]] = []
    if s.datasets:
        if prompts is not None or s.prompts_file is not None:
            raise SpecAdaptError("give dev prompts one way: datasets, or a prompts file, or prompts; not several.")
        prompts, stops = benchmark_prompts(s.datasets, s.skip, s.num_prompts)
    if prompts is None and s.prompts_file is not None:
        from ..sources import read_jsonl_prompts

        records = read_jsonl_prompts(Path(s.prompts_file).expanduser())
        prompts = [r.prompt for r in records]
    if prompts is None:
        prompts = dev_prompts_of(head_dir)
        if not prompts:
            raise SpecAdaptError(
                f"no dev prompts found for the head {head_dir} (it is not inside a train-head output folder); "
                "pass --prompts FILE.jsonl with lines like {\"prompt\": \"...\"}."
            )
    prompts = list(prompts)[:s.num_prompts]
    if not prompts:
        raise SpecAdaptError("no prompts to measure with; give at least one.")

    target = s.target or config.get("target") or zoo.DEFAULT_TARGET
    draft = s.draft or config.get("draft") or zoo.DEFAULT_DRAFT
    if decoder is None:
        decoder = SpecDecoder.from_pretrained(target, draft, dtype=s.dtype, device=s.device)
    if decoder.draft is None:
        raise SpecAdaptError("tune-head needs a draft model; load the pair the head was trained for.")
    draft_hidden = int(decoder.draft.config.get_text_config().hidden_size)
    if draft_hidden != config["hidden_size"]:
        raise SpecAdaptError(
            f"the head {head_dir} expects hidden size {config['hidden_size']}, but the draft {draft!r} has hidden size "
            f"{draft_hidden}: the head was trained for another draft. Pass the draft it was trained for (--draft)."
        )
    use_chat = has_chat_template(decoder.tokenizer) if s.chat is None else s.chat
    ids = [decoder.encode(p, use_chat) if isinstance(p, str) or isinstance(p[0], dict) else list(p) for p in prompts]
    stops = stops or [()] * len(ids)
    methods = {(h, k, m): make_method("specdecpp", head=str(head_dir), threshold=h, min_k=k, max_k=m)
               for m in max_k_grid for k in min_k_grid for h in grid}
    gen = RequestConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=s.seed)

    # Warm-up (caches, kernels, lazy head load): not measured.
    warm = RequestConfig(max_new_tokens=min(8, s.max_new_tokens), seed=s.seed)
    for method in [next(iter(methods.values()))] + ([make_method(a) for a in REPLAY_ANCHORS] if s.by == "replay" else []):
        decoder.engine.generate([ids[0]], method, warm)
    record: dict[str, Any] = {}
    gens = [replace(gen, stop_strings=stop) for stop in stops]  # the benchmark's stop strings, per prompt
    if s.by == "replay":
        ordered, record = _replay_sweep(decoder, ids, methods, gens, s.progress)
    else:
        ordered = _timed_sweep(decoder, ids, methods, gens, s.progress)
    best = max(ordered, key=lambda r: r.tokens_per_s)
    summary = {
        "by": s.by,
        "target": target,
        "draft": draft,
        "prompts": len(ids),
        **({"datasets": list(s.datasets), "skip": s.skip} if s.datasets else {}),
        "max_new_tokens": s.max_new_tokens,
        "temperature": s.temperature,
        "seed": s.seed,
        "device": str(decoder.engine.device),
        "dtype": str(next(decoder.target.parameters()).dtype).replace("torch.", ""),
    }
    if on_result is not None:
        for r in ordered:
            on_result(r)
    if s.write:
        write_tuning(head_dir, best, {**summary, "grid": grid, "min_k_grid": min_k_grid, "max_k_grid": max_k_grid,
                                      "results": [r.to_dict() for r in ordered], **record})
    return TuneResult(head_dir, best, ordered, len(ids), {**summary, **record}, s.write)


def _timed_sweep(decoder, ids: list[list[int]], methods: dict, gens: list, progress: bool) -> list[ThresholdRun]:
    """Every setting run once per prompt, the order rotated per prompt; wall time pooled per setting."""
    from tqdm.auto import tqdm

    grid = list(methods)
    runs = {key: ThresholdRun(*key) for key in grid}
    bar = tqdm(total=len(ids) * len(grid), desc="threshold sweep", unit="run", disable=not progress)
    for i, (prompt, gen) in enumerate(zip(ids, gens)):
        for key in grid[i % len(grid) :] + grid[: i % len(grid)]:  # rotate the order per prompt
            t0 = time.perf_counter()
            result = decoder.engine.generate([prompt], methods[key], gen)[0]
            runs[key].seconds += time.perf_counter() - t0
            runs[key].stats.add(result.stats)
            bar.update(1)
    bar.close()
    return [runs[key] for key in grid]


def _replay_sweep(decoder, ids: list[list[int]], methods: dict, gens: list, progress: bool) -> tuple[list[ThresholdRun], dict]:
    """Time the anchors per prompt, replay every setting and fixed K on the greedy output (the first
    anchor's: lossless), and model each one's seconds with the cost model fitted on the timed generations."""
    from tqdm.auto import tqdm

    from ..bench.replay import CostModel, make_trajectory, replay
    from ..methods import make_method

    anchors = [make_method(a) for a in REPLAY_ANCHORS]
    fixed = {f"fixed:{k}": make_method(f"fixed:{k}") for k in FIXED_REFERENCE}
    timed: list[dict] = []
    replayed: list[dict] = []
    for prompt, gen in tqdm(list(zip(ids, gens)), desc="replay sweep", unit="prompt", disable=not progress):
        for method in anchors:
            t0 = time.perf_counter()
            result = decoder.engine.generate([prompt], method, gen)[0]
            s = result.stats
            timed.append({"drafted": s.drafted, "rounds": s.rounds, "prompt_tokens": len(prompt),
                          "tokens": s.generated_tokens, "wall_s": time.perf_counter() - t0})
            if method is anchors[0]:
                greedy = result.token_ids
        traj = make_trajectory(decoder.draft, prompt, greedy, gen.max_new_tokens, decoder.engine.eos_token_ids)
        replayed.append({label: replay(m, traj) for label, m in {**methods, **fixed}.items()})
    cost = CostModel.fit(timed)
    runs = {key: ThresholdRun(*key) for key in methods} | {label: ThresholdRun(0.0) for label in fixed}  # fixed K: no threshold
    for row in replayed:
        for label, run in runs.items():
            run.stats.add(row[label])
            run.seconds += cost.seconds(row[label])
    fixed_tps = {label: runs[label].tokens_per_s for label in fixed}
    record = {"cost_model": vars(cost), "anchors": list(REPLAY_ANCHORS), "fixed_k_tokens_per_s": fixed_tps,
              "best_fixed_k": max(fixed_tps, key=fixed_tps.get)}
    return [runs[key] for key in methods], record
