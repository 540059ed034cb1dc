"""Cheap drafts: every method with the bf16 draft and with a quantized one, against target-only and Hugging Face
assisted generation given the very same draft objects, in one process.

    python benchmarks/cheap_draft.py --threads 2 --n 10 --repeats 2 --time-limit 3600   # resumable
    python benchmarks/cheap_draft.py --n 1 --repeats 1 --max-new-tokens 16 --no-rss \\
        --methods autoregressive,fixed:best,hf-assisted --drafts bf16,int4 --out /tmp/cheap   # a quick look

Models: the target is loaded once (on a CPU without native bf16 it keeps float32 copies of its weights, as
``specadapt generate`` does for a pair; ``--no-float32-copies``: not); the draft once, and each draft variant is built once from it
(``--drafts``: ``bf16`` = the loaded weights; ``int8`` / ``int4`` = :func:`specadapt.models.quant.quantize_model`
on a copy; ``+vN`` = the head restricted to the N most frequent token ids first,
:func:`specadapt.models.draft_vocab.restrict_vocabulary` with the shipped ranking, e.g. ``int4+v32768``).
Other draft models, e.g. distilled ones, join the same run: ``--draft-models distilled=runs/x/draft`` loads that
model too, and ``distilled:int4`` names its int4 variant (``--drafts int4,distilled:int4`` compares it with the
stock draft, the first variant, in the column "vs same method, reference draft").
Our engine and Hugging Face's ``generate(assistant_model=...)`` get the same module object per variant.

Method labels (``--methods``; a label without ``@DRAFT`` that needs a draft is run with every ``--drafts``):

- ``autoregressive``: target-only decoding through specadapt's engine (the baseline of every speedup);
- ``<method>@<draft>``: any specadapt method string with that draft (``adaedl@int4``, ``fixed:6@bf16``);
  ``fixed:best`` is the best fixed K of the dataset as chosen on the *tune* split (``--best-k``);
- ``hf-assisted@<draft>``: ``target.generate(assistant_model=draft)`` with the draft's generation config as
  loaded, i.e. transformers' own defaults for assisted generation (the values resolved at run time are recorded
  in ``settings.json`` under ``hf_assisted_defaults``);
- ``hf-assisted:K@<draft>`` (or ``hf-assisted:best``): constant K draft tokens
  (``num_assistant_tokens_schedule="constant"``, ``assistant_confidence_threshold=0``), set on the draft's
  generation config for that call only.

Protocol: greedy by default (``--temperature``), batch 1, chat template, no stop strings (every generation runs to
EOS or its token cap, for our engine and HF alike). Prompts: the first ``--n`` examples (after ``--skip``) of the
``--split`` split (default ``test``: no choice was made on it) of HumanEval, MT-Bench (first turn) and GSM8K
(zero-shot chat unless ``--gsm8k-shots``). Prompt by prompt, each prompt's repeats back to back, the datasets
alternate prompt by prompt, and for each prompt and repeat every method runs once in an order rotated by its place
in the run (kept across resumes). The summary uses only examples measured by every method in every repeat (a run cut
short by ``--time-limit`` reports the prompts it finished). One warm-up generation per method first (not recorded).

Output (``--out``, default ``benchmarks/results/cheap_draft/``): ``settings.json`` (no path of this machine),
``records.jsonl`` (one line per generation, appended as it finishes: running the same command again resumes;
``--time-limit`` stops cleanly between generations and writes a partial summary), ``peak_rss.json`` and
``summary.json``.

Summary per dataset and method: tokens/s (mean per-example throughput), speedup vs target-only
(:func:`specadapt.bench.report.speedup_ratio`: a ratio of means) with its spread over repeats, win / tie / loss
(:data:`specadapt.bench.report.VERDICT_RULE`) against target-only, against the same method with the reference
draft (the first of ``--drafts``), against HF assisted generation (defaults) with the same draft, and for fixed K
against ``hf-assisted:K`` with the same draft; acceptance rate, mean accepted length, mean draft length (pooled),
and the fraction of generations token-identical to target-only's on the same prompt and repeat (the lossless
check; bf16 verification of K + 1 tokens may round differently from a one-token pass, so a mismatch there is
numerics, not a lossy rule).

Measured c per draft variant, from the engine's per-request timing stats of every generation of our methods
with that draft (no extra measurement): draft step = sum of draft time / sum of drafted tokens; ``c`` = that /
target-only's target time per round (one-token forward; from the ``autoregressive`` records), ``c_verify`` = that
/ the same generations' target time per round (a verification forward over K + 1 tokens). Both include the
prompt's prefill in the first round and the draft loop's own overhead.

Peak RSS: one process holds every variant, so each configuration is measured in a subprocess (target only, and
target + each draft variant): load, build the variant, one 16-token generation, ``ru_maxrss``; also the RSS
after that generation (building a quantized draft loads the bf16 one first, so the peak includes it).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from specadapt.bench import report  # noqa: E402
from specadapt.bench.report import BASELINE, complete_examples, speedup_ratio  # noqa: E402

DEFAULT_OUT = HERE / "results" / "cheap_draft"
DATASETS = ("humaneval", "mt-bench", "gsm8k", "mt-bench-turn2")  # what --datasets takes, in the tables' order
DEFAULT_DATASETS = DATASETS[:3]
DEFAULT_METHODS = "autoregressive,fixed:best,heuristic,adaedl,specdecpp,adasd-stop,hf-assisted,hf-assisted:best"
DEFAULT_DRAFTS = "bf16,int4"
# The best fixed K per dataset on the tune split with the bf16 draft (BENCHMARKS.md: HumanEval fixed:8,
# MT-Bench fixed:2 (1-2), GSM8K fixed:4 of 4 and 6); none of it was chosen on the test split.
DEFAULT_BEST_K = "humaneval=10,mt-bench=6,gsm8k=6"  # chosen on tune prompts with the int4 draft: results/tune_int4/CHOICES.md
SCHEMES = ("bf16", "int8", "int4")
DRAFT_NAME = re.compile(r"^((?P<model>[A-Za-z][\w-]*):)?(?P<scheme>bf16|int8|int4)(\+v(?P<vocab>\d+))?$")
HF_KEYS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
SETTINGS_FILE, RECORDS_FILE, SUMMARY_FILE, RSS_FILE = "settings.json", "records.jsonl", "summary.json", "peak_rss.json"
RESUMABLE = ("n", "time_limit")  # settings a resumed run may change
WARMUP_TOKENS = 16


# ----------------------------------------------------------------------------
# method labels
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    label: str  # as recorded: "fixed:best@int4", "hf-assisted:6@bf16", "autoregressive"
    kind: str  # "ours" | "hf"
    base: str  # the label without its draft: "fixed:best", "adaedl", "hf-assisted", "hf-assisted:6"
    draft: str | None  # draft variant, None for target-only
    k: int | str | None = None  # fixed / constant K: an int, "best" (per dataset), None

    def k_for(self, dataset: str, best_k: dict[str, int]) -> int | None:
        if self.k == "best":
            if dataset not in best_k:
                raise SystemExit(f"--best-k gives no K for {dataset}; add {dataset}=K.")
            return best_k[dataset]
        return self.k

    def method_for(self, dataset: str, best_k: dict[str, int]) -> str:
        """Our method string for ``dataset`` (``fixed:best`` resolved)."""
        return f"fixed:{self.k_for(dataset, best_k)}" if self.base == "fixed:best" else self.base


def parse_draft(name: str) -> tuple[str, int | None]:
    """``"int4+v32768"`` -> ``("int4", 32768)``; ``"distilled:int4"`` -> ``("int4", None)`` (see :func:`draft_model_of`)."""
    m = DRAFT_NAME.match(name.strip())
    if not m:
        raise SystemExit(f"unknown draft variant {name!r}: use bf16, int8 or int4, optionally +vN (e.g. int4+v32768), "
                         "optionally after NAME: for a model of --draft-models (e.g. distilled:int4).")
    vocab = int(m.group("vocab")) if m.group("vocab") else None
    if vocab is not None and vocab < 1:
        raise SystemExit(f"draft variant {name!r}: N in +vN must be >= 1.")
    return m.group("scheme"), vocab


def draft_model_of(name: str) -> str | None:
    """The ``--draft-models`` name a variant is built from (None: ``--draft``)."""
    m = DRAFT_NAME.match(name.strip())
    return m.group("model") if m else None


def parse_draft_models(text: str) -> dict[str, str]:
    """``"a=runs/x/draft,b=DIR"`` -> ``{"a": "runs/x/draft", "b": "DIR"}``."""
    models: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, eq, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not path or not re.fullmatch(r"[A-Za-z][\w-]*", name) or name in SCHEMES:
            raise SystemExit(f"--draft-models takes NAME=MODEL pairs (NAME: letters, digits, - or _; not bf16/int8/int4), "
                             f"got {item!r}.")
        if name in models:
            raise SystemExit(f"--draft-models names {name!r} twice.")
        models[name] = path
    return models


def parse_label(text: str) -> Label:
    """One label; its draft (``@DRAFT``) may be missing (filled in by :func:`expand_methods`)."""
    from specadapt import SpecAdaptError, make_method

    text = text.strip()
    base, at, draft = text.rpartition("@") if "@" in text else (text, "", "")
    if at:
        parse_draft(draft)
    draft = draft or None
    if base == BASELINE:
        if draft:
            raise SystemExit("autoregressive is target-only: it takes no @DRAFT.")
        return Label(BASELINE, "ours", BASELINE, None)
    if base == "hf-assisted" or base.startswith("hf-assisted:"):
        _, colon, k = base.partition(":")
        if colon and k != "best" and not (k.isdigit() and int(k) >= 1):
            raise SystemExit(f"write hf-assisted:K with an integer K >= 1 (or hf-assisted:best), got {text!r}.")
        return Label(text, "hf", base, draft, (k if k == "best" else int(k)) if colon else None)
    if base == "fixed:best":
        return Label(text, "ours", base, draft, "best")
    try:
        method = make_method(base)
    except SpecAdaptError as exc:
        raise SystemExit(f"--methods: {exc}") from None
    if not method.needs_draft:
        raise SystemExit(f"{base!r} needs no draft; only autoregressive is run without one.")
    k = getattr(method.policy, "k", None) if method.name == "fixed" else None
    return Label(text, "ours", base, draft, k)


def expand_methods(text: str, drafts: list[str]) -> list[Label]:
    """The run's labels: ``autoregressive`` first (added when missing), then every label, a label without a draft
    once per ``drafts`` (in that order)."""
    from specadapt.bench.runner import split_methods

    for d in drafts:
        parse_draft(d)
    labels: list[Label] = []
    for item in split_methods(text):
        lab = parse_label(item)
        if lab.draft is None and lab.base != BASELINE:
            labels += [parse_label(f"{item}@{d}") for d in drafts]
        else:
            labels.append(lab)
    if not any(lab.label == BASELINE for lab in labels):
        labels.insert(0, parse_label(BASELINE))
    names = [lab.label for lab in labels]
    if len(set(names)) != len(names):
        raise SystemExit(f"--methods lists a method twice: {sorted({n for n in names if names.count(n) > 1})}.")
    return labels


def parse_best_k(text: str) -> dict[str, int]:
    from specadapt.bench.runner import parse_dataset_caps

    try:
        return parse_dataset_caps(text)
    except Exception as exc:  # SpecAdaptError names --dataset-max-new-tokens; say which option
        raise SystemExit(f"--best-k takes DATASET=K pairs, e.g. {DEFAULT_BEST_K!r} ({exc}).") from None


# ----------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------


def build_drafts(draft, tokenizer, names: list[str], group_size: int | None = None, others: dict | None = None,
                 in_place: bool = False) -> dict:
    """One module per variant name, each built once (bf16 is the loaded draft itself); ``others``: the loaded
    ``--draft-models`` by name, for variants ``NAME:SCHEME``. ``in_place``: one variant, built on the loaded model
    itself, as a user's load quantizes it (no copy: the peak-RSS probe)."""
    if in_place and len(names) != 1:
        raise ValueError("in_place builds one variant")
    from specadapt.models.draft_vocab import restrict_vocabulary, shipped_ranking
    from specadapt.models.quant import quantize_model

    out = {}
    for name in names:
        scheme, vocab = parse_draft(name)
        base = draft if draft_model_of(name) is None else (others or {})[draft_model_of(name)]
        model = base if in_place or (scheme == "bf16" and vocab is None) else copy.deepcopy(base)
        if vocab is not None:  # before quantizing: the smaller head is then quantized too
            restrict_vocabulary(model, tokenizer, vocab, shipped_ranking(tokenizer))
        if scheme != "bf16":
            quantize_model(model, scheme, group_size if scheme == "int4" else None)
        out[name] = model.eval()
    return out


