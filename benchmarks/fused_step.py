"""What fusing the int4 draft's q/k/v and gate/up projections into one kernel call each saves per draft step.

    python benchmarks/fused_step.py --threads 2

The lean step (``models/decode_step.py``) calls one int4 layer for q/k/v and one for gate/up (``quant.fused_layer``)
where quantization could fuse them, as it does the default draft's. A one-token step of the 0.5B draft spends much
of a small projection's time on the call itself: its key and value projections are 128 outputs wide. Here the same
runner (draft_cost.py's ``Stepper``: a prefilled cache, one timed block per row, rolled back) runs its step with
the fused layers and with the parts, alternating per round, at each batch size and block length; the target is
timed beside it for ``c``. The logits of the two ways are compared on the same input (the kernel computes each
output column alone, so they should be equal). Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import median

import torch

from draft_cost import Stepper  # benchmarks/ is on the path of a script run
from specadapt.models import zoo
from specadapt.models.hardware import machine
from specadapt.models.loading import load_model
from specadapt.models.quant import quantize_model

OUT = Path(__file__).resolve().parent / "results" / "fused_step.json"


def same_logits(stepper: Stepper, fused: list) -> float:
    """Largest difference between the fused and unfused step's logits on one block."""
    lean, runner = stepper.runner.lean, stepper.runner
    out = []
    for layers in (fused, [(None, None)] * len(fused)):
        lean.fused = layers
        logits, _ = runner.forward(stepper.tokens[0], keep=stepper.n)
        runner.keep_tail(stepper.n, stepper.keep)
        out.append(logits)
    lean.fused = fused
    return (out[0] - out[1]).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=zoo.DEFAULT_TARGET)
    parser.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    parser.add_argument("--shapes", default="1x1,1x2,1x4,2x1,4x1,8x1", help="ROWSxTOKENS blocks to time")
    parser.add_argument("--context", type=int, default=256, help="tokens per row in the cache")
    parser.add_argument("--steps", type=int, default=20, help="draft steps per cell and round (the target: a quarter)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_model(args.target, "bfloat16", "cpu")
    draft = load_model(args.draft, "bfloat16", "cpu")
    quantize_model(draft, "int4")
    vocab = target.get_output_embeddings().weight.shape[0]
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    rows = {}
    for B, n in shapes:
        step = Stepper(draft, args.context, n, vocab, seed=B, forward="lean", rows=B)
        fused = step.runner.lean.fused
        if not step.runner.lean.fused_layers():
            raise SystemExit("the draft's projections were not fused: nothing to compare")
        tstep = Stepper(target, args.context, n, vocab, seed=B, forward="hf-packed", rows=B)
        times = {"fused": [], "parts": [], "target": []}
        for r in range(args.rounds):
            order = ("fused", "parts") if r % 2 == 0 else ("parts", "fused")
            for way in order:
                step.runner.lean.fused = fused if way == "fused" else [(None, None)] * len(fused)
                times[way].append(step.time_steps(args.steps) * 1e3)
            times["target"].append(tstep.time_steps(max(1, args.steps // 4)) * 1e3)
        step.runner.lean.fused = fused
        ratios = [f / p for f, p in zip(times["fused"], times["parts"])]
        rows[f"{B}x{n}"] = {
            "rows": B, "tokens": n,
            "fused_ms": median(times["fused"]), "parts_ms": median(times["parts"]), "target_ms": median(times["target"]),
            "ratio": median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "c_fused": median(f / t for f, t in zip(times["fused"], times["target"])),
            "c_parts": median(p / t for p, t in zip(times["parts"], times["target"])),
            "max_logit_difference": same_logits(step, fused),
            "per_round_ms": times,
        }
        row = rows[f"{B}x{n}"]
        print(f"{B} row(s) x {n} token(s): fused {row['fused_ms']:.2f} ms, parts {row['parts_ms']:.2f} ms, "
              f"ratio {row['ratio']:.3f} ({row['ratio_range'][0]:.3f}-{row['ratio_range'][1]:.3f}), "
              f"c {row['c_fused']:.3f} vs {row['c_parts']:.3f}, max logit difference {row['max_logit_difference']:g}",
              flush=True)
    payload = {"benchmark": "fused_step", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "environment": machine(), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
