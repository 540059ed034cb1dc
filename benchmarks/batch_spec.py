"""Does any draft length pay at batch size B on this CPU? The engine alone (no server, no load rule), B prompts
decoded together, target-only against fixed draft lengths and adaptive methods, in one process.

    python benchmarks/batch_spec.py --threads 2

Why: the server at 8 clients ties target-only at best (``serve_load_final.json``: 0.97), because its load rule
keeps most rounds at 8 rows target-only, and the rounds it drafts there make tokens no faster than target-only
ones. That leaves open whether a fixed, short draft would pay at 8 rows if the rule let it (a rule's mistake) or
whether no draft length does on this CPU (the verification's cost at 8 rows). This measures it without the
server: no HTTP, no clients sharing the two cores, no joining prompts, no rule.

For each batch size in ``--batches`` and each repeat, every method in ``--methods`` decodes the same B prompts
(``--skip``+1.. of ``--dataset``'s ``--split``, chat-formatted, greedy, ``--max-new-tokens`` each) as one batch
(``engine.batch``: a fresh batch's prompts are prefilled in its first round); methods in an order rotated per
repeat and batch size, after a warm-up batch per method. Per round: rows, draft steps, seconds (``step()``'s wall
time), tokens emitted. Reported: tokens/s over the whole batch (prefill included), and over its steady rounds
(after the first, at all B rows: the server's rounds at a full batch), each ÷ target-only's at the same B and
repeat; the outputs' identity with target-only's (bf16: a different pass shape may round a near-tie the other
way). Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import mean, stdev

import torch

OUT = Path(__file__).resolve().parent / "results" / "batch_spec.json"
BASE = "autoregressive"
KEPT_RULES: dict = {}  # label -> its load rule, for METHOD/auto-kept and METHOD/engine


def round_entry(rec, seconds: float, tokens: int) -> dict:
    """One round of a run's log: what the engine's ``RoundRecord`` says, its wall time and the tokens it emitted."""
    return {"rows": rec.rows, "K": rec.K, "seconds": seconds, "draft_s": rec.draft_s, "target_s": rec.target_s,
            "prefill_s": rec.prefill_s, "tokens": tokens, "drafted": sum(rec.drafted), "accepted": sum(rec.accepted)}


def run_batch(engine, name: str, prompts: list[list[int]], max_new_tokens: int) -> dict:
    """Decode ``prompts`` as one batch with the method ``name`` (``METHOD/auto``: under the server's load rule, a
    fresh one; ``METHOD/auto-kept``: under one rule kept over the label's every batch); the per-round log and every
    request's output. (``batch_spec_ride.json`` measured riding, commit 3e6feed, since reverted: its
    ``METHOD/noride`` ran without it. ``batch_spec_window.json`` measured a draft reading a window of each prompt,
    commit b043fdd, since reverted: a ``~W`` ending.)"""
    from specadapt.engine import RequestConfig
    from specadapt.methods import make_method

    spec, _, variant = name.partition("/")
    method, cap, rule = make_method(spec), None, None
    if variant in ("engine", "engine-fresh"):
        return run_generate(engine, name, method, prompts, max_new_tokens)
    if variant.startswith("auto"):  # the server's load rule, as its scheduler applies it
        from specadapt.load import AutoLoad, load_capped

        method, cap = load_capped(method)
        # auto-kept: one rule for the label's every batch (the warm-up's included), as a long-lived decoder would keep
        rule = KEPT_RULES.setdefault(name, AutoLoad()) if variant == "auto-kept" else AutoLoad()
    batch = engine.batch(method)
    requests = [batch.add(ids, RequestConfig(max_new_tokens), seed=0) for ids in prompts]
    rounds = []
    start = time.perf_counter()
    while batch.active:
        before = sum(len(r.output) for r in requests)
        t0 = time.perf_counter()
        if rule is not None:
            batch.admit()
            cap.cap = rule.decide(batch.requests, cap.last_bound(), priced=cap.reads_cost)
        batch.step()
        seconds = time.perf_counter() - t0
        rec = batch.last_round
        if rule is not None:
            rule.observe(rec)
        rounds.append(round_entry(rec, seconds, sum(len(r.output) for r in requests) - before))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rounds": rounds, "outputs": [list(r.output) for r in requests]}


class Timed:
    """A load rule that times the rounds it is told of for the benchmark and otherwise defers to ``inner``."""

    def __init__(self, inner, outputs: list[list[int]]) -> None:
        self.inner, self.outputs, self.rounds = inner, outputs, []
        self.last, self.emitted = time.perf_counter(), 0

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def decide(self, rows, bound, priced=False):
        return self.inner.decide(rows, bound, priced)

    def observe(self, rec) -> None:
        self.inner.observe(rec)
        now, emitted = time.perf_counter(), sum(map(len, self.outputs))
        self.rounds.append(round_entry(rec, now - self.last, emitted - self.emitted))
        self.last, self.emitted = now, emitted


def run_generate(engine, name: str, method, prompts: list[list[int]], max_new_tokens: int) -> dict:
    """The batch through ``engine.generate``, the library's own path, timed per round, under a load rule:
    ``/engine-fresh`` a new one, as ``generate`` makes; ``/engine`` one kept over the label's every batch (the
    warm-up's included), as the first version of ``generate`` kept one per method on the engine."""
    from specadapt.engine import RequestConfig
    from specadapt.load import AutoLoad

    outputs: list[list[int]] = [[] for _ in prompts]
    inner = AutoLoad() if name.endswith("/engine-fresh") else KEPT_RULES.setdefault(name, AutoLoad())
    rule = Timed(inner, outputs)
    start = time.perf_counter()
    engine.generate(prompts, method, RequestConfig(max_new_tokens), lambda i, ids: outputs[i].extend(ids), rule)
    return {"wall_s": time.perf_counter() - start, "rounds": rule.rounds, "outputs": outputs}