def hf_assisted_defaults(draft) -> dict:
    """What transformers' assisted generation uses for this draft when nothing is set (its generation config, with
    the library's global defaults filled in as ``AssistedCandidateGenerator`` does), and whether sklearn (which
    transformers needs to adapt the confidence threshold) is installed."""
    import importlib.util

    import transformers

    gc = copy.deepcopy(draft.generation_config)
    defaults = getattr(gc, "_get_default_generation_params", None)
    if defaults is not None:
        gc.update(**defaults(), defaults_only=True)
    out = {k: getattr(gc, k, None) for k in HF_KEYS}
    out["threshold_adapts"] = importlib.util.find_spec("sklearn") is not None
    out["transformers"] = transformers.__version__
    return out


class Runner:
    """Runs one generation of a label: our engine (one per draft variant) or HF assisted generation."""

    def __init__(self, target, drafts: dict, tokenizer, eos: list[int], best_k: dict[str, int],
                 temperature: float = 0.0) -> None:
        from specadapt import SpeculativeEngine

        self.target, self.drafts, self.eos, self.best_k, self.temperature = target, drafts, eos, best_k, temperature
        self.engines = {None: SpeculativeEngine(target, None, tokenizer, eos)}
        for name, model in drafts.items():
            self.engines[name] = SpeculativeEngine(target, model, tokenizer, eos)
        self.methods: dict[tuple[str, str], object] = {}  # one instance per label (and resolved K)
        # the last generation's measured prices (marginal:cost=auto: "measured_cost", "measured_lookup_cost"), if any
        self.measured: dict[str, float] = {}

    def run(self, lab: Label, dataset: str, ids: list[int], max_new_tokens: int) -> tuple[list[int], float, str, object]:
        """(tokens, wall seconds, finish reason, RequestStats or None)."""
        self.measured = {}
        if lab.kind == "hf":
            return self._hf(lab, dataset, ids, max_new_tokens)
        from specadapt import RequestConfig, make_method

        key = (lab.label, lab.method_for(dataset, self.best_k))
        if key not in self.methods:
            self.methods[key] = make_method(key[1])
        config = RequestConfig(max_new_tokens=max_new_tokens, temperature=self.temperature, seed=0)
        engine = self.engines[lab.draft]
        t0 = time.perf_counter()
        result = engine.generate([ids], self.methods[key], config)[0]
        wall = time.perf_counter() - t0
        self.measured = {k: v for k, v in result.settings.get("policy_settings", {}).items() if k.startswith("measured_")}
        return list(result.token_ids), wall, result.finish_reason, result.stats

    def _hf(self, lab: Label, dataset: str, ids: list[int], max_new_tokens: int):
        import torch

        draft = self.drafts[lab.draft]
        gc = draft.generation_config
        saved = {k: getattr(gc, k, None) for k in HF_KEYS}
        k = lab.k_for(dataset, self.best_k)
        kwargs: dict = {"assistant_model": draft, "max_new_tokens": max_new_tokens,
                        "eos_token_id": self.eos or None, "pad_token_id": self.eos[0] if self.eos else 0}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
            torch.manual_seed(0)
        else:
            kwargs["do_sample"] = False
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.target.device)
        try:
            if k is not None:  # constant K, no confidence stopping: for this call only
                gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = k, "constant"
                gc.assistant_confidence_threshold = 0.0
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.target.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            if self.target.device.type == "cuda":
                torch.cuda.synchronize(self.target.device)
            wall = time.perf_counter() - t0
        finally:
            for key, value in saved.items():
                setattr(gc, key, value)
        tokens = out[0, input_ids.shape[1]:].tolist()
        return tokens, wall, "eos" if tokens and tokens[-1] in self.eos else "length", None


