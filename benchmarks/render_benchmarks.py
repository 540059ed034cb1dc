"""Regenerate the tables of BENCHMARKS.md from the committed records, or check that they match.

    python benchmarks/render_benchmarks.py            # rewrite every generated block in BENCHMARKS.md
    python benchmarks/render_benchmarks.py --check    # exit 1 (listing the blocks) when a block differs

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
:data:`BLOCKS` maps each NAME to the function that writes it, reading only files committed under
``benchmarks/results/`` (``records.jsonl`` + ``settings.json`` of ``specadapt bench`` runs, and
``engine_speed.json``). Every number comes from the same code as ``specadapt bench``'s own report
(:mod:`specadapt.bench.report`): one speedup definition, mean per-example tokens/s of a method ÷
that of target-only over the same examples (Spec-Bench's), and one verdict rule
(:data:`~specadapt.bench.report.VERDICT_RULE`). Text outside the blocks is left alone.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from functools import lru_cache
from pathlib import Path
from statistics import mean, median, stdev
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from specadapt.bench import report  # noqa: E402
from specadapt.bench.report import BASELINE, FIXED_K, gain_cell, speedup_ratio  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "BENCHMARKS.md"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)
DATASET_TITLES = {"humaneval": "HumanEval", "gsm8k": "GSM8K", "mt-bench": "MT-Bench", "mtbench": "MT-Bench",
                  "mt-bench-turn2": "MT-Bench, second turns",
                  "spec-bench": "Spec-Bench"}


# ----------------------------------------------------------------------------
# reading the committed records
# ----------------------------------------------------------------------------


def read_records(folder: Path) -> list[dict]:
    """The generations a run folder's ``records.jsonl`` holds, one dict a line."""
    return [json.loads(line) for line in (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]


@lru_cache(maxsize=None)
def bench_run(name: str) -> tuple[dict, list[dict], dict]:
    """(settings.json, records, summary recomputed from the records) of a ``specadapt bench`` run."""
    folder = RESULTS / name
    run = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    records = read_records(folder)
    summary = report.summarize(records, run["settings"]["methods"], run.get("methods"), text_agreement=False)
    return run, records, summary


@lru_cache(maxsize=None)
def complete_bench_run(name: str) -> tuple[dict, list[dict], dict]:
    """:func:`bench_run` over the examples every method finished in every repeat (a run cut at its time limit)."""
    run, records, _ = bench_run(name)
    used = report.complete_examples(records, run["settings"]["methods"], run["settings"]["repeats"])
    return run, used, report.summarize(used, run["settings"]["methods"], run.get("methods"), text_agreement=False)


@lru_cache(maxsize=None)
def engine_run(name: str = "engine_speed.json") -> tuple[dict, list[dict], dict]:
    """The same for an ``engine_speed.py`` result, its records renamed to the bench's fields."""
    data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
    records = []
    for r in data["records"]:
        row = {"text": r["token_ids"], **r, "example_id": r["prompt_id"], "repeat": 0}  # tokens stand in for text
        row.setdefault("position_reached", [])
        row.setdefault("position_accepted", [])
        records.append(row)
    ours = [r for r in records if r["kind"] == "ours"]  # HF's records carry no round counts
    summary = report.summarize(ours, [m for m in data["settings"]["methods"] if not m.startswith("hf-")],
                               text_agreement=False)
    return data, records, summary


@lru_cache(maxsize=None)
def dataset_order(dataset: str) -> dict[str, int]:
    """Example id -> index in the dataset's full fixed order (the order splits are ranges of)."""
    from specadapt.bench.datasets import load_dataset

    return {e.id: e.index for e in load_dataset(dataset, split="all")}


def describe_examples(dataset: str, ids: set[str]) -> str:
    """'16 examples, indices 0–15 (tune split)'."""
    from specadapt.bench.splits import SPLITS, split_range

    name = "mt-bench" if dataset == "mtbench" else dataset
    order = dataset_order(name)
    indices = sorted(order[i] for i in ids)
    splits = [s for s in SPLITS if any(i in split_range(name, s) for i in indices)]
    return f"{len(indices)} examples, indices {report._ranges(indices)} ({' + '.join(splits)} split)"


# ----------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------


def pct(x: float | None, spec: str = ".1%") -> str:
    return "–" if x is None else f"{x:{spec}}"


def num(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else f"{x:{spec}}"


def speedup(e: dict) -> str:
    return report.speedup_cell(e)


def vs_best(comparisons: dict, table: dict, method: str) -> str:
    if method == BASELINE:
        return "–"
    best = report.best_fixed_k(table)
    if method == best:
        return "best fixed K"
    c = comparisons.get(method, {}).get("vs_best_fixed_k")
    return f"{gain_cell(c)} vs `{c['reference']}`" if c else "–"


def run_table(name: str, complete_only: bool = False) -> str:
    """One table per dataset of a bench run: speedup, gain over the best fixed K, acceptance, lengths, accuracy.
    ``complete_only``: only the examples every method finished in every repeat (a run cut at its time limit)."""
    run, records, summary = complete_bench_run(name) if complete_only else bench_run(name)
    settings = run["settings"]
    lines = []
    for ds, table in summary["datasets"].items():
        ids = {r["example_id"] for r in records if r["dataset"] == ds}
        cap = (settings.get("dataset_max_new_tokens") or {}).get(ds, settings["max_new_tokens"])
        lines += [f"**{DATASET_TITLES.get(ds, ds)}** ({describe_examples(ds, ids)}; at most {cap} new tokens; "
                  f"{settings['repeats']} repeat(s)); `benchmarks/results/{name}/`", "",
                  "| method | tok/s | speedup | vs best fixed K | acceptance | mean accepted length | mean draft length | accuracy (Δ pts) |",
                  "|---|---|---|---|---|---|---|---|"]
        comparisons = summary["comparisons"][ds]
        for m, e in table.items():
            agreement = f", token agreement {e['target_agreement']:.1%}" if e.get("target_agreement") is not None else ""
            lossy = "" if e["lossless"] else f" (**lossy**{agreement})"
            lines.append(
                f"| `{m}`{lossy} | {num(e['tokens_per_s'])} | {speedup(e)} | {vs_best(comparisons, table, m)} | "
                f"{pct(e['acceptance_rate'])} | {num(e['mean_accepted_length'])} | {num(e['mean_draft_length'])} | "
                f"{report.accuracy_cell(e)} |")
        lines.append("")
    return "\n".join(lines)


def copies_runs(*names: str) -> Callable[[], str]:
    """Bench runs of one pair on the same examples, with and without float32 copies of the target's weights (the
    environment records which): per dataset and method, speed, the gain over target-only with its verdict."""

    def render() -> str:
        lines = ["| dataset | target's float32 copies | method | tok/s | speedup (per repeat) | vs target-only | "
                 "acceptance | mean accepted length |", "|---|---|---|---|---|---|---|---|"]
        for name in names:
            run, records, summary = bench_run(name)
            copies = "yes" if run["environment"].get("target_float32_copies") else "no"
            for ds, table in summary["datasets"].items():
                for m, e in table.items():
                    vs = summary["comparisons"][ds].get(m, {}).get("vs_target_only")
                    verdict = f"{vs['gain']:+.1%} ± {vs['spread']:.1%} ({vs['verdict']})" if vs else "–"
                    per_repeat = ", ".join(f"{x:.2f}" for x in e.get("speedup_per_repeat") or [])
                    lines.append(f"| {DATASET_TITLES.get(ds, ds)} | {copies} | `{m}` | {num(e['tokens_per_s'])} | "
                                 f"{speedup(e)} ({per_repeat}) | {verdict} | {pct(e['acceptance_rate'])} | "
                                 f"{num(e['mean_accepted_length'])} |")
        run, records, _ = bench_run(names[0])
        ids = {ds: {r["example_id"] for r in records if r["dataset"] == ds} for ds in run["settings"]["datasets"]}
        where = "; ".join(f"{DATASET_TITLES.get(ds, ds)}: {describe_examples(ds, i)}" for ds, i in ids.items())
        return ("\n".join(lines) + f"\n\nExamples ({where}), {run['settings']['repeats']} repeats, at most "
                f"{run['settings']['max_new_tokens']} new tokens; folders "
                + ", ".join(f"`benchmarks/results/{n}/`" for n in names) + f". Verdict rule: {report.VERDICT_RULE}\n")

    return render


def copies_ab(name: str) -> Callable[[], str]:
    """benchmarks/copies_ab.py: one process, every (method, setting) cell on the same examples; a setting is float32
    copies of the target's weights or not, and (runs from the fused pass and the row padding on) fused blocks and
    padded rows or not."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st = data["settings"]
        ids = {}
        for r in data["records"]:
            ids.setdefault(r["dataset"], set()).add(r["example_id"])
        where = "; ".join(f"{DATASET_TITLES.get(ds, ds)}: {describe_examples(ds, i)}" for ds, i in ids.items())
        columns = [(flag, title) for flag, title in
                   (("copies", "target's float32 copies"), ("fused", "fused blocks"), ("padded", "padded rows"))
                   if flag in data["summary"][0]]
        reference = ("without copies" if len(columns) == 1
                     else f"in the setting `{st['settings'].split(',')[0]}`")
        yes = lambda flag: "yes" if flag else "no"  # noqa: E731
        lines = [f"`{name}`: {_machine(data['machine'])}, {st['threads']} threads; {where}; {st['repeats']} repeats, "
                 f"at most {st['max_new_tokens']} new tokens. Ratio: mean over examples of tokens/s ÷ target-only "
                 f"{reference} on the same example and repeat; ± the sample standard deviation over repeats.\n",
                 "| dataset | method | " + " | ".join(title for _, title in columns)
                 + f" | tok/s | ÷ target-only {reference} (per repeat) |",
                 "|---|---|" + "---|" * len(columns) + "---|---|"]
        for row in data["summary"]:
            per = ", ".join(f"{x:.2f}" for x in row["ratio_per_repeat"])
            lines.append(f"| {DATASET_TITLES.get(row['dataset'], row['dataset'])} | `{row['method']}` | "
                         + " | ".join(yes(row[flag]) for flag, _ in columns)
                         + f" | {row['tokens_per_s']:.2f} | {row['ratio']:.2f} ± {row['ratio_spread']:.2f} ({per}) |")
        return "\n".join(lines) + "\n"

    return render


def runs_table(*names: str) -> Callable[[], str]:
    return lambda: "\n".join(run_table(n) for n in names).rstrip("\n") + "\n\n" + VERDICT_NOTE


VERDICT_NOTE = (
    f"Verdict rule: {report.VERDICT_RULE} These runs have one repeat each, so no verdict is possible from a run "
    "alone; the spread of the same fixed K over runs on the same prompts (section \"Run-to-run noise\") is the "
    "only noise estimate the records give.\n"
)


# ----------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------


def engine_table(dataset: str) -> Callable[[], str]:
    def render() -> str:
        data, records, summary = engine_run()
        rows = [r for r in records if r["dataset"] == dataset]
        base = [r for r in rows if r["method"] == BASELINE]
        table = summary["datasets"][dataset]
        ids = {r["example_id"] for r in rows}
        lines = [f"**{DATASET_TITLES[dataset]}** ({describe_examples(dataset, ids)}; "
                 f"{data['settings']['max_new_tokens']} new tokens, no stop strings, 1 repeat)", "",
                 "| method | tok/s | speedup | × HF assisted, same K | acceptance | mean accepted length | mean draft length | draft / target time |",
                 "|---|---|---|---|---|---|---|---|"]
        for m in data["settings"]["methods"]:
            mine = [r for r in rows if r["method"] == m]
            tps = mean(r["tokens_per_s"] for r in mine)
            sp = speedup_ratio(mine, base)
            k = re.match(r"^fixed:(\d+)(@v\d+)?$", m)  # a restricted draft vocabulary is still that K
            hf = [r for r in rows if k and r["method"] == f"hf-assisted:{k.group(1)}"]
            same_k = f"{speedup_ratio(mine, hf):.2f}×" if hf else "–"
            if m.startswith("hf-"):
                lines.append(f"| {m} | {tps:.2f} | {sp:.2f}× | – | – | – | – | – |")
                continue
            e = table[m]
            total = sum(r["total_time_s"] for r in mine)
            shares = (f"{sum(r['draft_time_s'] for r in mine) / total:.0%} / "
                      f"{sum(r['target_time_s'] for r in mine) / total:.0%}")
            label = "autoregressive (target only)" if m == BASELINE else m
            lines.append(f"| {label} | {tps:.2f} | {sp:.2f}× | {same_k} | {pct(e['acceptance_rate'], '.0%')} | "
                         f"{num(e['mean_accepted_length'])} | {num(e['mean_draft_length'])} | {shares} |")
        return "\n".join(lines) + "\n"
    return render


DRAFT_COST = 0.33  # measured draft/target forward cost ratio of the default pair on this CPU (BENCHMARKS.md)


def lossless(method: str, temperature: float) -> bool:
    from specadapt.engine import RequestConfig
    from specadapt.methods import make_method

    return make_method(method).describe(RequestConfig(16, temperature, 0, 1.0).sampling)["lossless"]


def call_count_speedup(rows: list[dict]) -> float | None:
    """Tokens per unit of forward-pass cost, target-only = 1: tokens / (target calls + c · draft calls), pooled.
    Free of timing noise; it assumes a target call costs the same for any number of tokens."""
    tokens, rounds, drafted = (sum(r[k] for r in rows) for k in ("tokens", "rounds", "drafted"))
    return tokens / (rounds + DRAFT_COST * drafted) if rounds else None


def engine_methods_table(name: str, call_count: bool) -> Callable[[], str]:
    """An engine_speed.py run of our methods on HumanEval + MT-Bench: one row per method, the datasets side by side."""
    def render() -> str:
        data, records, summary = engine_run(name)
        temperature = data["settings"].get("temperature", 0.0)
        datasets = list(dict.fromkeys(r["dataset"] for r in records))
        titles = " / ".join({"humaneval": "HE", "mtbench": "MT"}.get(d, d) for d in datasets)
        head = "measured / call-count" if call_count else "measured"
        lines = [", ".join(f"{DATASET_TITLES[d]}: {describe_examples(d, {r['example_id'] for r in records if r['dataset'] == d})}"
                           for d in datasets) + "; target-only " + " / ".join(
                     f"{summary['datasets'][d][BASELINE]['tokens_per_s']:.2f}" for d in datasets) + " tok/s.", "",
                 "| method | lossless | " + " | ".join(f"{DATASET_TITLES[d]} speedup, {head}" for d in datasets)
                 + f" | acceptance {titles} | mean accepted length {titles} | mean draft length {titles} | "
                   f"target agreement {titles} |",
                 "|---|---|" + "---|" * (len(datasets) + 4)]
        for m in data["settings"]["methods"]:
            cells = []
            for d in datasets:
                rows = [r for r in records if r["dataset"] == d]
                mine = [r for r in rows if r["method"] == m]
                sp = speedup_ratio(mine, [r for r in rows if r["method"] == BASELINE])
                cell = f"{sp:.2f}×"
                if call_count:
                    cell += f" / {call_count_speedup(mine):.2f}×"
                cells.append(cell)
            es = [summary["datasets"][d][m] for d in datasets]
            agreement = " / ".join(pct(e.get("target_agreement")) for e in es)
            lines.append(
                f"| `{m}` | {'yes' if lossless(m, temperature) else '**no (lossy)**'} | " + " | ".join(cells)
                + " | " + " / ".join(pct(e["acceptance_rate"], ".0%") for e in es)
                + " | " + " / ".join(num(e["mean_accepted_length"]) for e in es)
                + " | " + " / ".join(num(e["mean_draft_length"]) for e in es)
                + f" | {agreement if agreement.strip('– /') else '–'} |")
        return "\n".join(lines) + "\n"
    return render


def engine_equality() -> str:
    """Which outputs were token-identical: our fixed K against HF assisted generation with the same K, and
    every method against target-only."""
    data, records, _ = engine_run()
    tokens = {(r["dataset"], r["example_id"], r["method"]): json.loads(r["token_ids"]) if isinstance(r["token_ids"], str)
              else r["token_ids"] for r in records}
    pairs, differ = 0, []
    for (ds, ex, m), ids in sorted(tokens.items()):
        k = re.match(r"^fixed:(\d+)$", m)
        other = tokens.get((ds, ex, f"hf-assisted:{k.group(1)}")) if k else None
        if other is None:
            continue
        pairs += 1
        if ids != other:
            first = next((i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids), len(other)))
            differ.append(f"`{m}` on {ex} from token {first}")
    same = pairs - len(differ)
    lines = [f"- Same-K pairs (`fixed:K` and `hf-assisted:K` on the same prompt): {same} of {pairs} produced "
             f"identical tokens" + (f"; the others differ: {', '.join(differ)}." if differ else ".")]
    for ds in dict.fromkeys(r["dataset"] for r in records):
        cells = []
        for m in data["settings"]["methods"]:
            if m == BASELINE:
                continue
            ex = [e for (d, e, mm) in tokens if d == ds and mm == m]
            hits = sum(tokens[(ds, e, m)] == tokens.get((ds, e, BASELINE)) for e in ex)
            cells.append(f"`{m}` {hits}/{len(ex)}")
        lines.append(f"- Identical to target-only's tokens, {DATASET_TITLES[ds]}: {', '.join(cells)}.")
    return "\n".join(lines) + "\n"


def results_run_count() -> str:
    run, records, _ = bench_run("bench_qwen_greedy")
    keys = {(r["dataset"], r["example_id"], r["method"], r["repeat"]) for r in records}
    per = {ds: len({r["example_id"] for r in records if r["dataset"] == ds}) for ds in dict.fromkeys(r["dataset"] for r in records)}
    return (f"`records.jsonl` holds {len(records)} generations ({len(keys)} distinct): "
            + ", ".join(f"{n} {DATASET_TITLES[d]} examples" for d, n in per.items())
            + f" × {len(run['settings']['methods'])} methods × {run['settings']['repeats']} repeat, nothing beyond "
            "the 16 per dataset reported.\n")


# Fixed-K runs that repeat byte-identical work on the same prompts: their spread is the run-to-run noise.
NOISE_RUNS = ("bench_qwen_greedy", "features_head_check", "h01_check_humaneval", "h01_check_mtbench",
              "mink1_check_humaneval", "mink1_check_mtbench", "valtuned_check_humaneval", "valtuned_check_mtbench",
              "maxk_check_humaneval", "maxk_check_mtbench")


def noise_groups() -> dict[tuple, list[tuple[str, float, float]]]:
    """(dataset, method, example ids, token cap, temperature) -> [(run, speedup, tok/s)] for fixed K and
    target-only measured in more than one run."""
    groups: dict[tuple, list[tuple[str, float, float]]] = {}
    for name in NOISE_RUNS:
        run, records, summary = bench_run(name)
        settings = run["settings"]
        for ds, table in summary["datasets"].items():
            ids = tuple(sorted({r["example_id"] for r in records if r["dataset"] == ds}))
            cap = (settings.get("dataset_max_new_tokens") or {}).get(ds, settings["max_new_tokens"])
            for m, e in table.items():
                if (FIXED_K.match(m) or m == BASELINE) and e["speedup"] is not None:
                    key = (ds, m, ids, cap, settings["temperature"])
                    groups.setdefault(key, []).append((name, e["speedup"], e["tokens_per_s"]))
    return {k: v for k, v in groups.items() if len(v) > 1}


def noise_summary() -> str:
    """The largest run-to-run move of one fixed K's speedup, per dataset."""
    worst: dict[str, float] = {}
    for (ds, m, *_), runs in noise_groups().items():
        if m != BASELINE:
            values = [sp for _, sp, _ in runs]
            worst[ds] = max(worst.get(ds, 0.0), max(values) / min(values) - 1)
    return ("Across runs, the same fixed K on the same 16 prompts (byte-identical work) moved its speedup by up "
            "to " + " and ".join(f"{v:.1%} ({DATASET_TITLES[d]})" for d, v in worst.items()) + ".\n")


def run_to_run_noise() -> str:
    """The same fixed K on the same prompts, measured in several runs (same settings, one repeat each)."""
    groups = noise_groups()
    lines = ["| dataset | method | runs | per run | min – max | spread (sample sd / mean) |",
             "|---|---|---|---|---|---|"]
    order = sorted(groups,
                   key=lambda k: (k[0], k[1] != BASELINE, int(k[1].split(":")[1]) if ":" in k[1] else 0))
    for ds, m, ids, cap, _ in order:
        runs = groups[(ds, m, ids, cap, _)]
        if m == BASELINE:
            values = [tps for _, _, tps in runs]
            cells = ", ".join(f"{v:.2f}" for v in values)
            lines.append(f"| {DATASET_TITLES[ds]} ({len(ids)}) | target-only, tok/s | {len(runs)} | {cells} | "
                         f"{min(values):.2f} – {max(values):.2f} (+{max(values) / min(values) - 1:.1%}) | "
                         f"{stdev(values) / mean(values):.1%} |")
            continue
        values = [s for _, s, _ in runs]
        cells = ", ".join(f"{v:.2f}×" for v in values)
        lines.append(f"| {DATASET_TITLES[ds]} ({len(ids)}) | `{m}` | {len(runs)} | {cells} | "
                     f"{min(values):.2f}× – {max(values):.2f}× (+{max(values) / min(values) - 1:.1%}) | "
                     f"{stdev(values) / mean(values):.1%} |")
    lines += ["", "Runs: " + ", ".join(f"`{n}`" for n in NOISE_RUNS) + " (in that order where present)."]
    return "\n".join(lines) + "\n"


BENCH_RUNS = ("bench_qwen_greedy", "adaptive_greedy_bench", "specdecpp_t07_bench", "mtbench_small_k", "nolag_head_check",
              "features_head_check", "h01_check_humaneval", "h01_check_mtbench", "mink1_check_humaneval",
              "mink1_check_mtbench", "valtuned_check_humaneval", "valtuned_check_mtbench", "maxk_check_humaneval",
              "maxk_check_mtbench")


def resumed_runs() -> str:
    """Which committed runs a resume split, and which examples' methods it measured in different processes."""
    lines = ["| run | generations | examples whose methods ran in different processes |", "|---|---|---|"]
    for name in BENCH_RUNS:
        _, records, summary = bench_run(name)
        split = summary["split_across_sessions"]
        how = ""
        if split is None:  # recorded before session ids: inferred from the rotation restarting
            split, how = report.inferred_split_examples(records), " (inferred from the method order)"
        cells = ", ".join(split) if split else "none seen"
        lines.append(f"| `{name}` | {len(records)} | {cells}{how if split else ''} |")
    return "\n".join(lines) + "\n"


CHEAP_DRAFT_RESULTS = RESULTS / "cheap_draft_lean"  # with the packed attention and the lean draft step
CHEAP_DRAFT_BEFORE = RESULTS / "cheap_draft"  # the first run, before them
# The method per dataset frozen before the last fresh test prompts were run (BENCHMARKS.md, "cheap_draft_final").
CHEAP_DRAFT_FINAL_FROZEN = {"humaneval": "adaedl+lookup@int4", "mt-bench": "specdecpp@int4", "gsm8k": "specdecpp@int4"}
# MT-Bench's second turns: chosen on their tune prompts (block cheap-draft-turn2-tune-choice) before the test run.
CHEAP_DRAFT_TURN2_FROZEN = {"mt-bench-turn2": "adaedl+lookup@int4"}


def _benchmark_module(name: str):
    """benchmarks/``name``.py as a module (loaded once), for the code that wrote its results."""
    import importlib.util

    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def _cheap_draft_run(folder: Path | None = None):
    """A committed run of benchmarks/cheap_draft.py: (that script as a module, settings, summary, peak RSS), its
    summary recomputed from records.jsonl by the script's own code over the examples every method finished in
    every repeat; None while no run is committed. ``folder``: default ``CHEAP_DRAFT_RESULTS``, looked up at call
    time (tests point it elsewhere)."""
    folder = folder or CHEAP_DRAFT_RESULTS
    if not (folder / "records.jsonl").exists():
        return None
    module = _benchmark_module("cheap_draft")
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))["settings"]
    records = read_records(folder)
    used = module.complete_examples(records, settings["methods"], settings.get("repeats", 1))
    summary = module.summarize(used, settings["methods"], settings["drafts"])
    if all(k in settings for k in ("datasets", "n", "repeats")):
        expected = len(settings["datasets"]) * settings["n"] * settings["repeats"] * len(settings["methods"])
        summary["progress"] = {"complete": len(records) >= expected, "generations": len(records), "expected": expected,
                               "generations_summarized": len(used)}
    rss_path = folder / "peak_rss.json"
    rss = json.loads(rss_path.read_text(encoding="utf-8")) if rss_path.exists() else None
    return module, settings, summary, rss


