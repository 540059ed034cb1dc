"""Engine speed benchmark: specadapt's methods against Hugging Face generation, in one process.

    python benchmarks/engine_speed.py                        # default pair, 10 + 10 prompts, 128 tokens
    python benchmarks/engine_speed.py --n-humaneval 2 --n-mtbench 2 --max-new-tokens 32 \\
        --methods autoregressive,fixed:4,hf-assisted:4       # a quick check
    python benchmarks/engine_speed.py --profile              # time split of one fixed:4 generation

Prompts: the first HumanEval and MT-Bench examples of ``specadapt.bench.datasets``, chat-formatted
as ``specadapt bench`` does; unlike the bench, no stop strings: every generation runs to EOS or
``--max-new-tokens``.

Protocol (Spec-Bench's): greedy, batch 1, chat template, every method on the same token ids. For each prompt every method runs once, in an
order rotated per prompt (so slow drift of the machine spreads over the methods);
the datasets alternate prompt by prompt. Speedup = mean over prompts of the method's
tokens/s ÷ the same mean for autoregressive on the same prompts (Spec-Bench's
definition, as in ``specadapt bench``; runs before 2026-12 recorded the mean of
per-prompt ratios in their summary; ``benchmarks/render_benchmarks.py`` recomputes
them from the records). Tokens are counted the
same way for every method: the tokens actually generated (EOS included when a
generation ends on it), timed with ``time.perf_counter`` around the whole call.

Methods: any specadapt method string (``autoregressive``, ``fixed:4``, ``heuristic``,
``confidence``, ``confidence:threshold=0.3`` ...), ``hf-assisted:K`` (Hugging Face
assisted generation with K constant draft tokens and no confidence stopping) and
``hf-target-only`` (plain ``target.generate``). ``<method>@vN`` runs one of our methods
with the draft's output head restricted to N token ids (specadapt.models.draft_vocab).

Acceptance rate, mean accepted length and mean draft length of a dataset are
pooled over its prompts (sum accepted / sum drafted, 1 + sum accepted / sum rounds,
sum drafted / sum rounds); time shares are sum of draft (target) time / sum of total time.
Match rate compares each method's tokens with autoregressive's on the same prompt:
"identical" is the fraction of prompts with exactly the same tokens, "prefix" the mean
of (common leading tokens / the longer of the two outputs). "agree" (lossy methods and
autoregressive, whose value is the bf16 reference level) is teacher-forced token-level
agreement with the target: the fraction of generated tokens equal to the target's argmax
after the same prefix, from one extra target forward over prompt + output.

Each method label gets one policy instance for the whole run, so a method with
``scope=shared`` keeps its statistics across prompts (``scope=request`` resets per call).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "engine_speed.json"
DEFAULT_METHODS = (
    "autoregressive,fixed:2,fixed:4,fixed:6,heuristic,confidence,hf-assisted:4,hf-assisted:6,hf-target-only"
)
# This script's dataset labels (kept for comparison with earlier results) and their specadapt.bench.datasets names.
BENCH_DATASETS = {"humaneval": "humaneval", "mtbench": "mt-bench"}
DATASETS = tuple(BENCH_DATASETS)


# ----------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------


def load_prompts(dataset: str, n: int) -> list[dict]:
    """The first ``n`` prompts of ``dataset`` ("humaneval" or "mtbench"), as ``specadapt bench`` builds them."""
    from specadapt.bench.datasets import load_dataset

    if n == 0:
        return []
    examples = load_dataset(BENCH_DATASETS[dataset], n)
    if n > len(examples):
        raise SystemExit(f"asked for {n} {dataset} prompts but only {len(examples)} exist.")
    return [{"dataset": dataset, "id": e.id, "category": e.category, "messages": e.messages} for e in examples]


# ----------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------


@dataclass
class Spec:
    label: str
    kind: str  # "ours" | "hf-assisted" | "hf-target-only"
    k: int | None = None  # draft length: hf-assisted:K, fixed:K
    draft_vocab: int | None = None  # "<method>@vN": our method with the draft's head cut to N token ids
    lossless: bool = True


def parse_methods(text: str) -> list[Spec]:
    from specadapt import SpecAdaptError, make_method
    from specadapt.bench.runner import split_methods
    from specadapt.sampling import SamplingParams

    specs: list[Spec] = []
    for label in split_methods(text):
        if label == "hf-target-only":
            specs.append(Spec(label, "hf-target-only"))
        elif label.startswith("hf-assisted"):
            _, _, k = label.partition(":")
            if not k.isdigit() or int(k) < 1:
                raise SystemExit(f"write hf-assisted:K with an integer K >= 1, got {label!r}.")
            specs.append(Spec(label, "hf-assisted", int(k)))
        else:
            base, _, vocab = label.partition("@v")
            if vocab and not vocab.isdigit():
                raise SystemExit(f"write <method>@vN with an integer N, got {label!r}.")
            try:
                method = make_method(base)
            except SpecAdaptError as exc:
                raise SystemExit(f"--methods: {exc}") from None
            k = getattr(method.policy, "k", None) if method.name == "fixed" else None
            lossless = method.describe(SamplingParams(temperature=0.7))["lossless"]
            specs.append(Spec(label, "ours", k, int(vocab) if vocab else None, lossless))
    if len({s.label for s in specs}) != len(specs):
        raise SystemExit("--methods lists a method twice.")
    if not specs:
        raise SystemExit("--methods is empty.")
    return specs


# ----------------------------------------------------------------------------
# running one generation
# ----------------------------------------------------------------------------


@dataclass
class Run:
    tokens: list[int]
    wall_s: float
    finish_reason: str
    stats: object | None = None  # specadapt RequestStats for our methods


class Runner:
    def __init__(self, decoder, eos_ids: list[int], temperature: float = 0.0) -> None:
        self.dec = decoder
        self.eos = set(eos_ids)
        self.temperature = temperature
        self.engines = {None: decoder.engine}
        self.methods: dict[str, object] = {}  # one instance per label: policies with scope=shared keep state

    def method(self, label: str):
        from specadapt import make_method

        if label not in self.methods:
            self.methods[label] = make_method(label)
        return self.methods[label]

    def engine(self, draft_vocab: int | None):
        """The decoder's engine, or one whose draft has a restricted output head (built once)."""
        if draft_vocab not in self.engines:
            import copy

            from specadapt import SpeculativeEngine
            from specadapt.models.draft_vocab import restrict_vocabulary

            draft = copy.deepcopy(self.dec.draft)
            restrict_vocabulary(draft, self.dec.tokenizer, draft_vocab)
            self.engines[draft_vocab] = SpeculativeEngine(self.dec.target, draft, self.dec.tokenizer, sorted(self.eos))
        return self.engines[draft_vocab]

    def run(self, spec: Spec, ids: list[int], max_new_tokens: int) -> Run:
        if spec.kind == "ours":
            return self._ours(spec, ids, max_new_tokens)
        return self._hf(spec, ids, max_new_tokens)

    def _ours(self, spec: Spec, ids: list[int], max_new_tokens: int) -> Run:
        from specadapt import RequestConfig

        method = self.method(spec.label.partition("@v")[0])
        config = RequestConfig(max_new_tokens=max_new_tokens, temperature=self.temperature, seed=0)
        engine = self.engine(spec.draft_vocab)
        t0 = time.perf_counter()
        result = engine.generate([ids], method, config)[0]
        wall = time.perf_counter() - t0
        return Run(list(result.token_ids), wall, result.finish_reason, result.stats)

    def _hf(self, spec: Spec, ids: list[int], max_new_tokens: int) -> Run:
        target, draft = self.dec.target, self.dec.draft
        kwargs = {}
        if spec.kind == "hf-assisted":
            gc = draft.generation_config
            gc.num_assistant_tokens = spec.k
            gc.num_assistant_tokens_schedule = "constant"
            gc.assistant_confidence_threshold = 0.0
            kwargs["assistant_model"] = draft
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
            torch.manual_seed(0)
        else:
            kwargs["do_sample"] = False
        input_ids = torch.tensor([ids], dtype=torch.long, device=target.device)
        attention_mask = torch.ones_like(input_ids)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = target.generate(
                input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **kwargs
            )
        if target.device.type == "cuda":
            torch.cuda.synchronize(target.device)
        wall = time.perf_counter() - t0
        tokens = out[0, input_ids.shape[1] :].tolist()
        return Run(tokens, wall, "eos" if tokens and tokens[-1] in self.eos else "length")


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def record_for(prompt: dict, index: int, ids: list[int], spec: Spec, order: int, run: Run) -> dict:
    tokens = len(run.tokens)
    rec = {
        "dataset": prompt["dataset"],
        "prompt_index": index,
        "prompt_id": prompt["id"],
        "category": prompt["category"],
        "prompt_tokens": len(ids),
        "method": spec.label,
        "kind": spec.kind,
        "order": order,
        "wall_s": run.wall_s,
        "tokens": tokens,
        "tokens_per_s": tokens / run.wall_s if run.wall_s > 0 else None,
        "finish_reason": run.finish_reason,
        "token_ids": run.tokens,
    }
    if run.stats is not None:
        s = run.stats
        assert s.generated_tokens == tokens, (s.generated_tokens, tokens)
        rec.update(
            acceptance_rate=s.acceptance_rate,
            mean_accepted_length=s.mean_accepted_length,
            mean_draft_length=s.mean_draft_length,
            rounds=s.rounds,
            drafted=s.drafted,
            accepted=s.accepted,
            draft_time_s=s.draft_time_s,
            target_time_s=s.target_time_s,
            total_time_s=s.total_time_s,
            per_position_acceptance=s.per_position_acceptance,
        )
    return rec