# ----------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------


def make_record(prompt: dict, lab: Label, k: int | None, repeat: int, order: int, ids: list[int], tokens: list[int],
                wall: float, finish: str, stats, session: str) -> dict:
    rec = {
        "dataset": prompt["dataset"], "example_id": prompt["id"], "index": prompt["index"], "split": prompt["split"],
        "category": prompt["category"], "method": lab.label, "base": lab.base, "draft": lab.draft, "kind": lab.kind,
        "k": k, "repeat": repeat, "order": order, "session": session, "prompt_tokens": len(ids),
        "tokens": len(tokens), "wall_s": wall, "tokens_per_s": len(tokens) / wall if wall > 0 else None,
        "finish_reason": finish, "token_ids": tokens,
    }
    if stats is not None:
        rec.update(rounds=stats.rounds, drafted=stats.drafted, accepted=stats.accepted,
                   position_reached=list(stats.position_reached), position_accepted=list(stats.position_accepted),
                   draft_time_s=stats.draft_time_s, target_time_s=stats.target_time_s, total_time_s=stats.total_time_s)
    return rec


def record_key(r: dict) -> tuple:
    return (r["dataset"], r["example_id"], r["method"], r["repeat"])


def schedule(prompts: dict[str, list[dict]], labels: list[Label], repeats: int) -> list[tuple[dict, int, list[Label]]]:
    """(prompt, repeat, labels in rotated order), prompt by prompt with its repeats back to back (so a run cut
    short has every repeat of the prompts it finished), datasets alternating; the rotation follows the
    generation's place in the whole run, so a resumed run keeps it."""
    order: list[dict] = []
    for i in range(max((len(p) for p in prompts.values()), default=0)):
        order += [p[i] for p in prompts.values() if i < len(p)]
    out = []
    for place, prompt in enumerate(order):
        for repeat in range(repeats):
            shift = (place * repeats + repeat) % len(labels)
            out.append((prompt, repeat, labels[shift:] + labels[:shift]))
    return out