def cheap_draft(folder: Path | None = None) -> Callable[[], str]:
    """A committed run of benchmarks/cheap_draft.py (default ``CHEAP_DRAFT_RESULTS``): its tables (a placeholder
    line while no run is committed)."""

    def render() -> str:
        run = _cheap_draft_run(folder)
        if run is None:
            return f"No committed results yet (`benchmarks/results/{(folder or CHEAP_DRAFT_RESULTS).name}/` does not exist).\n"
        module, settings, summary, rss = run
        return module.markdown(summary, settings, rss)

    return render


def cheap_draft_targets(folder: Path | None = None, default_method: str = "adaedl",
                        frozen: dict[str, str] | None = None) -> Callable[[], str]:
    """The cheap-draft issue's targets, met or missed, from a run (``default_method``: the default when it ran;
    ``frozen``: dataset -> the method chosen for it before the run, judged instead of the run's best)."""

    def render() -> str:
        run = _cheap_draft_run(folder)
        if run is None:
            return "No committed results yet.\n"
        module, _, summary, _ = run
        return module.targets_markdown(summary, default_method=default_method, frozen=frozen)

    render.source = lambda: folder or CHEAP_DRAFT_RESULTS  # for targets_index
    return render


def _repeat_ratios(a: dict, b: dict) -> str:
    """Entry ``a``'s speedup ÷ entry ``b``'s in each repeat of a cheap_draft.py summary: '1.101, 1.115'."""
    return ", ".join(f"{a['speedup_per_repeat'][r] / b['speedup_per_repeat'][r]:.3f}" for r in a["speedup_per_repeat"])


def cheap_draft_versus(folder: Path, mine: str, reference: str, tune: Path | None = None,
                       tune_mine: str | None = None) -> Callable[[], str]:
    """One method against another in a cheap_draft.py run, per dataset (speedup ratio, its spread over repeats,
    verdict), beside the same two on tune prompts (``tune``: a `specadapt bench` folder's summary.json, where
    ``mine`` is labelled ``tune_mine`` if given)."""

    def render() -> str:
        module, settings, summary, _ = _cheap_draft_run(folder)
        tuned = json.loads((tune / "summary.json").read_text(encoding="utf-8")) if tune else {}
        split = settings.get("split", "test")
        head = f"| dataset | `{mine}` ÷ `{reference}`, {split} (per repeat) | verdict | tokens per round | draft length |"
        out = [head + (" tune (timed) |" if tune else ""), "|---|---|---|---|---|" + ("---|" if tune else "")]
        for ds, table in summary["datasets"].items():
            a, b = table[mine], table[reference]
            c = module.compare(a, b, reference)
            per = _repeat_ratios(a, b)
            row = (f"| {module.TITLES.get(ds, ds)} | {1 + c['gain']:.3f} ± {c['spread']:.3f} ({per}) | {c['verdict']} | "
                   f"{a['mean_accepted_length']:.2f} vs {b['mean_accepted_length']:.2f} | "
                   f"{a['mean_draft_length']:.2f} vs {b['mean_draft_length']:.2f} |")
            if tune:
                m = {name: x["speedup"] for name, x in tuned["datasets"].get(ds, {}).items()}
                base_mine, base_ref = tune_mine or mine.split("@")[0], reference.split("@")[0]
                row += f" {m[base_mine] / m[base_ref]:.3f} |" if base_mine in m and base_ref in m else " – |"
            out.append(row)
        return "\n".join(out) + "\n"

    return render


def cheap_draft_frozen(folder: Path, frozen: str | dict[str, str], others: Sequence[str],
                       reference: str = "hf-assisted@int4", target: float = 1.15) -> Callable[[], str]:
    """The cheap-draft issue's target against ``reference`` in a run that tests a method chosen before it
    (``frozen``; or dataset -> method, the datasets to report), with ``others`` run beside it: per dataset and
    method, the speedup ratio, its spread over repeats and each repeat's ratio, and the cheap-draft targets'
    verdict."""

    def render() -> str:
        module, _, summary, _ = _cheap_draft_run(folder)
        picks = frozen if isinstance(frozen, dict) else dict.fromkeys(summary["datasets"], frozen)
        out = ["| dataset | target | measured (per repeat) | verdict |", "|---|---|---|---|"]
        for ds, table in summary["datasets"].items():
            if ds not in picks:
                continue
            for method in (picks[ds], *(m for m in others if m != picks[ds])):
                a, b = table[method], table[reference]
                c = module.compare(a, b, reference)
                per = _repeat_ratios(a, b)
                role = " (frozen before the run)" if method == picks[ds] else ""
                out.append(f"| {module.TITLES.get(ds, ds)} | `{method}`{role} ÷ `{reference}` ≥ {target}× | "
                           f"{1 + c['gain']:.3f} ± {c['spread']:.3f} ({per}) | "
                           f"{module._verdict(1 + c['gain'], c['spread'], target)} |")
        return "\n".join(out) + "\n"

    render.source = lambda: folder  # for targets_index
    return render


def cheap_draft_per_prompt(folder: Path, methods: Sequence[str], reference: str = "hf-assisted@int4") -> Callable[[], str]:
    """Per prompt of a cheap_draft.py run: each of ``methods``' mean tokens/s over repeats ÷ ``reference``'s (how much
    a prompt's own answer moves a ratio that the run's summary pools), and the two tokens/s."""

    def render() -> str:
        module, settings, _, _ = _cheap_draft_run(folder)
        speeds: dict[tuple[str, str, str], list[float]] = {}
        for r in read_records(folder):
            speeds.setdefault((r["dataset"], r["example_id"], r["method"]), []).append(r["tokens_per_s"])
        out = ["| dataset | prompt | " + " | ".join(f"`{m}` ÷ `{reference}`" for m in methods) + " |",
               "|---|---|" + "---|" * len(methods)]
        for ds in settings["datasets"]:
            for ex in dict.fromkeys(k[1] for k in speeds if k[0] == ds):
                ref = mean(speeds[(ds, ex, reference)])
                cells = [f"{tps / ref:.3f} ({tps:.2f} vs {ref:.2f} tok/s)"
                         for tps in (mean(speeds[(ds, ex, m)]) for m in methods)]
                out.append(f"| {module.TITLES.get(ds, ds)} | {ex} | " + " | ".join(cells) + " |")
        return "\n".join(out) + "\n"

    return render


def cheap_draft_by_time(folder: Path, methods: dict[str, str],
                        references: Sequence[str] = ("autoregressive", "hf-assisted@bf16", "hf-assisted@int4")) -> Callable[[], str]:
    """Per dataset, its method (``methods``: dataset -> method) against each of ``references`` by two definitions:
    this file's (the mean over the prompts and repeats of per-prompt tokens/s, one ÷ the other: a fast prompt weighs
    more) and by total time (all tokens ÷ all seconds of the generations: every second weighs the same), the latter
    also per repeat; over the prompts every method finished in every repeat."""

    def render() -> str:
        module, settings, _, _ = _cheap_draft_run(folder)
        records = module.complete_examples(read_records(folder), settings["methods"], settings.get("repeats", 1))
        out = ["| dataset | method | ÷ | mean of per-prompt tokens/s | by total time (per repeat) |", "|---|---|---|---|---|"]
        for ds, method in methods.items():
            rows = [r for r in records if r["dataset"] == ds]
            repeats = sorted({r["repeat"] for r in rows})

            def of(name: str, repeat: int | None = None) -> list[dict]:
                return [r for r in rows if r["method"] == name and repeat in (None, r["repeat"])]

            def by_time(name: str, repeat: int | None = None) -> float:
                got = of(name, repeat)
                return sum(r["tokens"] for r in got) / sum(r["wall_s"] for r in got)

            for ref in references:
                by_speed = mean(r["tokens_per_s"] for r in of(method)) / mean(r["tokens_per_s"] for r in of(ref))
                per = ", ".join(f"{by_time(method, k) / by_time(ref, k):.3f}" for k in repeats)
                out.append(f"| {module.TITLES.get(ds, ds)} | `{method}` | `{ref}` | {by_speed:.3f} | "
                           f"{by_time(method) / by_time(ref):.3f} ({per}) |")
        return "\n".join(out) + "\n"

    return render


def cheap_draft_choice(folder: Path, candidates: Sequence[str], default: str, reference: str = "hf-assisted@int4",
                       tie: float = 0.02) -> Callable[[], str]:
    """A choice between ``candidates`` made on a run (tune prompts), by the rule written before it: the highest
    speedup ÷ ``reference``'s wins, except that ``default`` wins when it is within ``tie`` of the best."""

    def render() -> str:
        module, settings, summary, _ = _cheap_draft_run(folder)
        out = [f"| dataset | candidate | tok/s | speedup | ÷ `{reference}` | chosen |", "|---|---|---|---|---|---|"]
        for ds, table in summary["datasets"].items():
            ratio = {m: 1 + module.compare(table[m], table[reference], reference)["gain"] for m in candidates}
            best = max(candidates, key=ratio.get)
            pick = default if ratio[default] >= ratio[best] * (1 - tie) else best
            for m in candidates:
                e = table[m]
                out.append(f"| {module.TITLES.get(ds, ds)} | `{m}` | {e['tokens_per_s']:.2f} | {e['speedup']:.2f}× | "
                           f"{ratio[m]:.3f} | {'**chosen**' if m == pick else ''} |")
        return "\n".join(out) + "\n"

    return render


def cheap_draft_prompt_lengths(*folders: str) -> Callable[[], str]:
    """Per cheap_draft.py run and dataset: how many prompts and their mean length in tokens, beside the run's
    measured c (whose draft step counts each generation's prefill of its prompt)."""

    def render() -> str:
        out = ["| run | dataset | prompts | mean prompt tokens | c (int4 draft, run-wide) |", "|---|---|---|---|---|"]
        for folder in folders:
            module, _, summary, _ = _cheap_draft_run(RESULTS / folder)
            records = read_records(RESULTS / folder)
            for ds in dict.fromkeys(r["dataset"] for r in records):
                lengths = {r["example_id"]: r["prompt_tokens"] for r in records if r["dataset"] == ds}
                out.append(f"| `{folder}` | {module.TITLES.get(ds, ds)} | {len(lengths)} | "
                           f"{mean(lengths.values()):.0f} | {summary['c']['int4']['c']:.3f} |")
        return "\n".join(out) + "\n"

    return render


def cheap_draft_time(*folders: str, methods: tuple[str, ...] = ("adaedl", "specdecpp")) -> Callable[[], str]:
    """Where our methods' generations spent their time in cheap_draft.py runs, per dataset: the engine's draft and
    target seconds (summed over the records) as shares of the generations' time, and the draft's ms per drafted
    token (prefill included)."""

    def render() -> str:
        out = ["| run | dataset | method | generations | draft share | target share | draft ms per drafted token |",
               "|---|---|---|---|---|---|---|"]
        for folder in folders:
            records = read_records(RESULTS / folder)
            for dataset in dict.fromkeys(r["dataset"] for r in records):
                for method in methods:
                    rows = [r for r in records if r["dataset"] == dataset and r["base"] == method and r["kind"] == "ours"]
                    if not rows:
                        continue
                    draft, target, total = (sum(r[k] for r in rows) for k in ("draft_time_s", "target_time_s", "total_time_s"))
                    drafted = sum(r["drafted"] for r in rows)
                    out.append(f"| `{folder}` | {dataset} | `{method}` | {len(rows)} | {draft / total:.3f} | "
                               f"{target / total:.3f} | {1e3 * draft / drafted:.1f} |")
        return "\n".join(out) + "\n"

    return render


def _price_fit_caption(name: str, data: dict) -> str:
    st = data["settings"]
    return (f"`{name}`: `{st['method']}`, one policy instance through {st['split']} prompts in this order, at most "
            f"{st['max_new_tokens']} new tokens; {_machine(data['machine'])}, {st['threads']} threads.\n")


def price_fit(name: str) -> Callable[[], str]:
    """benchmarks/price_fit.py: per generation of one `marginal:cost=auto` policy, its rounds, their mean draft
    length and draft seconds per draft step, the policy's price at the generation's end (its window spans the
    generations before), and the line a + b * K fitted to that generation's rounds alone."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        out = [_price_fit_caption(name, data),
               "| # | prompt | rounds | mean K | draft ms per draft step | price at the end | its rounds alone: a s | b s | b / a |",
               "|---|---|---|---|---|---|---|---|---|"]
        for i, g in enumerate(data["generations"], 1):
            rounds = g["rounds"]  # [K, draft s, target s]
            K = sum(r[0] for r in rounds)
            out.append(f"| {i} | {g['id']} | {len(rounds)} | {K / len(rounds):.1f} | {1e3 * sum(r[1] for r in rounds) / K:.0f} | "
                       f"{g['price_at_end']:.3f} | {g['alone']['a']:.3f} | {g['alone']['b']:.3f} | {g['alone']['price']:.3f} |")
        return "\n".join(out) + "\n"

    return render


def price_fit_terms(name: str) -> Callable[[], str]:
    """benchmarks/price_fit.py with F and C recorded: per generation of one `marginal:cost=auto` policy, its rounds
    (and how many were prompt lookup's alone), the prices at the generation's end (draft-model token, looked-up
    token), and each fit of that generation's rounds alone: one term (b / a) and three terms ((b + d) / a for a
    draft-model token, (d + c) / a for a looked-up one)."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        out = [_price_fit_caption(name, data),
               "| # | prompt | rounds | of them lookup alone | mean K | price at the end: draft token | looked-up token "
               "| its rounds alone, one term | three terms: draft token | looked-up token |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for i, g in enumerate(data["generations"], 1):
            rounds = g["rounds"]  # [K, draft s, target s, F, C]
            alone = g["alone"]
            out.append(f"| {i} | {g['id']} | {len(rounds)} | {sum(r[3] == 0 for r in rounds)} | "
                       f"{sum(r[0] for r in rounds) / len(rounds):.1f} | {g['price_at_end']:.3f} | "
                       f"{g['lookup_price_at_end']:.3f} | {alone['terms1']['price']:.3f} | {alone['terms3']['price']:.3f} | "
                       f"{alone['terms3']['lookup_price']:.3f} |")
        return "\n".join(out) + "\n"

    return render


def cheap_draft_prices(folder: str) -> Callable[[], str]:
    """The price per draft token a `cost=auto` policy had measured at the end of each generation of a
    cheap_draft.py run (its records' ``measured_cost``), in the run's order, with the generation's speedup
    over target-only on the same prompt and repeat."""

    def render() -> str:
        records = read_records(RESULTS / folder)
        base = {(r["example_id"], r["repeat"]): r["tokens_per_s"] for r in records if r["method"] == "autoregressive"}
        priced = [r for r in records if "measured_cost" in r]
        lookup = any("measured_lookup_cost" in r for r in priced)  # three-term fits price a looked-up token too
        out = ["| # | prompt | method | rounds | drafted | price at the end |" + (" looked-up token |" if lookup else "")
               + " ÷ target-only |", "|---|---|---|---|---|---|" + ("---|" if lookup else "") + "---|"]
        for i, r in enumerate(priced, 1):
            ref = base.get((r["example_id"], r["repeat"]))
            ratio = f"{r['tokens_per_s'] / ref:.2f}" if ref else "–"
            second = f" {r['measured_lookup_cost']:.3f} |" if "measured_lookup_cost" in r else " – |" if lookup else ""
            out.append(f"| {i} | {r['example_id']} | `{r['method']}` | {r['rounds']} | {r['drafted']} | "
                       f"{r['measured_cost']:.3f} |{second} {ratio} |")
        return "\n".join(out) + "\n"

    return render


def hf_passes(name: str) -> Callable[[], str]:
    """benchmarks/hf_passes.py: per dataset and method, target passes and draft calls per generated token and what
    each cost, ours (engine statistics for the lean draft steps) against HF assisted generation (forward hooks)."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st = data["settings"]
        out = [f"`{name}`: {st['n']} {st['split']} examples per dataset, greedy, at most {st['max_new_tokens']} new "
               f"tokens, one generation per method and example; ms per generated token split into the target's "
               "passes, the draft's calls and the rest.\n",
               "| dataset | method | tok/s | target passes | tokens per pass | ms per pass | draft calls per token | "
               "ms per draft call | target ms per token | draft ms per token | other ms per token |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in data["summary"].values():
            per_token = 1e3 / row["tok_s"]
            out.append(f"| {row['dataset']} | `{row['method']}` | {row['tok_s']:.2f} | {row['target_passes']} | "
                       f"{row['tokens_per_target_pass']:.2f} | {row['target_ms_per_pass']:.1f} | "
                       f"{row['draft_calls_per_token']:.2f} | {row['draft_ms_per_call']:.1f} | "
                       f"{per_token * row['target_share']:.1f} | {per_token * row['draft_share']:.1f} | "
                       f"{per_token * row['other_share']:.1f} |")
        return "\n".join(out) + "\n"

    return render


def _cell(value: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


def c_range(rows: dict) -> str:
    """The spread of the engine's draft's c over a draft_cost.py run's rounds: 'min–max'."""
    draft = next(k for k in rows if k.startswith("draft") and "[" not in k)
    target = rows["target 1 token"]["rounds_ms"]
    ratios = [d / t for d, t in zip(rows[draft]["rounds_ms"], target)]
    return f"{draft}: {min(ratios):.2f}–{max(ratios):.2f}"


def draft_depth(names: dict[int, str]) -> Callable[[], str]:
    """benchmarks/draft_cost.py runs of one draft config cut to fewer layers (``{layers: record}``): the engine's
    step of each against the target's, as the depth goes down."""

    def render() -> str:
        out = ["| draft layers | head | draft step ms | target 1 token ms | c | c vs verify-8 | weights MB | record |",
               "|---|---|---|---|---|---|---|---|"]
        for layers, name in names.items():
            rows = json.loads((RESULTS / name).read_text(encoding="utf-8"))["per_step"]
            for label, row in rows.items():
                if label.startswith("draft") and "[" not in label:
                    out.append(f"| {layers} | {label.split()[-1]} | {row['step_ms']:.1f} | "
                               f"{rows['target 1 token']['step_ms']:.1f} | {row['c']:.3f} | {row['c_verify']:.3f} | "
                               f"{row['weights_MB']:.0f} | `{name}` |")
        return "\n".join(out) + "\n"

    return render


