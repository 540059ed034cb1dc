"""Int4 layer cost against the number of input rows: torch's CPU int4 kernel vs a bf16 matmul.

    python benchmarks/int4_rows.py --threads 2

Why: the kernel (``aten._weight_int4pack_mm_for_cpu``) is built for decode steps (a few rows); a batch's steps
feed several rows and a prompt's prefill hundreds. This times, on the two shapes of a Qwen2.5-0.5B MLP
(896 -> 4864 and back), side by side in one process: the kernel, ``Int4Linear`` itself (the kernel below
``wide_rows()`` rows, its kept dequantized weight from there on), and a plain bf16 ``nn.Linear``. Prints a
table and writes JSON. (``results/int4_rows.json`` is the earlier layer, which unpacked its weight per call.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from specadapt.models.quant import Int4Linear, wide_rows

OUT = Path(__file__).resolve().parent / "results" / "int4_rows_wide.json"  # int4_rows.json: the earlier code


def timed(fn, reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def rows_parser(doc: str, out: Path) -> argparse.ArgumentParser:
    """The options the by-rows benchmarks (bf16_rows.py, float32_rows.py) share."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=out)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,128,256,1024")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows_list = [int(r) for r in args.rows.split(",")]
    results = []
    print(f"{'shape':>10} {'rows':>5} {'int4 kernel ms':>15} {'int4 layer ms':>14} {'bf16 ms':>8}")
    for k, n in ((896, 4864), (4864, 896)):
        linear = torch.nn.Linear(k, n, bias=False).to(torch.bfloat16)
        layer = Int4Linear.from_linear(linear, 32)
        packed, group, sz = layer.packed, layer.group_size, layer.scale_and_zero
        with torch.inference_mode():
            for rows in rows_list:
                x = torch.randn(rows, k, dtype=torch.bfloat16)
                reps = max(5, 400 // rows)
                kernel = timed(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz), reps)
                own = timed(lambda: layer(x), reps)
                plain = timed(lambda: linear(x), reps)
                results.append({"in": k, "out": n, "rows": rows, "int4_kernel_ms": kernel, "int4_layer_ms": own,
                                "bf16_ms": plain})
                print(f"{k}x{n:>5} {rows:>5} {kernel:>15.3f} {own:>14.3f} {plain:>8.3f}")
    settings = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                "wide_rows": wide_rows(torch.bfloat16, torch.device("cpu"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