def todo(plan, done: set[tuple]) -> list[tuple[dict, int, int, Label]]:
    """The generations still to run: (prompt, repeat, position in the rotation, label)."""
    return [(p, r, pos, lab) for p, r, labs in plan for pos, lab in enumerate(labs)
            if (p["dataset"], p["id"], lab.label, r) not in done]


# ----------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------

C_DEFINITION = (
    "from the engine's per-request timing stats of all our methods' generations with that draft: draft step = "
    "sum draft_time_s / sum drafted; c = draft step / (sum target_time_s / sum rounds of target-only generations, a "
    "one-token forward); c_verify = draft step / (sum target_time_s / sum rounds of the same generations, a forward "
    "over K + 1 tokens); prefill (first round) and the draft loop's overhead included"
)


def per_repeat_speedups(mine: list[dict], base: list[dict]) -> dict[int, float]:
    out = {}
    for r in sorted({x["repeat"] for x in mine}):
        s = speedup_ratio([x for x in mine if x["repeat"] == r], [b for b in base if b["repeat"] == r])
        if s is not None:
            out[r] = s
    return out


def compare(mine: dict, ref: dict, reference: str) -> dict:
    """Gain of entry ``mine`` over ``ref`` (speedup ratio − 1), its spread over the repeats both have, verdict."""
    gain = mine["speedup"] / ref["speedup"] - 1 if mine.get("speedup") and ref.get("speedup") else None
    a, b = mine["speedup_per_repeat"], ref["speedup_per_repeat"]
    per = [a[r] / b[r] - 1 for r in a if r in b and b[r]]
    spread = stdev(per) if len(per) > 1 else None
    return {"reference": reference, "gain": gain, "spread": spread, "repeats": len(per),
            "verdict": report.verdict(gain, spread)}


def entry(mine: list[dict], base: list[dict]) -> dict:
    per = per_repeat_speedups(mine, base)
    e = {
        "examples": len({r["example_id"] for r in mine}),
        "generations": len(mine),
        "mean_tokens": mean(r["tokens"] for r in mine),
        "tokens_per_s": mean(r["tokens_per_s"] for r in mine if r["tokens_per_s"] is not None),
        "speedup": speedup_ratio(mine, base),
        "speedup_per_repeat": per,
        "speedup_spread": stdev(per.values()) if len(per) > 1 else None,
        "acceptance_rate": None, "mean_accepted_length": None, "mean_draft_length": None,
    }
    if all("rounds" in r for r in mine):
        pooled = report.pooled_stats(mine)
        e.update(acceptance_rate=pooled.acceptance_rate, mean_accepted_length=pooled.mean_accepted_length,
                 mean_draft_length=pooled.mean_draft_length)
    ref = {(b["example_id"], b["repeat"]): b["token_ids"] for b in base}
    pairs = [r["token_ids"] == ref[(r["example_id"], r["repeat"])] for r in mine if (r["example_id"], r["repeat"]) in ref]
    e["identical_to_target_only"] = mean(pairs) if pairs else None
    e["identical_pairs"] = f"{sum(pairs)}/{len(pairs)}"
    e["k"] = sorted({r["k"] for r in mine if r.get("k") is not None}) or None
    return e


def measured_c(records: list[dict]) -> dict:
    base = [r for r in records if r["method"] == BASELINE]
    t_rounds = sum(r["rounds"] for r in base)
    target_step = sum(r["target_time_s"] for r in base) / t_rounds if t_rounds else None
    out = {}
    for d in dict.fromkeys(r["draft"] for r in records if r["kind"] == "ours" and r.get("draft")):
        mine = [r for r in records if r["kind"] == "ours" and r.get("draft") == d]
        drafted, rounds = sum(r["drafted"] for r in mine), sum(r["rounds"] for r in mine)
        step = sum(r["draft_time_s"] for r in mine) / drafted if drafted else None
        verify = sum(r["target_time_s"] for r in mine) / rounds if rounds else None
        out[d] = {"draft_step_ms": step * 1e3 if step is not None else None,
                  "target_step_ms": target_step * 1e3 if target_step else None,
                  "verify_step_ms": verify * 1e3 if verify else None,
                  "c": step / target_step if step is not None and target_step else None,
                  "c_verify": step / verify if step is not None and verify else None,
                  "generations": len(mine), "drafted": drafted}
    return out


def summarize(records: list[dict], labels: list[str], drafts: list[str]) -> dict:
    """Per dataset × label: an entry (see :func:`entry`) and its comparisons; c per draft; run bookkeeping."""
    parsed = {m: parse_label(m) for m in labels}
    reference_draft = drafts[0] if drafts else None
    summary: dict = {"datasets": {}, "comparisons": {}, "verdict_rule": report.VERDICT_RULE,
                     "reference_draft": reference_draft, "c": measured_c(records), "c_definition": C_DEFINITION,
                     "sessions": sorted({r["session"] for r in records if "session" in r}),
                     "split_across_sessions": report.split_across_sessions(records)}
    for ds in [d for d in DATASETS if any(r["dataset"] == d for r in records)]:
        rows = [r for r in records if r["dataset"] == ds]
        base = [r for r in rows if r["method"] == BASELINE]
        table = {m: entry([r for r in rows if r["method"] == m], base) for m in labels
                 if any(r["method"] == m for r in rows)}
        comparisons = {}
        for m, e in table.items():
            if m == BASELINE:
                continue
            lab, c = parsed[m], {}
            if BASELINE in table:
                c["vs_target_only"] = compare(e, table[BASELINE], BASELINE)
            other = f"{lab.base}@{reference_draft}"
            if lab.draft != reference_draft and other in table:
                c["vs_reference_draft"] = compare(e, table[other], other)
            hf = f"hf-assisted@{lab.draft}"
            if lab.kind == "ours" and hf in table:
                c["vs_hf_assisted"] = compare(e, table[hf], hf)
            if lab.kind == "ours" and lab.k is not None:
                same_k = f"hf-assisted:{lab.k}@{lab.draft}"
                if same_k in table:
                    c["vs_hf_assisted_same_k"] = compare(e, table[same_k], same_k)
            comparisons[m] = c
        for e in table.values():  # JSON keys are strings
            e["speedup_per_repeat"] = {str(r): s for r, s in e["speedup_per_repeat"].items()}
        summary["datasets"][ds], summary["comparisons"][ds] = table, comparisons
    return summary