def compile_step(name: str) -> Callable[[], str]:
    """benchmarks/compile_step.py: the draft's step eager and compiled, against the lean step in the same rounds."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st, rows = data["settings"], data["per_step"]
        out = [f"`{name}`: {st['context']} tokens of context, {st['rounds']} interleaved rounds of {st['steps']} steps, "
               f"{st['threads']} threads, {_machine(data['environment'])}; median over rounds, the ratio's range over "
               f"rounds in brackets.\n",
               "| draft | step | ms | ÷ lean step | max logit difference from the lean step |", "|---|---|---|---|---|"]
        for label, row in rows.items():
            scheme, _, kind = label.partition(" ")
            base = rows[f"{scheme} lean"]["rounds_ms"]
            ratios = [a / b for a, b in zip(row["rounds_ms"], base)]
            spread = "" if kind == "lean" else f" ({min(ratios):.2f}–{max(ratios):.2f})"
            out.append(f"| {scheme} | {kind} | {row['step_ms']:.1f} | {row['vs_lean']:.3f}{spread} | "
                       f"{row['max_logit_diff_vs_lean']:g} |")
        return "\n".join(out) + "\n"

    return render


def draft_replay(names: dict[str, str]) -> Callable[[], str]:
    """benchmarks/replay_stopping.py runs over the same target outputs with different drafts (``{draft label:
    replay.json}``, the first the reference): per dataset, what the oracle (the best any stopping rule can do),
    the default method and the best of its settings and of fixed K reach with each draft, modelled."""

    def render() -> str:
        data = {label: json.loads((RESULTS / name).read_text(encoding="utf-8")) for label, name in names.items()}
        first = next(iter(data.values()))
        ref_label = next(iter(names))
        out = [", ".join(f"{label}: `{name}`" for label, name in names.items()) + "; modelled speedups over "
               f"target-only (the run's cost model); ÷: against the {ref_label} draft on the same dataset.\n",
               "| dataset (examples) | draft | oracle | ÷ | oracle's mean draft length | `adaedl` | ÷ | `adaedl` acceptance "
               "| best `adaedl` setting | best fixed K |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for ds, summary in first["datasets"].items():
            ref = summary["methods"]
            for label, d in data.items():
                m = d["datasets"][ds]["methods"]
                ada = {k: v["modelled_speedup"] for k, v in m.items() if k.startswith("adaedl")}
                fixed = {k: v["modelled_speedup"] for k, v in m.items() if k.startswith("fixed:")}
                best_ada, best_fixed = max(ada, key=ada.get), max(fixed, key=fixed.get)
                o, a = m["oracle"]["modelled_speedup"], m["adaedl"]["modelled_speedup"]
                out.append(f"| {ds} ({d['datasets'][ds]['examples']}) | {label} | {o:.2f}× | "
                           f"{o / ref['oracle']['modelled_speedup']:.3f} | {m['oracle']['mean_draft_length']:.2f} | "
                           f"{a:.2f}× | {a / ref['adaedl']['modelled_speedup']:.3f} | {m['adaedl']['acceptance_rate']:.1%} | "
                           f"`{best_ada}` {ada[best_ada]:.2f}× | `{best_fixed}` {fixed[best_fixed]:.2f}× |")
        return "\n".join(out) + "\n"

    return render


def draft_choice(reference: str, candidates: dict[str, str]) -> Callable[[], str]:
    """Which distilled draft to ship, from replays on tune prompts (``{draft label: replay.json}`` against the
    ``reference`` replay of the stock draft): the default method's modelled speedup ÷ the stock draft's per dataset,
    and their geometric mean, the choice's criterion (one number that weighs every task alike)."""

    def render() -> str:
        ref = json.loads((RESULTS / reference).read_text(encoding="utf-8"))["datasets"]
        datasets = list(ref)
        rows, means = [], {}
        for label, name in candidates.items():
            d = json.loads((RESULTS / name).read_text(encoding="utf-8"))["datasets"]
            ratios = [d[ds]["methods"]["adaedl"]["modelled_speedup"] / ref[ds]["methods"]["adaedl"]["modelled_speedup"]
                      for ds in datasets]
            means[label] = math.prod(ratios) ** (1 / len(ratios))
            rows.append((label, name, ratios))
        chosen = max(means, key=means.get)
        out = [f"Replays on tune prompts (stock draft: `{reference}`); `adaedl`'s modelled speedup with each draft ÷ "
               "with the stock draft.\n",
               "| draft | replay | " + " | ".join(datasets) + " | geometric mean | |",
               "|---|---|" + "---|" * len(datasets) + "---|---|"]
        for label, name, ratios in sorted(rows, key=lambda r: -means[r[0]]):
            out.append(f"| {label} | `{name}` | " + " | ".join(f"{r:.3f}" for r in ratios) +
                       f" | {means[label]:.3f} | {'**chosen**' if label == chosen else ''} |")
        return "\n".join(out) + "\n"

    return render


def tree_value(name: str) -> Callable[[], str]:
    """benchmarks/tree_value.py: per dataset, the draft's top-1 / top-2 agreement along the target's output and the
    best chain and tree shapes under the measured costs; then those costs."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        out = [f"`{name}`: {data['run']}'s target-only outputs; modelled speedups over target-only (decode only, "
               "no prefill); shapes (K, D, m): a chain of K, plus a branch of m tokens at each depth below D.\n",
               "| dataset (examples, positions) | top-1 agreement | top-2 right where top-1 is wrong | best chain: K, "
               "speedup, tokens per round | best tree: (K, D, m), speedup, tokens per round, rounds a branch won | "
               "tree ÷ chain |", "|---|---|---|---|---|---|"]
        for ds, d in data["datasets"].items():
            chain, tree = d["shapes"][d["best_chain"]], d["shapes"][d["best_tree"]]
            out.append(f"| {ds} ({d['examples']}, {d['positions']}) | {d['top1_agreement']:.3f} | "
                       f"{d['top2_given_top1_wrong']:.3f} | {d['best_chain'].split(',')[0]}, {chain['speedup']:.2f}×, "
                       f"{chain['tokens_per_round']:.2f} | ({d['best_tree'].replace(',', ', ')}), {tree['speedup']:.2f}×, "
                       f"{tree['tokens_per_round']:.2f}, {tree['branch_wins']} of {tree['rounds']} | "
                       f"{d['tree_over_chain']:.3f} |")
        costs = data["costs_s"]
        widths = sorted(costs["target"], key=int)
        out += ["", "Measured costs (ms, median of the timing rounds; the draft's step feeds n tokens in one row):", "",
                "| n tokens | " + " | ".join(widths) + " |", "|---|" + "---|" * len(widths),
                "| target forward | " + " | ".join(f"{costs['target'][w] * 1e3:.0f}" for w in widths) + " |",
                "| draft step | " + " | ".join(f"{costs['draft'][w] * 1e3:.1f}" if w in costs["draft"] else "–"
                                             for w in widths) + " |"]
        return "\n".join(out) + "\n"

    return render


def miss_anatomy(name: str, labels: dict[str, str]) -> Callable[[], str]:
    """benchmarks/miss_anatomy.py: per dataset and draft, the draft's agreement with the target's greedy token in
    buckets of the target's own probability of that token, and each bucket's share of positions and of misses."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        first = next(iter(next(iter(data["datasets"].values()))["drafts"].values()))["buckets"]
        spans = [f"p {b['p_from']:.2f}–{b['p_to']:.2f}" for b in first]
        out = [f"`{name}`: {data['run']}'s target-only outputs; p = the target's probability of its own greedy "
               "token; per bucket: share of positions / the draft's agreement there / share of the draft's misses.\n",
               "| dataset (positions) | draft | agreement | " + " | ".join(spans) + " |",
               "|---|---|---|" + "---|" * len(spans)]
        for ds, d in data["datasets"].items():
            for draft, row in d["drafts"].items():
                cells = [f"{b['share']:.0%} / {b['agreement']:.3f} / {b['share_of_misses']:.0%}" for b in row["buckets"]]
                out.append(f"| {ds} ({d['positions']}) | {labels.get(draft, draft)} | {row['agreement']:.3f} | "
                           + " | ".join(cells) + " |")
        return "\n".join(out) + "\n"

    return render


def fr_coverage(name: str) -> Callable[[], str]:
    """benchmarks/draft_cost.py: the share of held-out prompts' tokens a frequency-ranked head of its --fr-size keeps,
    against keeping the lowest ids."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        out = [f"`{name}`: tokens of the prompts kept by a head of {data['settings']['fr_size']} ids.\n",
               "| text | tokens | the most frequent ids | the lowest ids |", "|---|---|---|---|"]
        for text, row in data["fr_head_coverage"].items():
            out.append(f"| {text} | {row['tokens']} | {row['frequency_ranked']:.2%} | {row['lowest_ids']:.2%} |")
        return "\n".join(out) + "\n"

    return render


def lookup_coverage(name: str) -> Callable[[], str]:
    """benchmarks/lookup_coverage.py: per dataset and match length, prompt lookup's coverage / right / precision."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        ngrams = [str(n) for n in data["ngrams"]]
        out = [f"`{name}`: along {data['run']}'s target-only outputs; per match length n: coverage (positions with a "
               "proposal) / right (positions whose proposal is the target's token) / precision.\n",
               "| dataset (examples, positions) | " + " | ".join(f"n = {n}" for n in ngrams) + " |",
               "|---|" + "---|" * len(ngrams)]
        for ds, d in data["datasets"].items():
            cells = [f"{r['coverage']:.1%} / {r['right']:.1%} / {r['precision']:.1%}" for r in (d["ngrams"][n] for n in ngrams)]
            out.append(f"| {ds} ({d['examples']}, {d['positions']}) | " + " | ".join(cells) + " |")
        return "\n".join(out) + "\n"

    return render


def round_profile(names: list[str]) -> Callable[[], str]:
    """benchmarks/round_profile.py records side by side: each named step's ms per round, and the host time per
    CUDA graph launch from the profiler."""

    def render() -> str:
        data = {name: json.loads((RESULTS / name).read_text(encoding="utf-8")) for name in names}
        methods = [d["settings"]["method"] for d in data.values()]
        out = ["| step (synchronized) | " + " | ".join(f"{m}: ms per round" for m in methods) + " |",
               "|---|" + "---|" * len(methods)]
        for part in next(iter(data.values()))["parts"]:
            cells = [f"{d['parts'][part]['ms_per_round']:.2f} ({d['parts'][part]['calls']} calls)" for d in data.values()]
            out.append(f"| {part.strip()} | " + " | ".join(cells) + " |")
        launches = []
        for name, d in data.items():
            op = next((o for o in d["profiled"]["top_ops_by_host_time"] if o["op"] == "cudaGraphLaunch"), None)
            if op:
                launches.append(f"{d['settings']['method']} {op['cpu_ms'] / op['calls']:.2f} ms ({op['calls']} launches)")
        first = next(iter(data.values()))
        head = (f"{', '.join(f'`{n}`' for n in names)}: {first['rounds']} rounds each, {first['settings']['context']}-token "
                f"prompt, random weights; the runner's rows count both models' calls.\n")
        tail = "\nHost time per CUDA graph launch (profiler, `cudaGraphLaunch`): " + "; ".join(launches) + "." if launches else ""
        return head + "\n" + "\n".join(out) + "\n" + tail + ("\n" if tail else "")

    return render


def cuda_tests(name: str) -> Callable[[], str]:
    """A ``pytest -rA tests/test_cuda.py`` log from a GPU machine: passed and failed tests, by test function."""

    def render() -> str:
        lines = (RESULTS / name).read_text(encoding="utf-8").splitlines()
        counts: dict[str, dict[str, int]] = {}
        for line in lines:
            verdict, _, test = line.partition(" ")
            if verdict in ("PASSED", "FAILED", "ERROR"):
                function = test.split("::")[-1].split("[")[0]
                counts.setdefault(function, {"PASSED": 0, "FAILED": 0, "ERROR": 0})[verdict] += 1
        platform = next((line for line in lines if line.startswith("platform ")), lines[0])
        out = [f"`{name}` ({platform}):\n", "| test | passed | failed |", "|---|---|---|"]
        for function, c in counts.items():
            out.append(f"| `{function}` | {c['PASSED']} | {c['FAILED'] + c['ERROR']} |")
        return "\n".join(out) + "\n"

    return render


def draft_step(name: str) -> Callable[[], str]:
    """benchmarks/draft_cost.py: each model's step (one token over a cache of its ``--context``) the way the engine
    runs it and the other ways it was timed, with c and where the time goes."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st = data["settings"]
        where = f"{st['threads']} threads"
        if st.get("device", "cpu") != "cpu":
            where = (f"on {st['device']} ({data['environment']['torch']}), synchronized after each timed block"
                     + (", random weights (the pair's configs: timings only)" if st.get("random_weights") else ""))
        out = [f"`{name}`: {st['context']} tokens of context, {st['steps']} steps per draft in {st['rounds']} "
               f"interleaved rounds (the target a third as many), {where}; median over rounds "
               f"(c per round: {c_range(data['per_step'])}).\n",
               "| model | forward | step ms | c | c vs verify-8 | linear ms | head ms | rest ms | weights MB |",
               "|---|---|---|---|---|---|---|---|---|"]
        # Records before models/graphed.py: the draft's lean step on a CPU, transformers' forward (packed) on a GPU.
        engine = data.get("engine_forward") or {
            "target": "hf-packed", "draft": "lean" if st.get("device", "cpu") == "cpu" else "hf-packed"}
        for label, row in data["per_step"].items():
            model, _, forward = label.partition(" [")
            forward = forward.rstrip("]") or f"{engine['draft' if model.startswith('draft') else 'target']} (engine)"
            b = row.get("breakdown_ms", {})
            out.append(f"| {model} | {forward} | {row['step_ms']:.1f} | {_cell(row.get('c'))} | {_cell(row.get('c_verify'))} | "
                       f"{_cell(b.get('linear'), '{:.1f}')} | {_cell(b.get('head'), '{:.1f}')} | {_cell(b.get('rest'), '{:.1f}')} | "
                       f"{_cell(row.get('weights_MB'), '{:.0f}')} |")
        timing = data.get("engine_timing")
        if timing:
            out += [f"\nIn the engine (random weights: timings only, no acceptance): `{timing['method']}` greedy, "
                    f"{timing['max_new_tokens']} tokens from a {timing['prompt_tokens']}-token prompt, median of "
                    f"{timing['repeats']} runs after a warm-up.\n",
                    "| run | tokens/s | draft ms per drafted token | target ms per round | c in the engine |",
                    "|---|---|---|---|---|"]
            res = timing["results"]
            for label, row in res.items():
                out.append(f"| {label} | {row['tokens_per_s']:.1f} | {_cell(row.get('draft_ms_per_token'), '{:.2f}')} | "
                           f"{_cell(row.get('target_ms_per_round'), '{:.2f}')} | {_cell(row.get('c_in_engine'))} |")
            ratios = [f"{ours} ÷ {theirs}: {res[ours]['tokens_per_s'] / res[theirs]['tokens_per_s']:.2f}×"
                      for ours, theirs in [("target only (autoregressive)", "transformers generate (target only)")]
                      + [(k, "transformers assisted K=6 + " + k.split(" + ")[1]) for k in res if k.startswith("fixed:6")]
                      if ours in res and theirs in res]
            if ratios:
                out.append("\nSame models, same process: " + "; ".join(ratios) + ".")
        return "\n".join(out) + "\n"

    return render


def llama_cpp_compare(name: str) -> Callable[[], str]:
    """benchmarks/llama_cpp_compare.py: target-only decode of llama.cpp and specadapt's targets from the same GGUF
    file, per engine: ms per token after the first (median over generations, and per repeat), tokens/s, its ratio to
    llama.cpp's, prefill tokens/s, and how many greedy tokens equal the bf16 target's before the first difference."""
    weights = {"llama.cpp": "the GGUF's Q4_K_M blocks", "bf16": "those values in bf16",
               "int8": "bf16 → int8, a scale per row", "int4": "bf16 → int4, a scale and zero per 32"}

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st, summary = data["settings"], data["summary"]
        ref = summary.get("llama.cpp", {}).get("decode_tokens_per_s")
        out = [f"`{name}`: `{st['gguf']}`, {_machine(data['machine'])}, {st['threads']} threads, llama-cpp-python "
               f"{data['llama_cpp_python']}; {st['n']} {st['split']} prompts per dataset ({st['datasets']}), "
               f"{st['new_tokens']} new tokens, {st['repeats']} repeats.\n",
               "| engine | weights | decode ms per token (per repeat) | tokens/s | ÷ llama.cpp | prefill tokens/s | "
               "greedy tokens equal to bf16's before the first difference (median of generations) |",
               "|---|---|---|---|---|---|---|"]
        for engine, row in summary.items():
            per = ", ".join(f"{v:.1f}" for v in row["decode_ms_per_repeat"].values())
            same = row["tokens_equal_to_bf16_before_first_difference"]
            out.append(f"| {'llama.cpp' if engine == 'llama.cpp' else f'specadapt {engine}'} | {weights[engine]} | "
                       f"{row['decode_ms_per_token']:.1f} ({per}) | {row['decode_tokens_per_s']:.2f} | "
                       f"{_cell(row['decode_tokens_per_s'] / ref if ref else None, '{:.2f}')} | "
                       f"{row['prefill_tokens_per_s']:.0f} | "
                       + (f"{median(same):.0f} of {st['new_tokens']} |" if same else "– (no bf16 run) |"))
        return "\n".join(out) + "\n"

    return render


def prefill_cost(name: str) -> Callable[[], str]:
    """benchmarks/prefill_cost.py: feeding one prompt to each model, and each draft's time over the target's."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        int4 = (f"unpacks its weights from {data['dequantize_rows']} rows on" if "dequantize_rows" in data  # earlier code
                else f"multiplies by its kept dequantized weights from {data['wide_rows']} rows on")
        out = [f"`{name}`: one prompt into an empty cache, median of {data['settings']['rounds']} interleaved rounds, "
               f"{data['threads']} threads; the int4 draft {int4}.\n",
               "| prompt tokens | target bf16 ms | draft bf16 ms | draft int4 ms | int4 draft ÷ target | bf16 draft ÷ target |",
               "|---|---|---|---|---|---|"]
        for r in data["rows"]:
            out.append(f"| {r['tokens']} | {r['target bf16 ms']:.1f} | {r['draft bf16 ms']:.1f} | {r['draft int4 ms']:.1f} | "
                       f"{r['draft int4 / target']:.2f} | {r['draft bf16 / target']:.2f} |")
        return "\n".join(out) + "\n"

    return render


def _machine(m: dict) -> str:
    """A benchmark record's ``machine``: 'AMD EPYC (AVX2, native bf16: no)'."""
    return f"{m['cpu']} ({m['cpu_capability']}, native bf16: {'yes' if m['native_bf16'] else 'no'})"


