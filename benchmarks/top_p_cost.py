"""What top-p costs in sampled decoding, with a full sort of the vocabulary against the nucleus looked for among the
most likely tokens first (``specadapt.sampling.outside_nucleus``), in one process on the same prompts and seeds.

    python benchmarks/top_p_cost.py --threads 2

Top-p runs on every draft step (the draft's q) and on every verified position (the target's p): with a full sort
of a 152K vocabulary per row, that is a cost on the order of a draft step. ``sort`` is the previous implementation (a
full sort per row), ``candidates`` today's (``torch.topk`` of ``NUCLEUS_CANDIDATES`` first, a full sort only for
rows whose nucleus is larger). Both drop exactly the same tokens, so with the same seed the outputs must be
identical, token for token: the run checks it on every generation. Per generation: tokens/s, the seconds spent
choosing the nucleus, and (``candidates``) where each row's nucleus was found. Default method and target-only,
sampling settings ``--sampling`` (temperature/top-p pairs), prompts ``--skip``+1..``--skip``+``--n`` of each
dataset's ``--split``, the variants interleaved per prompt in rotated order, ``--repeats`` times. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean

import torch

OUT = Path(__file__).resolve().parent / "results" / "top_p_cost.json"
VARIANTS = ("sort", "candidates")


def full_sort_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The previous implementation: every row sorted over the whole vocabulary."""
    values, order = probs.sort(dim=-1, descending=True)
    drop = values.cumsum(-1) - values >= top_p
    return drop.scatter(-1, order, drop)