# ----------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------

TITLES = {"humaneval": "HumanEval", "mt-bench": "MT-Bench", "gsm8k": "GSM8K", "mt-bench-turn2": "MT-Bench, second turns"}


def _f(x, spec=".2f", suffix=""):
    return "–" if x is None else f"{x:{spec}}{suffix}"


def speedup_text(e: dict) -> str:
    if e["speedup"] is None:
        return "–"
    return f"{e['speedup']:.2f}×" + (f" ± {e['speedup_spread']:.2f}" if e.get("speedup_spread") is not None else "")


def table_rows(summary: dict, ds: str) -> list[list[str]]:
    """Cells of one dataset's table (shared by the printed table and BENCHMARKS.md)."""
    rows = []
    for m, e in summary["datasets"][ds].items():
        c = summary["comparisons"][ds].get(m, {})
        hf = c.get("vs_hf_assisted_same_k") or c.get("vs_hf_assisted")
        k = f" (K={','.join(map(str, e['k']))})" if e.get("k") and "best" in m else ""
        rows.append([
            f"`{m}`{k}", _f(e["tokens_per_s"]), speedup_text(e), report.gain_cell(c.get("vs_target_only")),
            report.gain_cell(c.get("vs_reference_draft")),
            f"{report.gain_cell(hf)} vs `{hf['reference']}`" if hf else "–",
            _f(e["acceptance_rate"], ".1%"), _f(e["mean_accepted_length"]), _f(e["mean_draft_length"]),
            f"{e['identical_pairs']}" if m != BASELINE else "–",
        ])
    return rows


COLUMNS = ["method", "tok/s", "speedup ± spread", "vs target-only", "vs same method, reference draft",
           "vs HF assisted, same draft", "acceptance", "mean accepted length", "mean draft length",
           "identical to target-only"]


# The issue's targets (default pair, this CPU, greedy, lossless): best speedup per dataset; the best of ours with the
# cheap draft against HF assisted generation with its defaults and the bf16 draft, and with the same cheap draft.
# MT-Bench's hold for its second turns too (Spec-Bench's MT-Bench is both turns).
SPEEDUP_TARGETS = {"humaneval": 3.5, "mt-bench": 1.8, "gsm8k": 1.6, "mt-bench-turn2": 1.8}
VS_HF_DEFAULT_TARGETS = {"humaneval": 1.8, "mt-bench": 1.3, "mt-bench-turn2": 1.3}
VS_HF_SAME_DRAFT_TARGET = 1.15
C_TARGET = 0.12


def _verdict(value: float | None, spread: float | None, target: float) -> str:
    """met: even value − spread reaches the target; met within spread: the value does but not its lower end;
    missed within spread: the value does not but value + spread does; missed: not even value + spread."""
    if value is None:
        return "–"
    if value < target:
        return "missed" if spread is None or value + spread < target else "missed within spread"
    return "met" if spread is None or value - spread >= target else "met within spread"


def _pm(value: float | None, spread: float | None, suffix: str = "×", target: float | None = None) -> str:
    """``value ± spread`` to 2 decimals, or 3 where 2 would round a miss of ``target`` up to it."""
    if value is None:
        return "–"
    d = 3 if target is not None and value < target <= round(value, 2) else 2
    return f"{value:.{d}f}{suffix}" + (f" ± {spread:.{d}f}" if spread is not None else "")


def targets_markdown(summary: dict, cheap: str = "int4", default_method: str = "adaedl",
                     frozen: dict[str, str] | None = None) -> str:
    """The issue's targets against this run: the best of our methods with the cheap draft (chosen here, on the
    reported prompts: an optimistic pick), the default method (chosen on tune prompts), HF assisted, and c.
    ``frozen``: dataset -> the method chosen for it before the run, which then stands in for the best one."""
    rows = ["| dataset | target | measured | verdict |", "|---|---|---|---|"]
    for ds, table in summary["datasets"].items():
        ours = {m: e for m, e in table.items() if m.endswith(f"@{cheap}") and not m.startswith("hf-")}
        if not ours:
            continue
        chosen = (frozen or {}).get(ds)
        best = chosen or max(ours, key=lambda m: ours[m]["speedup"] or 0)
        b = ours[best]
        pick = "frozen method" if chosen else "best"
        if ds in SPEEDUP_TARGETS:
            t = SPEEDUP_TARGETS[ds]
            rows.append(f"| {TITLES[ds]} | {pick} speedup ≥ {t}× | `{best}` {_pm(b['speedup'], b.get('speedup_spread'), target=t)} | "
                        f"{_verdict(b['speedup'], b.get('speedup_spread'), t)} |")
            d = table.get(f"{default_method}@{cheap}")
            if d:
                rows.append(f"| {TITLES[ds]} | default method ≥ {t}× | `{default_method}@{cheap}` "
                            f"{_pm(d['speedup'], d.get('speedup_spread'), target=t)} | {_verdict(d['speedup'], d.get('speedup_spread'), t)} |")
        reference = summary.get("reference_draft") or "bf16"
        for hf, target in ((f"hf-assisted@{reference}", VS_HF_DEFAULT_TARGETS.get(ds) if reference != cheap else None),
                           (f"hf-assisted@{cheap}", VS_HF_SAME_DRAFT_TARGET if ds in VS_HF_DEFAULT_TARGETS else None)):
            if target is None or hf not in table:
                continue
            c = compare(b, table[hf], hf)
            ratio = 1 + c["gain"] if c["gain"] is not None else None
            rows.append(f"| {TITLES[ds]} | `{best}` ÷ `{hf}` (HF defaults) ≥ {target}× | {_pm(ratio, c['spread'], target=target)} | "
                        f"{_verdict(ratio, c['spread'], target)} |")
    c = (summary.get("c") or {}).get(cheap, {}).get("c")
    if c is not None:
        rows.append(f"| all | measured c ({cheap} draft) ≤ {C_TARGET} | {c:.3f} | {'met' if c <= C_TARGET else 'missed'} |")
    return "\n".join(rows) + "\n"


