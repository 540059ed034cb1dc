"""What one draft step costs at batch size B, in the whole model: the int4 draft as the engine runs it (its layers
multiply by their kept bf16 copy from ``DEQUANTIZE_ROWS`` rows on), the int4 draft with torch's int4 kernel at
every batch size, the int8 draft and the bf16 draft; ``c`` against the target's step at the same B.

    python benchmarks/batch_draft_step.py --threads 2

Why: the server's load rule stops drafting at batch 8 on this CPU because a draft step there costs about 0.4 of
the target's (``serve_load_calibrated.json``), against 0.1 at batch 1. The switch to the bf16 copy at 5 rows was
chosen on single layers (``int4_rows.py``), whose weights stay in the CPU's caches between calls; in the model,
every step streams all of the draft's weights from memory, where 4-bit weights read a quarter of the bytes. This
measures the choice where it matters.

Each variant prefills ``--context`` random tokens per row once; a timed step (draft_cost.py's ``Stepper``) feeds
one token per row through specadapt's ``ModelRunner`` (the draft's lean step, the target's transformers forward with packed attention, as
the engine runs them) and rolls the cache back. All (variant, B) cells are timed round-robin over ``--rounds``
rounds; the median over rounds is reported and ``c`` is the median of the per-round ratios to the target at the
same B. ``--model target`` times the target's own int4 variants the same way (``--target-quant int4``: a
verification of K + 1 tokens is K + 1 rows). Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from statistics import median

import torch

from draft_cost import Stepper  # the same timed, rolled-back step (benchmarks/ is on the path of a script run)
from specadapt.models import quant, zoo
from specadapt.models.hardware import compile_fused_products, machine
from specadapt.models.loading import load_model
from specadapt.models.quant import quantize_model

OUT = Path(__file__).resolve().parent / "results" / "batch_draft_step.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=zoo.DEFAULT_TARGET)
    parser.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    parser.add_argument("--model", choices=["draft", "target"], default="draft", help="whose quantized variants to time")
    parser.add_argument("--batches", default="1,2,4,5,6,8")
    parser.add_argument("--context", type=int, default=192, help="tokens per row in the cache")
    parser.add_argument("--steps", type=int, default=6, help="steps per cell and round (the target: a third)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    target = load_model(args.target, "bfloat16", "cpu")
    role = args.model
    base = load_model(args.draft, "bfloat16", "cpu") if role == "draft" else target
    variants = {f"{role} bf16": base} if role == "draft" else {}
    for scheme in ("int8", "int4") if role == "draft" else ("int4",):
        variants[f"{role} {scheme}"] = copy.deepcopy(base)
        quantize_model(variants[f"{role} {scheme}"], scheme, role=role)
    compile_fused_products(target, *variants.values())
    kernel = f"{role} int4, kernel at every B"
    variants[kernel] = variants[f"{role} int4"]  # the same model; its steps run with the switch turned off
    vocab = target.get_input_embeddings().num_embeddings
    cells = {("target", B): Stepper(target, args.context, 1, vocab, B, rows=B) for B in batches}
    for name, model in variants.items():
        for B in batches:  # as the engine runs each: the draft's lean step, the target's transformers forward
            cells[(name, B)] = Stepper(model, args.context, 1, vocab, B, "lean" if role == "draft" else "hf-packed", rows=B)
    times: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    switch = quant.DEQUANTIZE_ROWS
    for r in range(args.rounds):
        for (name, B), stepper in cells.items():
            quant.DEQUANTIZE_ROWS = 10**9 if name == kernel else switch
            try:
                times[(name, B)].append(stepper.time_steps(max(1, args.steps // 3) if name == "target" else args.steps))
            finally:
                quant.DEQUANTIZE_ROWS = switch
        print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = []
    for (name, B), ts in times.items():
        row = {"model": name, "batch": B, "step_ms": round(median(ts) * 1e3, 2), "rounds_ms": [round(t * 1e3, 2) for t in ts]}
        if name != "target":
            row["c"] = round(median(d / t for d, t in zip(ts, times[("target", B)])), 3)
        rows.append(row)
    names = ["target", *variants]
    print(f"{'model':<32}" + "".join(f"{'B=' + str(B):>16}" for B in batches))
    for name in names:
        cells_ = [next(r for r in rows if r["model"] == name and r["batch"] == B) for B in batches]
        print(f"{name:<32}" + "".join(f"{r['step_ms']:>9.1f} ms" + (f" {r['c']:.2f}" if "c" in r else "      ")
                                      for r in cells_))
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["dequantize_rows"] = switch
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
