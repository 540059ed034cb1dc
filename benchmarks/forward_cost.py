"""Seconds of one forward pass against the number of tokens it holds, with a KV cache behind them: the cost a
verification of k drafted tokens (k + 1 positions) pays, and a draft step (1 position).

    python benchmarks/forward_cost.py                          # the default pair, bf16, 2 threads
    python benchmarks/forward_cost.py --models qwen2.5-coder-1.5b-instruct --sizes 1,2,4,8

Per model: a random context of ``--context`` tokens is prefilled once; then for each size n, ``--repeats`` passes
of n random tokens are timed (the cache cropped back after each, as the engine does after a verification) and the
median is kept. Why it matters: the replay cost model (``specadapt.bench.replay.CostModel``) is linear in drafted
tokens and rounds, which holds only if these times are, and on CPU a one-token pass can cost more than a two-token
one (matrix-vector kernels), so target-only decoding is not a fair anchor for a verification round. Prints a table
and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median

import torch
from transformers import DynamicCache

from specadapt.models import zoo
from specadapt.models.loading import load_model


def time_forwards(model, context: int, sizes: list[int], repeats: int, vocab: int) -> dict[int, float]:
    cache = DynamicCache()
    with torch.inference_mode():
        model(torch.randint(100, vocab, (1, context)), past_key_values=cache, use_cache=True)
        model(torch.randint(100, vocab, (1, 2)), past_key_values=cache, use_cache=True)  # warm-up, then drop it
        cache.crop(-2)
        out = {}
        for n in sizes:
            times = []
            for _ in range(repeats):
                tokens = torch.randint(100, vocab, (1, n))
                t0 = time.perf_counter()
                model(tokens, past_key_values=cache, use_cache=True)
                times.append(time.perf_counter() - t0)
                cache.crop(-n)
            out[n] = median(times)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=f"{zoo.DEFAULT_TARGET},{zoo.DEFAULT_DRAFT}", help="comma-separated model specs")
    p.add_argument("--sizes", default="1,2,3,4,6,8,10,12,16,20,24,32,48,64", help="tokens per pass")
    p.add_argument("--context", type=int, default=350, help="tokens already in the KV cache")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "forward_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for spec in args.models.split(","):
        model = load_model(spec, args.dtype, "cpu").eval()
        vocab = min(5000, model.config.get_text_config().vocab_size)
        results[spec] = time_forwards(model, args.context, sizes, args.repeats, vocab)
        del model
    names = list(results)
    print(f"median ms per forward pass ({args.dtype}, {args.threads} threads, {args.context} tokens cached)\n")
    print("| tokens | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for n in sizes:
        print(f"| {n} | " + " | ".join(f"{results[m][n] * 1000:.1f}" for m in names) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dtype": args.dtype, "threads": args.threads, "context": args.context,
                                    "repeats": args.repeats, "seconds": results}, indent=1), encoding="utf-8")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