def markdown(summary: dict, settings: dict, rss: dict | None) -> str:
    """The tables of BENCHMARKS.md's generated block."""
    lines = []
    caps = settings.get("dataset_max_new_tokens") or {}
    progress = summary.get("progress") or {}
    if progress and not progress.get("complete"):
        lines += [f"**Partial run:** {progress['generations']} of {progress['expected']} generations.", ""]
    for ds, table in summary["datasets"].items():
        n = max(e["examples"] for e in table.values())
        reps = max(len(e["speedup_per_repeat"]) for e in table.values())
        skip = settings.get("skip", 0)
        which = f"examples {skip + 1}–{skip + n}" if skip else f"{n} examples"
        lines += [f"**{TITLES.get(ds, ds)}** ({which} of the `{settings['split']}` split; at most "
                  f"{caps.get(ds, settings['max_new_tokens'])} new tokens; {reps} repeat(s))", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary, ds)]
        lines.append("")
    if summary.get("c"):
        lines += ["Measured c per draft (engine timing stats; " + summary["c_definition"] + "):", "",
                  "| draft | draft step (ms) | c | c_verify |", "|---|---|---|---|"]
        for d, c in summary["c"].items():
            lines.append(f"| `{d}` | {_f(c['draft_step_ms'], '.1f')} | {_f(c['c'], '.3f')} | {_f(c['c_verify'], '.3f')} |")
        lines.append("")
    if rss:
        lines += ["Peak RSS per configuration (a subprocess each: load, build the draft, one 16-token generation):", "",
                  "| configuration | peak RSS (MiB) | RSS after (MiB) |", "|---|---|---|"]
        for name, r in rss.items():
            lines.append(f"| {name} | {_f(r.get('peak_rss_MB'), '.0f')} | {_f(r.get('rss_after_MB'), '.0f')} |")
        lines.append("")
    lines.append("Verdicts: " + summary["verdict_rule"])
    return "\n".join(lines) + "\n"


def print_tables(summary: dict, rss: dict | None, console) -> None:
    from rich.table import Table

    for ds in summary["datasets"]:
        table = Table(*COLUMNS, title=TITLES.get(ds, ds), title_justify="left")
        for row in table_rows(summary, ds):
            table.add_row(*[cell.replace("`", "") for cell in row])
        console.print(table)
    if summary.get("c"):
        table = Table("draft", "draft step ms", "target step ms", "verify step ms", "c", "c_verify", title="measured c")
        for d, c in summary["c"].items():
            table.add_row(d, _f(c["draft_step_ms"], ".1f"), _f(c["target_step_ms"], ".1f"), _f(c["verify_step_ms"], ".1f"),
                          _f(c["c"], ".3f"), _f(c["c_verify"], ".3f"))
        console.print(table)
    if rss:
        table = Table("configuration", "peak RSS MiB", "RSS after MiB", title="peak RSS")
        for name, r in rss.items():
            table.add_row(name, _f(r.get("peak_rss_MB"), ".0f"), _f(r.get("rss_after_MB"), ".0f"))
        console.print(table)


# ----------------------------------------------------------------------------
# peak RSS, one subprocess per configuration
# ----------------------------------------------------------------------------


def _rss_now_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def rss_probe(args) -> None:
    """In a subprocess: load the target (+ one draft variant), one short generation; print peak RSS as JSON."""
    import torch

    from specadapt import RequestConfig, SpeculativeEngine, make_method
    from specadapt.models.hardware import keep_float32_copies_where_they_pay
    from specadapt.models.loading import eos_token_ids, load_model, load_tokenizer

    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    variant = None if args.rss_probe == "target-only" else args.rss_probe
    tokenizer = load_tokenizer(args.target)
    target = load_model(args.target, args.dtype, args.device)
    if variant and args.float32_copies:
        keep_float32_copies_where_they_pay(target)
    draft = None
    if variant:
        source = args.draft if draft_model_of(variant) is None else parse_draft_models(args.draft_models)[draft_model_of(variant)]
        model = load_model(source, args.dtype, target.device)
        draft = build_drafts(model, tokenizer, [variant], args.group_size, {draft_model_of(variant): model}, in_place=True)[variant]
        del model  # the same module as draft now: the float weights it replaced are not kept
    engine = SpeculativeEngine(target, draft, tokenizer, eos_token_ids(target, tokenizer))
    ids = tokenizer("def fibonacci(n):", add_special_tokens=True)["input_ids"]
    engine.generate([ids], make_method("fixed:4" if draft is not None else BASELINE), RequestConfig(max_new_tokens=16))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_MB": peak_kb / 1024, "rss_after_MB": _rss_now_mb()}))


def measure_rss(args, drafts: list[str], out: Path, log) -> dict:
    """Peak RSS of target only and of target + each draft variant; cached in ``peak_rss.json`` (a resume reuses it)."""
    path = out / RSS_FILE
    have = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    names = {"target only": "target-only", **{f"target + {d} draft": d for d in drafts}}
    for name, variant in names.items():
        if name in have:
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-probe", variant, "--target", args.target,
               "--draft", args.draft, "--draft-models", args.draft_models, "--dtype", args.dtype, "--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.group_size:
            cmd += ["--group-size", str(args.group_size)]
        if not args.float32_copies:
            cmd.append("--no-float32-copies")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if proc.returncode != 0:
            log(f"peak RSS of {name}: the probe failed ({proc.stderr.strip().splitlines()[-1:]}); not recorded")
            continue
        have[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"peak RSS of {name}: {have[name]['peak_rss_MB']:.0f} MiB ({time.perf_counter() - t0:.0f} s)")
        _write_json(path, have)
    return {k: have[k] for k in names if k in have}


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def _write_json(path: Path, payload) -> None:
    from specadapt.io import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload, indent=1)