def width_cost(name: str) -> Callable[[], str]:
    """benchmarks/width_cost.py: a forward over w tokens (and a prompt) against a one-token step, per model and
    dtype, on the machine the record names."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st, m = data["settings"], data["machine"]
        widths = [w for w in next(iter(data["rows"].values()))["ms"] if w != "prefill"]
        out = [f"`{name}`: {_machine(m)}, {st['threads']} threads; {st['context']} tokens of context, prefill of {st['prompt']} tokens; median "
               f"of {st['rounds']} interleaved rounds. ms, and in brackets ÷ the same model's one-token step.\n",
               "| model | " + " | ".join(f"{w} token{'s' * (w != '1')}" for w in widths) + " | prefill |",
               "|---|" + "---|" * (len(widths) + 1)]
        for label, row in data["rows"].items():
            cells = [f"{row['ms'][w]:.0f} ({row['ratio_to_one'][w]:.2f})" for w in [*widths, "prefill"]]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(out) + "\n"

    return render


def batch_draft_step(*names: str) -> Callable[[], str]:
    """benchmarks/batch_draft_step.py: a whole draft's step by batch size, per quantization (and the int4 draft
    with its kernel at every batch size), with c against the target's step at the same batch size."""

    def render() -> str:
        out = []
        for name in names:
            data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
            st, rows = data["settings"], data["rows"]
            batches = sorted({r["batch"] for r in rows})
            out += [f"`{name}`: {_machine(data['machine'])}, {st['threads']} threads; {st['context']} tokens of context "
                    f"per row; median of {st['rounds']} interleaved rounds; ms per step (÷ the bf16 target's at the same B); "
                    f"the int4 {st.get('model', 'draft')} as the engine ran it then multiplied by its kept bf16 weights "
                    f"from {st['dequantize_rows']} rows on.\n",
                    "| model | " + " | ".join(f"B = {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
            for model in dict.fromkeys(r["model"] for r in rows):
                cells = {r["batch"]: f"{r['step_ms']:.1f}" + (f" ({r['c']:.2f})" if "c" in r else "")
                         for r in rows if r["model"] == model}
                out.append(f"| {model} | " + " | ".join(cells[b] for b in batches) + " |")
            out.append("")
        return "\n".join(out)

    return render


def fused_step(name: str) -> Callable[[], str]:
    """benchmarks/fused_step.py: the int4 draft's lean step with fused q/k/v and gate/up projections against the
    same step calling the parts, alternating per round, by block shape; c against the target's step."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st = data["settings"]
        out = [f"`{name}`: {_machine(data['environment'])}, {st['threads']} threads; {st['context']} tokens of context "
               f"per row; {st['rounds']} rounds of {st['steps']} steps each way, alternating; median over rounds (the "
               "ratio's range over rounds in brackets); c against the target's step over the same block.\n",
               "| rows × tokens | fused ms | parts ms | fused ÷ parts | c fused | c parts | max logit difference |",
               "|---|---|---|---|---|---|---|"]
        for row in data["results"].values():
            lo, hi = row["ratio_range"]
            out.append(f"| {row['rows']} × {row['tokens']} | {row['fused_ms']:.2f} | {row['parts_ms']:.2f} | "
                       f"{row['ratio']:.3f} ({lo:.3f}–{hi:.3f}) | {row['c_fused']:.3f} | {row['c_parts']:.3f} | "
                       f"{row['max_logit_difference']:g} |")
        return "\n".join(out) + "\n"

    return render


def lean_vs_packed(*names: str) -> Callable[[], str]:
    """benchmarks/draft_cost.py runs: each draft's lean step (the engine's) against the transformers forward with
    packed attention in the same rounds, per file, with the target's one-token step there (for c)."""

    def render() -> str:
        out = ["| file | draft | lean step ms | rest ms | hf-packed ms | lean ÷ hf-packed | target 1 token ms | c |",
               "|---|---|---|---|---|---|---|---|"]
        for name in names:
            steps = json.loads((RESULTS / name).read_text(encoding="utf-8"))["per_step"]
            for label, row in steps.items():
                packed = steps.get(f"{label} [hf-packed]")
                if not label.startswith("draft") or "[" in label or packed is None:
                    continue
                out.append(f"| `{name}` | {label.removeprefix('draft ')} | {row['step_ms']:.1f} | "
                           f"{row['breakdown_ms']['rest']:.1f} | {packed['step_ms']:.1f} | "
                           f"{row['step_ms'] / packed['step_ms']:.3f} | {steps['target 1 token']['step_ms']:.1f} | "
                           f"{row['c']:.3f} |")
        return "\n".join(out) + "\n"

    return render


def top_p_cost(name: str) -> Callable[[], str]:
    """benchmarks/top_p_cost.py: sampled decoding with top-p by a full sort against the nucleus looked for among the
    most likely tokens first, per sampling setting and method (summary recomputed from the records)."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st, m = data["settings"], data["machine"]
        sets = " / ".join(f"≤ {k}" for k in data["candidates"]) + " / more"
        out = [f"`{name}`: {st['n']} {st['split']} prompts per dataset from its prompt {int(st['skip']) + 1} "
               f"({st['datasets']}), {st['max_new_tokens']} new tokens, {st['repeats']} repeat(s), the variants "
               f"interleaved; {_machine(m)}, {m['torch_threads']} threads. \"nucleus\": time choosing the tokens top-p "
               f"keeps, per row of logits and as a share of the generations' time; \"found\": rows whose nucleus "
               f"held {sets} tokens.\n",
               "| sampling | method | tok/s, full sort | tok/s, candidates | ÷ (per repeat) | nucleus ms per row | "
               "nucleus share of time | found | identical outputs |", "|---|---|---|---|---|---|---|---|---|"]
        for row in _benchmark_module("top_p_cost").summarize(data["records"]):
            tps, ms, share = row["tokens_per_s"], row["nucleus_ms_per_row"], row["nucleus_share_of_time"]
            per = ", ".join(f"{x:.3f}" for x in row["ratio_per_repeat"])
            out.append(f"| {row['sampling']} | `{row['method']}` | {tps['sort']:.2f} | {tps['candidates']:.2f} | "
                       f"{row['ratio']:.3f} ({per}) | {ms['sort']:.2f} → {ms['candidates']:.2f} | "
                       f"{share['sort']:.1%} → {share['candidates']:.1%} | {' / '.join(map(str, row['found']))} | "
                       f"{row['identical']}/{row['generations']} |")
        return "\n".join(out) + "\n"

    return render


def _pair_cells(row: dict) -> str:
    """The ratio columns of a row of ``one_row_cost.summarize``: overall (per repeat), per pair, identical outputs."""
    per, pairs = ", ".join(f"{x:.3f}" for x in row["ratio_per_repeat"]), row["ratio_per_pair"]
    return (f"{row['ratio']:.3f} ({per}) | {min(pairs):.3f}–{max(pairs):.3f}, {sum(x > 1 for x in pairs)} of "
            f"{len(pairs)} | {row['identical']}/{row['generations']}")


def one_row_cost(name: str) -> Callable[[], str]:
    """benchmarks/one_row_cost.py: one-token forward passes and greedy generations with torch's one-row bf16 product
    against the row multiplied as two (summary recomputed from the records)."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st, m = data["settings"], data["machine"]
        out = [f"`{name}`: {_machine(m)}, {m['torch_threads']} threads; the package's own rule in this process "
               f"(a timing probe in the first two runs): pair {'yes' if m['paired_bf16_rows'] else 'no'} (both "
               "variants measured regardless). Forward "
               f"passes over {st['context']} cached tokens, median of {st['passes']} per cell:\n",
               "| model | layers paired | one token, one row (ms) | one token, paired (ms) | paired ÷ one row | "
               "two tokens (ms) |", "|---|---|---|---|---|---|"]
        for model, cells in data["forwards"].items():
            out.append(f"| {model} | {cells.get('paired_layers', '–')} | {1e3 * cells['one_1']:.1f} | "
                       f"{1e3 * cells['paired_1']:.1f} | {cells['paired_1'] / cells['one_1']:.3f} | "
                       f"{1e3 * cells['one_2']:.1f} |")
        out += ["", f"Greedy generations: {st['n']} {st['split']} prompts per dataset from its prompt "
                f"{int(st['skip']) + 1} ({st['datasets']}), {st['max_new_tokens']} new tokens, {st['repeats']} "
                "repeat(s), the variants interleaved.\n",
                "| method | tok/s, one row | tok/s, paired | ÷ (per repeat) | ÷ per pair: lowest–highest, pairs above 1 | "
                "identical outputs |", "|---|---|---|---|---|---|"]
        summary = _benchmark_module("one_row_cost").summarize(data["records"])
        for row in summary:
            out.append(f"| `{row['method']}` | {row['tokens_per_s']['one']:.2f} | {row['tokens_per_s']['paired']:.2f} | "
                       f"{_pair_cells(row)} |")
        base = next((r for r in summary if r["method"] == "autoregressive"), None)
        for row in summary if base is not None else ():
            if row is not base:
                speedup = {v: row["tokens_per_s"][v] / base["tokens_per_s"][v] for v in ("one", "paired")}
                out.append(f"\n`{row['method']}` ÷ target-only, both in the same variant: {speedup['one']:.2f}× with "
                           f"one-row products, {speedup['paired']:.2f}× paired.")
        return "\n".join(out) + "\n"

    return render


def one_row_layers(name: str) -> Callable[[], str]:
    """benchmarks/one_row_cost.py --layers: each kind of linear layer, one bf16 row against the row paired, and
    whether the shipped rule pairs it."""

    def render() -> str:
        from specadapt.models.hardware import PAIRED_MIN_ELEMENTS, PAIRED_MIN_IN_FEATURES

        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        m = data["machine"]
        out = [f"`{name}`: {_machine(m)}, {m['torch_threads']} threads; all of a model's layers of a kind in a row, "
               f"one random bf16 row, median of {data['settings']['passes']} sweeps per variant, alternating.\n",
               "| model | layer | shape (out × in) | layers | one row (ms) | paired (ms) | paired ÷ one row | paired as shipped |",
               "|---|---|---|---|---|---|---|---|"]
        for model, kinds in data["layer_kinds"].items():
            for kind, cell in kinds.items():
                rows, cols = cell["shape"]
                ships = cols >= PAIRED_MIN_IN_FEATURES and rows * cols >= PAIRED_MIN_ELEMENTS
                out.append(f"| {model} | {kind} | {rows} × {cols} | {cell['layers']} | {1e3 * cell['one']:.1f} | "
                           f"{1e3 * cell['paired']:.1f} | {cell['paired'] / cell['one']:.3f} | {'yes' if ships else 'no'} |")
        return "\n".join(out) + "\n"

    return render


def target_only_check(name: str) -> Callable[[], str]:
    """benchmarks/target_only_check.py: specadapt's target-only decoding against transformers' greedy generate."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st, m, variants = data["settings"], data["machine"], _benchmark_module("target_only_check").VARIANTS
        (row,) = _benchmark_module("one_row_cost").summarize(data["records"], variants)
        return "\n".join([
            f"`{name}`: {_machine(m)}, {m['torch_threads']} threads, one-token products paired: "
            f"{'yes' if m['paired_bf16_rows'] else 'no'}; {st['n']} {st['split']} prompts per dataset from its prompt "
            f"{int(st['skip']) + 1} ({st['datasets']}), {st['max_new_tokens']} new tokens, {st['repeats']} repeat(s), "
            "greedy, the variants interleaved.\n",
            "| tok/s, transformers' `generate` | tok/s, specadapt `autoregressive` | ÷ (per repeat) | "
            "÷ per pair: lowest–highest, pairs above 1 | identical outputs |", "|---|---|---|---|---|",
            f"| {row['tokens_per_s'][variants[0]]:.2f} | {row['tokens_per_s'][variants[1]]:.2f} | {_pair_cells(row)} |"
        ]) + "\n"

    return render


def batch_spec(name: str) -> Callable[[], str]:
    """benchmarks/batch_spec.py: B prompts decoded as one batch by the engine, each method against target-only at the
    same batch size (summary recomputed from the records)."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st, m = data["settings"], data["machine"]
        rows = _benchmark_module("batch_spec").summarize(data["records"], st["methods"].split(","))
        out = [f"`{name}`: {_machine(m)}, {m['torch_threads']} threads; {st['dataset']} {st['split']} prompts from its "
               f"prompt {int(st['skip']) + 1}, chat, greedy, {st['max_new_tokens']} new tokens each, decoded B at a "
               f"time as one batch, {st['repeats']} repeat(s), methods in rotated order. Steady rounds: after the "
               "first, all B rows running.\n",
               "| B | method | tok/s, whole batch | ÷ target-only (per repeat) | tok/s, steady rounds | "
               "÷ target-only (per repeat) | draft steps per steady round | tokens per row and steady round | "
               "s per steady round | acceptance | identical to target-only |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["method"] == "autoregressive":
                ratios = "– | "
                steady = "– |"
            else:
                ratios = f"{r['ratio']:.3f} ({', '.join(f'{x:.3f}' for x in r['ratio_per_repeat'])}) | "
                steady = f"{r['steady_ratio']:.3f} ({', '.join(f'{x:.3f}' for x in r['steady_ratio_per_repeat'])}) |"
            acceptance = f"{100 * r['acceptance']:.1f}%" if r["acceptance"] is not None else "–"
            if r["steady_rounds"]:
                rounds = (f"{r['steady_tokens_per_s']:.2f} | {steady} {r['steps_per_round']:.2f} | "
                          f"{r['tokens_per_row_round']:.2f} | {r['seconds_per_round']:.3f}")
            else:  # one prompt through generate: no load rule, so no round was logged
                rounds = "– | – | – | – | –"
            out.append(f"| {r['batch']} | `{r['method']}` | {r['tokens_per_s']:.2f} | {ratios}{rounds} | {acceptance} | "
                       f"{r['identical']}/{r['outputs']} |")
        return "\n".join(out) + "\n"

    return render


def batch_spec_prefill(name: str, batch: int) -> Callable[[], str]:
    """Where a batch_spec.py run's batches of ``batch`` prompts spent their time, per method and repeat: the whole
    batch, its rounds, and the first two rounds split into prefill (prompts fed apart), draft and target seconds
    (a prompt fed in the round counts as that model's time)."""

    def render() -> str:
        records = json.loads((RESULTS / name).read_text(encoding="utf-8"))["records"]
        lines = ["| method | repeat | wall s | rounds | round 1: prefill / draft / target s | "
                 "round 2: prefill / draft / target s | draft s, all rounds | acceptance |", "|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in records if r["batch"] == batch), key=lambda r: (r["method"], r["repeat"])):
            first = [f"{x['prefill_s']:.2f} / {x['draft_s']:.2f} / {x['target_s']:.2f}" for x in r["rounds"][:2]]
            drafted = sum(x["drafted"] for x in r["rounds"])
            accepted = f"{sum(x['accepted'] for x in r['rounds']) / drafted:.1%}" if drafted else "–"
            lines.append(f"| `{r['method']}` | {r['repeat']} | {r['wall_s']:.2f} | {len(r['rounds'])} | {first[0]} | "
                         f"{first[1]} | {sum(x['draft_s'] for x in r['rounds']):.2f} | {accepted} |")
        return "\n".join(lines) + "\n"

    return render


def draft_context(name: str) -> Callable[[], str]:
    """benchmarks/draft_context.py: teacher-forced agreement of the draft with the target's greedy answers when the
    draft sees only the last W prompt tokens, per dataset (answer-token weighted)."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        st = data["settings"]
        windows = [int(w) for w in st["windows"].split(",")]
        out = [f"`{name}`: {st['n']} {st['split']} prompts per dataset, the target's greedy answers of up to "
               f"{st['max_new_tokens']} tokens; share of answer tokens the draft's argmax predicts.\n",
               "| dataset | mean prompt tokens | " + " | ".join("whole prompt" if not w else f"last {w}" for w in windows) + " |",
               "|---|---|" + "---|" * len(windows)]
        for dataset, row in data["summary"].items():
            out.append(f"| {dataset} | {row['mean_prompt_tokens']:.0f} | "
                       + " | ".join(f"{row[f'agree_{w}']:.3f}" for w in windows) + " |")
        return "\n".join(out) + "\n"

    return render


def int4_rows(name: str) -> Callable[[], str]:
    """benchmarks/int4_rows.py: an int4 layer by rows: torch's kernel, the layer itself, a bf16 layer."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        rows = sorted({r["rows"] for r in data["results"]})
        out = [f"`{name}`: {data['settings']['threads']} threads, mean ms; int4 kernel / the int4 layer (its kept "
               f"dequantized weight from {data['settings']['wide_rows']} rows on) / a bf16 layer.\n",
               "| in × out | " + " | ".join(f"{r} row{'s' * (r > 1)}" for r in rows) + " |",
               "|---|" + "---|" * len(rows)]
        for k, n in dict.fromkeys((r["in"], r["out"]) for r in data["results"]):
            cells = {r["rows"]: f"{r['int4_kernel_ms']:.2f} / {r['int4_layer_ms']:.2f} / {r['bf16_ms']:.2f}"
                     for r in data["results"] if (r["in"], r["out"]) == (k, n)}
            out.append(f"| {k} × {n} | " + " | ".join(cells[r] for r in rows) + " |")
        return "\n".join(out) + "\n"

    return render


def bf16_rows(name: str) -> Callable[[], str]:
    """benchmarks/bf16_rows.py: a bf16 linear layer by rows, as torch runs it and in float32 from a weight copy."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        m, rows = data["machine"], sorted({r["rows"] for r in data["results"]})
        out = [f"`{name}`: {_machine(m)}, {m['torch_threads']} threads; best of {data['settings']['repeats']} means. ms, bf16 / float32 "
               f"(a weight copy, then a float32 product); float32 from {data['settings']['wide_rows']} rows on.\n",
               "| in × out | " + " | ".join(f"{r} row{'s' * (r > 1)}" for r in rows) + " |",
               "|---|" + "---|" * len(rows)]
        shapes = dict.fromkeys((r["in"], r["out"]) for r in data["results"])
        for k, n in shapes:
            cells = {r["rows"]: f"{r['bf16_ms']:.2f} / {r['float32_ms']:.2f}" for r in data["results"]
                     if (r["in"], r["out"]) == (k, n)}
            out.append(f"| {k} × {n} | " + " | ".join(cells[r] for r in rows) + " |")
        return "\n".join(out) + "\n"

    return render


def float32_rows(name: str) -> Callable[[], str]:
    """benchmarks/float32_rows.py: float32 products of a few rows in torch's layout and the transposed one, and the
    int4 kernel with float32 and bf16 activations."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        m = data["machine"]

        def table(results: list[dict], cell: Callable[[dict], str]) -> list[str]:
            rows = sorted({r["rows"] for r in results})
            lines = ["| in × out | " + " | ".join(f"{r} row{'s' * (r > 1)}" for r in rows) + " |", "|---|" + "---|" * len(rows)]
            for k, n in dict.fromkeys((r["in"], r["out"]) for r in results):
                cells = {r["rows"]: cell(r) for r in results if (r["in"], r["out"]) == (k, n)}
                lines.append(f"| {k} × {n} | " + " | ".join(cells[r] for r in rows) + " |")
            return lines

        out = [f"`{name}`: {_machine(m)}, {m['torch_threads']} threads; best of {data['settings']['repeats']} means, ms.\n",
               "Float32, `F.linear(x, W)` / `W @ x.T`:\n",
               *table(data["linear"], lambda r: f"{r['linear_ms']:.2f} / {r['transposed_ms']:.2f}"),
               "\nInt4 kernel (group 32), float32 / bf16 activations (and the float32 layer, `F.linear`):\n",
               *table(data["int4"], lambda r: f"{r['int4_float32_ms']:.2f} / {r['int4_bf16_ms']:.2f} ({r['float32_linear_ms']:.2f})")]
        return "\n".join(out) + "\n"

    return render


def serve_load(*names: str, capped: bool = False) -> Callable[[], str]:
    """benchmarks/serve_load.py runs: per file, throughput, TTFT and TPOT per method and concurrency (mean over
    repeats) and each method's throughput ÷ autoregressive's, pooled over repeats and per repeat; ``capped``: also
    the share of rounds whose draft length the load rule bounded (a cap above 0), and per repeat the rounds, the
    acceptance and the tokens per round."""

    def render() -> str:
        out = []
        for name in names:
            data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
            st, rows = data["settings"], data["rows"]
            out.append(f"`{name}`: {st.get('prompts', 'prompts not recorded')}; {st['requests_per_client']} requests per "
                       f"client, {st['max_tokens']} tokens, draft {st.get('draft_quant', 'none')}, load rule "
                       f"`{st.get('spec_load', 'static')}`, {st.get('repeats', 1)} repeat(s)"
                       + (", each on servers started afresh" if st.get("fresh_servers") else "") + ".\n")
            logged = all("caps_by_batch" in r for r in rows)  # newer runs record the load rule's caps
            out.append("| method | clients | tok/s (per repeat) | TTFT p50 s | TPOT p50 s | ÷ autoregressive (per repeat) |"
                       + (" drafting rounds |" if logged else "")
                       + (" of them capped | rounds (per repeat) | acceptance / tokens per round (per repeat) |"
                          if logged and capped else ""))
            out.append("|---|---|---|---|---|---|" + ("---|" if logged else "") + ("---|---|---|" if logged and capped else ""))
            ratios = data.get("ratios", {})
            cells = dict.fromkeys((r["method"], r["concurrency"]) for r in rows)
            for method, c in sorted(cells, key=lambda mc: (mc[1], mc[0] != "autoregressive", mc[0])):
                mine = [r for r in rows if r["method"] == method and r["concurrency"] == c]
                alone = method.split("/")[0] == "autoregressive"  # a target-only server (/noprefix and all)
                tps = ", ".join(f"{r['output_tokens_per_s']:.2f}" for r in mine)
                ttft = mean(r["ttft_p50_s"] for r in mine if r["ttft_p50_s"] is not None)
                tpot = mean(r["tpot_p50_s"] for r in mine if r["tpot_p50_s"] is not None)
                ratio = ratios.get(method, {}).get(str(c))
                rtext = "–" if ratio is None else f"{ratio['ratio']:.2f} ({', '.join(f'{v:.2f}' for v in ratio['per_repeat'])})"
                line = f"| `{method}` | {c} | {tps} | {ttft:.2f} | {tpot:.3f} | {rtext} |"
                if logged:
                    caps = [counts for r in mine for counts in r["caps_by_batch"].values()]
                    total = sum(sum(c.values()) for c in caps)
                    drafting = total - sum(c.get("0", 0) for c in caps)
                    line += " –" if alone or not total else f" {drafting / total:.0%} of {total}"
                    line += " |"
                    if capped:
                        bounded = sum(n for c in caps for cap, n in c.items() if cap not in ("0", "none"))
                        line += " – |" if alone or not drafting else f" {bounded / drafting:.0%} |"
                        line += f" {', '.join(str(r['rounds']) for r in mine)} |"
                        line += " – |" if alone else " " + ", ".join(
                            "–" if r.get("acceptance_rate") is None  # a repeat without a drafting round
                            else f"{r['acceptance_rate']:.0%} / {r['mean_accepted_length']:.2f}" for r in mine) + " |"
                out.append(line)
            out.append("")
        return "\n".join(out)

    return render


def serve_load_vs(name: str, pairs: list[tuple[str, str]]) -> Callable[[], str]:
    """A serve_load.py run's throughput of one server ÷ another's (not only ÷ autoregressive's), per client count:
    pooled over repeats (ratio of the summed rates) and per repeat."""

    def render() -> str:
        rows = json.loads((RESULTS / name).read_text(encoding="utf-8"))["rows"]
        ratios = _benchmark_module("serve_load").throughput_ratios
        lines = ["| server | ÷ server | clients | throughput ratio (per repeat) |", "|---|---|---|---|"]
        for num, den in pairs:
            for c, cell in ratios(rows, [num], against=den)[num].items():
                lines.append(f"| `{num}` | `{den}` | {c} | {cell['ratio']:.2f} "
                             f"({', '.join(f'{v:.2f}' for v in cell['per_repeat'])}) |")
        return "\n".join(lines) + "\n"

    return render


def serve_load_targets(name: str, humaneval: str | None = None) -> Callable[[], str]:
    """The server issue's targets from a serve_load.py run and (if given) its HumanEval one-client run: met (even the
    lowest repeat reaches it), met within spread (the pooled value does, not every repeat), missed within spread
    (the pooled value does not, some repeat does) or missed."""

    def verdict(pooled: float, repeats: list[float], target: float) -> str:
        if pooled < target:
            return "missed" if max(repeats) < target else "missed within spread"
        return "met" if min(repeats) >= target else "met within spread"

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        rows, ratios = data["rows"], data["ratios"]
        lines = ["| target | value (per repeat) | verdict |", "|---|---|---|"]

        def rate(c: int, repeat: int) -> float:
            return next(r["output_tokens_per_s"] for r in rows
                        if r["method"] == "autoregressive" and r["concurrency"] == c and r.get("repeat", 0) == repeat)

        repeats = sorted({r.get("repeat", 0) for r in rows})
        scaling = [rate(4, k) / rate(1, k) for k in repeats]
        pooled = sum(rate(4, k) for k in repeats) / sum(rate(1, k) for k in repeats)
        lines.append(f"| target-only, 4 clients ÷ 1 client ≥ 2.5 | {pooled:.2f} ({', '.join(f'{v:.2f}' for v in scaling)}) "
                     f"| {verdict(pooled, scaling, 2.5)} |")
        for method, by_c in ratios.items():
            if method.split("/")[0] == "autoregressive":  # target-only served another way (/noprefix): no target
                continue
            for c, cell in by_c.items():
                lines.append(f"| `{method}` ÷ target-only at {c} client(s) ≥ 1 | {cell['ratio']:.2f} "
                             f"({', '.join(f'{v:.2f}' for v in cell['per_repeat'])}) | {verdict(cell['ratio'], cell['per_repeat'], 1.0)} |")
        he = json.loads((RESULTS / humaneval).read_text(encoding="utf-8"))["ratios"] if humaneval else {}
        for method, by_c in he.items():
            cell = by_c["1"]
            lines.append(f"| `{method}` ÷ target-only, HumanEval, 1 client ≥ 1.5 | {cell['ratio']:.2f} "
                         f"({', '.join(f'{v:.2f}' for v in cell['per_repeat'])}) | {verdict(cell['ratio'], cell['per_repeat'], 1.5)} |")
        return "\n".join(lines) + "\n"

    render.source = lambda: RESULTS / name  # for targets_index
    return render


def serve_load_time(name: str, clients: int, min_batch: int = 6) -> Callable[[], str]:
    """Where a serve_load.py run's time went at ``clients`` clients, from the rounds it logged: seconds in the
    draft, the target and prefill (prompts joining a running batch, both models), and tokens per second of the
    rounds without prefill at batch sizes of ``min_batch`` or more, drafting vs target-only."""

    def render() -> str:
        rows = [r for r in json.loads((RESULTS / name).read_text(encoding="utf-8"))["rows"] if r["concurrency"] == clients]
        lines = [f"| method | repeat | draft s | target s | prefill s | wall s | tok/s of rounds at batch ≥ {min_batch}: "
                 "drafting (rounds) | target-only (rounds) |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r.get("repeat", 0), r["method"])):
            log = [x for x in r["round_log"] if x]
            draft, target, prefill = (sum(x[i] for x in log) for i in (4, 5, 6))

            def rate(sel):  # rows, K, draft width, target width, draft s, target s, prefill s, accepted
                chosen = [x for x in log if x[0] >= min_batch and x[6] == 0 and sel(x)]
                seconds = sum(x[4] + x[5] for x in chosen)
                return "–" if not seconds else f"{sum(x[0] + x[7] for x in chosen) / seconds:.1f} ({len(chosen)})"

            lines.append(f"| `{r['method']}` | {r.get('repeat', 0)} | {draft:.1f} | {target:.1f} | {prefill:.1f} | "
                         f"{r['wall_s']:.1f} | {rate(lambda x: x[1] > 0)} | {rate(lambda x: x[1] == 0)} |")
        return "\n".join(lines) + "\n"

    return render


def serve_load_draft_steps(name: str, batch: int) -> Callable[[], str]:
    """What the load rule of a serve_load.py run measured of the draft at ``batch`` rows, in its cells of as many
    clients, per server and repeat: a round's first forward and its later steps apart, and the average step."""

    def render() -> str:
        rows = [r for r in json.loads((RESULTS / name).read_text(encoding="utf-8"))["rows"]
                if r["concurrency"] == batch and (r.get("load_rule") or {}).get("draft_step_s")]
        lines = [f"| method | repeat | first forward s at {batch} rows | later step s | average step s |", "|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r.get("repeat", 0), r["method"])):
            rule = r["load_rule"]
            cells = [rule.get(key, {}).get(str(batch)) for key in ("draft_first_s", "draft_later_s", "draft_step_s")]
            lines.append(f"| `{r['method']}` | {r.get('repeat', 0)} | "
                         + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
        return "\n".join(lines) + "\n"

    return render


def serve_load_rule(name: str, batch: int) -> Callable[[], str]:
    """What the load rule of a serve_load.py run saw at ``batch`` rows, in its cells of as many clients, per server:
    its rounds at that batch size without prefill (drafting / target-only) and their seconds per round, the rule's
    final estimate of a target-only round there (its own measurement of such rounds, ``target_only_s``, where it
    kept one; else its cost curve's point at ``batch`` positions, which other shapes also feed), the probe and
    recheck rounds it chose, and what it learned of the draft's prefill (``f``, and its share per drafted token
    where it charged one). A target-only server has no rule: dashes."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        lines = [f"| method | repeat | rounds at {batch} rows: drafting / target-only | s per round: drafting / "
                 f"target-only | rule's estimate of a target-only round at {batch} rows (from) | probes | rechecks | "
                 "f: the draft's prefill ÷ the target's | its share per drafted token, s |",
                 "|---|---|---|---|---|---|---|---|---|"]

        def avg(xs: list[float]) -> str:
            return f"{mean(xs):.3f}" if xs else "–"

        for r in sorted(data["rows"], key=lambda r: (r.get("repeat", 0), r["method"])):
            if r["concurrency"] != batch:
                continue
            log = [x for x in r["round_log"] if x and x[0] == batch and x[6] == 0]  # rows, K, .., draft s, target s, prefill s
            drafting = [x[4] + x[5] for x in log if x[1] > 0]
            plain = [x[5] for x in log if x[1] == 0 and x[3] == 1]
            rule = r.get("load_rule") or {}
            own, curve = rule.get("target_only_s", {}), rule.get("target_s", {})
            estimate = (f"{own[str(batch)]:.3f} (its target-only rounds)" if str(batch) in own else
                        f"{curve[str(batch)]:.3f} (the curve at {batch} positions)" if str(batch) in curve else "–")
            f, share = rule.get("draft_fill_ratio"), rule.get("fill_share_s")
            learned = [estimate, rule.get("probes", "–"), rule.get("rechecks", "–")] if curve else ["–"] * 3
            lines.append(f"| `{r['method']}` | {r.get('repeat', 0)} | {len(drafting)} / {len(plain)} | "
                         f"{avg(drafting)} / {avg(plain)} | {' | '.join(map(str, learned))} | "
                         f"{'–' if f is None else f'{f:.2f}'} | {'–' if share is None else f'{share:.4f}'} |")
        return "\n".join(lines) + "\n"

    return render


def serve_scaling(name: str, method: str = "autoregressive") -> Callable[[], str]:
    """How ``method``'s throughput in a serve_load.py run scales with the clients, and what prompts cost in it: per
    concurrency (means over repeats), seconds in rounds that fed the target a prompt (a fresh batch's first round)
    plus the prefill of prompts joining a running batch, seconds in the other rounds, their target seconds per
    round, throughput ÷ one client's, with the prompts' time and without it, and the first rounds' target seconds
    per position fed (padding included)."""

    def render() -> str:
        rows = [r for r in json.loads((RESULTS / name).read_text(encoding="utf-8"))["rows"] if r["method"] == method]
        by: dict[int, list[dict]] = {}
        for r in rows:
            log = [x for x in r["round_log"] if x]  # rows, K, draft w, target w, draft s, target s, prefill s, accepted
            prompt = sum(x[6] + (x[4] + x[5] if x[3] > 1 else 0) for x in log)
            steps = [x for x in log if x[3] == 1 and x[6] == 0]
            firsts = [x for x in log if x[3] > 1]  # a fresh batch's first round: seconds per position fed
            by.setdefault(r["concurrency"], []).append({"wall": r["wall_s"], "tokens": r["output_tokens"], "prompt": prompt,
                                         "per_token": sum(x[5] for x in firsts) / sum(x[0] * x[3] for x in firsts),
                                         "rest": r["wall_s"] - prompt, "round": mean(x[5] for x in steps) if steps else math.nan,
                                         "batch": mean(x[0] for x in steps) if steps else math.nan})
        cells = {c: {k: mean(m[k] for m in ms) for k in ms[0]} for c, ms in sorted(by.items())}
        one = cells.get(1)  # its rates, with and without the prompts' time
        base = (one["tokens"] / one["wall"], one["tokens"] / one["rest"]) if one else None
        lines = [f"| clients | wall s | prompts s (share) | other rounds s | their mean batch | target s per round | "
                 f"tok/s | ÷ 1 client | without prompts: tok/s | ÷ 1 client | first rounds: ms per prompt token |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, m in cells.items():
            rate, bare = m["tokens"] / m["wall"], m["tokens"] / m["rest"]
            ratio, bare_ratio = (f"{rate / base[0]:.2f}", f"{bare / base[1]:.2f}") if base else ("–", "–")
            lines.append(f"| {c} | {m['wall']:.1f} | {m['prompt']:.1f} ({m['prompt'] / m['wall']:.0%}) | {m['rest']:.1f} | "
                         f"{m['batch']:.2f} | {m['round']:.3f} | {rate:.2f} | {ratio} | {bare:.2f} | {bare_ratio} | "
                         f"{1000 * m['per_token']:.1f} |")
        return f"`{name}`, `{method}` (means over {len(rows) // max(1, len(cells))} repeat(s)):\n\n" + "\n".join(lines) + "\n"

    return render


def row_padding(name: str) -> Callable[[], str]:
    """benchmarks/row_padding.py: ms of a float32 ``weight @ x.T`` pass over the target's layer shapes, per row
    count, as is and padded to a multiple of 8 rows, and which the library multiplies (``padded_rows``)."""

    def render() -> str:
        from specadapt.models.hardware import padded_rows

        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        m = data["machine"]
        lines = [f"`{name}`: {m['cpu']} ({m['cpu_capability']}, native bf16: {'yes' if m['native_bf16'] else 'no'}), "
                 f"{data['settings']['threads']} threads, shapes {data['settings']['shapes']}; median of "
                 f"{data['settings']['rounds']} interleaved rounds.\n",
                 "| rows | as is, ms | padded, ms (to) | padded ÷ as is | the library |", "|---|---|---|---|---|"]
        for r in data["rows"]:
            chosen = "as is" if padded_rows(r["rows"], m["native_bf16"]) == r["rows"] else "padded"
            lines.append(f"| {r['rows']} | {r['as_is_ms']:.1f} | {r['padded_ms']:.1f} ({r['padded_to']}) | "
                         f"{r['padded_ms'] / r['as_is_ms']:.2f} | {chosen} |")
        return "\n".join(lines) + "\n"

    return render


def padding_rounds(name: str, method: str) -> Callable[[], str]:
    """benchmarks/copies_ab.py records with the engine's stats: per setting of ``method``, its rounds, mean draft
    length, and the target's and the draft's seconds per round."""

    def render() -> str:
        data = json.loads((RESULTS / name).read_text(encoding="utf-8"))
        lines = ["| setting | generations | tokens | rounds | mean draft length | target s per round | draft s per round |",
                 "|---|---|---|---|---|---|---|"]
        for padded in (True, False):
            mine = [r for r in data["records"] if r["method"] == method and r.get("padded", False) == padded]
            rounds = sum(r["rounds"] for r in mine)
            lines.append(f"| {'padded' if padded else 'not padded'} | {len(mine)} | {sum(r['tokens'] for r in mine)} | "
                         f"{rounds} | {sum(r['drafted'] for r in mine) / rounds:.2f} | "
                         f"{sum(r['target_time_s'] for r in mine) / rounds:.3f} | "
                         f"{sum(r['draft_time_s'] for r in mine) / rounds:.3f} |")
        return "\n".join(lines) + "\n"

    return render


def serve_rule_widths(name: str, widths: Sequence[int]) -> Callable[[], str]:
    """What an ``auto`` load rule had learned of the target's pass by a serve_load.py cell's end: per method and
    repeat, its running average of the seconds for a pass over each of ``widths`` positions ("–": never measured)."""

    def render() -> str:
        rows = [r for r in json.loads((RESULTS / name).read_text(encoding="utf-8"))["rows"]
                if r.get("load_rule", {}).get("target_s")]  # a target-only server's rule measures nothing
        lines = ["| method | repeat | " + " | ".join(f"{w} positions" for w in widths) + " |",
                 "|---|---|" + "---|" * len(widths)]
        for r in sorted(rows, key=lambda r: (r["method"], r.get("repeat", 0))):
            seen = r["load_rule"]["target_s"]
            lines.append(f"| `{r['method']}` | {r.get('repeat', 0)} | "
                         + " | ".join(f"{seen[str(w)]:.2f}" if str(w) in seen else "–" for w in widths) + " |")
        return "\n".join(lines) + "\n"

    return render


def serve_round_costs(name: str) -> Callable[[], str]:
    """What a serve_load.py run's rounds cost, from the rounds it logged (those without prefill): per method and
    repeat, target seconds of a one-token round (target-only), the cap the speculative server used most, its rounds'
    target seconds, draft seconds per step and tokens per round, and the rate of those rounds."""

    def render() -> str:
        rows = json.loads((RESULTS / name).read_text(encoding="utf-8"))["rows"]
        lines = ["| method | clients | repeat | target s, 1-token round | most used draft length (share of rounds) | "
                 "its rounds: target s | draft s per step | tokens per round | tok/s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["concurrency"], r["method"] != "autoregressive", r.get("repeat", 0))):
            log = [x for x in r["round_log"] if x and x[6] == 0]  # rows, K, draft w, target w, draft s, target s, prefill s, accepted
            plain = [x[5] for x in log if x[1] == 0 and x[3] == 1]
            drafting = [x for x in log if x[1] > 0]
            cells = ["–"] * 5
            if drafting:
                K = max({x[1] for x in drafting}, key=[x[1] for x in drafting].count)
                mine = [x for x in drafting if x[1] == K]
                seconds = sum(x[4] + x[5] for x in mine)
                cells = [f"{K} ({len(mine) / len(log):.0%})", f"{mean(x[5] for x in mine):.3f}",
                         f"{sum(x[4] for x in mine) / sum(x[1] for x in mine):.3f}",
                         f"{mean(x[0] + x[7] for x in mine):.2f}", f"{sum(x[0] + x[7] for x in mine) / seconds:.2f}"]
            elif plain:
                cells[-1] = f"{sum(x[0] for x in log if x[1] == 0 and x[3] == 1) / sum(plain):.2f}"
            lines.append(f"| `{r['method']}` | {r['concurrency']} | {r.get('repeat', 0)} | "
                         f"{mean(plain) if plain else float('nan'):.3f} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    return render


DIVERGENCE_NAMES = {"fkl": "forward KL", "rkl": "reverse KL", "jsd": "JSD", "tvd": "total variation"}


def _distill_compute(root: Path) -> list[str]:
    """Each stage's compute, from the ``<stage>_stage.json`` files copied out of a distill run."""
    out = ["| stage | method | steps | sequences | answer tokens | loss-bearing tokens | wall s |", "|---|---|---|---|---|---|---|"]
    for stage in ("reference", "draft"):
        path = root / f"{stage}_stage.json"
        if not path.exists():
            continue
        st = json.loads(path.read_text(encoding="utf-8"))
        c = st["metrics"]["compute"]
        divergence = DIVERGENCE_NAMES[st["settings"]["divergence"]]
        method = "AdaSPEC (k = {}, {})".format(st["settings"]["k"], divergence) if st["selective"] else f"DistillSpec ({divergence})"
        out.append(f"| `{stage}` | {method} | {c['optimizer_steps']} | {c['sequences']} | {c['answer_tokens']} | "
                   f"{c['loss_tokens']} | {c['wall_seconds']:.0f} |")
    return out


def _distill_budget(root: Path) -> list[str]:
    """The run's data and memory, from its distill.json and (if sampled) rss.json and rss_draft.json."""
    if not (root / "distill.json").exists():
        return []
    run = json.loads((root / "distill.json").read_text(encoding="utf-8"))
    d, cache = run["data"], run["teacher_cache"]
    text = (f"Data `{d['source']}`: {d['examples']} pairs ({d['skipped_too_long']} skipped as longer than "
            f"{d['max_length']} tokens), {d['tokens']} tokens of which {d['answer_tokens']} answer tokens; teacher cache "
            f"(top-{run['settings']['cache_top_k']} per position): {cache['bytes'] / 1e6:.0f} MB")
    if (root / "rss.json").exists():
        rss = json.loads((root / "rss.json").read_text(encoding="utf-8"))
        text += f"; peak resident memory {rss['peak_rss_GB']:.1f} GiB (sampled every 60 s)"
    if (root / "rss_draft.json").exists():  # the draft stage run as a process of its own (a resumed run)
        rss = json.loads((root / "rss_draft.json").read_text(encoding="utf-8"))
        text += f", the draft stage's process {rss['peak_rss_GB']:.1f} GiB"
    return [text + ".", ""]


def distill_real_pair(folder: str) -> Callable[[], str]:
    """A distillation run on the real pair: each stage's compute (from its stage.json) and each draft's
    teacher-forced agreement with the target (from eval-draft's eval.json)."""

    def render() -> str:
        root = RESULTS / folder
        out = _distill_compute(root)
        ev = json.loads((root / "eval.json").read_text(encoding="utf-8"))
        out += ["", f"Teacher-forced on {ev['prompts']} {ev['data']} test prompts, {ev['settings']['max_new_tokens']} "
                    "target tokens each (greedy):", "",
                "| draft | positions | argmax agreement | KL(target‖draft) | predicted tokens per target call, K = 4 |",
                "|---|---|---|---|---|"]
        for name, d in ev["drafts"].items():
            tf = d["teacher_forced"]
            out.append(f"| `{name}` | {tf['positions']} | {tf['argmax_agreement']:.3f} | {tf['kl_target_draft']:.3f} | "
                       f"{tf['predicted']['4']['mean_accepted_length']:.2f} |")
        return "\n".join(out) + "\n"

    return render


def distill_run(folder: str, names: dict[str, str]) -> Callable[[], str]:
    """A distillation run with one eval-draft report per dataset (``eval_<dataset>.json``): each stage's compute,
    then per dataset and draft the teacher-forced agreement and KL, the change against the first draft, and the
    mean entropies (nats) of the draft's and the target's distributions.
    ``names``: draft as eval-draft recorded it -> the name shown."""

    def render() -> str:
        root = RESULTS / folder
        out = _distill_budget(root) + _distill_compute(root)
        out += ["", "| dataset | draft | positions | argmax agreement | vs stock | KL(target‖draft) | vs stock | "
                    "entropy, draft (target) | predicted tokens per target call, K = 4 |",
                "|---|---|---|---|---|---|---|---|---|"]
        for path in sorted(root.glob("eval_*.json")):
            ev = json.loads(path.read_text(encoding="utf-8"))
            forced = {names.get(k, k): d["teacher_forced"] for k, d in ev["drafts"].items()}
            stock = next(iter(forced.values()))
            for name, tf in forced.items():
                agree, kl = tf["argmax_agreement"], tf["kl_target_draft"]
                d_agree = "–" if tf is stock else f"{(agree - stock['argmax_agreement']) * 100:+.1f} pts"
                d_kl = "–" if tf is stock else f"{kl / stock['kl_target_draft'] - 1:+.1%}"
                entropy = "–" if "draft_entropy" not in tf else f"{tf['draft_entropy']:.3f} ({tf['target_entropy']:.3f})"
                out.append(f"| {ev['data']} | `{name}` | {tf['positions']} | {agree:.3f} | {d_agree} | {kl:.3f} | {d_kl} | "
                           f"{entropy} | {tf['predicted']['4']['mean_accepted_length']:.2f} |")
        return "\n".join(out) + "\n"

    return render


def _logged_steps(path: Path) -> list[dict]:
    """A distill stage's logged rows (``<stage>_log.json``, a copy of its log_history.json) that carry the step's
    divergence (the others are Trainer summaries)."""
    return [row for row in json.loads(path.read_text(encoding="utf-8")) if "divergence" in row]


def distill_log(folder: str) -> Callable[[], str]:
    """The training logs of a distillation run's stages (``<stage>_log.json``, copies of each stage's
    log_history.json): per logged step the divergence to the target and argmax agreement on the step's batch,
    and for AdaSPEC the kept share and the loss gaps ΔL = D(P‖Q) − D(P‖R) (mean over all tokens, over kept ones)."""

    def render() -> str:
        root = RESULTS / folder
        out = ["| stage | step | divergence (batch) | argmax agreement (batch) | kept | mean ΔL | mean ΔL, kept |",
               "|---|---|---|---|---|---|---|"]
        for stage in ("reference", "draft"):
            path = root / f"{stage}_log.json"
            if not path.exists():
                continue
            for row in _logged_steps(path):
                out.append(f"| `{stage}` | {row['step']} | {row['divergence']:.3f} | {row['agree']:.3f} | "
                           f"{_cell(row.get('kept_fraction'), '{:.2f}')} | {_cell(row.get('delta_mean'))} | "
                           f"{_cell(row.get('delta_kept_mean'))} |")
        return "\n".join(out) + "\n"

    return render


def distill_logs_side_by_side(logs: dict[str, str]) -> Callable[[], str]:
    """Training logs of several stages (name -> ``<folder>/<stage>_log.json``) side by side at the steps they all
    logged: the divergence to the target over all answer tokens of the step's batch, and argmax agreement."""

    def render() -> str:
        rows = {name: {r["step"]: r for r in _logged_steps(RESULTS / path)} for name, path in logs.items()}
        steps = sorted(set.intersection(*(set(r) for r in rows.values())))
        out = ["| step | " + " | ".join(f"{name}: divergence (agreement)" for name in logs) + " |",
               "|---|" + "---|" * len(logs)]
        for step in steps:
            out.append(f"| {step} | " + " | ".join(f"{rows[n][step]['divergence']:.3f} ({rows[n][step]['agree']:.3f})"
                                                  for n in logs) + " |")
        return "\n".join(out) + "\n"

    return render


# The distillation issue's targets: end-to-end gain of a distilled draft over the stock one, same method.
DISTILL_TARGETS = {"gsm8k": 0.10, "mt-bench": 0.10, "mt-bench-turn2": 0.10, "humaneval": 0.0}
# The distill_mix run's drafts, as eval-draft and cheap_draft.py recorded them -> the names shown.
DISTILL_MIX_NAMES = {"qwen2.5-coder-0.5b-instruct": "stock", "runs/q-mix-512/reference": "DistillSpec",
                     "runs/q-mix-512/draft": "AdaSPEC", "int4": "stock", "reference:int4": "DistillSpec",
                     "adaspec:int4": "AdaSPEC"}


def distill_targets(folders: str | tuple[str, ...], speed: str, method: str, names: dict[str, str]) -> Callable[[], str]:
    """The distillation issue's targets from a run: per dataset and distilled draft, ``method``'s end-to-end
    gain over the stock draft (cheap_draft.py run ``speed``, first draft = stock) against the target (≥ +10% on
    GSM8K and MT-Bench, no slower on HumanEval), and acceptance: AdaSPEC against DistillSpec, measured (the
    timed run) and teacher-forced (eval_<dataset>.json of ``folders``). ``names``: variant or eval-draft name ->
    the name shown. Verdicts: the cheap-draft targets' rule for a gain to reach; for "no slower", the comparison's
    win / tie / loss."""

    def render() -> str:
        run = _cheap_draft_run(RESULTS / speed)
        if run is None:
            return "No committed results yet.\n"
        module, settings, summary, _ = run
        out = ["| dataset | draft | acceptance (timed) | argmax agreement (teacher-forced) | gain over stock | "
               "target | verdict |", "|---|---|---|---|---|---|---|"]
        for ds, table in summary["datasets"].items():
            forced = _teacher_forced(folders, ds, names)
            for draft in settings["drafts"]:
                label = f"{method}@{draft}"
                if label not in table:
                    continue
                cmp = summary["comparisons"][ds].get(label, {}).get("vs_reference_draft")
                goal = DISTILL_TARGETS.get(ds)
                gain, target, verdict = "– (stock)", "–", ""
                if cmp is not None and cmp["gain"] is not None:
                    gain = f"{cmp['gain']:+.1%}" + (f" ± {cmp['spread']:.1%}" if cmp["spread"] is not None else "")
                    if goal == 0:  # "no slower": not a loss by the verdict rule (a tie is no measured difference)
                        target = "no slower"
                        verdict = {"loss": "missed", "tie": "met (tie)", "win": "met"}.get(cmp["verdict"], "")
                    elif goal is not None:
                        target, verdict = f"≥ +{goal:.0%}", module._verdict(cmp["gain"], cmp["spread"], goal)
                out.append(f"| {ds} | `{names.get(draft, draft)}` | {pct(table[label]['acceptance_rate'])} | "
                           f"{_cell(forced.get(names.get(draft, draft)))} | {gain} | {target} | {verdict} |")
        return "\n".join(out) + "\n"

    render.source = lambda: RESULTS / speed  # for targets_index
    return render


def _teacher_forced(folders: str | tuple[str, ...], ds: str, names: dict[str, str]) -> dict[str, float]:
    """Argmax agreement per shown draft name on dataset ``ds``, from the eval_<ds>.json of each of ``folders``
    (runs evaluated on the same test prompts and target tokens)."""
    forced = {}
    for folder in (folders,) if isinstance(folders, str) else folders:
        path = RESULTS / folder / f"eval_{ds}.json"
        if path.exists():
            for k, d in json.loads(path.read_text(encoding="utf-8"))["drafts"].items():
                forced.setdefault(names.get(k, k), d["teacher_forced"]["argmax_agreement"])
    return forced


def draft_vs_draft(folders: str | tuple[str, ...], speed: str, method: str, names: dict[str, str],
                   base: str = "reference:int4", new: str = "adaspec:int4") -> Callable[[], str]:
    """Two distilled drafts at the same method, ``new`` against ``base`` (cheap_draft.py variants of run
    ``speed``; by default AdaSPEC against DistillSpec, the issue's "AdaSPEC ≥ DistillSpec in acceptance on every
    task at equal compute"): per dataset, ``method``'s timed acceptance with each, on how many test prompts
    ``new``'s is at least ``base``'s, the teacher-forced argmax agreement (eval_<dataset>.json of ``folders``, bf16
    drafts), and ``new``'s speed against ``base``'s with the usual spread and verdict. "met" when ``new``'s
    acceptance is at least ``base``'s both timed and teacher-forced, to the 0.1 points shown. ``names``: variant
    or eval-draft name -> the name shown."""
    ref, ada = f"{method}@{base}", f"{method}@{new}"
    a, b = names[base], names[new]

    def render() -> str:
        run = _cheap_draft_run(RESULTS / speed)
        if run is None:
            return "No committed results yet.\n"
        module, _, summary, _ = run
        records = read_records(RESULTS / speed)
        out = [f"| dataset | acceptance (timed): {a} → {b} | prompts with {b} ≥ {a} | "
               f"argmax agreement (teacher-forced): {a} → {b} | {b} ÷ {a} speed | "
               f"{b} ≥ {a} in acceptance |", "|---|---|---|---|---|---|"]
        for ds, table in summary["datasets"].items():
            if ref not in table or ada not in table:
                continue
            per_prompt = {}  # example -> method -> [accepted, drafted] over the repeats
            for r in records:
                if r["dataset"] == ds and r["method"] in (ref, ada):
                    acc = per_prompt.setdefault(r["example_id"], {}).setdefault(r["method"], [0, 0])
                    acc[0], acc[1] = acc[0] + r["accepted"], acc[1] + r["drafted"]
            at_least = sum(v[ada][0] / v[ada][1] >= v[ref][0] / v[ref][1] for v in per_prompt.values())
            forced = _teacher_forced(folders, ds, names)
            agree = (forced[a], forced[b])
            timed = (table[ref]["acceptance_rate"], table[ada]["acceptance_rate"])
            cmp = module.compare(table[ada], table[ref], ref)
            gain = f"{cmp['gain'] + 1:.3f}" + (f" ± {cmp['spread']:.3f} ({cmp['verdict']})" if cmp["spread"] is not None else "")
            # at least, to the 0.1 points shown: a difference of a few tokens in a thousand is not a miss
            met = "met" if min(timed[1] - timed[0], agree[1] - agree[0]) > -0.0005 else "missed"
            out.append(f"| {ds} | {pct(timed[0])} → {pct(timed[1])} ({(timed[1] - timed[0]) * 100:+.1f} pts) | "
                       f"{at_least} of {len(per_prompt)} | {agree[0]:.3f} → {agree[1]:.3f} "
                       f"({(agree[1] - agree[0]) * 100:+.1f} pts) | {gain} | {met} |")
        return "\n".join(out) + "\n"

    render.source = lambda: RESULTS / speed  # for targets_index
    return render


# The distill_target run's drafts (trained on the target's own answers) -> the names shown.
DISTILL_TARGET_NAMES = {"qwen2.5-coder-0.5b-instruct": "stock", "runs/q-tr/reference": "DistillSpec",
                        "runs/q-tr/draft": "AdaSPEC", "int4": "stock", "reference:int4": "DistillSpec",
                        "adaspec:int4": "AdaSPEC"}


# The AdaSPEC k = 0.2 run beside the fourth run's drafts (eval-draft's names -> the names shown).
DISTILL_K02_NAMES = {"qwen2.5-coder-0.5b-instruct": "stock", "runs/q-tr4/reference": "DistillSpec + ShareGPT",
                     "runs/q-tr4/draft": "AdaSPEC k = 0.4", "runs/q-k02/draft": "AdaSPEC k = 0.2"}
# The fourth run's drafts (the target's answers + its answers to ShareGPT first turns), the third run's
# DistillSpec draft (the target's answers only) and the stock draft -> the names shown.
DISTILL_TARGET4_NAMES = {"qwen2.5-coder-0.5b-instruct": "stock", "runs/q-tr4/reference": "DistillSpec + ShareGPT",
                         "runs/q-tr4/draft": "AdaSPEC + ShareGPT", "runs/q-tr/reference": "DistillSpec", "int4": "stock",
                         "ds4:int4": "DistillSpec + ShareGPT", "ds3:int4": "DistillSpec",
                         "reference:int4": "DistillSpec + ShareGPT", "adaspec:int4": "AdaSPEC + ShareGPT"}


# DistillSpec with total variation distance on the third run's data and cache -> the names shown.
DISTILL_TVD_NAMES = {"qwen2.5-coder-0.5b-instruct": "stock", "runs/q-tvd/draft": "DistillSpec (TVD)"}


def target_responses(paths: str | tuple[str, ...], run: str) -> Callable[[], str]:
    """The training data ``specadapt target-responses`` wrote (one file or several), as far as distillation run
    ``run`` used it (its ``--max-examples``): per dataset, the prompts answered, the answer tokens and the share of
    answers the target finished (the rest were cut at the length limit)."""
    paths = (paths,) if isinstance(paths, str) else paths

    def render() -> str:
        rows = [json.loads(line) for path in paths for line in (RESULTS / path).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        used = json.loads((RESULTS / run / "distill.json").read_text(encoding="utf-8"))["settings"]["max_examples"]
        limits = sorted({r["max_new_tokens"] for r in rows})
        head = (f"{' + '.join(f'`{p}`' for p in paths)}: the target's greedy answers, at most "
                f"{' or '.join(map(str, limits))} tokens each")
        if used is not None and used < len(rows):
            assert len(paths) == 1, "--max-examples over several files: count per file"
            head += f"; the first {used} of its {len(rows)} lines were trained on (below)"
            rows = rows[:used]
        out = [head + ".", "",
               "| dataset (train split) | prompts | answer tokens | mean tokens | finished |", "|---|---|---|---|---|"]
        for ds in dict.fromkeys(r["dataset"] for r in rows):
            mine = [r for r in rows if r["dataset"] == ds]
            tokens = sum(r["tokens"] for r in mine)
            out.append(f"| {ds} | {len(mine)} | {tokens} | {tokens / len(mine):.0f} | "
                       f"{pct(sum(r['finished'] for r in mine) / len(mine), '.0%')} |")
        tokens = sum(r["tokens"] for r in rows)
        out.append(f"| all | {len(rows)} | {tokens} | {tokens / len(rows):.0f} | "
                   f"{pct(sum(r['finished'] for r in rows) / len(rows), '.0%')} |")
        return "\n".join(out) + "\n"

    return render


# The seed papers' claims (benchmarks/results/seed_claims/CHOICES.md, frozen before the runs): per method, the
# least gain over the best fixed K that the paper's claim needs ("faster" = beyond the spread, 0).
CLAIMS = {"specdecpp": ("SpecDec++ +7–11% over the best fixed K", 0.07),
          "adasd": ("AdaSD (lossy): faster than standard SD at < 2 points accuracy loss", 0.0),
          "adaedl": ("AdaEDL faster than the best fixed K", 0.0),
          "dynamic-confidence": ("dynamic confidence faster than the best fixed K", 0.0),
          "adasd-stop": ("AdaSD's entropy stopping (lossless) faster than the best fixed K", 0.0),
          "heuristic": ("+2/−1 heuristic faster than the best fixed K", 0.0),
          "confidence": ("confidence stopping faster than the best fixed K", 0.0)}
MAX_ACCURACY_LOSS = 0.02  # AdaSD's claim: under 2 points


def claim_verdict(method: str, c: dict, accuracy_change: float | None) -> str:
    """met / tie / missed for a method's gain ``c`` over the best fixed K (CHOICES.md's rule)."""
    least = CLAIMS[method][1]
    if c["verdict"] in ("tie", "undecided"):
        return c["verdict"]
    if c["verdict"] != "win" or c["gain"] < least:
        return "missed"
    if method == "adasd" and accuracy_change is not None and accuracy_change <= -MAX_ACCURACY_LOSS:
        return "missed (accuracy)"
    return "met"


def changed_defaults(run: dict) -> list[str]:
    """"`method` ran with key = old (default now: new)" for each method a run named without settings whose
    recorded policy settings differ from today's defaults (a default chosen after the run)."""
    from specadapt.methods import make_method

    out = []
    for label, entry in run["methods"].items():
        if ":" in label or "policy_settings" not in entry:
            continue
        now = make_method(label).policy.settings()
        out += [f"`{label}` ran with {key} = {old} (default now: {now[key]})"
                for key, old in entry["policy_settings"].items()
                if key in now and now[key] != old and "/" not in str(old)]  # a file's location is no setting
    return out


def seed_claims(*names: str) -> Callable[[], str]:
    """One row per claim, run and dataset: the method's speedup and the best fixed K's (per repeat), the gain
    with its spread, the accuracy change against target-only, and met / tie / missed."""

    def render() -> str:
        lines = ["| claim | run | dataset | examples | method speedup (per repeat) | best fixed K (per repeat) | "
                 "gain ± spread | accuracy Δ pts | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        notes = []
        for name in names:
            run, used, summary = complete_bench_run(name)
            st = run["settings"]
            label = "greedy" if st["temperature"] == 0 else f"T = {st['temperature']}"
            counts = {ds: len({r["example_id"] for r in used if r["dataset"] == ds}) for ds in st["datasets"]}
            notes.append(f"`{name}` ({label}): " + ", ".join(
                f"{DATASET_TITLES.get(ds, ds)} {n} of {st['limit']}" for ds, n in counts.items())
                + f" examples finished by every method in all {st['repeats']} repeats"
                + "".join(f"; {change}" for change in changed_defaults(run)))
            for method, (claim, _) in CLAIMS.items():
                for ds, table in summary["datasets"].items():
                    best = report.best_fixed_k(table)
                    c = summary["comparisons"][ds].get(method, {}).get("vs_best_fixed_k")
                    if c is None or best is None:
                        continue
                    e, b = table[method], table[best]
                    change = e.get("accuracy_change")
                    per = ", ".join(f"{x:.2f}" for x in e["speedup_per_repeat"])
                    per_best = ", ".join(f"{x:.2f}" for x in b["speedup_per_repeat"])
                    spread = "–" if c["spread"] is None else f"{c['spread']:.1%}"
                    lines.append(
                        f"| {claim} | {label} | {DATASET_TITLES.get(ds, ds)} | {counts[ds]} | {speedup(e)} ({per}) | "
                        f"`{best}` {speedup(b)} ({per_best}) | {c['gain']:+.1%} ± {spread} | "
                        f"{'–' if change is None else f'{change * 100:+.1f}'} | {claim_verdict(method, c, change)} |")
        return ("\n".join(lines) + "\n\n" + "; ".join(notes) + f". Verdict rule: {report.VERDICT_RULE} A claim is met "
                "when the method wins by at least the paper's least gain (SpecDec++: 7%; the others: any gain) and, "
                "for AdaSD, loses under 2 points of accuracy against target-only.\n")

    return render


def complete_table(name: str) -> Callable[[], str]:
    """:func:`run_table` over the examples every method finished in every repeat, as a block."""
    return lambda: run_table(name, complete_only=True).rstrip("\n") + "\n"


def cut_short(name: str, method: str, share: float = 0.1) -> Callable[[], str]:
    """The generations of ``method`` in run ``name`` that ended (at EOS) with under ``share`` of the tokens
    target-only made for the same example and repeat: what a lossy acceptance can do to an answer."""

    def render() -> str:
        _, records, _ = bench_run(name)
        own = {(r["example_id"], r["repeat"]): r for r in records if r["method"] == "autoregressive"}
        pairs = [(r, own.get((r["example_id"], r["repeat"]))) for r in records
                 if r["method"] == method and r["finish_reason"] == "eos"]
        short = [(r, t) for r, t in pairs if t is not None and r["tokens"] < share * t["tokens"]]
        out = [f"`{name}`: `{method}`'s generations with under {share:.0%} of target-only's tokens "
               f"(same example and repeat): {len(short)} of {sum(r['method'] == method for r in records)}.\n",
               "| example | repeat | tokens | target-only tokens | text | correct | target-only correct |", "|---|---|---|---|---|---|---|"]
        for r, t in sorted(short, key=lambda x: (x[0]["repeat"], x[0]["example_id"])):
            correct = [num(None) if x.get("score") is None else str(x["score"].get("correct")) for x in (r, t)]
            text = r["text"].replace("|", "\\|").replace("\n", " ")
            out.append(f"| {r['example_id']} | {r['repeat']} | {r['tokens']} | {t['tokens']} | `{text}` | {correct[0]} | {correct[1]} |")
        return "\n".join(out) + "\n"

    return render


def adasd_cold_start(*names: str) -> Callable[[], str]:
    """Per AdaSD method of each run and dataset: verified rejections per request and the share of requests that
    saw fewer than ``n_min`` of them, i.e. never left the cold start with per-request statistics (one rejection
    per round at most: the first rejected position)."""

    def render() -> str:
        lines = ["| run | method | scope | dataset | requests | rejections per request | requests with < n_min "
                 "rejections |", "|---|---|---|---|---|---|---|"]
        for name in names:
            run, used, _ = complete_bench_run(name)
            for label, entry in run["methods"].items():
                if entry["method"] not in ("adasd", "adasd-stop"):
                    continue
                policy = entry["policy_settings"]
                for ds in run["settings"]["datasets"]:
                    rows = [r for r in used if r["method"] == label and r["dataset"] == ds]
                    if not rows:
                        continue
                    rejections = [sum(reached - acc for reached, acc in zip(r["position_reached"], r["position_accepted"]))
                                  for r in rows]
                    cold = sum(n < policy["n_min"] for n in rejections) / len(rows)
                    lines.append(f"| `{name}` | `{label}` | {policy['scope']} | {DATASET_TITLES.get(ds, ds)} | "
                                 f"{len(rows)} | {mean(rejections):.1f} | {cold:.0%} (n_min = {policy['n_min']}) |")
        return "\n".join(lines) + "\n"

    return render


COLD_START_DEFAULTS = ("adasd-stop", "adasd")  # each family's shipped default, the reference of its candidates
SCORED = ("humaneval", "gsm8k")  # the datasets whose answers are scored


def cold_start_decision(name: str) -> Callable[[], str]:
    """The AdaSD cold-start choice on tune prompts (benchmarks/results/adasd_cold_start/CHOICES.md, rule written
    before the run): each candidate's gain over its family's default per dataset with its verdict, its correct
    answers, whether it qualifies, and the default the rule picks."""

    def render() -> str:
        run, used, summary = complete_bench_run(name)

        def correct(method: str) -> int:
            return sum(bool((r.get("score") or {}).get("correct")) for r in used
                       if r["method"] == method and r["dataset"] in SCORED)

        def geo_mean(method: str) -> float:
            ups = [table[method]["speedup"] for table in summary["datasets"].values()]
            return math.prod(ups) ** (1 / len(ups))

        lines = ["| candidate | " + " | ".join(f"{DATASET_TITLES.get(ds, ds)} gain ± spread" for ds in summary["datasets"])
                 + " | correct answers (vs default) | geo-mean speedup | qualifies |",
                 "|---|" + "---|" * (len(summary["datasets"]) + 3)]
        decisions = []
        for family in COLD_START_DEFAULTS:
            candidates = [m for m in run["settings"]["methods"] if m.startswith(family + ":")]
            qualified = []
            for m in candidates:
                cells, ok = [], True
                for ds, table in summary["datasets"].items():
                    g = report.gain_over(table[m], table[family])
                    cells.append(gain_cell(g))
                    ok &= g["verdict"] == "win" if ds == "humaneval" else g["verdict"] in ("win", "tie")
                if family == "adasd":
                    ok &= correct(m) >= correct(family)
                if ok:
                    qualified.append(m)
                lines.append(f"| `{m}` | " + " | ".join(cells) + f" | {correct(m)} ({correct(family)}) | "
                             f"{geo_mean(m):.2f}× ({geo_mean(family):.2f}×) | {'yes' if ok else 'no'} |")
            pick = max(qualified, key=geo_mean) if qualified else None
            decisions.append(f"`{family}`: " + (f"**`{pick}`** becomes the default" if pick else
                                                 "no candidate qualifies; the default stays `n_min=5` per request"))
        return ("\n".join(lines) + "\n\nDecision by the rule: " + "; ".join(decisions) + ". Verdicts: "
                + report.VERDICT_RULE + "\n")

    return render


def _listed(value: str | Sequence) -> list:
    """A setting that is a comma-separated string in some results files and a list in others, as a list."""
    return value.split(",") if isinstance(value, str) else list(value)


def _serve_load_indices(settings: dict) -> dict[str, list[int]]:
    """Dataset -> the indices within its split that a serve_load.py run sent (the script's own prompt order for its
    most clients times its requests per client)."""
    names = _listed(settings["datasets"])
    n = max(int(c) for c in _listed(settings["concurrency"])) * settings["requests_per_client"]
    order = _benchmark_module("serve_load").prompt_order(n, names, settings.get("skip", 0))
    return {name: sorted(i for d, i in order if d == name) for name in names}


def prompt_ledger() -> str:
    """Which prompts of each dataset's splits the committed runs measured (the ``records.jsonl`` of bench and
    cheap_draft.py runs; results files whose settings name a split and a count: serve_load.py, copies_ab.py,
    hf_passes.py, ...; batch_spec.py's, which list their prompts' ids; eval-draft reports), and where each split's unused prompts begin."""
    from specadapt.bench.splits import SPLITS, split_range

    used: dict[tuple[str, str], dict[int, set[str]]] = {}

    def note(dataset: str, absolute: int, run: str) -> None:
        split = next(s for s in SPLITS if absolute in split_range(dataset, s))
        used.setdefault((dataset, split), {}).setdefault(absolute - split_range(dataset, split).start, set()).add(run)

    for path in sorted(RESULTS.rglob("records.jsonl")):
        run = str(path.parent.relative_to(RESULTS))
        for r in read_records(path.parent):
            dataset = "mt-bench" if r["dataset"] == "mtbench" else r["dataset"]
            note(dataset, dataset_order(dataset)[r["example_id"]], run)
    for path in sorted(RESULTS.rglob("*.json")):  # runs whose settings name their prompts rather than list them
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            continue
        run = str(path.relative_to(RESULTS))
        if path.name.startswith("eval_") and "prompts" in data:  # eval-draft: the first prompts of the test split
            for i in range(data["prompts"]):
                note(data["data"], split_range(data["data"], "test")[i], run)
            continue
        settings = data.get("settings") if isinstance(data.get("settings"), dict) else data
        if isinstance(data.get("prompts"), list) and "dataset" in settings:  # batch_spec.py: its prompts' ids
            for example_id in data["prompts"]:
                note(settings["dataset"], dataset_order(settings["dataset"])[example_id], run)
            continue
        if (path.parent / "records.jsonl").exists() or not {"datasets", "split"} <= settings.keys():
            continue  # counted from its records; or no split named (runs from before the splits: tune prompts)
        if "requests_per_client" in settings:
            indices = _serve_load_indices(settings)
        elif "limit" in settings or "n" in settings:
            count, skip = settings.get("limit") or settings.get("n"), settings.get("skip", 0)
            indices = {name: list(range(skip, skip + count)) for name in _listed(settings["datasets"])}
        else:
            continue
        for dataset, positions in indices.items():
            for i in positions:
                note(dataset, split_range(dataset, settings["split"])[i], run)
    rows = ["| dataset | split | prompts | measured by committed runs (1-based, within the split) | runs | first unused |",
            "|---|---|---|---|---|---|"]
    for (dataset, split), by_index in sorted(used.items()):
        size = len(split_range(dataset, split))
        first = next((i + 1 for i in range(size) if i not in by_index), None)
        indices = sorted(i + 1 for i in by_index)
        runs = len(set().union(*by_index.values()))
        rows.append(f"| {DATASET_TITLES.get(dataset, dataset)} | {split} | {size} | {report._ranges(indices)} | {runs} | "
                    f"{first if first is not None else 'none: every prompt measured'} |")
    return "\n".join(rows) + "\n"


# Every distilled draft replayed on the tune prompts: the candidates for the draft that ships (its label: its run).
SHIPPED_DRAFT_CANDIDATES = {
    "DistillSpec, reference answers (second run)": "distill_mix_replay/distillspec.json",
    "AdaSPEC, reference answers (second run)": "distill_mix_replay/adaspec.json",
    "DistillSpec (third run)": "distill_target_replay/distillspec.json",
    "AdaSPEC (third run)": "distill_target_replay/adaspec.json",
    "DistillSpec + ShareGPT (fourth run)": "distill_target4_replay/distillspec.json",
    "AdaSPEC + ShareGPT (fourth run)": "distill_target4_replay/adaspec.json",
    "DistillSpec, TVD": "distill_tvd_replay/tvd.json",
}

RULE_WIDTHS = (9, 10, 13, 14, 16, 24, 27, 29, 33)  # target pass widths the one-client AVX2 runs compare

BLOCKS: dict[str, Callable[[], str]] = {
    "prompt-ledger": prompt_ledger,
    "resumed-runs": resumed_runs,
    "engine-humaneval": engine_table("humaneval"),
    "engine-mtbench": engine_table("mtbench"),
    "engine-equality": engine_equality,
    "adaptive-greedy-noisy": engine_methods_table("adaptive_greedy.json", call_count=True),
    "adaptive-t07": engine_methods_table("adaptive_t07.json", call_count=True),
    "adaptive-greedy-prelim": engine_methods_table("adaptive_greedy_prelim.json", call_count=False),
    "results-run": runs_table("bench_qwen_greedy"),
    "results-run-count": results_run_count,
    "valtuned-check": runs_table("valtuned_check_humaneval", "valtuned_check_mtbench"),
    "maxk-check": runs_table("maxk_check_humaneval", "maxk_check_mtbench"),
    "h01-check": runs_table("h01_check_humaneval", "h01_check_mtbench"),
    "mink1-check": runs_table("mink1_check_humaneval", "mink1_check_mtbench"),
    "features-head-check": runs_table("features_head_check"),
    "mtbench-small-k": runs_table("mtbench_small_k"),
    "adaptive-greedy-bench": runs_table("adaptive_greedy_bench"),
    "specdecpp-t07": runs_table("specdecpp_t07_bench"),
    "run-to-run-noise": run_to_run_noise,
    "noise-summary": noise_summary,
    "cheap-draft": cheap_draft(),
    "cheap-draft-targets": cheap_draft_targets(),
    "cheap-draft-before-targets": cheap_draft_targets(CHEAP_DRAFT_BEFORE),
    "cheap-draft-wide-targets": cheap_draft_targets(RESULTS / "cheap_draft_wide"),
    "cheap-draft-wide": cheap_draft(RESULTS / "cheap_draft_wide"),
    "cheap-draft-fused-targets": cheap_draft_targets(RESULTS / "cheap_draft_fused"),
    "cheap-draft-fused": cheap_draft(RESULTS / "cheap_draft_fused"),
    "cheap-draft-time": cheap_draft_time("cheap_draft_wide", "cheap_draft_fused"),
    "cheap-draft-marginal-targets": cheap_draft_targets(RESULTS / "cheap_draft_marginal"),
    "cheap-draft-marginal": cheap_draft(RESULTS / "cheap_draft_marginal"),
    "tree-value": tree_value("tree_value.json"),
    "lookup-coverage": lookup_coverage("lookup_coverage.json"),
    "tune-lookup": runs_table("tune_lookup", "tune_lookup2"),
    "cheap-draft-lookup-targets": cheap_draft_targets(RESULTS / "cheap_draft_lookup", default_method="adaedl+lookup"),
    "cheap-draft-lookup-vs-adaedl": cheap_draft_versus(RESULTS / "cheap_draft_lookup", "adaedl+lookup@int4", "adaedl@int4",
                                                       tune=RESULTS / "tune_lookup2", tune_mine="adaedl+lookup=12"),
    "cheap-draft-lookup-time": cheap_draft_time("cheap_draft_lookup", methods=("adaedl", "adaedl+lookup", "specdecpp")),
    "cheap-draft-lookup": cheap_draft(RESULTS / "cheap_draft_lookup"),
    "cheap-draft-mtbench-train-targets": cheap_draft_targets(RESULTS / "cheap_draft_mtbench_train",
                                                             default_method="adaedl+lookup"),
    "cheap-draft-mtbench-train-vs-adaedl": cheap_draft_versus(RESULTS / "cheap_draft_mtbench_train", "adaedl+lookup@int4",
                                                              "adaedl@int4"),
    "cheap-draft-mtbench-train-marginal": cheap_draft_versus(RESULTS / "cheap_draft_mtbench_train",
                                                             "marginal:cost=auto@int4", "adaedl@int4"),
    "cheap-draft-mtbench-train": cheap_draft(RESULTS / "cheap_draft_mtbench_train"),
    "cheap-draft-mtbench-train2-targets": cheap_draft_frozen(RESULTS / "cheap_draft_mtbench_train2", "specdecpp@int4",
                                                            ("marginal:cost=auto@int4", "adaedl+lookup@int4")),
    "cheap-draft-mtbench-train2": cheap_draft(RESULTS / "cheap_draft_mtbench_train2"),
    "cheap-draft-final-targets": cheap_draft_targets(RESULTS / "cheap_draft_final", default_method="adaedl+lookup",
                                                     frozen=CHEAP_DRAFT_FINAL_FROZEN),
    "cheap-draft-final-vs-hf": cheap_draft_frozen(
        RESULTS / "cheap_draft_final", {ds: CHEAP_DRAFT_FINAL_FROZEN[ds] for ds in ("humaneval", "mt-bench")},
        ["adaedl+lookup@int4"]),
    "cheap-draft-final": cheap_draft(RESULTS / "cheap_draft_final"),
    "cheap-draft-final-per-prompt": cheap_draft_per_prompt(RESULTS / "cheap_draft_final",
                                                           ["specdecpp@int4", "adaedl+lookup@int4"]),
    "cheap-draft-final-by-time": cheap_draft_by_time(RESULTS / "cheap_draft_final", CHEAP_DRAFT_FINAL_FROZEN),
    "cheap-draft-turn2-tune-choice": cheap_draft_choice(RESULTS / "cheap_draft_turn2_tune",
                                                        ["adaedl+lookup@int4", "specdecpp@int4"], "adaedl+lookup@int4"),
    "cheap-draft-turn2-tune": cheap_draft(RESULTS / "cheap_draft_turn2_tune"),
    "cheap-draft-turn2-targets": cheap_draft_targets(RESULTS / "cheap_draft_turn2", default_method="adaedl+lookup",
                                                     frozen=CHEAP_DRAFT_TURN2_FROZEN),
    "cheap-draft-turn2-vs-hf": cheap_draft_frozen(RESULTS / "cheap_draft_turn2", CHEAP_DRAFT_TURN2_FROZEN,
                                                  ["specdecpp@int4"]),
    "cheap-draft-turn2-by-time": cheap_draft_by_time(RESULTS / "cheap_draft_turn2", CHEAP_DRAFT_TURN2_FROZEN,
                                                     ("autoregressive", "hf-assisted@int4")),
    "cheap-draft-turn2-per-prompt": cheap_draft_per_prompt(RESULTS / "cheap_draft_turn2",
                                                           ["adaedl+lookup@int4", "specdecpp@int4"]),
    "cheap-draft-turn2": cheap_draft(RESULTS / "cheap_draft_turn2"),
    "cheap-draft-turn2-prompt-lengths": cheap_draft_prompt_lengths("cheap_draft_final", "cheap_draft_turn2"),
    "top-p-cost": top_p_cost("top_p_cost.json"),
    "top-p-cost-rotated": top_p_cost("top_p_cost_rotated.json"),
    "one-row-cost": one_row_cost("one_row_cost.json"),
    "one-row-cost-final": one_row_cost("one_row_cost_final.json"),
    "one-row-layers": one_row_layers("one_row_layers.json"),
    "target-only-check": target_only_check("target_only_check.json"),
    "batch-spec": batch_spec("batch_spec.json"),
    "batch-spec-ride": batch_spec("batch_spec_ride.json"),
    "batch-spec-auto": batch_spec("batch_spec_auto.json"),
    "batch-spec-engine": batch_spec("batch_spec_engine.json"),
    "batch-spec-check": batch_spec("batch_spec_check.json"),
    "batch-spec-window": batch_spec("batch_spec_window.json"),
    "batch-spec-window-prefill": batch_spec_prefill("batch_spec_window.json", 8),
    "serve-load-ride-tune": serve_load("serve_load_ride_tune.json", capped=True),
    "serve-load-prefix-tune": serve_load("serve_load_prefix_tune.json", capped=True),
    "serve-load-prefix-tune-vs": serve_load_vs("serve_load_prefix_tune.json", [
        ("autoregressive/prefix", "autoregressive"), ("adaedl+lookup/prefix", "adaedl+lookup"),
        ("adaedl+lookup/prefix", "autoregressive/prefix")]),
    "serve-load-prefix-tune-time": serve_load_time("serve_load_prefix_tune.json", 8),
    "serve-load-prefix-check-targets": serve_load_targets("serve_load_prefix_check.json"),
    "serve-load-prefix-check": serve_load("serve_load_prefix_check.json", capped=True),
    "serve-load-prefix-check-vs": serve_load_vs("serve_load_prefix_check.json", [
        ("autoregressive", "autoregressive/noprefix")]),
    "serve-load-prefix-check-time": serve_load_time("serve_load_prefix_check.json", 8),
    "serve-load-fixed-tune": serve_load("serve_load_fixed_tune.json", capped=True),
    "serve-load-fixed-tune-time": serve_load_time("serve_load_fixed_tune.json", 8),
    "serve-load-long-tune": serve_load("serve_load_long_tune.json", capped=True),
    "serve-load-long-tune-time": serve_load_time("serve_load_long_tune.json", 8),
    "serve-load-long-tune2": serve_load("serve_load_long_tune2.json", capped=True),
    "serve-load-long-tune2-time": serve_load_time("serve_load_long_tune2.json", 8),
    "serve-load-long-tune3": serve_load("serve_load_long_tune3.json", capped=True),
    "serve-load-long-tune3-time": serve_load_time("serve_load_long_tune3.json", 8),
    "serve-load-long-tune3-steps": serve_load_draft_steps("serve_load_long_tune3.json", 8),
    "serve-load-short-tune": serve_load("serve_load_short_tune.json", capped=True),
    "serve-load-long-check-targets": serve_load_targets("serve_load_long_check.json"),
    "serve-load-long-check": serve_load("serve_load_long_check.json", capped=True),
    "serve-load-long-check-time": serve_load_time("serve_load_long_check.json", 8),
    "cheap-draft-mtbench-train-time": cheap_draft_time("cheap_draft_mtbench_train", "cheap_draft_mtbench_train2",
                                                       methods=("adaedl+lookup", "marginal:cost=auto", "specdecpp")),
    "cheap-draft-marginal-vs-adaedl": cheap_draft_versus(RESULTS / "cheap_draft_marginal", "marginal@int4", "adaedl@int4",
                                                         tune=RESULTS / "tune_marginal" / "timed"),
    "cheap-draft-marginal-time": cheap_draft_time("cheap_draft_marginal", methods=("adaedl", "marginal", "specdecpp")),
    "hf-passes": hf_passes("hf_passes.json"),
    "draft-step": draft_step("draft_cost_lean.json"),
    "llama-cpp-compare": llama_cpp_compare("llama_cpp_compare.json"),
    "llama-cpp-compare-int4": llama_cpp_compare("llama_cpp_compare_int4.json"),
    "llama-cpp-compare-alone-llama": llama_cpp_compare("llama_cpp_compare_alone_llama.json"),
    "llama-cpp-compare-alone-int4": llama_cpp_compare("llama_cpp_compare_alone_int4.json"),
    "draft-step-target-quant": draft_step("draft_cost_target_quant.json"),
    "draft-step-cuda-h200": draft_step("cuda_h200/draft_cost.json"),
    "compile-step": compile_step("compile_step.json"),
    "fused-step": fused_step("fused_step.json"),
    "draft-step-fused": draft_step("draft_cost_fused.json"),
    "lean-vs-packed": lean_vs_packed("draft_cost_lean.json", "draft_cost_fused.json"),
    "distill-mix-replay": draft_replay({"stock": "distill_mix_replay/stock.json",
                                        "DistillSpec": "distill_mix_replay/distillspec.json",
                                        "AdaSPEC": "distill_mix_replay/adaspec.json"}),
    "draft-step-cuda-graphed-h200": draft_step("cuda_h200/draft_cost_graphed.json"),
    "round-profile-cuda-h200": round_profile(["cuda_h200/round_profile_fixed.json",
                                               "cuda_h200/round_profile_autoregressive.json"]),
    "draft-depth-cuda-h200": draft_depth({24: "cuda_h200/draft_cost_graphed.json", 12: "cuda_h200/draft_cost_graphed_12layers.json",
                                          6: "cuda_h200/draft_cost_graphed_6layers.json"}),
    "cuda-tests-h200": cuda_tests("cuda_h200/test_cuda.log"),
    "width-cost-avx2": width_cost("cpu_avx2/width_cost.json"),
    "width-cost-avx2-wide": width_cost("cpu_avx2/width_cost_wide.json"),
    "bf16-rows-avx2": bf16_rows("cpu_avx2/bf16_rows.json"),
    "serve-load-avx2": serve_load("cpu_avx2/serve_load.json"),
    "serve-load-avx2-rule": serve_load("cpu_avx2/serve_load_rule.json"),
    "serve-load-avx2-rule-bounded": serve_load("cpu_avx2/serve_load_rule_bounded.json"),
    "float32-rows-avx2": float32_rows("cpu_avx2/float32_rows.json"),
    "width-cost-avx2-float32": width_cost("cpu_avx2/width_cost_float32.json"),
    "width-cost-avx2-copies": width_cost("cpu_avx2/width_cost_copies.json"),
    "bench-avx2-copies": copies_runs("cpu_avx2/bench_copies", "cpu_avx2/bench_no_copies"),
    "copies-ab-avx2": copies_ab("cpu_avx2/copies_ab.json"),
    "serve-load-avx2-copies": serve_load("cpu_avx2/serve_load_copies.json", "cpu_avx2/serve_load_copies_humaneval1.json"),
    "serve-load-avx2-copies-targets": serve_load_targets("cpu_avx2/serve_load_copies.json",
                                                         "cpu_avx2/serve_load_copies_humaneval1.json"),
    "serve-round-costs-avx2-copies": serve_round_costs("cpu_avx2/serve_load_copies_humaneval1.json"),
    "draft-step-avx2": draft_step("cpu_avx2/draft_cost.json"),
    "draft-step-avx2-fr65536": draft_step("cpu_avx2/draft_cost_fr65536.json"),
    "fr-coverage-avx2-fr65536": fr_coverage("cpu_avx2/draft_cost_fr65536.json"),
    "width-cost-avx2-fused": width_cost("cpu_avx2/width_cost_fused.json"),
    "seed-claims": seed_claims("seed_claims/greedy", "seed_claims/t07"),
    "seed-claims-greedy": complete_table("seed_claims/greedy"),
    "seed-claims-t07": complete_table("seed_claims/t07"),
    "seed-claims-adasd-cold-start": adasd_cold_start("seed_claims/greedy"),
    "adasd-scope-tune": complete_table("adasd_scope/tune"),
    "adasd-cold-start-tune": complete_table("adasd_cold_start/tune"),
    "adasd-cold-start-decision": cold_start_decision("adasd_cold_start/tune"),
    "seed-claims-greedy-adasd-prior": complete_table("seed_claims/greedy_adasd_prior"),
    "seed-claims-adasd-prior": seed_claims("seed_claims/greedy_adasd_prior", "seed_claims/t07_adasd_prior"),
    "seed-claims-t07-adasd-prior": complete_table("seed_claims/t07_adasd_prior"),
    "seed-claims-t07-adasd-prior-short": cut_short("seed_claims/t07_adasd_prior", "adasd"),
    "serve-load-avx2-fused": serve_load("cpu_avx2/serve_load_fused.json", "cpu_avx2/serve_load_fused_humaneval1.json"),
    "serve-load-avx2-fused-targets": serve_load_targets("cpu_avx2/serve_load_fused.json",
                                                        "cpu_avx2/serve_load_fused_humaneval1.json"),
    "serve-round-costs-avx2-fused": serve_round_costs("cpu_avx2/serve_load_fused_humaneval1.json"),
    "serve-load-avx2-lookup-humaneval1": serve_load("cpu_avx2/serve_load_lookup_humaneval1.json"),
    "serve-load-avx2-auto-humaneval1": serve_load("cpu_avx2/serve_load_auto_humaneval1.json"),
    "serve-load-avx2-terms-mixed1": serve_load("cpu_avx2/serve_load_terms_mixed1.json"),
    "serve-load-avx2-terms-mixed1-off": serve_load("cpu_avx2/serve_load_terms_mixed1_off.json"),
    "serve-load-avx2-defer-tune": serve_load("cpu_avx2/serve_load_defer_tune.json", capped=True),
    "serve-load-avx2-terms-mixed2": serve_load("cpu_avx2/serve_load_terms_mixed2.json", capped=True),
    "serve-load-avx2-terms-mixed2-time": serve_load_time("cpu_avx2/serve_load_terms_mixed2.json", 2, min_batch=2),
    "serve-load-avx2-off2-tune": serve_load("cpu_avx2/serve_load_off2_tune.json", capped=True),
    "serve-load-avx2-off2-tune-time": serve_load_time("cpu_avx2/serve_load_off2_tune.json", 2, min_batch=2),
    "serve-load-avx2-terms-mixed4": serve_load("cpu_avx2/serve_load_terms_mixed4.json", capped=True),
    "serve-load-avx2-terms-mixed4-time": serve_load_time("cpu_avx2/serve_load_terms_mixed4.json", 4, min_batch=4),
    "serve-load-avx2-warmup4-tune": serve_load("cpu_avx2/serve_load_warmup4_tune.json", capped=True),
    "serve-load-avx2-warmup4-tune-time": serve_load_time("cpu_avx2/serve_load_warmup4_tune.json", 4, min_batch=3),
    "serve-load-avx2-sweep": serve_load("cpu_avx2/serve_load_sweep.json", capped=True),
    "serve-load-avx2-sweep-targets": serve_load_targets("cpu_avx2/serve_load_sweep.json"),
    "serve-load-avx2-warmup4": serve_load("cpu_avx2/serve_load_warmup4.json", capped=True),
    "serve-load-avx2-warmup4-time": serve_load_time("cpu_avx2/serve_load_warmup4.json", 4, min_batch=3),
    "serve-load-avx2-warmup1": serve_load("cpu_avx2/serve_load_warmup1.json", capped=True),
    "serve-load-avx2-warmup1-rounds": serve_round_costs("cpu_avx2/serve_load_warmup1.json"),
    "row-padding-avx2": row_padding("cpu_avx2/row_padding.json"),
    "padding-ab-avx2": copies_ab("cpu_avx2/padding_ab_humaneval.json"),
    "padding-ab-avx2-rounds": padding_rounds("cpu_avx2/padding_ab_humaneval_stats.json", "adaedl+lookup"),
    "serve-load-avx2-pad1": serve_load("cpu_avx2/serve_load_pad1.json", capped=True),
    "serve-load-avx2-pad1-tune": serve_load("cpu_avx2/serve_load_pad1_tune.json", capped=True),
    "serve-load-avx2-pad1-tune-rounds": serve_round_costs("cpu_avx2/serve_load_pad1_tune.json"),
    "serve-load-avx2-pad1-tune-widths": serve_rule_widths("cpu_avx2/serve_load_pad1_tune.json", RULE_WIDTHS),
    "serve-load-avx2-warmup1-widths": serve_rule_widths("cpu_avx2/serve_load_warmup1.json", RULE_WIDTHS),
    "serve-load-avx2-lookup": serve_load("cpu_avx2/serve_load_lookup.json"),
    "serve-load-avx2-lookup-time4": serve_load_time("cpu_avx2/serve_load_lookup.json", 4, min_batch=4),
    "serve-load-avx2-first-token-humaneval1": serve_load("cpu_avx2/serve_load_first_token_humaneval1.json"),
    "cheap-draft-avx2-targets": cheap_draft_targets(RESULTS / "cpu_avx2" / "cheap_draft", default_method="adaedl+lookup"),
    "cheap-draft-avx2-time": cheap_draft_time("cpu_avx2/cheap_draft", methods=("adaedl+lookup",)),
    "cheap-draft-avx2": cheap_draft(RESULTS / "cpu_avx2" / "cheap_draft"),
    "cheap-draft-avx2-auto": cheap_draft(RESULTS / "cpu_avx2" / "cheap_draft_auto"),
    "cheap-draft-avx2-auto-vs-adaedl": cheap_draft_versus(RESULTS / "cpu_avx2" / "cheap_draft_auto",
                                                          "marginal:cost=auto+lookup@int4", "adaedl+lookup@int4"),
    "cheap-draft-avx2-fixed-vs-adaedl": cheap_draft_versus(RESULTS / "cpu_avx2" / "cheap_draft_auto",
                                                           "marginal+lookup@int4", "adaedl+lookup@int4"),
    "cheap-draft-avx2-auto-vs-fixed": cheap_draft_versus(RESULTS / "cpu_avx2" / "cheap_draft_auto",
                                                         "marginal:cost=auto+lookup@int4", "marginal+lookup@int4"),
    "price-fit-avx2": price_fit("cpu_avx2/price_fit.json"),
    "price-fit-terms-avx2": price_fit_terms("cpu_avx2/price_fit_terms.json"),
    "cheap-draft-avx2-terms": cheap_draft(RESULTS / "cpu_avx2" / "cheap_draft_terms"),
    "cheap-draft-avx2-terms-vs-one": cheap_draft_versus(RESULTS / "cpu_avx2" / "cheap_draft_terms",
                                                        "marginal:cost=auto+lookup@int4",
                                                        "marginal:cost=auto,terms=1+lookup@int4"),
    "cheap-draft-avx2-terms-vs-adaedl": cheap_draft_versus(RESULTS / "cpu_avx2" / "cheap_draft_terms",
                                                           "marginal:cost=auto+lookup@int4", "adaedl+lookup@int4"),
    "cheap-draft-avx2-one-vs-adaedl": cheap_draft_versus(RESULTS / "cpu_avx2" / "cheap_draft_terms",
                                                         "marginal:cost=auto,terms=1+lookup@int4", "adaedl+lookup@int4"),
    "cheap-draft-avx2-terms-price": cheap_draft_prices("cpu_avx2/cheap_draft_terms"),
    "cheap-draft-avx2-terms-time": cheap_draft_time("cpu_avx2/cheap_draft_terms", methods=(
        "adaedl+lookup", "marginal:cost=auto,terms=1+lookup", "marginal:cost=auto+lookup")),
    "cheap-draft-avx2-price": cheap_draft_prices("cpu_avx2/cheap_draft_auto_price"),
    "cheap-draft-avx2-auto-time": cheap_draft_time("cpu_avx2/cheap_draft_auto", methods=(
        "adaedl+lookup", "marginal+lookup", "marginal:cost=auto+lookup")),
    "serve-scaling-avx2-lookup": serve_scaling("cpu_avx2/serve_load_lookup.json"),
    "serve-scaling-fused": serve_scaling("serve_load_fused.json"),
    "serve-load-avx2-lookup-targets": serve_load_targets("cpu_avx2/serve_load_lookup.json",
                                                         "cpu_avx2/serve_load_lookup_humaneval1.json"),
    "serve-load": serve_load("serve_load_wide.json", "serve_load_wide_humaneval1.json"),
    "serve-load-targets": serve_load_targets("serve_load_wide.json", "serve_load_wide_humaneval1.json"),
    "serve-load-time": serve_load_time("serve_load_wide.json", 8),
    "serve-load-time-before": serve_load_time("serve_load_fill.json", 8),
    "serve-load-joins": serve_load("serve_load_joins.json"),
    "serve-load-joins-targets": serve_load_targets("serve_load_joins.json", "serve_load_fused_humaneval1.json"),
    "serve-load-joins-time": serve_load_time("serve_load_joins.json", 8),
    "serve-load-joins8": serve_load("serve_load_joins8.json"),
    "serve-load-joins8-time": serve_load_time("serve_load_joins8.json", 8),
    "serve-load-joins-long8": serve_load("serve_load_joins_long8.json"),
    "serve-load-ownroom": serve_load("serve_load_ownroom.json"),
    "serve-load-ownroom-long8": serve_load("serve_load_ownroom_long8.json"),
    "serve-load-joins-long8-time": serve_load_time("serve_load_joins_long8.json", 8),
    "serve-load-sweep": serve_load("serve_load_sweep.json", "serve_load_sweep_humaneval1.json", capped=True),
    "serve-load-sweep-targets": serve_load_targets("serve_load_sweep.json", "serve_load_sweep_humaneval1.json"),
    "serve-load-sweep-time": serve_load_time("serve_load_sweep.json", 8),
    "serve-load-sweep-rule": serve_load_rule("serve_load_sweep.json", 8),
    "serve-load-final-targets": serve_load_targets("serve_load_final.json", "serve_load_final_humaneval1.json"),
    "serve-load-final": serve_load("serve_load_final.json", "serve_load_final_humaneval1.json", capped=True),
    "serve-load-final-time": serve_load_time("serve_load_final.json", 8),
    "serve-load-recheck": serve_load("serve_load_recheck.json", "serve_load_recheck_humaneval1.json", capped=True),
    "serve-load-recheck-targets": serve_load_targets("serve_load_recheck.json", "serve_load_recheck_humaneval1.json"),
    "serve-load-recheck-time": serve_load_time("serve_load_recheck.json", 8),
    "serve-load-recheck-rule": serve_load_rule("serve_load_recheck.json", 8),
    "serve-load-fillshare": serve_load("serve_load_fillshare.json", capped=True),
    "serve-load-fillshare-targets": serve_load_targets("serve_load_fillshare.json"),
    "serve-load-fillshare-rule": serve_load_rule("serve_load_fillshare.json", 4),
    "serve-load-fillshare-rule8": serve_load_rule("serve_load_fillshare.json", 8),
    "serve-load-fillshare-fixed": serve_load("serve_load_fillshare_fixed.json", capped=True),
    "serve-load-fillshare-fixed-time4": serve_load_time("serve_load_fillshare_fixed.json", 4, min_batch=4),
    "serve-load-fillshare-fixed-time8": serve_load_time("serve_load_fillshare_fixed.json", 8),
    "serve-load-fused": serve_load("serve_load_fused.json", "serve_load_fused_humaneval1.json"),
    "serve-load-fused-targets": serve_load_targets("serve_load_fused.json", "serve_load_fused_humaneval1.json"),
    "serve-load-fused-time": serve_load_time("serve_load_fused.json", 8),
    "serve-load-kernel": serve_load("serve_load_kernel.json", "serve_load_kernel_humaneval1.json"),
    "serve-load-kernel-targets": serve_load_targets("serve_load_kernel.json", "serve_load_kernel_humaneval1.json"),
    "serve-load-kernel-time": serve_load_time("serve_load_kernel.json", 8),
    "serve-load-calibrated-time": serve_load_time("serve_load_calibrated.json", 8),
    "serve-load-kernel-long8": serve_load("serve_load_kernel_long8.json"),
    "serve-load-kernel-long8-time": serve_load_time("serve_load_kernel_long8.json", 8),
    "draft-context": draft_context("draft_context.json"),
    "prefill-cost": prefill_cost("prefill_cost.json"),
    "prefill-cost-wide": prefill_cost("prefill_cost_wide.json"),
    "int4-rows-wide": int4_rows("int4_rows_wide.json"),
    "batch-draft-step": batch_draft_step("batch_draft_step.json", "batch_draft_step_wide.json"),
    "batch-target-int4-step": batch_draft_step("batch_target_int4_step.json"),
    "distill-real-pair": distill_real_pair("distill_real_pair"),
    "distill-mix": distill_run("distill_mix", DISTILL_MIX_NAMES),
    "distill-target-data": target_responses("distill_target/responses.jsonl", "distill_target"),
    "distill-target": distill_run("distill_target", DISTILL_TARGET_NAMES),
    "distill-target-log": distill_log("distill_target"),
    "distill-target-targets": distill_targets("distill_target", "distill_target_speed", "adaedl", DISTILL_TARGET_NAMES),
    "distill-target-speed": cheap_draft(RESULTS / "distill_target_speed"),
    "distill-target-replay": draft_replay({"stock": "distill_mix_replay/stock.json",
                                           "DistillSpec": "distill_target_replay/distillspec.json",
                                           "AdaSPEC": "distill_target_replay/adaspec.json"}),
    "distill-target3-targets": distill_targets("distill_target", "distill_target_speed3", "adaedl",
                                               DISTILL_TARGET_NAMES),
    "distill-target3-adaspec": draft_vs_draft("distill_target", "distill_target_speed3", "adaedl",
                                              DISTILL_TARGET_NAMES),
    "distill-target3-speed": cheap_draft(RESULTS / "distill_target_speed3"),
    "distill-target4-data": target_responses(("distill_target/responses.jsonl",
                                              "distill_target4/sharegpt_responses.jsonl"), "distill_target4"),
    "distill-target4": distill_run("distill_target4", DISTILL_TARGET4_NAMES),
    "distill-target4-log": distill_log("distill_target4"),
    "distill-k02": distill_run("distill_k02", DISTILL_K02_NAMES),
    "distill-k02-log": distill_logs_side_by_side({"DistillSpec": "distill_target4/reference_log.json",
                                                  "AdaSPEC k = 0.4": "distill_target4/draft_log.json",
                                                  "AdaSPEC k = 0.2": "distill_k02/draft_log.json"}),
    "distill-target4-targets": distill_targets(("distill_target4", "distill_target"), "distill_target4_speed", "adaedl",
                                               DISTILL_TARGET4_NAMES),
    "distill-target4-vs3": draft_vs_draft(("distill_target4", "distill_target"), "distill_target4_speed", "adaedl",
                                          DISTILL_TARGET4_NAMES, base="ds3:int4", new="ds4:int4"),
    "distill-target4-speed": cheap_draft(RESULTS / "distill_target4_speed"),
    "distill-target4-replay": draft_replay({"stock": "distill_mix_replay/stock.json",
                                            "DistillSpec": "distill_target_replay/distillspec.json",
                                            "DistillSpec + ShareGPT": "distill_target4_replay/distillspec.json",
                                            "AdaSPEC + ShareGPT": "distill_target4_replay/adaspec.json"}),
    "distill-target4-adaspec": draft_vs_draft("distill_target4", "distill_target4_speed2", "adaedl",
                                              DISTILL_TARGET4_NAMES),
    "distill-target4-targets2": distill_targets("distill_target4", "distill_target4_speed2", "adaedl",
                                                DISTILL_TARGET4_NAMES),
    "distill-target4-speed2": cheap_draft(RESULTS / "distill_target4_speed2"),
    "shipped-draft-choice": draft_choice("distill_mix_replay/stock.json", SHIPPED_DRAFT_CANDIDATES),
    "shipped-draft-targets": distill_targets("distill_target", "shipped_draft", "adaedl", DISTILL_TARGET_NAMES),
    "shipped-draft-marginal": cheap_draft_versus(RESULTS / "shipped_draft", "marginal@adaspec:int4", "marginal@int4"),
    "shipped-draft": cheap_draft(RESULTS / "shipped_draft"),
    "shipped-draft-turn2-targets": distill_targets((), "shipped_draft_turn2", "adaedl+lookup", DISTILL_TARGET_NAMES),
    "shipped-draft-turn2": cheap_draft(RESULTS / "shipped_draft_turn2"),
    "shipped-draft-gsm8k-targets": distill_targets((), "shipped_draft_gsm8k", "adaedl+lookup", DISTILL_TARGET_NAMES),
    "shipped-draft-gsm8k": cheap_draft(RESULTS / "shipped_draft_gsm8k"),
    "miss-anatomy": miss_anatomy("miss_anatomy.json", {"qwen2.5-coder-0.5b-instruct": "stock",
                                                       "qwen2.5-coder-0.5b-instruct-adaspec": "shipped (AdaSPEC)"}),
    "distill-tvd": distill_run("distill_tvd", DISTILL_TVD_NAMES),
    "distill-tvd-replay": draft_replay({"stock": "distill_mix_replay/stock.json",
                                        "DistillSpec": "distill_target_replay/distillspec.json",
                                        "DistillSpec (TVD)": "distill_tvd_replay/tvd.json"}),
    "distill-mix-log": distill_log("distill_mix"),
    "distill-mix-adaspec": draft_vs_draft("distill_mix", "distill_mix_speed", "adaedl", DISTILL_MIX_NAMES),
    "distill-mix-fixed-adaspec": draft_vs_draft("distill_mix", "distill_mix_fixed", "fixed:best",
                                                DISTILL_MIX_NAMES),
    "distill-mix-targets": distill_targets("distill_mix", "distill_mix_speed", "adaedl", DISTILL_MIX_NAMES),
    "distill-mix-speed": cheap_draft(RESULTS / "distill_mix_speed"),
    "distill-mix-fixed-targets": distill_targets("distill_mix", "distill_mix_fixed", "fixed:best", DISTILL_MIX_NAMES),
    "distill-mix-fixed": cheap_draft(RESULTS / "distill_mix_fixed"),
    "serve-load-history": serve_load("serve_load_int4.json", "serve_load_int4_humaneval1.json", "serve_load_prefill.json",
                                     "serve_load_lazy.json", "serve_load_grouped.json", "serve_load_lazy_humaneval1.json",
                                     "serve_load_lean.json", "serve_load_fill.json", "serve_load_lean_humaneval1.json"),
}


# Which issue a block of targets measures, by the start of its name.
TARGET_ISSUES = {"cheap-draft": "Cheap drafts", "serve-load": "`specadapt serve`", "distill": "AdaSPEC on the real pair",
                 "shipped-draft": "AdaSPEC on the real pair"}
VERDICTS = ("met", "met (tie)", "met within spread", "missed within spread", "missed")


def _table_rows(body: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and data rows of the markdown table in ``body`` (a block of targets holds one)."""
    lines = [line for line in body.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return (cells[0], cells[2:]) if len(cells) > 2 else ([], [])


def _headings(text: str) -> list[tuple[int, str]]:
    """(offset, title) of every heading of ``text`` below its title."""
    return [(m.start(), m.group(1)) for m in re.finditer(r"^#{2,4} (.+)$", text, re.M)]


def _run_context(source: Path) -> tuple[str, str]:
    """(machine, prompts) of a committed run: a cheap_draft.py folder or a serve_load.py file."""
    if source.is_dir():
        recorded = json.loads((source / "settings.json").read_text(encoding="utf-8"))
        machine, settings = recorded.get("environment", {}), recorded["settings"]
        first = settings.get("skip", 0) + 1
        prompts = (f"{', '.join(DATASET_TITLES.get(d, d) for d in settings['datasets'])}: {settings['split']} "
                   f"{first}–{first + settings['n'] - 1}, {settings['repeats']} repeats"
                   if {"datasets", "split", "n", "repeats"} <= settings.keys() else "not recorded")
    else:
        data = json.loads(source.read_text(encoding="utf-8"))
        machine, settings = data.get("machine") or {}, data["settings"]
        prompts = (f"{settings['datasets']}: {settings.get('split', 'test')} from {settings.get('skip', 0) + 1}, "
                   f"{settings.get('repeats', 1)} repeats")
    return (_machine(machine) if "cpu_capability" in machine else "not recorded"), prompts


def targets_index(text: str) -> str:
    """Every block of issue targets in the document, in its order: the run it reads, its machine and prompts, how
    many of its targets were met or missed, and which were missed (the label cells before the measured value, then
    the value). Blocks of targets: ``*-targets`` (a verdict column) and the distillation issue's ``*-adaspec``
    (AdaSPEC against DistillSpec in acceptance, the last column)."""
    heads = _headings(text)
    rows = ["| issue | under the heading | block | machine | prompts | verdicts | missed (measured) |",
            "|---|---|---|---|---|---|---|"]
    for m in BLOCK.finditer(text):
        name = m.group("name")
        issue = next((v for k, v in TARGET_ISSUES.items() if name.startswith(k)), None)
        if issue is None or not name.endswith(("-targets", "-targets2", "-adaspec")):
            continue
        header, cells = _table_rows(BLOCKS[name]())
        if not header:  # a run announced (its prediction committed) whose results are not in yet
            continue
        if name.endswith("-adaspec"):  # the target is the last column's title; measured: timed, then teacher-forced
            verdict = len(header) - 1
            values = [i for i, h in enumerate(header) if h.startswith(("acceptance (timed)", "argmax agreement"))]
            missed = [f"{row[0]} {header[verdict]} ({'; '.join(row[i] for i in values)})"
                      for row in cells if row[verdict].startswith("missed")]
        else:
            verdict = header.index("verdict")
            value = next(i for i, h in enumerate(header)
                         if h in ("measured", "measured (per repeat)", "value (per repeat)", "gain over stock"))
            labels = [i for i, h in enumerate(header) if h in ("dataset", "draft", "target") and i != verdict]
            missed = [" ".join(row[i] for i in labels) + f" ({row[value]})"
                      for row in cells if row[verdict].startswith("missed")]
        counts = {v: sum(1 for row in cells if row[verdict] == v) for v in VERDICTS}
        where = next((h for offset, h in reversed(heads) if offset < m.start()), "")
        machine, prompts = _run_context(BLOCKS[name].source())
        rows.append(f"| {issue} | {where} | `{name}` | {machine} | {prompts} | "
                    + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" | {'; '.join(missed) or '–'} |")
    return "\n".join(rows) + "\n"


# Blocks written from the document itself (its other blocks, where they sit).
DOCUMENT_BLOCKS: dict[str, Callable[[str], str]] = {"targets-index": targets_index}


# ----------------------------------------------------------------------------
# rewriting and checking the document
# ----------------------------------------------------------------------------


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten, and the names of the blocks that changed."""
    changed: list[str] = []

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in BLOCKS and name not in DOCUMENT_BLOCKS:
            raise SystemExit(f"BENCHMARKS.md has a generated block {name!r} that this script does not know; "
                             f"known: {', '.join([*BLOCKS, *DOCUMENT_BLOCKS])}.")
        body = DOCUMENT_BLOCKS[name](text) if name in DOCUMENT_BLOCKS else BLOCKS[name]()
        if body != match.group("body"):
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(fill, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    parser.add_argument("--file", type=Path, default=DOC, help="the document (default: BENCHMARKS.md)")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    new, changed = render(text)
    missing = [n for n in [*BLOCKS, *DOCUMENT_BLOCKS] if f"<!-- generated:{n} -->" not in text]
    if args.check:
        if changed or missing:
            print(f"{args.file}: generated blocks differ from the records: {', '.join(changed) or '-'}"
                  + (f"; missing blocks: {', '.join(missing)}" if missing else "")
                  + ". Run python benchmarks/render_benchmarks.py.", file=sys.stderr)
            return 1
        print(f"{args.file}: {len(BLOCKS) + len(DOCUMENT_BLOCKS)} generated blocks match the committed records.")
        return 0
    if new != text:
        args.file.write_text(new, encoding="utf-8")
    print(f"{args.file}: rewrote {len(changed)} of {len(BLOCKS) + len(DOCUMENT_BLOCKS)} blocks" + (f" ({', '.join(changed)})" if changed else "")
          + (f"; not in the document: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
