"""A bf16 linear layer's cost against the number of input rows: bf16 as torch runs it, and in float32 from a
copy of the weight (``WideFloat32Linear``'s path from ``WIDE_ROWS`` rows on).

    python benchmarks/bf16_rows.py --threads 2 --out benchmarks/results/cpu_avx2/bf16_rows.json

Why: on a CPU without native bf16 matrix instructions torch multiplies bf16 matrices of more than one row on a
slow path (``specadapt.models.hardware``). Times the four linear shapes of a Qwen2.5-Coder-1.5B layer (q/o, k/v,
gate/up, down), side by side in one process, each cell the best of ``--repeats`` means. Prints a table and
writes JSON with the machine it ran on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from int4_rows import rows_parser, timed  # noqa: E402  (the same timer; benchmarks/ is on the path of a script run)
from specadapt.models.hardware import WIDE_ROWS, float32_weight, machine

OUT = Path(__file__).resolve().parent / "results" / "cpu_avx2" / "bf16_rows.json"
SHAPES = ((1536, 1536), (1536, 256), (1536, 8960), (8960, 1536))  # (in, out)


def main(argv: list[str] | None = None) -> None:
    args = rows_parser(__doc__, OUT).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    print(f"{'shape':>11} {'rows':>5} {'bf16 ms':>9} {'float32 ms':>11}")
    for k, n in SHAPES:
        linear = torch.nn.Linear(k, n, bias=False).to(torch.bfloat16)
        with torch.inference_mode():
            for rows in (int(r) for r in args.rows.split(",")):
                x = torch.randn(rows, k, dtype=torch.bfloat16)
                reps = max(5, 200 // rows)
                cells = [(timed(lambda: torch.nn.functional.linear(x, linear.weight), reps),
                          timed(lambda: torch.nn.functional.linear(x.float(), float32_weight(linear.weight)).bfloat16(), reps))
                         for _ in range(args.repeats)]
                bf16, fp32 = (min(c[i] for c in cells) for i in (0, 1))
                results.append({"in": k, "out": n, "rows": rows, "bf16_ms": round(bf16, 4), "float32_ms": round(fp32, 4)})
                print(f"{k:>5}x{n:<5} {rows:>5} {bf16:>9.3f} {fp32:>11.3f}")
    settings = {"repeats": args.repeats, "wide_rows": WIDE_ROWS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "machine": machine(), "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