def parse_args(argv=None) -> argparse.Namespace:
    from specadapt.models import zoo

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", default=zoo.DEFAULT_TARGET)
    p.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="method labels (see the module docstring)")
    p.add_argument("--drafts", default=DEFAULT_DRAFTS, help="draft variants; the first is the reference")
    p.add_argument("--draft-models", default="", help="more draft models, NAME=MODEL,...; variants NAME:int4 etc.")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (default 32)")
    p.add_argument("--best-k", default=DEFAULT_BEST_K, help="fixed:best / hf-assisted:best per dataset (tune split)")
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help=f"some of {', '.join(DATASETS)}")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=10, help="first N prompts of the split per dataset")
    p.add_argument("--skip", type=int, default=0, help="start after the split's first SKIP prompts (prompts no earlier "
                   "run measured)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dataset-max-new-tokens", default="", help="per-dataset caps, e.g. 'mt-bench=128,gsm8k=256'")
    p.add_argument("--gsm8k-shots", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; start no generation after it")
    p.add_argument("--no-float32-copies", dest="float32_copies", action="store_false",
                   help="on a CPU without native bf16, no float32 copy of the target's weights (kept by default, as "
                        "specadapt generate keeps one for a pair; HF assisted generation uses the same target)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--overwrite", action="store_true", help="start again in --out (deletes its records)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.max_new_tokens < 1:
        p.error("--n, --repeats and --max-new-tokens must be >= 1")
    if args.skip < 0:
        p.error("--skip must be >= 0")
    return args


def run_settings(args) -> dict:
    """What defines the run (no path of this machine); a resume must match it except :data:`RESUMABLE`."""
    from specadapt.bench.runner import parse_dataset_caps
    from specadapt.bench.splits import check_split

    check_split(args.split)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise SystemExit(f"--datasets: use some of {', '.join(DATASETS)}.")
    drafts = [d.strip() for d in args.drafts.split(",") if d.strip()]
    labels = expand_methods(args.methods, drafts)
    used = [d for d in drafts if any(lab.draft == d for lab in labels)]
    draft_models = parse_draft_models(args.draft_models)
    for d in used:
        if draft_model_of(d) is not None and draft_model_of(d) not in draft_models:
            raise SystemExit(f"draft variant {d!r} names model {draft_model_of(d)!r}, which --draft-models does not "
                             f"give; add --draft-models {draft_model_of(d)}=MODEL.")
    best_k = parse_best_k(args.best_k)
    caps = parse_dataset_caps(args.dataset_max_new_tokens) if args.dataset_max_new_tokens else {}
    for name in (*caps,):
        if name not in datasets:
            raise SystemExit(f"--dataset-max-new-tokens names {name!r}, which this run does not benchmark.")
    for lab in labels:
        for ds in datasets:
            lab.k_for(ds, best_k)  # fails early when --best-k lacks a dataset
    return {"target": args.target, "draft": args.draft, "dtype": args.dtype, "device": args.device,
            "threads": args.threads, "methods": [lab.label for lab in labels], "drafts": used, "group_size": args.group_size,
            **({"draft_models": draft_models} if draft_models else {}),
            "best_k": {d: best_k[d] for d in datasets if d in best_k}, "datasets": datasets, "split": args.split,
            "n": args.n, **({"skip": args.skip} if args.skip else {}),  # absent when 0: older runs still resume
            **({} if args.float32_copies else {"float32_copies": False}),  # absent by default: likewise
            "max_new_tokens": args.max_new_tokens, "dataset_max_new_tokens": caps,
            "gsm8k_shots": args.gsm8k_shots, "repeats": args.repeats, "temperature": args.temperature,
            "stop_strings": False, "chat_template": True, "batch_size": 1, "warmup_tokens": WARMUP_TOKENS}


def prepare_out(out: Path, settings: dict, overwrite: bool) -> list[dict]:
    """Records of a run being resumed in ``out`` (same settings but :data:`RESUMABLE`); [] for a new run."""
    from specadapt.io import read_jsonl_tolerant

    path = out / SETTINGS_FILE
    if path.exists() and not overwrite:
        stored = json.loads(path.read_text(encoding="utf-8"))["settings"]
        differ = [k for k in settings if k not in RESUMABLE and stored.get(k) != settings[k]]
        if differ:
            raise SystemExit(f"--out {out} holds a run with other settings ({', '.join(differ)}); use the same "
                             "settings to resume it, another --out, or --overwrite.")
        return read_jsonl_tolerant(out / RECORDS_FILE, repair=True)
    if overwrite:
        for name in (SETTINGS_FILE, RECORDS_FILE, SUMMARY_FILE, RSS_FILE):
            (out / name).unlink(missing_ok=True)
    return []


def load_prompts(settings: dict, n: int, encode) -> dict[str, list[dict]]:
    from specadapt.bench.datasets import load_dataset

    prompts, skip = {}, settings.get("skip", 0)
    for ds in settings["datasets"]:
        examples = load_dataset(ds, skip + n, settings["split"], gsm8k_shots=settings["gsm8k_shots"])[skip:]
        prompts[ds] = [{"dataset": ds, "id": e.id, "index": e.index, "split": e.split, "category": e.category,
                        "ids": encode(e.messages)} for e in examples]
    return prompts


def environment(target) -> dict:
    import platform

    import torch
    import transformers

    from specadapt.models.hardware import has_float32_copies, machine

    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "transformers": transformers.__version__, **machine(), "device": str(target.device), "dtype": str(target.dtype).replace("torch.", ""),
           "target_float32_copies": has_float32_copies(target)}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            env["git_commit"] = head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def command_line(argv) -> str:
    """The command without ``--out`` (it may name a folder of this machine)."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a.startswith("--out="):
            continue
        kept.append(a)
    return " ".join(["benchmarks/cheap_draft.py", *kept])


def run(args, argv=None, *, models=None, encode=None, log=print, console=None) -> dict:
    """Run or resume the benchmark; return the summary. ``models`` = (target, tokenizer, base draft[, {name: draft
    model} for --draft-models]) and ``encode``
    (messages -> ids) skip loading, e.g. in tests."""
    import torch
    import transformers
    from tqdm.auto import tqdm

    started = time.perf_counter()
    session = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    settings = run_settings(args)
    out = Path(args.out)
    records = prepare_out(out, settings, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    rss = measure_rss(args, settings["drafts"], out, log) if not args.no_rss and models is None else None

    from specadapt.models.hardware import compile_fused_products, keep_float32_copies_where_they_pay
    from specadapt.models.loading import eos_token_ids, load_model, load_tokenizer
    from specadapt.text import encode_chat

    t0 = time.perf_counter()
    if models is None:
        tokenizer = load_tokenizer(args.target)
        target = load_model(args.target, args.dtype, args.device)
        if args.float32_copies and settings["drafts"]:
            keep_float32_copies_where_they_pay(target)
        base_draft = load_model(args.draft, args.dtype, target.device) if settings["drafts"] else None
        others = {name: load_model(path, args.dtype, target.device)
                  for name, path in settings.get("draft_models", {}).items()
                  if any(draft_model_of(d) == name for d in settings["drafts"])}
    else:
        target, tokenizer, base_draft, *rest = models
        others = rest[0] if rest else {}
    drafts = build_drafts(base_draft, tokenizer, settings["drafts"], args.group_size, others) if settings["drafts"] else {}
    compile_fused_products(target, *drafts.values())  # on a CPU without native bf16: not inside a timed generation
    eos = eos_token_ids(target, tokenizer)
    log(f"loaded {args.target} + {len(drafts)} draft variant(s) ({', '.join(drafts)}) in {time.perf_counter() - t0:.1f} s, "
        f"{torch.get_num_threads()} threads")
    encode = encode or (lambda messages: encode_chat(tokenizer, messages, args.target))
    prompts = load_prompts(settings, args.n, encode)
    labels = [parse_label(m) for m in settings["methods"]]
    best_k = settings["best_k"]
    runner = Runner(target, drafts, tokenizer, eos, best_k, args.temperature)

    if not (out / SETTINGS_FILE).exists():
        hf = {d: hf_assisted_defaults(m) for d, m in drafts.items()}
        _write_json(out / SETTINGS_FILE, {
            "settings": settings, "hf_assisted_defaults": hf,
            "hf_assisted_constant_k": {"num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0},
            "speedup_definition": "mean per-example tokens/s of a method / that of autoregressive over the same "
                                  "examples (specadapt.bench.report.speedup_ratio)",
            "c_definition": C_DEFINITION, "command": command_line(argv), "environment": environment(target)})
    else:
        stored = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
        if stored["settings"]["n"] != settings["n"]:
            stored["settings"]["n"] = settings["n"]
            _write_json(out / SETTINGS_FILE, stored)

    wanted = {(p["dataset"], p["id"]) for ps in prompts.values() for p in ps}
    records = [r for r in records if (r["dataset"], r["example_id"]) in wanted]  # a smaller --n reports fewer
    plan = schedule(prompts, labels, args.repeats)
    remaining = todo(plan, {record_key(r) for r in records})
    expected = sum(len(labs) for _, _, labs in plan)
    if records:
        log(f"resuming {out}: {len(records)} generations done, {len(remaining)} to go")

    def finish(complete: bool) -> dict:
        used = complete_examples(records, settings["methods"], settings["repeats"])
        summary = summarize(used, settings["methods"], settings["drafts"])
        summary["progress"] = {"complete": complete, "generations": len(records), "expected": expected,
                               "generations_summarized": len(used)}
        summary["peak_rss"] = rss
        _write_json(out / SUMMARY_FILE, summary)
        if console is not None:
            print_tables(summary, rss, console)
        return summary

    def time_up() -> bool:
        return args.time_limit is not None and time.perf_counter() - started > args.time_limit

    if remaining and not time_up():  # one warm-up per method, on the first prompt still to run
        prompt = remaining[0][0]
        for lab in tqdm(labels, desc="warm-up", leave=False, disable=args.no_progress):
            runner.run(lab, prompt["dataset"], prompt["ids"], min(WARMUP_TOKENS, cap(settings, prompt["dataset"])))

    bar = tqdm(total=len(remaining), desc="cheap-draft", unit="gen", disable=args.no_progress)
    try:
        with open(out / RECORDS_FILE, "a", encoding="utf-8") as sink:
            for prompt, repeat, position, lab in remaining:
                if time_up():
                    bar.close()
                    log(f"time limit reached: {len(records)} of {expected} generations in {out / RECORDS_FILE}; "
                        "partial summary written; run the same command to resume.")
                    return finish(complete=False)
                bar.set_postfix_str(f"{prompt['id']} {lab.label}", refresh=False)
                ds = prompt["dataset"]
                tokens, wall, finish_reason, stats = runner.run(lab, ds, prompt["ids"], cap(settings, ds))
                rec = make_record(prompt, lab, lab.k_for(ds, best_k), repeat, position, prompt["ids"], tokens, wall,
                                  finish_reason, stats, session)
                rec.update(runner.measured)
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
                records.append(rec)
                bar.update()
    except KeyboardInterrupt:
        bar.close()
        finish(complete=False)
        log(f"interrupted: {len(records)} generations saved; run the same command to resume.")
        raise
    bar.close()
    return finish(complete=True)


def cap(settings: dict, dataset: str) -> int:
    return (settings.get("dataset_max_new_tokens") or {}).get(dataset, settings["max_new_tokens"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_probe:
        rss_probe(args)
        return 0
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=200)
    run(args, argv, console=console)
    console.print(f"wrote {args.out / SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