def add_matches(records: list[dict]) -> None:
    """Compare every record's tokens with autoregressive's on the same prompt."""
    reference = {(r["dataset"], r["prompt_index"]): r["token_ids"] for r in records if r["method"] == "autoregressive"}
    for r in records:
        ref = reference.get((r["dataset"], r["prompt_index"]))
        if ref is None:
            continue
        n = common_prefix(ref, r["token_ids"])
        longest = max(len(ref), len(r["token_ids"]))
        r["match_identical"] = r["token_ids"] == ref
        r["match_prefix_tokens"] = n
        r["match_prefix_fraction"] = n / longest if longest else 1.0


def _mean_ratio(records: list[dict], method: str, baseline: str) -> float | None:
    """Mean tokens/s of ``method`` / that of ``baseline`` over the prompts both have (the bench's definition)."""
    mine = {(r["dataset"], r["prompt_index"]): r["tokens_per_s"] for r in records
            if r["method"] == method and r["tokens_per_s"] is not None}
    base = {(r["dataset"], r["prompt_index"]): r["tokens_per_s"] for r in records
            if r["method"] == baseline and r["tokens_per_s"] is not None}
    common = sorted(set(mine) & set(base))
    if not common or not sum(base[k] for k in common):
        return None
    return mean(mine[k] for k in common) / mean(base[k] for k in common)


