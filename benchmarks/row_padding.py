"""What padding the rows of a float32 ``weight @ x.T`` product to a multiple of 8 saves, on the default target's
layer shapes (``specadapt.models.hardware.padded_rows``): on a CPU without native bf16, a verification block or a
batch of 9 or more rows multiplies from the target's float32 copies this way, and MKL's cost there is a sawtooth
in the rows (a multiple of 8 the cheapest).

    python benchmarks/row_padding.py --out benchmarks/results/cpu_avx2/row_padding.json

For each row count, the product over q/o (hidden x hidden), k/v (kv x hidden), gate/up (intermediate x hidden)
and down (hidden x intermediate) with random float32 weights of the target's shapes, as is (rows unpadded) and
padded to the next multiple of 8, interleaved over ``--rounds`` rounds; the median per row count (ms for one
pass over the four shapes). Writes JSON with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "row_padding.json"


def main(argv: list[str] | None = None) -> None:
    from specadapt.models import zoo
    from specadapt.models.hardware import PAD_ROWS, machine
    from specadapt.models.loading import resolve

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=zoo.DEFAULT_TARGET, help="whose layer shapes (its config.json only)")
    p.add_argument("--rows", default="8-33", help="row counts, FIRST-LAST")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve(args.target)[0])
    hidden, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    weights = [torch.randn(o, i) for o, i in ((hidden, hidden), (kv, hidden), (inter, hidden), (hidden, inter))]
    first, last = (int(v) for v in args.rows.split("-"))
    counts = list(range(first, last + 1))
    padded_to = {n: -(-n // PAD_ROWS) * PAD_ROWS for n in counts}  # every count, the library's range or not
    times: dict[tuple[int, bool], list[float]] = {(n, pad): [] for n in counts for pad in (False, True)}
    with torch.inference_mode():
        for r in range(args.rounds):
            for n in counts:
                for pad in ((False, True) if r % 2 == 0 else (True, False)):
                    m = padded_to[n] if pad else n
                    xs = [torch.randn(m, w.shape[1]) for w in weights]
                    start = time.perf_counter()
                    for w, x in zip(weights, xs):
                        torch.mm(w, x.t())
                    times[(n, pad)].append(time.perf_counter() - start)
    rows = [{"rows": n, "as_is_ms": 1000 * median(times[(n, False)]), "padded_ms": 1000 * median(times[(n, True)]),
             "padded_to": padded_to[n]} for n in counts]
    print(f"{'rows':>5} {'as is ms':>9} {'padded ms':>10} {'padded to':>10}")
    for row in rows:
        print(f"{row['rows']:>5} {row['as_is_ms']:>9.1f} {row['padded_ms']:>10.1f} {row['padded_to']:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
    settings["shapes"] = [list(w.shape) for w in weights]
    args.out.write_text(json.dumps({"settings": settings, "machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
