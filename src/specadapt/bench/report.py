"""Benchmark summary, report.md, plots and the comparison of two runs.

Definitions (per dataset and method, over every recorded generation):

- tokens/s: mean over examples of the example's mean throughput across repeats.
- speedup: that mean for the method / the same mean for target-only decoding over the
  same examples (Spec-Bench's definition: a ratio of means, not a mean of per-example
  ratios); ``speedup_per_repeat`` is the same ratio within each repeat and
  ``speedup_spread`` their sample standard deviation (None with one repeat).
- comparisons (:func:`compare_methods`): each method against target-only and against
  the best fixed K of the same dataset, gain = speedup ratio − 1, spread = the sample
  standard deviation of the per-repeat gains, and a verdict by :data:`VERDICT_RULE`.
- sessions: each record names the process (``session``) that measured it; an example
  whose methods were measured by more than one process in the same repeat (a resumed
  run) is listed in ``split_across_sessions``, since its methods did not share the
  machine's state.
- acceptance rate = accepted / drafted; mean accepted length = 1 + accepted / rounds
  (tokens per target call, bonus token included; target-only gives 1.0); mean draft
  length = drafted / rounds; all pooled (sums over generations).
- verification rate = rounds / generated tokens (target calls per token) and discard
  rate = (drafted − accepted) / generated tokens (wasted draft tokens per token): the
  two axes of SpecDec++'s trade-off plot.
- acceptance by position k: rounds in which draft token k was accepted / rounds in
  which it was proposed with tokens 1..k−1 accepted.
- accuracy: mean of the task's ``correct`` (GSM8K exact final number, HumanEval
  pass@1) over scored generations; ``accuracy_change`` = method − target-only, on
  the examples both have.
- agreement with target-only on the same example and repeat: exact text match rate
  and mean text overlap (ROUGE-L F1), so that lossy methods can be judged everywhere;
  and, for lossy methods and target-only, token agreement: the mean fraction of
  generated tokens equal to the target's argmax after the same prefix (teacher-forced).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
import re
from statistics import mean, stdev

from ..errors import SpecAdaptError
from ..stats import RequestStats
from .scoring import exact_match, text_overlap

BASELINE = "autoregressive"
MAX_POSITIONS = 16  # positions shown in tables and plots


def speedup_ratio(rows: list[dict], base: list[dict]) -> float | None:
    """Mean per-example throughput of ``rows`` / that of ``base`` over the examples both have
    (the one speedup definition of specadapt's reports; records need ``example_id`` and ``tokens_per_s``)."""
    def per_example(rs: list[dict]) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            if r["tokens_per_s"] is not None:
                groups[r["example_id"]].append(r["tokens_per_s"])
        return {k: mean(v) for k, v in groups.items()}

    mine, ref = per_example(rows), per_example(base)
    common = sorted(set(mine) & set(ref))
    if not common:
        return None
    return mean(mine[k] for k in common) / mean(ref[k] for k in common)


_speedup = speedup_ratio


def complete_examples(records: list[dict], methods: list[str], repeats: int) -> list[dict]:
    """The records of the examples that every method measured in every repeat: a run cut short reports only
    those, so every method and repeat is averaged over the same prompts."""
    done: dict[tuple, set] = defaultdict(set)
    for r in records:
        done[(r["dataset"], r["example_id"])].add((r["method"], r["repeat"]))
    need = {(m, k) for m in methods for k in range(repeats)}
    return [r for r in records if need <= done[(r["dataset"], r["example_id"])]]


def pooled_stats(rows: list[dict]) -> RequestStats:
    """The engine's counters of every generation in ``rows``, pooled (the ratios come from RequestStats)."""
    pooled = RequestStats()
    for r in rows:
        pooled.add(RequestStats(
            generated_tokens=r["tokens"], rounds=r["rounds"], drafted=r["drafted"], accepted=r["accepted"],
            position_reached=r["position_reached"], position_accepted=r["position_accepted"],
        ))
    return pooled


def summarize_method(rows: list[dict], base: list[dict], text_agreement: bool = True) -> dict:
    pooled = pooled_stats(rows)
    repeats = sorted({r["repeat"] for r in rows})
    per_repeat = [
        _speedup([r for r in rows if r["repeat"] == i], [b for b in base if b["repeat"] == i]) for i in repeats
    ]
    per_repeat = [s for s in per_repeat if s is not None]  # a repeat without target-only has no speedup
    scores = [r["score"]["correct"] for r in rows if r.get("score") and "correct" in r["score"]]
    out = {
        "examples": len({r["example_id"] for r in rows}),
        "generations": len(rows),
        "mean_tokens": pooled.generated_tokens / len(rows) if rows else None,
        "tokens_per_s": mean(r["tokens_per_s"] for r in rows if r["tokens_per_s"] is not None) if rows else None,
        "speedup": _speedup(rows, base),
        "speedup_spread": stdev(per_repeat) if len(per_repeat) > 1 else None,
        "speedup_per_repeat": per_repeat,
        "acceptance_rate": pooled.acceptance_rate,
        "mean_accepted_length": pooled.mean_accepted_length,
        "mean_draft_length": pooled.mean_draft_length,
        "verification_rate": pooled.verification_rate,
        "discard_rate": pooled.discard_rate,
        "acceptance_by_position": pooled.per_position_acceptance[:MAX_POSITIONS],
        "accuracy": mean(float(c) for c in scores) if scores else None,
        "scored": len(scores),
        "sandbox": sorted({r["score"]["sandbox"] for r in rows if r.get("score") and "sandbox" in r["score"]}) or None,
        "finish_reasons": {k: sum(r["finish_reason"] == k for r in rows) for k in ("eos", "stop", "length")},
        "lossless": all(r.get("lossless", True) for r in rows),
    }
    # The change is paired per example, so that a partial run (some target-only runs still missing) compares like with like.
    base_correct = {(b["example_id"], b["repeat"]): float(b["score"]["correct"]) for b in base
                    if b.get("score") and "correct" in b["score"]}
    changes = [float(r["score"]["correct"]) - base_correct[(r["example_id"], r["repeat"])] for r in rows
               if r.get("score") and "correct" in r["score"] and (r["example_id"], r["repeat"]) in base_correct]
    out["accuracy_change"] = mean(changes) if changes else None
    base_text = {(b["example_id"], b["repeat"]): b["text"] for b in base}
    pairs = [(r["text"], base_text[(r["example_id"], r["repeat"])]) for r in rows if (r["example_id"], r["repeat"]) in base_text]
    agreement = [r["target_agreement"] for r in rows if r.get("target_agreement") is not None]
    if agreement:
        out["target_agreement"] = mean(agreement)
    if pairs and text_agreement:  # ROUGE-L over long texts is slow; a caller that shows no agreement skips it
        out["agreement_exact"] = mean(float(exact_match(a, b)) for a, b in pairs)
        out["agreement_overlap"] = mean(text_overlap(a, b) for a, b in pairs)
    return out


VERDICT_RULE = (
    "win / loss when the gain (speedup ratio − 1) is above / below zero by more than its spread (the sample "
    "standard deviation of the per-repeat gains); tie when it is not; undecided with a single repeat, where "
    "no spread was measured."
)
FIXED_K = re.compile(r"^fixed:\d+$")  # the fixed draft-length baselines a method is compared with


def verdict(gain: float | None, spread: float | None) -> str:
    """``win``, ``loss``, ``tie`` or ``undecided`` by :data:`VERDICT_RULE`."""
    if gain is None:
        return "undecided"
    if spread is None:
        return "undecided"
    if gain > spread:
        return "win"
    if gain < -spread:
        return "loss"
    return "tie"


def gain_over(mine: dict, ref: dict) -> dict:
    """The gain of entry ``mine`` over entry ``ref`` (both summarize_method entries of one dataset)."""
    gain = mine["speedup"] / ref["speedup"] - 1 if mine.get("speedup") and ref.get("speedup") else None
    pairs = list(zip(mine.get("speedup_per_repeat") or [], ref.get("speedup_per_repeat") or []))
    per_repeat = [a / b - 1 for a, b in pairs if b]
    spread = stdev(per_repeat) if len(per_repeat) > 1 else None
    return {"gain": gain, "spread": spread, "repeats": len(per_repeat), "verdict": verdict(gain, spread)}


def best_fixed_k(table: dict) -> str | None:
    """The fixed-K method with the highest speedup in a dataset's table (None when the run has none)."""
    fixed = [m for m, e in table.items() if FIXED_K.match(m) and e.get("speedup") is not None]
    return max(fixed, key=lambda m: table[m]["speedup"]) if fixed else None


def compare_methods(table: dict) -> dict:
    """Per method: its gain, spread and verdict against target-only and against the best fixed K."""
    best = best_fixed_k(table)
    out = {}
    for m, e in table.items():
        if m == BASELINE:
            continue
        row = {}
        if BASELINE in table:
            row["vs_target_only"] = {"reference": BASELINE, **gain_over(e, table[BASELINE])}
        if best is not None and m != best:
            row["vs_best_fixed_k"] = {"reference": best, **gain_over(e, table[best])}
        out[m] = row
    return out


def split_across_sessions(records: list[dict]) -> list[str] | None:
    """Example ids (``dataset:id``) whose methods were measured by more than one process within a repeat;
    None when the records carry no session ids (runs made before they were recorded)."""
    if not records or any("session" not in r for r in records):
        return None
    sessions: dict[tuple, set] = defaultdict(set)
    for r in records:
        sessions[(r["dataset"], r["example_id"], r["repeat"])].add(r["session"])
    return sorted(dict.fromkeys(f"{d}:{e}" for (d, e, _), s in sessions.items() if len(s) > 1))


def inferred_split_examples(records: list[dict]) -> list[str]:
    """For records without session ids: examples (``dataset:id``) that a resume evidently split over processes.

    Within one process an example's methods are recorded in increasing rotation ``order``; a resume restarts
    the rotation (before the runner kept it), so an example whose orders, in file order, fall back was
    measured partly before and partly after a restart. A restart that happens to line up is not seen."""
    last: dict[tuple, int] = {}
    split = []
    for r in records:
        key = (r["dataset"], r["example_id"], r["repeat"])
        if key in last and r["order"] <= last[key]:
            split.append(f"{r['dataset']}:{r['example_id']}")
        last[key] = r["order"]
    return list(dict.fromkeys(split))


def summarize(records: list[dict], methods: list[str], described: dict | None = None,
              text_agreement: bool = True) -> dict:
    """Per dataset, one entry per method (in the run's order); accuracy change vs target-only; comparisons
    against target-only and the best fixed K; the examples a resumed run split over processes."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    summary: dict = {"datasets": {}, "methods": described or {}, "comparisons": {}, "verdict_rule": VERDICT_RULE,
                     "sessions": sorted({r["session"] for r in records if "session" in r}),
                     "split_across_sessions": split_across_sessions(records)}
    for ds in datasets:
        rows = [r for r in records if r["dataset"] == ds]
        base = [r for r in rows if r["method"] == BASELINE]
        table = {}
        for m in methods:
            mine = [r for r in rows if r["method"] == m]
            if mine:
                table[m] = summarize_method(mine, base, text_agreement)
        summary["datasets"][ds] = table
        summary["comparisons"][ds] = compare_methods(table)
    return summary


# ----------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def speedup_cell(e: dict) -> str:
    if e["speedup"] is None:
        return "–"
    spread = f" ± {e['speedup_spread']:.2f}" if e.get("speedup_spread") is not None else ""
    return f"{e['speedup']:.2f}×{spread}"


def accuracy_cell(e: dict) -> str:
    if e["accuracy"] is None:
        return "–"
    change = e.get("accuracy_change")
    delta = f" ({change * 100:+.1f})" if change is not None else ""
    return f"{e['accuracy']:.1%}{delta}"


def method_table(table: dict, described: dict) -> list[str]:
    lines = [
        "| method | lossless | tok/s | speedup | acceptance | mean acc. len | mean draft len | verif. rate | discard rate | accuracy (Δ pts) | agree exact / overlap | token agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, e in table.items():
        lossless = described.get(m, {}).get("lossless", e["lossless"])
        agree = (
            f"{e['agreement_exact']:.0%} / {e['agreement_overlap']:.2f}"
            if "agreement_exact" in e and m != BASELINE
            else "–"
        )
        lines.append(
            f"| `{m}` | {'yes' if lossless else '**no (lossy)**'} | {fmt(e['tokens_per_s'])} | {speedup_cell(e)} | "
            f"{fmt(e['acceptance_rate'], '.1%')} | {fmt(e['mean_accepted_length'])} | {fmt(e['mean_draft_length'])} | "
            f"{fmt(e['verification_rate'], '.3f')} | {fmt(e['discard_rate'], '.3f')} | {accuracy_cell(e)} | {agree} | "
            f"{fmt(e.get('target_agreement'), '.1%')} |"
        )
    return lines


def position_table(table: dict) -> list[str]:
    width = max((len(e["acceptance_by_position"]) for e in table.values()), default=0)
    width = min(width, 8)
    if width == 0:
        return []
    lines = ["| method | " + " | ".join(str(k + 1) for k in range(width)) + " |", "|---|" + "---|" * width]
    for m, e in table.items():
        probs = e["acceptance_by_position"]
        if not probs:
            continue
        cells = [fmt(probs[k], ".0%") if k < len(probs) else "" for k in range(width)]
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return lines


def render_report(run: dict, summary: dict) -> str:
    settings, env = run["settings"], run.get("environment", {})
    described = summary.get("methods", {})
    lines = [
        "# specadapt benchmark",
        "",
        f"Target `{settings['target']}`, draft `{settings['draft']}`, {env.get('dtype', settings['dtype'])}"
        f"{' (the target with float32 copies of its weights)' if env.get('target_float32_copies') else ''} on "
        f"{env.get('gpu') or env.get('cpu') or env.get('device')} ("
        f"{env['cpu_capability'] + ', ' if env.get('cpu_capability') and not env.get('gpu') else ''}{env.get('torch_threads')} threads), "
        f"{'greedy' if settings['temperature'] == 0 else 'temperature ' + str(settings['temperature'])}, "
        f"max {settings['max_new_tokens']} new tokens{_caps(settings.get('dataset_max_new_tokens'))}, "
        f"{settings['repeats']} repeat(s), batch 1. "
        f"Speedup = mean per-example tokens/s ÷ that of `autoregressive` (target-only) over the same examples "
        f"(Spec-Bench's definition), interleaved per example; ± is the sample standard deviation over repeats."
        + (" HumanEval generations stop at the closing code fence." if "humaneval" in settings.get("datasets", ()) else ""),
        "",
        *_target_quant_lines(settings),
        *_examples_lines(settings, summary),
        *_session_lines(summary),
    ]
    progress = summary.get("progress")
    if progress and not progress["complete"]:
        lines += [f"**Partial run:** {progress['generations']} of {progress['expected']} generations so far "
                  "(interrupted; rerun the same command to resume).", ""]
    for ds, table in summary["datasets"].items():
        n = max(e["examples"] for e in table.values())
        lines += [f"## {ds} ({n} examples)", "", *method_table(table, described), ""]
        comparisons = comparison_table(summary.get("comparisons", {}).get(ds, {}))
        if comparisons:
            lines += ["Against target-only and the best fixed K (" + VERDICT_RULE + "):", "", *comparisons, ""]
        pos = position_table(table)
        if pos:
            lines += ["Acceptance by draft position:", "", *pos, ""]
    lines += [
        "Plots: `speedup.png` (speedup per method and dataset), `tradeoff.png` (verification rate vs discard "
        "rate, as in SpecDec++), `acceptance_by_position.png`.",
        "",
        "Definitions: verification rate = target calls per generated token; discard rate = rejected draft tokens "
        "per generated token; accuracy = GSM8K final-number match / HumanEval pass@1 where the task has one; "
        "agreement = exact text match and ROUGE-L F1 with target-only's output on the same example; token agreement "
        "(lossy methods, and target-only as the reference level) = share of generated tokens equal to the target's "
        "argmax after the same prefix (teacher-forced).",
        "",
        "## Methods and settings",
        "",
    ]
    for m, d in described.items():
        lines.append(f"- `{m}`: policy {json.dumps(d.get('policy_settings', {}))}, acceptance `{d.get('acceptance')}` "
                     f"{json.dumps(d.get('acceptance_settings', {}))}, lossless: {str(d.get('lossless')).lower()}")
    lines += ["", "## Environment", "", "```json", json.dumps({"settings": settings, "environment": env}, indent=1), "```", ""]
    return "\n".join(lines)


def gain_cell(c: dict | None) -> str:
    """'+4.8% ± 1.2% (win)'; the spread is left out with one repeat."""
    if not c or c.get("gain") is None:
        return "–"
    spread = f" ± {c['spread'] * 100:.1f}%" if c.get("spread") is not None else ""
    return f"{c['gain'] * 100:+.1f}%{spread} ({c['verdict']})"


def comparison_table(comparisons: dict) -> list[str]:
    if not comparisons:
        return []
    lines = ["| method | vs target-only | vs best fixed K |", "|---|---|---|"]
    for m, c in comparisons.items():
        best = c.get("vs_best_fixed_k")
        against = f"`{best['reference']}`: {gain_cell(best)}" if best else "–"
        lines.append(f"| `{m}` | {gain_cell(c.get('vs_target_only'))} | {against} |")
    return lines


def target_quant_note(settings: dict) -> str | None:
    """What a run with a quantized target measured (None for a float target): every number is the quantized target's."""
    scheme = settings.get("target_quant", "none")
    if scheme == "none":
        return None
    from ..models.quant import DEFAULT_GROUP_SIZE

    group = f", group size {settings.get('target_group_size') or DEFAULT_GROUP_SIZE}" if scheme == "int4" else ""
    return (f"**Quantized target ({scheme}{group}, weight-only):** every result here, target-only included, is for "
            f"the {scheme} target; lossless methods are lossless w.r.t. the quantized target, not the float one. "
            "Do not compare these numbers with lossless float-target results.")


def _target_quant_lines(settings: dict) -> list[str]:
    note = target_quant_note(settings)
    return [note, ""] if note else []


def _examples_lines(settings: dict, summary: dict) -> list[str]:
    split = settings.get("split", "all")  # runs recorded before splits took the first examples of the whole dataset
    indices = summary.get("example_indices") or {}
    shown = "; ".join(f"{d}: {_ranges(ix)}" for d, ix in indices.items() if ix)
    return [f"Split: `{split}`" + (f" (example indices {shown})." if shown else "."), ""]


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0–2, 5'."""
    parts, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}–{x}")
            start = None
    return ", ".join(parts)


