"""Check an engine change against a baseline checkout of the package: same tokens, same speed?

Loads the models once, imports a second copy of specadapt from ``--baseline-src`` (e.g. a ``git worktree``
of the last release, under the module name ``specadapt_baseline``), then for each benchmark prompt and
method runs the baseline engine and the current one on the same token ids, interleaved in alternating
order, ``--repeats`` times. Prints, per method, whether the generated ids were identical on every prompt
and the tokens/s of both (mean over prompts of per-prompt tokens/s, with the spread over repeats), and
writes everything to JSON.

    git worktree add /tmp/baseline <commit>
    python benchmarks/refactor_check.py --baseline-src /tmp/baseline/src --limit 4 --out benchmarks/results/refactor_check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specadapt import RequestConfig, SpecDecoder, make_method
from specadapt.bench.datasets import load_dataset

REPO = Path(__file__).resolve().parents[1]


def load_baseline(src: Path):
    """Import the package found under ``src`` as ``specadapt_baseline`` (its imports are relative)."""
    init = src / "specadapt" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"no specadapt package under {src} (expected {init}).")
    spec = importlib.util.spec_from_file_location("specadapt_baseline", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["specadapt_baseline"] = module
    spec.loader.exec_module(module)
    return module


def baseline_runner(baseline, decoder: SpecDecoder):
    from specadapt_baseline import engine as old  # before the redesign: GenerationConfig, not RequestConfig

    engine = old.SpeculativeEngine(decoder.target, decoder.draft, decoder.tokenizer, decoder.engine.eos_token_ids)
    config_class = getattr(old, "GenerationConfig", None) or old.RequestConfig

    def run(ids: list[int], method: str, max_new_tokens: int):
        return engine.generate([ids], baseline.make_method(method), config_class(max_new_tokens=max_new_tokens))[0]

    return run


def current_runner(decoder: SpecDecoder):
    def run(ids: list[int], method: str, max_new_tokens: int):
        return decoder.engine.generate([ids], make_method(method), RequestConfig(max_new_tokens=max_new_tokens))[0]

    return run


def summarize(records: list[dict], methods: list[str], repeats: int) -> dict:
    """Per method: identical outputs (tokens and rounds) on every prompt and repeat, tokens/s per repeat (mean over
    prompts) of both versions, and the current / baseline ratio per repeat with its mean and standard deviation."""
    summary = {}
    for method in methods:
        def of(version, repeat=None):
            return [r for r in records if r["method"] == method and r["version"] == version
                    and (repeat is None or r["repeat"] == repeat)]

        identical = all(a["token_ids"] == b["token_ids"] and a["rounds"] == b["rounds"]
                        for a, b in zip(of("baseline"), of("current")))
        speed = {v: [statistics.mean(r["tokens_per_s"] for r in of(v, k)) for k in range(repeats)]
                 for v in ("baseline", "current")}
        ratios = [c / b for b, c in zip(speed["baseline"], speed["current"])]
        summary[method] = {"identical_tokens_and_rounds": identical,
                           **{f"{v}_tokens_per_s": s for v, s in speed.items()},
                           "ratio_per_repeat": ratios, "ratio_mean": statistics.mean(ratios),
                           "ratio_sd": statistics.stdev(ratios) if len(ratios) > 1 else None}
    return summary


def print_table(summary: dict, title: str, console: Console) -> None:
    table = Table(title=title)
    for col in ("method", "identical", "baseline tok/s", "current tok/s", "current / baseline per repeat", "mean ± sd"):
        table.add_column(col)
    for method, s in summary.items():
        spread = f" ± {s['ratio_sd']:.3f}" if s.get("ratio_sd") is not None else ""
        table.add_row(method, "yes" if s["identical_tokens_and_rounds"] else "NO",
                      " / ".join(f"{x:.2f}" for x in s["baseline_tokens_per_s"]),
                      " / ".join(f"{x:.2f}" for x in s["current_tokens_per_s"]),
                      " / ".join(f"{x:.3f}" for x in s["ratio_per_repeat"]),
                      f"{statistics.mean(s['ratio_per_repeat']):.3f}{spread}")
    console.print(table)


def show(path: Path) -> None:
    """Print the table of a results file again, recomputed from its records."""
    data = json.loads(path.read_text())
    settings = data["settings"]
    methods = settings["methods"].split(",")
    summary = summarize(data["records"], methods, settings["repeats"])
    prompts = len({r["prompt"] for r in data["records"]})
    print_table(summary, f"{path.name}: current vs baseline engine ({prompts} prompts, {settings['repeats']} repeats, "
                         f"{settings['max_new_tokens']} new tokens, greedy)", Console())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-src", type=Path, help="the baseline checkout's src folder")
    ap.add_argument("--show", type=Path, help="only print the table of this results file (recomputed from its records)")
    ap.add_argument("--datasets", default="humaneval,mt-bench")
    ap.add_argument("--limit", type=int, default=4, help="prompts per dataset")
    ap.add_argument("--methods", default="autoregressive,fixed:4,heuristic,adaedl,adasd-stop,specdecpp")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "refactor_check.json")
    args = ap.parse_args(argv)
    if args.show:
        return show(args.show)
    if args.baseline_src is None:
        ap.error("--baseline-src is required (or --show FILE)")
    torch.set_num_threads(args.threads)
    console = Console()

    decoder = SpecDecoder.from_pretrained()
    runners = {"baseline": baseline_runner(load_baseline(args.baseline_src.resolve()), decoder),
               "current": current_runner(decoder)}
    prompts = [(e.id, decoder.encode(e.messages)) for d in args.datasets.split(",") for e in load_dataset(d, args.limit)]
    methods = args.methods.split(",")
    current_runner(decoder)(prompts[0][1], "fixed:4", 8)  # warm-up
    runners["baseline"](prompts[0][1], "fixed:4", 8)

    records = []
    for repeat in range(args.repeats):
        for p, (pid, ids) in enumerate(prompts):
            for m, method in enumerate(methods):
                order = ["baseline", "current"] if (repeat + p + m) % 2 == 0 else ["current", "baseline"]
                for version in order:
                    start = time.perf_counter()
                    result = runners[version](ids, method, args.max_new_tokens)
                    wall = time.perf_counter() - start
                    records.append({"version": version, "repeat": repeat, "prompt": pid, "method": method,
                                    "token_ids": result.token_ids, "rounds": result.stats.rounds,
                                    "tokens_per_s": len(result.token_ids) / wall})
            console.print(f"repeat {repeat + 1}/{args.repeats}: {pid} done")

    summary = summarize(records, methods, args.repeats)
    print_table(summary, f"current vs baseline engine ({len(prompts)} prompts, {args.repeats} repeats, "
                         f"{args.max_new_tokens} new tokens, greedy)", console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()  # no paths of this machine
                                                 if k not in ("baseline_src", "out", "show")},
                                    "summary": summary, "records": records}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
