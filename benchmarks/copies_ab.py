"""End to end, in one process: a bf16 pair on a CPU without native bf16, its target with and without float32 copies
of its weights (``keep_float32_copies``), the fused pass over the bf16 weights for blocks of a few rows
(``use_fused_products``) and the row padding of float32 products (``use_row_padding``), interleaved per example
and repeat.

    python benchmarks/copies_ab.py --settings plain,copies --out benchmarks/results/cpu_avx2/copies_ab.json
    python benchmarks/copies_ab.py --settings copies+fused+padded,copies+fused --methods autoregressive,adaedl+lookup \
        --datasets humaneval --skip 12 --limit 4 --out benchmarks/results/cpu_avx2/padding_ab_humaneval.json

Two ``specadapt bench`` runs (one with ``--no-float32-copies``) compare speedups each against its own target-only,
but their absolute speeds come from different processes, which on this machine differ by more than the effect.
Here one loaded pair runs every (method, copies) cell on the same example back to back, in an order rotated per
example, the setting switched between cells (untimed). ``--settings``: each one ``plain`` (none) or a ``+``-joined
set of ``copies``, ``fused``, ``padded``; the first is the reference (the shipped default on such a CPU:
``copies+fused+padded``). Prints tokens/s per cell and each cell's ratio to target-only in the reference setting,
with the spread over repeats.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean, stdev

import torch

from specadapt import SpecDecoder
from specadapt.bench.datasets import load_dataset
from specadapt.models import zoo
from specadapt.models.hardware import (compile_fused_products, keep_float32_copies, machine, use_fused_products,
                                      use_row_padding, wants_float32_products)

OUT = Path(__file__).resolve().parent / "results" / "cpu_avx2" / "copies_ab.json"
FLAGS = ("copies", "fused", "padded")  # what a setting switches on; the record keys of the same names


def parse_setting(setting: str) -> tuple[bool, bool, bool]:
    """``plain`` or ``copies+fused`` etc. -> (copies, fused, padded)."""
    names = set() if setting == "plain" else set(setting.split("+"))
    if unknown := names - set(FLAGS):
        raise SystemExit(f"unknown setting {setting!r}: use plain or a +-joined set of {', '.join(FLAGS)}")
    return tuple(flag in names for flag in FLAGS)  # type: ignore[return-value]


def setting_name(flags: tuple[bool, ...]) -> str:
    return "+".join(f for f, on in zip(FLAGS, flags) if on) or "plain"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=zoo.DEFAULT_TARGET)
    p.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    p.add_argument("--methods", default="autoregressive,adaedl")
    p.add_argument("--datasets", default="humaneval,mt-bench")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=3, help="N examples of each dataset's split")
    p.add_argument("--skip", type=int, default=0, help="start after the split's first SKIP examples")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settings", default="plain,copies",
                   help=f"plain or +-joined sets of {', '.join(FLAGS)}; the first is the reference")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    settings = [parse_setting(s.strip()) for s in args.settings.split(",")]
    torch.set_num_threads(args.threads)
    decoder = SpecDecoder.from_pretrained(args.target, args.draft, dtype="bfloat16", device="cpu", float32_copies=False)
    if not wants_float32_products(decoder.target.dtype, decoder.target.device):
        raise SystemExit("this CPU has native bf16: the target would keep no float32 copies, nothing to compare")
    compile_fused_products(decoder.target, decoder.draft)
    cells = [(m.strip(), setting) for m in args.methods.split(",") for setting in settings]
    base = ("autoregressive", settings[0])
    if base not in cells:
        raise SystemExit("--methods must include autoregressive (the reference)")
    examples = [e for ds in args.datasets.split(",")
                for e in load_dataset(ds, split=args.split)[args.skip: args.skip + args.limit]]
    decoder.generate(decoder.encode(examples[0].messages), method=cells[-1][0], max_new_tokens=16)  # warm-up
    records = []
    for repeat in range(args.repeats):
        for i, example in enumerate(examples):
            ids = decoder.encode(example.messages)
            shift = (i + repeat) % len(cells)
            for method, setting in cells[shift:] + cells[:shift]:  # rotated: no cell always runs first
                copies, fused, padded = setting
                keep_float32_copies(decoder.target, copies)
                use_fused_products(decoder.target, fused)
                use_row_padding(padded)
                start = time.perf_counter()
                result = decoder.generate(ids, method=method, max_new_tokens=args.max_new_tokens, stop=example.stop)
                wall = time.perf_counter() - start
                records.append({"dataset": example.dataset, "example_id": example.id, "repeat": repeat,
                                "method": method, "copies": copies, "fused": fused, "padded": padded,
                                "tokens": len(result.token_ids), "wall_s": wall, "tokens_per_s": len(result.token_ids) / wall,
                                # where the time went; position_reached[i]: rounds that verified draft position i + 1
                                **{k: getattr(result.stats, k) for k in ("rounds", "drafted", "accepted", "target_time_s",
                                                                         "draft_time_s", "position_reached")}})
                print(f"{example.id} r{repeat} {method} {setting_name(setting)}: {records[-1]['tokens_per_s']:.2f} tok/s",
                      flush=True)
    use_row_padding(True)
    summary = summarize(records, cells)
    print(f"\n{'dataset':<10} {'method':<16} {'setting':<20} {'tok/s':>7} "
          f"{'÷ target-only, ' + setting_name(settings[0]):>34}")
    for row in summary:
        setting = setting_name(tuple(row[f] for f in FLAGS))
        print(f"{row['dataset']:<10} {row['method']:<16} {setting:<20} {row['tokens_per_s']:>7.2f} "
              f"{row['ratio']:>18.3f} ± {row['ratio_spread']:.3f}")
    payload = {"benchmark": "copies_ab", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "machine": machine(), "records": records, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def summarize(records: list[dict], cells: list[tuple[str, tuple[bool, bool, bool]]]) -> list[dict]:
    """Per dataset and cell (method, (copies, fused, padded)): mean tokens/s, and the mean over examples of the
    per-example ratio to target-only in the first cell's setting, per repeat (its spread is the sample standard
    deviation over repeats). Records from before the fused pass or the padding lack those keys (they did not exist:
    False)."""
    rows = []
    base = ("autoregressive", *cells[0][1])
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == dataset]
        tps = {(r["example_id"], r["repeat"], r["method"], *(r.get(f, False) for f in FLAGS)): r["tokens_per_s"]
               for r in mine}
        repeats = sorted({r["repeat"] for r in mine})
        ids = list(dict.fromkeys(r["example_id"] for r in mine))
        for method, flags in cells:
            key = (method, *flags)
            per_repeat = [mean(tps[(e, k, *key)] / tps[(e, k, *base)] for e in ids) for k in repeats]
            rows.append({"dataset": dataset, "method": method, **dict(zip(FLAGS, flags)),
                         "tokens_per_s": mean(tps[(e, k, *key)] for e in ids for k in repeats),
                         "ratio": mean(per_repeat), "ratio_per_repeat": per_repeat,
                         "ratio_spread": stdev(per_repeat) if len(per_repeat) > 1 else 0.0})
    return rows


if __name__ == "__main__":
    main()
