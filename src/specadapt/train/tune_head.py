"""``tune_head``: pick the SpecDec++ stopping threshold h by measured throughput, and record it in the head.

For each dev prompt, every threshold of the grid is run once (the order rotates from
prompt to prompt, so slow drifts of the machine's speed do not favour one threshold);
tokens/s is pooled per threshold (sum of generated tokens / sum of wall time). The
fastest threshold is written as ``threshold`` into the head's ``config.json``, with the
measurements under ``threshold_tuning``; every other field is kept.

Dev prompts: by default those of the training run the head came from
(``OUTPUT/data/prompts.jsonl``, split ``dev``, when the head is ``OUTPUT/head``), else a
JSONL file of ``{"prompt": ...}`` lines.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecAdaptError
from ..heads import CONFIG_FILE, read_head_config
from ..stats import RequestStats

DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


@dataclass
class ThresholdRun:
    """Pooled measurements of one threshold: wall-clock seconds and the engine's own counters."""

    threshold: float
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
    best: float
    runs: list[ThresholdRun]
    prompts: int
    settings: dict[str, Any] = field(default_factory=dict)
    written: bool = False


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
    rows = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["prompt_ids"] for r in sorted(rows, key=lambda r: r["index"]) if r.get("split") == "dev"]


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    grid = [float(h) for h in thresholds]
    if not grid:
        raise SpecAdaptError("no thresholds to try; give e.g. --thresholds 0.3,0.5,0.7,0.9.")
    bad = [h for h in grid if not 0.0 < h < 1.0]
    if bad:
        raise SpecAdaptError(f"thresholds must lie strictly between 0 and 1, got {bad}.")
    return sorted(set(grid))


def write_threshold(head_dir: Path, threshold: float, tuning: dict[str, Any]) -> None:
    """Set ``threshold`` (and ``threshold_tuning``) in the head's config.json, keeping all other fields."""
    path = head_dir / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config["threshold"] = threshold
    config["threshold_tuning"] = tuning
    tmp = path.with_name(CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    read_head_config(head_dir)


def tune_head(
    head: str | os.PathLike,
    *,
    target: str | None = None,
    draft: str | None = None,
    prompts: Sequence[str] | Sequence[Sequence[int]] | None = None,
    prompts_file: str | os.PathLike | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    num_prompts: int = 5,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    chat: bool | None = None,
    dtype: str = "bfloat16",
    device: str = "auto",
    decoder=None,
    write: bool = True,
    progress: bool = True,
    on_result: Callable[[ThresholdRun], None] | None = None,
) -> TuneResult:
    """Measure tokens/s of ``specdecpp:head=HEAD,threshold=h`` for each h and record the fastest in the head.

    ``target`` / ``draft`` default to the pair recorded in the head's config (else the built-in
    pair); ``decoder`` (a :class:`~specadapt.api.SpecDecoder`) skips loading. ``chat`` applies to
    text prompts (None: use the chat template when the tokenizer has one).
    """
    from tqdm.auto import tqdm

    from ..api import SpecDecoder
    from ..engine import GenerationConfig
    from ..methods import make_method
    from ..models import zoo

    head_dir = resolve_head_dir(head)
    config = read_head_config(head_dir)
    grid = _check_thresholds(thresholds)
    if not isinstance(num_prompts, int) or num_prompts < 1:
        raise SpecAdaptError(f"num_prompts must be >= 1, got {num_prompts!r}.")
    GenerationConfig(max_new_tokens, temperature, seed=seed)  # fail fast on bad settings

    # Prompts before models: a missing prompt set should not cost a model load.
    if prompts is None and prompts_file is not None:
        from .sources import read_jsonl_prompts

        records = read_jsonl_prompts(Path(prompts_file).expanduser())
        prompts = [r.prompt for r in records]
    if prompts is None:
        prompts = dev_prompts_of(head_dir)
        if not prompts:
            raise SpecAdaptError(
                f"no dev prompts found for the head {head_dir} (it is not inside a train-head output folder); "
                "pass --prompts FILE.jsonl with lines like {\"prompt\": \"...\"}."
            )
    prompts = list(prompts)[:num_prompts]
    if not prompts:
        raise SpecAdaptError("no prompts to measure with; give at least one.")

    target = target or config.get("target") or zoo.DEFAULT_TARGET
    draft = draft or config.get("draft") or zoo.DEFAULT_DRAFT
    if decoder is None:
        decoder = SpecDecoder.from_pretrained(target, draft, dtype=dtype, device=device)
    if decoder.draft is None:
        raise SpecAdaptError("tune-head needs a draft model; load the pair the head was trained for.")
    draft_hidden = int(decoder.draft.config.get_text_config().hidden_size)
    if draft_hidden != config["hidden_size"]:
        raise SpecAdaptError(
            f"the head {head_dir} expects hidden size {config['hidden_size']}, but the draft {draft!r} has hidden size "
            f"{draft_hidden}: the head was trained for another draft. Pass the draft it was trained for (--draft)."
        )
    use_chat = bool(getattr(decoder.tokenizer, "chat_template", None)) if chat is None else chat
    ids = [decoder.encode(p, use_chat) if isinstance(p, str) else list(p) for p in prompts]
    methods = {h: make_method("specdecpp", head=str(head_dir), threshold=h) for h in grid}
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)

    # Warm-up (caches, kernels, lazy head load): not measured.
    decoder.engine.generate([ids[0]], methods[grid[0]], GenerationConfig(max_new_tokens=min(8, max_new_tokens), seed=seed))
    runs = {h: ThresholdRun(h) for h in grid}
    bar = tqdm(total=len(ids) * len(grid), desc="threshold sweep", unit="run", disable=not progress)
    for i, prompt in enumerate(ids):
        for h in grid[i % len(grid) :] + grid[: i % len(grid)]:  # rotate the order per prompt
            t0 = time.perf_counter()
            result = decoder.engine.generate([prompt], methods[h], gen)[0]
            elapsed = time.perf_counter() - t0
            runs[h].seconds += elapsed
            runs[h].stats.add(result.stats)
            bar.update(1)
    bar.close()
    ordered = [runs[h] for h in grid]
    best = max(ordered, key=lambda r: r.tokens_per_s).threshold
    settings = {
        "target": target,
        "draft": draft,
        "prompts": len(ids),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "device": str(decoder.engine.device),
        "dtype": str(next(decoder.target.parameters()).dtype).replace("torch.", ""),
    }
    if on_result is not None:
        for r in ordered:
            on_result(r)
    if write:
        write_threshold(head_dir, best, {**settings, "grid": grid, "results": [r.to_dict() for r in ordered]})
    return TuneResult(head_dir, best, ordered, len(ids), settings, write)
