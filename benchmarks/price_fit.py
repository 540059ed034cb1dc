"""What `marginal:cost=auto` measures: one policy instance through a sequence of prompts, every round's seconds.

`marginal:cost=auto` fits round seconds over its last rounds and drafts with the price the fit gives: with
``terms=1`` one line a + b * K (K: the round's draft steps), every drafted token at b / a; with ``terms=3`` (the
default) a + b * F + d * K + c * C (F: draft-model forwards, C: tokens the draft caught up on), a draft-model
token at (b + d) / a and a looked-up one at (d + c) / a. This runs the default pair with one such method on
prompts of several datasets in turn (one policy instance, as in a session of requests or a benchmark run) and
writes, per generation, each round's K, draft and target seconds, F and C, the policy's prices at the
generation's end (its window may span the generations before), and both fits of that generation's rounds alone.

    python benchmarks/price_fit.py --threads 2 --out benchmarks/results/cpu_avx2/price_fit_terms.json
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
    from specadapt.policies.marginal import PRICING, CostFit, round_terms

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
    rounds: list[tuple[int, float, float, int, int]] = []  # K, draft s, target s, F, C
    observe = method.policy.observe

    def record(outcome) -> None:  # every round the policy reads (a prompt's first round it leaves out)
        if outcome.cost is not None and outcome.cost.target_width == 1:
            F, K, C = round_terms(outcome)
            rounds.append((K, outcome.cost.draft_s, outcome.cost.target_s, F, C))
        observe(outcome)

    method.policy.observe = record
    rows = []
    for name, index in steps:
        example = examples[name][index]
        start, t0 = len(rounds), time.perf_counter()
        result = decoder.generate(example.messages, method=method, max_new_tokens=args.max_new_tokens)
        mine = rounds[start:]
        (priors1, draft1, _), (priors3, draft3, lookup3) = PRICING[1], PRICING[3]
        one, three = CostFit(priors1), CostFit(priors3)
        for K, d, t, F, C in mine:
            one.add((K,), d + t)
            three.add((F, K, C), d + t)
        alone = {"terms1": {"a": one.a, "b": list(one.b), "price": one.price(draft1)},
                 "terms3": {"a": three.a, "b": list(three.b), "price": three.price(draft3),
                            "lookup_price": three.price(lookup3)}}
        policy = method.policy
        rows.append({"dataset": name, "id": example.id, "tokens": len(result.token_ids), "wall_s": time.perf_counter() - t0,
                     "price_at_end": policy.token_cost, "lookup_price_at_end": policy.lookup_cost, "alone": alone,
                     "rounds": [list(r) for r in mine]})
        print(f"{example.id}: {len(mine)} rounds ({sum(F == 0 for _, _, _, F, _ in mine)} looked up alone), prices at "
              f"the end {policy.token_cost:.3f} (lookup {policy.lookup_cost:.3f}); its rounds alone: one term "
              f"{alone['terms1']['price']:.3f}, three terms {alone['terms3']['price']:.3f} "
              f"(lookup {alone['terms3']['lookup_price']:.3f})", flush=True)
    write_json_atomic(args.out, {"settings": {**vars(args), "out": None, "command": "python benchmarks/price_fit.py"},
                                 "machine": machine(), "generations": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