def _session_lines(summary: dict) -> list[str]:
    split = summary.get("split_across_sessions")
    sessions = summary.get("sessions") or []
    if split is None:
        return ["Processes: the records carry no session id (recorded before they did), so whether a resume split "
                "an example's methods over processes cannot be told from them.", ""] if "sessions" in summary else []
    if not split:
        return [f"Processes: {len(sessions)}; every example's methods were measured in one process.", ""]
    return [f"Processes: {len(sessions)} (a resumed run). **Examples whose methods were measured in different "
            f"processes** (not side by side): {', '.join(split)}.", ""]


def _caps(caps: dict | None) -> str:
    return f" ({', '.join(f'{d}: {n}' for d, n in caps.items())})" if caps else ""


def write_report(out: Path, run: dict, summary: dict) -> None:
    out = Path(out)
    (out / "report.md").write_text(render_report(run, summary), encoding="utf-8")
    write_plots(out, summary)


# ----------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------


def write_plots(out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    tables = summary["datasets"]
    datasets = list(tables)
    methods = list(dict.fromkeys(m for t in tables.values() for m in t))

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods) * max(1, len(datasets)) / 2), 3.6), dpi=100)
    width = 0.8 / max(1, len(datasets))
    for i, ds in enumerate(datasets):
        xs = [j + i * width for j, m in enumerate(methods)]
        ys = [(tables[ds].get(m) or {}).get("speedup") or 0.0 for m in methods]
        ax.bar(xs, ys, width, label=ds)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks([j + width * (len(datasets) - 1) / 2 for j in range(len(methods))])
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup vs target-only")
    if datasets:  # a run stopped before its first generation has nothing to label
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "speedup.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    markers = "osD^v<>phx*"
    for i, ds in enumerate(datasets):
        for m, e in tables[ds].items():
            if e["verification_rate"] is None or m == BASELINE:
                continue
            ax.scatter(e["verification_rate"], e["discard_rate"], marker=markers[i % len(markers)])
            ax.annotate(m, (e["verification_rate"], e["discard_rate"]), fontsize=6)
    ax.set_xlabel("verification rate (target calls per token)")
    ax.set_ylabel("discard rate (rejected drafts per token)")
    ax.set_title("trade-off (markers: " + ", ".join(f"{markers[i % len(markers)]} {d}" for i, d in enumerate(datasets)) + ")",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.2 * max(1, len(datasets)), 3.4), dpi=100, squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for m, e in tables[ds].items():
            probs = e["acceptance_by_position"]
            if probs:
                ax.plot(range(1, len(probs) + 1), [p if p is not None else float("nan") for p in probs], marker=".", label=m)
        ax.set_title(ds, fontsize=9)
        ax.set_xlabel("draft position")
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("acceptance")
    if axes[0][-1].get_legend_handles_labels()[0]:  # no drafting method in the last dataset: nothing to label
        axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "acceptance_by_position.png")
    plt.close(fig)