def summarize(records: list[dict], specs: list[Spec]) -> dict:
    """Per dataset (and over all prompts): one row per method."""
    labels = {s.label for s in specs}
    summary: dict[str, dict] = {}
    for dataset in (*DATASETS, "all"):
        rows = [r for r in records if dataset == "all" or r["dataset"] == dataset]
        if not rows:
            continue
        table = {}
        for spec in specs:
            mine = [r for r in rows if r["method"] == spec.label]
            if not mine:
                continue
            row = {
                "prompts": len(mine),
                "mean_tokens": mean(r["tokens"] for r in mine),
                "mean_tokens_per_s": mean(r["tokens_per_s"] for r in mine),
                "aggregate_tokens_per_s": sum(r["tokens"] for r in mine) / sum(r["wall_s"] for r in mine),
                "speedup_vs_autoregressive": _mean_ratio(rows, spec.label, "autoregressive")
                if "autoregressive" in labels
                else None,
                "speedup_vs_hf_target_only": _mean_ratio(rows, spec.label, "hf-target-only")
                if "hf-target-only" in labels
                else None,
                "finish_reasons": {k: sum(r["finish_reason"] == k for r in mine) for k in ("eos", "stop", "length")},
            }
            same_k = f"hf-assisted:{spec.k}"
            if spec.kind == "ours" and spec.k is not None and same_k in labels:
                row["vs_hf_assisted_same_k"] = {"baseline": same_k, "ratio": _mean_ratio(rows, spec.label, same_k)}
            if spec.kind == "ours":
                drafted = sum(r["drafted"] for r in mine)
                accepted = sum(r["accepted"] for r in mine)
                rounds = sum(r["rounds"] for r in mine)
                total = sum(r["total_time_s"] for r in mine)
                row.update(
                    acceptance_rate=accepted / drafted if drafted else None,
                    mean_accepted_length=1 + accepted / rounds if rounds else None,
                    mean_draft_length=drafted / rounds if rounds else None,
                    draft_time_share=sum(r["draft_time_s"] for r in mine) / total if total else None,
                    target_time_share=sum(r["target_time_s"] for r in mine) / total if total else None,
                )
            agreement = [r["target_agreement"] for r in mine if r.get("target_agreement") is not None]
            if agreement:
                row["target_agreement"] = mean(agreement)
            if all("match_identical" in r for r in mine):
                row["match_identical_fraction"] = mean(float(r["match_identical"]) for r in mine)
                row["match_prefix_fraction"] = mean(r["match_prefix_fraction"] for r in mine)
            table[spec.label] = row
        summary[dataset] = table
    return summary


