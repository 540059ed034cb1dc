"""Replay draft-length policies on a greedy `specadapt bench` run: how close is each stopping rule to the best
possible one, and which setting would have been fastest?

    python benchmarks/replay_stopping.py benchmarks/results/bench_qwen_greedy
    python benchmarks/replay_stopping.py RUN --methods fixed:8,specdecpp:threshold=0.9 --datasets humaneval

For every example with a target-only record, the target's greedy output is re-tokenised and one teacher-forced
draft pass is made over it (``specadapt.bench.replay``); every method is then replayed on it: its lossless
drafting methods, fixed K from 1 to 10, SpecDec++ thresholds 0.1 to 0.98 (built-in head, or ``--head``) and the oracle that drafts exactly up to
the first rejection (no stopping rule can beat it), plus ``--methods``. No generation is timed here.

Timing: per dataset, a cost model (seconds = a·drafted + b·rounds + c·prompt tokens) is fitted on the run's
measured lossless drafting generations (target-only ones too if it measured fewer than two drafting methods). Modelled speedup = mean over examples of the measured target-only seconds
÷ the modelled seconds of the replayed counts. Two checks are printed for each method the run measured: the
measured speedup beside the model applied to the *measured* counts (the cost model's error), and replayed vs
measured rounds (the replay's; in bf16 a speculative method's text can differ from target-only's a little).

``--draft`` replays another draft over the same target outputs (a distilled draft against the stock one: the
oracle bounds what any stopping rule could get from each).

Writes ``replay.json`` (per dataset: cost model, per-method rows, every example's replayed counts) into the
run folder, or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

import torch
from tqdm import tqdm

from specadapt.bench.replay import CostModel, make_trajectory, replay, replay_oracle
from specadapt.bench.report import BASELINE
from specadapt.bench.runner import load_examples, load_settings, parse_methods, read_records
from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.stats import RequestStats

ORACLE = "oracle"
THRESHOLDS = [h / 10 for h in range(1, 10)] + [0.95, 0.98]  # a head trained with reject weight 6 is pessimistic


def sweep(head: str = "") -> list[str]:
    """Fixed K 1..10 and SpecDec++ thresholds 0.1..0.98 (with ``head``, else the built-in head)."""
    prefix = f"specdecpp:head={head}," if head else "specdecpp:"
    return [f"fixed:{k}" for k in range(1, 11)] + [f"{prefix}threshold={h:g}" for h in THRESHOLDS]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a `specadapt bench` output folder (greedy)")
    p.add_argument("--methods", default="", help="extra methods to replay, as for `specadapt bench --methods` "
                   "(';'-separated when a method's settings contain commas)")
    p.add_argument("--no-sweep", action="store_true", help="replay only the run's methods, --methods and the oracle")
    p.add_argument("--head", default="", help="acceptance head folder for the SpecDec++ threshold sweep "
                   "(default: the built-in head)")
    p.add_argument("--datasets", default="", help="only these datasets (default: all of the run's)")
    p.add_argument("--out", type=Path, help="JSON output (default: RUN/replay.json)")
    p.add_argument("--draft", default="", help="replay with this draft instead of the run's (a distilled one, say), "
                   "quantized as the run's was; the cost model still comes from the run's generations, so it fits a draft "
                   "of the same architecture and quantization")
    p.add_argument("--costs", type=Path, help="fit the cost model on this `specadapt bench` folder's generations instead "
                   "of RUN's (a run timed with newer code, same pair and datasets); the modelled speedups keep RUN's "
                   "target-only seconds as their base, so they compare methods with each other, not across runs")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def measured_run(folder: Path) -> tuple[list[dict], list[str]]:
    """A `specadapt bench` folder's records and the lossless drafting methods it measured."""
    try:
        run = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        sys.exit(f"error: {folder} holds no settings.json; pass a `specadapt bench` output folder.")
    methods = [m for m in run["settings"]["methods"] if m != BASELINE and run["methods"][m]["lossless"]]
    return read_records(folder), methods