# ----------------------------------------------------------------------------
# comparing two runs
# ----------------------------------------------------------------------------

COMPARED = (("tokens_per_s", ".2f"), ("speedup", ".2f"), ("acceptance_rate", ".1%"),
            ("mean_accepted_length", ".2f"), ("accuracy", ".1%"))


def load_summary(run: Path) -> dict:
    path = Path(run) / "summary.json"
    if not path.exists():
        raise SpecAdaptError(f"{run} holds no summary.json: give the --out folder of a finished `specadapt bench` run.")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecAdaptError(f"{path} is not valid JSON ({exc.msg}); rerun the benchmark to rewrite it.") from None
    # Every dataset maps method labels to metric objects; anything else is not a bench summary.
    datasets = summary.get("datasets") if isinstance(summary, dict) else None
    if not isinstance(datasets, dict) or not all(
        isinstance(t, dict) and all(isinstance(e, dict) for e in t.values()) for t in datasets.values()
    ):
        raise SpecAdaptError(
            f"{path} is not a `specadapt bench` summary (no \"datasets\" table of methods); give the --out folder "
            "of a finished benchmark run."
        )
    return summary


def compare(a: Path, b: Path) -> list[dict]:
    """One row per (dataset, method) present in either run: each metric in A and B and B − A."""
    sa, sb = load_summary(a)["datasets"], load_summary(b)["datasets"]
    rows = []
    for ds in dict.fromkeys([*sa, *sb]):
        ta, tb = sa.get(ds, {}), sb.get(ds, {})
        for m in dict.fromkeys([*ta, *tb]):
            ea, eb = ta.get(m, {}), tb.get(m, {})
            row = {"dataset": ds, "method": m}
            for key, _ in COMPARED:
                va, vb = ea.get(key), eb.get(key)
                row[key] = (va, vb, vb - va if va is not None and vb is not None else None)
            rows.append(row)
    return rows


def target_quant_of(run: Path) -> str:
    """The run's target quantization ("none" for a float target, and for runs recorded before the setting)."""
    try:
        return json.loads((Path(run) / "settings.json").read_text())["settings"].get("target_quant", "none")
    except (OSError, ValueError, KeyError, AttributeError):
        return "none"


def format_comparison(rows: list[dict]) -> list[list[str]]:
    """Table cells: dataset, method, then 'A → B (Δ)' per metric."""
    cells = []
    for row in rows:
        line = [row["dataset"], row["method"]]
        for key, spec in COMPARED:
            va, vb, d = row[key]
            if va is None and vb is None:
                line.append("–")
                continue
            delta = "" if d is None else f" ({d:+{spec}})"
            line.append(f"{fmt(va, spec)} → {fmt(vb, spec)}{delta}")
        cells.append(line)
    return cells