# ----------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def print_tables(summary: dict, specs: list[Spec], console) -> None:
    from rich.table import Table

    labels = {s.label for s in specs}
    for dataset, table_rows in summary.items():
        n = max(r["prompts"] for r in table_rows.values())
        table = Table(title=f"{dataset}: {n} prompts", title_justify="left")
        table.add_column("method", no_wrap=True)
        table.add_column("tok/s", justify="right")
        table.add_column("×AR", justify="right")
        if "hf-target-only" in labels:
            table.add_column("×HF plain", justify="right")
        table.add_column("×HF asst same K", justify="right")
        table.add_column("accept", justify="right")
        table.add_column("acc len", justify="right")
        table.add_column("draft len", justify="right")
        table.add_column("draft/target time", justify="right", no_wrap=True)
        table.add_column("match ident/prefix", justify="right", no_wrap=True)
        table.add_column("agree", justify="right")
        for label, r in table_rows.items():
            same_k = r.get("vs_hf_assisted_same_k")
            shares = (
                f"{r['draft_time_share']:.0%}/{r['target_time_share']:.0%}"
                if r.get("draft_time_share") is not None
                else "–"
            )
            match = (
                f"{r['match_identical_fraction']:.0%}/{r['match_prefix_fraction']:.0%}"
                if "match_identical_fraction" in r and label != "autoregressive"
                else "–"
            )
            cells = [label, _fmt(r["mean_tokens_per_s"]), _fmt(r["speedup_vs_autoregressive"], suffix="×")]
            if "hf-target-only" in labels:
                cells.append(_fmt(r["speedup_vs_hf_target_only"], suffix="×"))
            cells += [
                f"{same_k['ratio']:.2f}×" if same_k and same_k["ratio"] is not None else "–",
                _fmt(r.get("acceptance_rate"), ".0%"),
                _fmt(r.get("mean_accepted_length")),
                _fmt(r.get("mean_draft_length")),
                shares,
                match,
                _fmt(r.get("target_agreement"), ".1%"),
            ]
            table.add_row(*cells)
        console.print(table)