class Timed:
    """``sampling.outside_nucleus`` replaced by a variant that is timed, and (candidates) where each row's nucleus
    was found: among the first candidate set, the second, or by a full sort."""

    def __init__(self, sampling, variant: str) -> None:
        self.sampling, self.variant = sampling, variant
        self.original = sampling.outside_nucleus
        self.seconds, self.calls, self.rows = 0.0, 0, 0
        self.found = [0] * (len(sampling.NUCLEUS_CANDIDATES) + 1)

    def __call__(self, probs: torch.Tensor, top_p: float) -> torch.Tensor:
        t0 = time.perf_counter()
        drop = full_sort_nucleus(probs, top_p) if self.variant == "sort" else self.original(probs, top_p)
        self.seconds += time.perf_counter() - t0
        flat = probs.reshape(-1, probs.shape[-1])
        self.calls += 1
        self.rows += flat.shape[0]
        # Which candidate set held each row's nucleus: outside nucleus_s but inside the generation's wall time, a bias
        # against the candidates' tokens/s (one sum over each row per call; not timed apart).
        if self.variant == "candidates":
            kept = (~drop.reshape(flat.shape)).sum(-1).tolist()
            for n in kept:
                self.found[next((i for i, k in enumerate(self.sampling.NUCLEUS_CANDIDATES) if n <= k),
                                len(self.sampling.NUCLEUS_CANDIDATES))] += 1
        return drop

    def __enter__(self) -> "Timed":
        self.sampling.outside_nucleus = self
        return self

    def __exit__(self, *exc) -> None:
        self.sampling.outside_nucleus = self.original


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    for key in dict.fromkeys((r["sampling"], r["method"]) for r in records):
        mine = [r for r in records if (r["sampling"], r["method"]) == key]
        by = {v: [r for r in mine if r["variant"] == v] for v in VARIANTS}
        tps = {v: mean(r["tokens_per_s"] for r in by[v]) for v in VARIANTS}
        repeats = sorted({r["repeat"] for r in mine})
        per_repeat = [mean(r["tokens_per_s"] for r in by["candidates"] if r["repeat"] == k)
                      / mean(r["tokens_per_s"] for r in by["sort"] if r["repeat"] == k) for k in repeats]
        found = [sum(r["found"][i] for r in by["candidates"]) for i in range(len(by["candidates"][0]["found"]))]
        rows.append({
            "sampling": key[0], "method": key[1], "generations": len(by["candidates"]),
            "tokens_per_s": tps, "ratio": tps["candidates"] / tps["sort"], "ratio_per_repeat": per_repeat,
            "nucleus_ms_per_row": {v: 1e3 * sum(r["nucleus_s"] for r in by[v]) / sum(r["nucleus_rows"] for r in by[v])
                                   for v in VARIANTS},
            "nucleus_share_of_time": {v: sum(r["nucleus_s"] for r in by[v]) / sum(r["wall_s"] for r in by[v])
                                      for v in VARIANTS},
            "found": found, "identical": sum(r["identical"] for r in by["candidates"]),
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    from specadapt import SpecDecoder, sampling
    from specadapt.api import DEFAULT_METHOD
    from specadapt.bench.datasets import load_dataset
    from specadapt.engine import RequestConfig
    from specadapt.io import recorded_args, write_json_atomic
    from specadapt.methods import make_method
    from specadapt.models.hardware import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="humaneval,mt-bench,gsm8k")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--skip", type=int, default=16, help="start after each dataset's first SKIP prompts of --split")
    parser.add_argument("--n", type=int, default=2, help="prompts per dataset")
    parser.add_argument("--methods", default=f"autoregressive,{DEFAULT_METHOD}")
    parser.add_argument("--sampling", default="0.7/0.9,1.0/0.95", help="temperature/top-p pairs")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    decoder = SpecDecoder.from_pretrained()
    methods = args.methods.split(",")
    settings = [tuple(float(x) for x in pair.split("/")) for pair in args.sampling.split(",")]
    prompts = [(name, ex) for name in args.datasets.split(",")
               for ex in load_dataset(name, args.skip + args.n, args.split)[args.skip:]]
    decoder.generate("def f(x):", method=methods[-1], max_new_tokens=8, temperature=0.7, top_p=0.9, seed=0)  # warm-up
    records: list[dict] = []
    for repeat in range(args.repeats):
        for p, (name, ex) in enumerate(prompts):
            ids = decoder.encode(ex.messages, chat=True)
            for temperature, top_p in settings:
                for method in methods:
                    outputs = {}
                    # Which variant goes first alternates over prompts and repeats, for every setting and method alike
                    # (top_p_cost.json's run alternated over the (setting, method) pairs instead: with two methods,
                    # target-only always ran the full sort first and the default method always the candidates).
                    order = VARIANTS if (p + repeat) % 2 == 0 else VARIANTS[::-1]
                    for position, variant in enumerate(order):
                        config = RequestConfig(args.max_new_tokens, temperature, top_p=top_p, seed=args.seed + p)
                        with Timed(sampling, variant) as timer:
                            t0 = time.perf_counter()
                            result = decoder.engine.generate([ids], make_method(method), config)[0]
                            wall = time.perf_counter() - t0
                        outputs[variant] = result.token_ids
                        records.append({
                            "dataset": name, "example_id": ex.id, "sampling": f"t{temperature}-p{top_p}",
                            "method": method, "variant": variant, "repeat": repeat, "order": position,
                            "tokens": len(result.token_ids),
                            "wall_s": wall, "tokens_per_s": len(result.token_ids) / wall, "nucleus_s": timer.seconds,
                            "nucleus_calls": timer.calls, "nucleus_rows": timer.rows, "found": timer.found,
                        })
                    same = outputs["sort"] == outputs["candidates"]
                    for r in records[-2:]:
                        r["identical"] = same
                    last = {r["variant"]: r for r in records[-2:]}
                    print(f"r{repeat} {ex.id} t{temperature} p{top_p} {method}: "
                          f"{last['sort']['tokens_per_s']:.2f} -> {last['candidates']['tokens_per_s']:.2f} tok/s, "
                          f"identical {same}", flush=True)
    summary = summarize(records)
    print(f"{'sampling':<12} {'method':<16} {'sort tok/s':>10} {'cand. tok/s':>11} {'ratio':>6} "
          f"{'ms/row sort':>11} {'ms/row cand.':>12} identical")
    for s in summary:
        print(f"{s['sampling']:<12} {s['method']:<16} {s['tokens_per_s']['sort']:>10.2f} "
              f"{s['tokens_per_s']['candidates']:>11.2f} {s['ratio']:>6.3f} {s['nucleus_ms_per_row']['sort']:>11.2f} "
              f"{s['nucleus_ms_per_row']['candidates']:>12.2f} {s['identical']}/{s['generations']}")
    write_json_atomic(args.out, {"settings": recorded_args(args),
                                 "candidates": list(sampling.NUCLEUS_CANDIDATES), "machine": machine(),
                                 "summary": summary, "records": records})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