def steady(rounds: list[dict], B: int) -> tuple[int, float]:
    """Tokens and seconds of the rounds after the first in which all B rows ran."""
    kept = [r for r in rounds[1:] if r["rows"] == B]
    return sum(r["tokens"] for r in kept), sum(r["seconds"] for r in kept)


def summarize(records: list[dict], methods: list[str]) -> list[dict]:
    """Per (batch size, method, in the order of ``methods``): tokens/s overall and steady, each ÷ target-only's per
    repeat (mean and spread), draft steps and tokens per row per steady round, acceptance, outputs identical to target-only's."""
    rows = []
    for B in dict.fromkeys(r["batch"] for r in records):
        at = [r for r in records if r["batch"] == B]
        base = {r["repeat"]: r for r in at if r["method"] == BASE}
        for method in methods:
            mine = [r for r in at if r["method"] == method]
            row = {"batch": B, "method": method, "repeats": len(mine)}
            for key in ("tokens_per_s", "steady_tokens_per_s"):
                row[key] = mean(r[key] for r in mine)
                ratios = [r[key] / base[r["repeat"]][key] for r in mine]
                row[key.replace("tokens_per_s", "ratio")] = mean(ratios)
                row[key.replace("tokens_per_s", "ratio_per_repeat")] = ratios
                row[key.replace("tokens_per_s", "ratio_spread")] = stdev(ratios) if len(ratios) > 1 else None
            kept = [x for r in mine for x in r["rounds"][1:] if x["rows"] == B]
            row["steady_rounds"] = len(kept)
            row["steps_per_round"] = mean(x["K"] for x in kept) if kept else 0.0
            row["tokens_per_row_round"] = sum(x["tokens"] for x in kept) / (B * len(kept)) if kept else 0.0
            row["seconds_per_round"] = mean(x["seconds"] for x in kept) if kept else None
            drafted = sum(x["drafted"] for r in mine for x in r["rounds"])
            row["acceptance"] = sum(x["accepted"] for r in mine for x in r["rounds"]) / drafted if drafted else None
            row["identical"] = sum(r["identical"] for r in mine)
            row["outputs"] = sum(len(r["outputs"]) for r in mine)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    from specadapt import SpecDecoder
    from specadapt.bench.datasets import load_dataset
    from specadapt.io import recorded_args, write_json_atomic
    from specadapt.models.hardware import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--skip", type=int, default=26, help="start after the first SKIP prompts of --split")
    parser.add_argument("--batches", default="4,8")
    parser.add_argument("--methods", default=f"{BASE},fixed:1,fixed:2,fixed:3,adaedl,adaedl+lookup",
                        help="comma-separated; METHOD/engine-fresh runs METHOD through engine.generate as it ships (a new "
                        "load rule per batch), METHOD/engine the same under one rule kept over the label's batches; "
                        "METHOD/auto and METHOD/auto-kept ran the rule in this script's own loop before the engine had it")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    names = args.methods.split(",")
    if names[0] != BASE:
        parser.error(f"--methods must start with {BASE} (every ratio is against it)")

    decoder = SpecDecoder.from_pretrained()
    engine = decoder.engine
    examples = load_dataset(args.dataset, args.skip + max(batches), args.split)[args.skip:]
    prompts = [decoder.encode(ex.messages, chat=True) for ex in examples]
    warm = [decoder.encode("def f(x):")] * 2
    for name in names:
        run_batch(engine, name, warm, 8)

    records: list[dict] = []
    for repeat in range(args.repeats):
        for b, B in enumerate(batches):
            shift = (repeat * len(batches) + b) % len(names)
            order = names[shift:] + names[:shift]
            outputs: dict[str, list] = {}
            for position, name in enumerate(order):
                run = run_batch(engine, name, prompts[:B], args.max_new_tokens)
                tokens = sum(map(len, run["outputs"]))
                st_tokens, st_seconds = steady(run["rounds"], B)
                outputs[name] = run["outputs"]
                records.append({"batch": B, "method": name, "repeat": repeat, "order": position,
                                "tokens": tokens, "tokens_per_s": tokens / run["wall_s"],
                                "steady_tokens_per_s": st_tokens / st_seconds if st_seconds else 0.0, **run})
                print(f"r{repeat} B={B} {name}: {tokens / run['wall_s']:.2f} tok/s, steady "
                      f"{records[-1]['steady_tokens_per_s']:.2f} ({len(run['rounds'])} rounds)", flush=True)
            for r in records[-len(names):]:
                r["identical"] = sum(a == b for a, b in zip(r["outputs"], outputs[BASE]))
    summary = summarize(records, names)
    for row in summary:
        print(f"B={row['batch']} {row['method']}: ÷ {BASE} {row['ratio']:.3f} overall, {row['steady_ratio']:.3f} steady "
              f"({', '.join(f'{x:.3f}' for x in row['steady_ratio_per_repeat'])}), {row['steps_per_round']:.2f} steps "
              f"per round, identical {row['identical']}/{row['outputs']}")
    write_json_atomic(args.out, {"settings": recorded_args(args), "machine": machine(), "prompts":
                                 [ex.id for ex in examples], "summary": summary, "records": records})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
