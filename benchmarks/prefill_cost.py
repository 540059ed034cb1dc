"""What feeding a prompt costs each model: the target, the int4 draft (as the engine runs it) and the bf16 draft.

    python benchmarks/prefill_cost.py --threads 2

Why: under load the server keeps most rounds target-only, and a request the draft has not seen must be fed to it
(its prompt and what was generated since) before the draft can propose for it. How that catch-up compares with
the target's own prefill decides whether drafting can ever pay back at high batch sizes. Each model feeds one
prompt of each length into an empty cache (``ModelRunner.forward``, the engine's path; the int4 draft multiplies by
its kept dequantized weights from ``wide_rows()`` rows on), round-robin over ``--rounds`` rounds; the median is
reported, and each draft's time as a fraction of the target's. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from statistics import median

import torch

from specadapt.models import zoo
from specadapt.models.hardware import machine
from specadapt.models.loading import load_model
from specadapt.models.quant import quantize_model, wide_rows
from specadapt.models.runner import ModelRunner

OUT = Path(__file__).resolve().parent / "results" / "prefill_cost_wide.json"  # prefill_cost.json: the earlier code


def prefill_s(model, tokens: torch.Tensor) -> float:
    runner = ModelRunner(model, lean_steps=True)
    runner.add_rows(tokens.shape[0])
    start = time.perf_counter()
    runner.forward(tokens)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=zoo.DEFAULT_TARGET)
    parser.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lengths", default="32,64,128,256,512", help="prompt lengths (tokens)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {"target bf16": load_model(args.target, "bfloat16", "cpu"), "draft bf16": load_model(args.draft, "bfloat16", "cpu")}
    models["draft int4"] = copy.deepcopy(models["draft bf16"])
    quantize_model(models["draft int4"], "int4", 32)
    lengths = [int(x) for x in args.lengths.split(",")]
    g = torch.Generator().manual_seed(0)
    prompts = {n: torch.randint(100, 30000, (1, n), generator=g) for n in lengths}
    times: dict[str, dict[int, list[float]]] = {m: {n: [] for n in lengths} for m in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up
            prefill_s(model, prompts[lengths[0]])
        for r in range(args.rounds):
            for n in lengths:
                for name, model in models.items():
                    times[name][n].append(prefill_s(model, prompts[n]))
            print(f"  round {r + 1}/{args.rounds}", flush=True)
    rows = []
    print(f"\n{'tokens':>7}" + "".join(f"{m + ' ms':>16}" for m in models) + f"{'int4 / target':>15}{'bf16 / target':>15}")
    for n in lengths:
        ms = {m: median(times[m][n]) * 1e3 for m in models}
        row = {"tokens": n, **{f"{m} ms": round(v, 1) for m, v in ms.items()},
               "draft int4 / target": round(ms["draft int4"] / ms["target bf16"], 3),
               "draft bf16 / target": round(ms["draft bf16"] / ms["target bf16"], 3)}
        rows.append(row)
        print(f"{n:>7}" + "".join(f"{ms[m]:>16.1f}" for m in models)
              + f"{row['draft int4 / target']:>15.3f}{row['draft bf16 / target']:>15.3f}")
    payload = {"benchmark": "prefill_cost", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "wide_rows": wide_rows(torch.bfloat16, torch.device("cpu")),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": machine(),
               "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