def main(argv=None) -> int:
    args = parse_args(argv)
    records, measured = measured_run(args.run)
    cost_records, cost_measured = measured_run(args.costs) if args.costs else (records, measured)
    settings = load_settings(args.run)  # its --dataset-file paths are relative to the run folder
    if settings.temperature != 0:
        sys.exit("error: replay needs a greedy run (temperature 0): only then is every lossless method's output "
                 "the target's own.")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        extra = [m for m in parse_methods(args.methods) if m != BASELINE] if args.methods.strip() else []
        labels = list(dict.fromkeys(measured + (sweep(args.head) if not args.no_sweep else []) + extra))
        methods = {label: make_method(label) for label in labels}  # one instance per label, as in the run
    except SpecAdaptError as exc:
        sys.exit(f"error: {exc}")
    wanted = {d.strip() for d in args.datasets.split(",") if d.strip()} or set(settings.datasets) | {"file"}

    from specadapt.api import SpecDecoder

    # The run's own models: its draft's and target's quantization too (float for runs recorded before those existed).
    decoder = SpecDecoder.from_pretrained(settings.target, args.draft or settings.draft, dtype=settings.dtype, device=settings.device,
                                          draft_quant=settings.draft_quant, draft_group_size=settings.draft_group_size,
                                          target_quant=settings.target_quant, target_group_size=settings.target_group_size)
    by_key = {(r["dataset"], r["example_id"], r["method"]): r for r in records if r["repeat"] == 0}
    examples = [e for e in load_examples(settings) if e.dataset in wanted and (e.dataset, e.id, BASELINE) in by_key]
    if not examples:
        sys.exit(f"error: no target-only records in {args.run} for datasets {sorted(wanted)}.")
    eos = decoder.engine.eos_token_ids
    eos_id = decoder.tokenizer.eos_token_id if decoder.tokenizer.eos_token_id in eos else eos[0]
    results: dict[str, dict] = {}
    retokenised_off = 0
    for example in tqdm(examples, desc="replay", unit="example"):
        base = by_key[(example.dataset, example.id, BASELINE)]
        out_ids = decoder.tokenizer.encode(base["text"], add_special_tokens=False)
        if base["finish_reason"] == "eos":
            out_ids.append(eos_id)
        retokenised_off += len(out_ids) != base["tokens"]
        traj = make_trajectory(decoder.draft, decoder.encode(example.messages), out_ids,
                               settings.max_new_tokens_for(example.dataset), eos)
        rows = results.setdefault(example.dataset, {"examples": []})["examples"]
        replayed = {}
        for label, method in list(methods.items()):
            try:
                replayed[label] = replay(method, traj)
            except SpecAdaptError as exc:  # e.g. a head for another draft: leave the method out
                tqdm.write(f"skipping {label}: {exc}")
                del methods[label]
        replayed[ORACLE] = replay_oracle(traj)
        rows.append({"id": example.id, "base_wall_s": base["wall_s"], "tokens": len(out_ids),
                     "replayed": {k: counts(v.to_dict()) for k, v in replayed.items()},
                     "measured": {m: by_key[(example.dataset, example.id, m)] for m in measured
                                  if (example.dataset, example.id, m) in by_key}})
    summary = {ds: summarize(ds, data["examples"], cost_records, cost_measured) for ds, data in results.items()}
    out = args.out or args.run / "replay.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(args.run), "draft": args.draft or settings.draft,
                               "costs_from": str(args.costs or args.run),
                               "retokenised_length_mismatches": retokenised_off,
                               "datasets": summary}, indent=1), encoding="utf-8")
    for ds, s in summary.items():
        print(format_table(ds, s))
    print(f"\n{retokenised_off} of {len(examples)} outputs re-tokenised to another length. Written: {out}")
    return 0


COUNTS = ("prompt_tokens", "rounds", "drafted", "accepted")  # what the cost model and the tables need


def counts(d: dict) -> dict:
    return {k: d[k] for k in COUNTS}


def _stats(d: dict) -> RequestStats:
    return RequestStats(**counts(d))


def summarize(dataset: str, examples: list[dict], records: list[dict], measured: list[str]) -> dict:
    # Drafting generations only: on CPU a one-token target step costs more than a short verification, so
    # target-only ones would raise the per-round cost and undercharge drafting. They are the fallback when the
    # run measured fewer than two drafting methods (too few draft lengths to separate the two costs).
    drafting = [r for r in records if r["dataset"] == dataset and r["method"] in measured and r["drafted"] > 0]
    fit_on = drafting if len({r["method"] for r in drafting}) >= 2 else [
        r for r in records if r["dataset"] == dataset and r["method"] in (*measured, BASELINE)]
    cost = CostModel.fit(fit_on)
    table = {}
    for label in [k for k in examples[0]["replayed"] if all(k in e["replayed"] for e in examples)]:
        speedups = [e["base_wall_s"] / cost.seconds(_stats(e["replayed"][label])) for e in examples]
        rep = [e["replayed"][label] for e in examples]
        row = {"modelled_speedup": mean(speedups),
               "mean_draft_length": sum(r["drafted"] for r in rep) / sum(r["rounds"] for r in rep),
               "acceptance_rate": sum(r["accepted"] for r in rep) / max(1, sum(r["drafted"] for r in rep)),
               "rounds": sum(r["rounds"] for r in rep)}
        have = [e for e in examples if label in e["measured"]]
        if have:
            row["measured_speedup"] = mean(e["base_wall_s"] / e["measured"][label]["wall_s"] for e in have)
            row["model_on_measured_counts"] = mean(
                e["base_wall_s"] / cost.seconds(_stats(e["measured"][label])) for e in have)
            row["measured_rounds"] = sum(e["measured"][label]["rounds"] for e in have)
        table[label] = row
    fixed = {k: v for k, v in table.items() if k.startswith("fixed:")}
    best_fixed = max(fixed, key=lambda k: fixed[k]["modelled_speedup"]) if fixed else None
    return {"examples": len(examples), "cost_model": vars(cost), "best_fixed": best_fixed, "methods": table,
            "replayed": {e["id"]: e["replayed"] for e in examples}}


def format_table(dataset: str, s: dict) -> str:
    c, best = s["cost_model"], s["best_fixed"]
    ref = s["methods"][best]["modelled_speedup"] if best else None
    lines = [f"\n## {dataset} ({s['examples']} examples): cost model {c['per_drafted']:.3f} s/drafted + "
             f"{c['per_round']:.3f} s/round + {c['per_prompt_token'] * 1000:.2f} ms/prompt token; best fixed K: {best}",
             "", "| method | draft len | acceptance | modelled speedup | vs best fixed | measured | model on measured "
             "counts | rounds replayed / measured |", "|---|---|---|---|---|---|---|---|"]
    for label, r in sorted(s["methods"].items(), key=lambda kv: -kv[1]["modelled_speedup"]):
        vs = f"{r['modelled_speedup'] / ref:.3f}" if ref else ""
        meas = (f"{r['measured_speedup']:.2f}×", f"{r['model_on_measured_counts']:.2f}×",
                f"{r['rounds']} / {r['measured_rounds']}") if "measured_speedup" in r else ("", "", "")
        lines.append(f"| `{label}` | {r['mean_draft_length']:.2f} | {r['acceptance_rate']:.1%} | "
                     f"{r['modelled_speedup']:.2f}× | {vs} | {meas[0]} | {meas[1]} | {meas[2]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