def environment(decoder) -> dict:
    """specadapt's run environment plus the git commit of this checkout."""
    from specadapt.bench.runner import environment as run_environment

    env = run_environment(decoder)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE.parent, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            env["git_commit"] = head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    env["load_average_at_start"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return env


def write_json(path: Path, payload: dict) -> None:
    from specadapt.io import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload, indent=1)


# ----------------------------------------------------------------------------
# profile
# ----------------------------------------------------------------------------


class ForwardTimer:
    """Times every forward call of a model with hooks (first call = prefill)."""

    def __init__(self, model) -> None:
        self.calls: list[tuple[int, float]] = []  # (input length, seconds)
        self._t0 = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post, with_kwargs=True),
        ]
        self._n = 0

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._n = int(ids.shape[1]) if ids is not None else 0
        self._t0 = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        if output is not None and hasattr(output, "logits") and output.logits.device.type == "cuda":
            torch.cuda.synchronize(output.logits.device)
        self.calls.append((self._n, time.perf_counter() - self._t0))

    def reset(self) -> None:
        self.calls = []

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    @property
    def prefill_s(self) -> float:
        return self.calls[0][1] if self.calls else 0.0

    @property
    def decode_s(self) -> float:
        return sum(t for _, t in self.calls[1:])

    @property
    def decode_calls(self) -> int:
        return max(len(self.calls) - 1, 0)


