"""What `marginal:cost=auto` measures: one policy instance through a sequence of prompts, every round's seconds.

`marginal:cost=auto` fits round seconds = a + b * K over its last rounds (K: the round's draft steps) and drafts
with cost = b / a. This runs the default pair with that method on prompts of several datasets in turn (one
policy instance, as in a session of requests or a benchmark run) and writes, per generation, each round's K,
draft and target seconds, the policy's price at the generation's end (its window may span the generations
before), and the same line fitted to that generation's rounds alone. Prompt lookup makes some draft steps free
(a looked-up token costs no draft forward), so a round's seconds grow less with K where lookup proposes much.

    python benchmarks/price_fit.py --threads 2 --out benchmarks/results/cpu_avx2/price_fit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_SEQUENCE = "mt-bench:0,gsm8k:0,humaneval:0,mt-bench:1,humaneval:1,gsm8k:1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="marginal:cost=auto+lookup")
    parser.add_argument("--sequence", default=DEFAULT_SEQUENCE, help="DATASET:INDEX,... prompts of --split, in order")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from specadapt.api import SpecDecoder
    from specadapt.bench.datasets import load_dataset
    from specadapt.io import write_json_atomic
    from specadapt.methods import make_method
    from specadapt.models.hardware import compile_fused_products, machine
    from specadapt.policies.marginal import AUTO_PRIOR, CostFit

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = [(name, int(index)) for name, _, index in (part.partition(":") for part in args.sequence.split(","))]
    examples = {name: load_dataset(name, max(i for n, i in steps if n == name) + 1, args.split)
                for name in dict.fromkeys(n for n, _ in steps)}
    decoder = SpecDecoder.from_pretrained()
    compile_fused_products(decoder.target, decoder.draft)  # no kernel compiled inside a timed round
    method = make_method(args.method)
    if not method.policy.reads_cost:
        parser.error(f"{args.method!r} does not measure its price (use marginal:cost=auto, with or without +lookup)")
    rounds: list[tuple[int, float, float]] = []
    observe = method.policy.observe

    def record(outcome) -> None:  # every round the policy reads (a prompt's first round it leaves out)
        if outcome.cost is not None and outcome.cost.target_width == 1:
            rounds.append((outcome.block.K, outcome.cost.draft_s, outcome.cost.target_s))
        observe(outcome)

    method.policy.observe = record
    rows = []
    for name, index in steps:
        example = examples[name][index]
        start, t0 = len(rounds), time.perf_counter()
        result = decoder.generate(example.messages, method=method, max_new_tokens=args.max_new_tokens)
        mine = rounds[start:]
        a, b = CostFit(AUTO_PRIOR).line([(K, d + t) for K, d, t in mine])
        rows.append({"dataset": name, "id": example.id, "tokens": len(result.token_ids), "wall_s": time.perf_counter() - t0,
                     "price_at_end": method.policy.token_cost, "alone": {"a": a, "b": b, "price": b / a},
                     "rounds": [list(r) for r in mine]})
        print(f"{example.id}: {len(mine)} rounds, price at the end {method.policy.token_cost:.3f}, "
              f"its rounds alone {b / a:.3f} (a = {a:.3f} s, b = {b:.3f} s)", flush=True)
    write_json_atomic(args.out, {"settings": {**vars(args), "out": None, "command": "python benchmarks/price_fit.py"},
                                 "machine": machine(), "generations": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
