"""Float32 products of a few rows: ``F.linear`` against the transposed layout, and the int4 kernel with float32
against bf16 activations.

    python benchmarks/float32_rows.py --threads 2 --out benchmarks/results/cpu_avx2/float32_rows.json

Why: on the AVX2 machines measured, MKL multiplied a few float32 rows by a transposed weight (``x @ W.T``, what
``F.linear`` asks for) several times slower than the same product as ``W @ x.T``
(``specadapt.models.hardware.Float32Linear``), and torch's CPU int4 kernel ran many times slower with float32
activations than with bf16 ones (so float32 models' int4 layers compute in bf16: ``models/quant.py``). Times the
linear shapes of the default pair's layers (Qwen2.5-Coder 1.5B and 0.5B), side by side in one process, each cell
the best of ``--repeats`` means. Prints tables and writes JSON with the machine it ran on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.nn import functional as F

from int4_rows import rows_parser, timed  # noqa: E402  (the same timer; benchmarks/ is on the path of a script run)
from specadapt.models.hardware import machine
from specadapt.models.quant import Int4Linear

OUT = Path(__file__).resolve().parent / "results" / "cpu_avx2" / "float32_rows.json"
# (in, out): the 1.5B target's q/o, k/v, gate/up and down; the 0.5B draft's gate/up and down.
SHAPES = ((1536, 1536), (1536, 256), (1536, 8960), (8960, 1536), (896, 4864), (4864, 896))
INT4_SHAPES = ((896, 4864), (4864, 896))


def best(fn, reps: int, repeats: int) -> float:
    return min(timed(fn, reps) for _ in range(repeats))


def main(argv: list[str] | None = None) -> None:
    parser = rows_parser(__doc__, OUT)
    parser.add_argument("--int4-rows", default="1,2,4,8")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    linear, int4 = [], []
    print(f"{'in x out':>11} {'rows':>5} {'F.linear ms':>12} {'W @ x.T ms':>11}")
    with torch.inference_mode():
        for k, n in SHAPES:
            weight = torch.randn(n, k) / k**0.5
            for rows in (int(r) for r in args.rows.split(",")):
                x = torch.randn(rows, k)
                reps = max(5, 100 // rows)
                plain = best(lambda: F.linear(x, weight), reps, args.repeats)
                transposed = best(lambda: torch.mm(weight, x.t()).t().contiguous(), reps, args.repeats)
                linear.append({"in": k, "out": n, "rows": rows, "linear_ms": round(plain, 4),
                               "transposed_ms": round(transposed, 4)})
                print(f"{k:>5}x{n:<5} {rows:>5} {plain:>12.3f} {transposed:>11.3f}")
        print(f"\n{'in x out':>11} {'rows':>5} {'int4 fp32 act ms':>17} {'int4 bf16 act ms':>17} {'fp32 linear ms':>15}")
        for k, n in INT4_SHAPES:
            dense = torch.nn.Linear(k, n, bias=False)
            layer = Int4Linear.from_linear(dense, 32)
            packed, group = layer.packed, layer.group_size
            scales = {torch.float32: layer.scale_and_zero.float(), torch.bfloat16: layer.scale_and_zero.bfloat16()}
            for rows in (int(r) for r in args.int4_rows.split(",")):
                x = torch.randn(rows, k)
                cells = {}
                for dtype, sz in scales.items():
                    xd = x.to(dtype)
                    cells[dtype] = best(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xd, packed, group, sz),
                                        20, args.repeats)
                plain = best(lambda: F.linear(x, dense.weight), 20, args.repeats)
                int4.append({"in": k, "out": n, "rows": rows, "int4_float32_ms": round(cells[torch.float32], 4),
                             "int4_bf16_ms": round(cells[torch.bfloat16], 4), "float32_linear_ms": round(plain, 4)})
                print(f"{k:>5}x{n:<5} {rows:>5} {cells[torch.float32]:>17.3f} {cells[torch.bfloat16]:>17.3f} {plain:>15.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"settings": {"repeats": args.repeats}, "machine": machine(), "linear": linear, "int4": int4}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