def profile(args, decoder, runner: Runner, prompts: list[dict], console) -> None:
    from rich.table import Table

    from specadapt import make_method

    method = make_method(args.profile_method)
    if method.name != "fixed":
        raise SystemExit("--profile-method must be fixed:K (it is compared with hf-assisted:K).")
    k = method.policy.k
    prompt = prompts[0]
    ids = decoder.encode(prompt["messages"])
    specs = [Spec(args.profile_method, "ours", k), Spec(f"hf-assisted:{k}", "hf-assisted", k)]
    console.print(
        f"profile: {prompt['id']} ({len(ids)} prompt tokens), {args.max_new_tokens} new tokens, "
        f"{torch.get_num_threads()} threads, {decoder.target.dtype}"
    )
    for spec in specs:  # warm-up
        runner.run(spec, ids, min(16, args.max_new_tokens))
    t_timer, d_timer = ForwardTimer(decoder.target), ForwardTimer(decoder.draft)
    try:
        ours = runner.run(specs[0], ids, args.max_new_tokens)
        ours_t = (t_timer.prefill_s, t_timer.decode_s, t_timer.decode_calls)
        ours_d = (d_timer.prefill_s, d_timer.decode_s, d_timer.decode_calls)
        t_timer.reset(), d_timer.reset()
        hf = runner.run(specs[1], ids, args.max_new_tokens)
        hf_t = (t_timer.prefill_s, t_timer.decode_s, t_timer.decode_calls)
        hf_d = (d_timer.prefill_s, d_timer.decode_s, d_timer.decode_calls)
    finally:
        t_timer.close(), d_timer.close()

    s = ours.stats
    rest = s.total_time_s - s.draft_time_s - s.target_time_s
    console.print(
        f"\n[bold]{specs[0].label}[/bold] (engine stats): {len(ours.tokens)} tokens in {ours.wall_s:.3f} s "
        f"= {len(ours.tokens) / ours.wall_s:.2f} tok/s; {s.rounds} rounds, acceptance {_fmt(s.acceptance_rate, '.0%')}, "
        f"mean accepted length {_fmt(s.mean_accepted_length)}"
    )
    table = Table("part", "seconds", "share of total", "per round (ms)", title_justify="left")
    rounds = max(s.rounds, 1)
    parts = [
        ("draft phase (stats.draft_time_s)", s.draft_time_s),
        ("  of which draft forward (hooks)", ours_d[1]),
        ("  of which draft loop overhead", s.draft_time_s - ours_d[1]),
        ("target verify (stats.target_time_s)", s.target_time_s),
        ("  of which target forward (hooks)", ours_t[1]),
        ("rest: rule, rollback, bookkeeping", rest),
        ("engine total (stats.total_time_s)", s.total_time_s),
        ("outside the loop (wall - total)", ours.wall_s - s.total_time_s),
        ("wall", ours.wall_s),
    ]
    for name, value in parts:
        table.add_row(name, f"{value:.3f}", f"{value / s.total_time_s:.1%}", f"{1000 * value / rounds:.1f}")
    console.print(table)
    console.print(
        f"forward calls after prefill: draft {ours_d[2]} ({1000 * ours_d[1] / max(ours_d[2], 1):.1f} ms each), "
        f"target {ours_t[2]} ({1000 * ours_t[1] / max(ours_t[2], 1):.1f} ms each); "
        f"prefill forwards: target {ours_t[0]:.3f} s, draft {ours_d[0]:.3f} s"
    )

    hf_rest = hf.wall_s - hf_t[0] - hf_t[1] - hf_d[0] - hf_d[1]
    console.print(
        f"\n[bold]{specs[1].label}[/bold] (forward hooks): {len(hf.tokens)} tokens in {hf.wall_s:.3f} s "
        f"= {len(hf.tokens) / hf.wall_s:.2f} tok/s; {hf_t[2]} target passes after prefill"
    )
    table = Table("part", "seconds", "share of wall", title_justify="left")
    for name, value in [
        ("prefill forwards (target + draft)", hf_t[0] + hf_d[0]),
        (f"draft forwards ({hf_d[2]} calls)", hf_d[1]),
        (f"target forwards ({hf_t[2]} calls)", hf_t[1]),
        ("rest (Python, logits processing, cache)", hf_rest),
        ("wall", hf.wall_s),
    ]:
        table.add_row(name, f"{value:.3f}", f"{value / hf.wall_s:.1%}")
    console.print(table)
    n = common_prefix(ours.tokens, hf.tokens)
    console.print(f"outputs: {'identical' if ours.tokens == hf.tokens else f'first {n} tokens identical'}")


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    from specadapt.models import zoo

    p = argparse.ArgumentParser(
        description="Speed of specadapt's methods vs Hugging Face generation on HumanEval and MT-Bench prompts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target", default=zoo.DEFAULT_TARGET, help="target: built-in name, folder, .gguf or Hub id")
    p.add_argument("--draft", default=zoo.DEFAULT_DRAFT, help="draft sharing the target's tokenizer")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float32 | float16")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--n-humaneval", type=int, default=10, help="HumanEval prompts")
    p.add_argument("--n-mtbench", type=int, default=10, help="MT-Bench prompts (first turn)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per generation")
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated methods (use ';' as the separator if a method has key=value settings)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples (seed 0 per call)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up generations per method before timing")
    p.add_argument("--warmup-tokens", type=int, default=16, help="new tokens per warm-up generation")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--profile", action="store_true", help="only profile one generation of --profile-method")
    p.add_argument("--profile-method", default="fixed:4", help="fixed:K method for --profile")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1 or args.n_humaneval < 0 or args.n_mtbench < 0 or args.warmup < 0:
        p.error("--max-new-tokens must be >= 1; counts must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    from rich.console import Console
    from tqdm.auto import tqdm

    from specadapt import SpecDecoder
    from specadapt.bench.datasets import HUMANEVAL_TEMPLATE
    from specadapt.bench.runner import target_agreement

    transformers.logging.set_verbosity_error()
    console = Console() if sys.stdout.isatty() else Console(width=160)  # don't squeeze tables into 80 columns in logs
    specs = parse_methods(args.methods)
    target, draft = args.target, args.draft
    t0 = time.perf_counter()
    # Pinned: the recorded results (BENCHMARKS.md) are for the float draft, whatever zoo.DEFAULT_DRAFT_QUANT says.
    decoder = SpecDecoder.from_pretrained(target, draft, dtype=args.dtype, device=args.device, draft_quant="none")
    console.print(
        f"loaded {target} + {draft} ({args.dtype}, {decoder.target.device}, "
        f"{torch.get_num_threads()} threads) in {time.perf_counter() - t0:.1f} s"
    )
    runner = Runner(decoder, decoder.engine.eos_token_ids, args.temperature)

    if args.profile:
        profile(args, decoder, runner, load_prompts("humaneval", 1), console)
        return

    prompts_by_ds = {"humaneval": load_prompts("humaneval", args.n_humaneval), "mtbench": load_prompts("mtbench", args.n_mtbench)}
    # Alternate the datasets prompt by prompt so that drift of the machine spreads over both.
    schedule: list[tuple[dict, int]] = []
    for i in range(max(args.n_humaneval, args.n_mtbench)):
        for ds in DATASETS:
            if i < len(prompts_by_ds[ds]):
                schedule.append((prompts_by_ds[ds][i], i))
    if not schedule:
        raise SystemExit("no prompts: set --n-humaneval or --n-mtbench > 0.")
    encoded = {(p["dataset"], i): decoder.encode(p["messages"]) for p, i in schedule}

    settings = {
        "target": target,
        "draft": draft,
        "methods": [s.label for s in specs],
        "n_humaneval": args.n_humaneval,
        "n_mtbench": args.n_mtbench,
        "max_new_tokens": args.max_new_tokens,
        "greedy": args.temperature == 0,
        "temperature": args.temperature,
        "batch_size": 1,
        "chat_template": True,
        "humaneval_template": HUMANEVAL_TEMPLATE,
        "warmup_generations_per_method": args.warmup,
        "warmup_tokens": args.warmup_tokens,
        "order": "methods rotated by one position per prompt; datasets alternate",
        "hf_assisted": {"num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0},
        "speedup_definition": "mean over prompts of method tokens/s / that mean for the baseline on the same prompts",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else argv,
    }
    env = environment(decoder)
    started = time.perf_counter()

    if args.warmup:
        first_ids = encoded[(schedule[0][0]["dataset"], schedule[0][1])]
        for spec in tqdm(specs * args.warmup, desc="warm-up", disable=args.no_progress, leave=False):
            runner.run(spec, first_ids, min(args.warmup_tokens, args.max_new_tokens))

    records: list[dict] = []
    payload = {"environment": env, "settings": settings, "complete": False, "records": records, "summary": {}}
    bar = tqdm(total=len(schedule) * len(specs), desc="generating", unit="gen", disable=args.no_progress)
    for n, (prompt, index) in enumerate(schedule):
        ids = encoded[(prompt["dataset"], index)]
        shift = n % len(specs)
        order = specs[shift:] + specs[:shift]
        for position, spec in enumerate(order):
            bar.set_postfix_str(f"{prompt['id']} {spec.label}")
            run = runner.run(spec, ids, args.max_new_tokens)
            records.append(record_for(prompt, index, ids, spec, position, run))
            if not spec.lossless or spec.label == "autoregressive":  # AR: the bf16 reference level
                records[-1]["target_agreement"] = target_agreement(runner.dec.target, ids, run.tokens)
            bar.update()
        write_json(args.out, payload)  # partial results survive an interrupted run
    bar.close()

    add_matches(records)
    summary = summarize(records, specs)
    env["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["benchmark_wall_s"] = time.perf_counter() - started
    payload.update(complete=True, summary=summary)
    print_tables(summary, specs, console)
    write_json(args.out, payload)
    console.print(f"wrote {args.out} ({env['benchmark_wall_s']:.0f} s of generation incl. warm-up)")


if __name__ == "__main__":
    main()
