"""What a one-token step costs with torch's one-row bf16 product against the same row run as a two-row product
(``specadapt.models.hardware.PairedRowLinear``), in one process on the same prompts.

    python benchmarks/one_row_cost.py --threads 2

On the AVX512-BF16 machines measured here a forward over one token cost more than one over two (``forward_cost.json``,
``tree_value.json``): torch multiplies a single bf16 row by a weight with a matrix-vector kernel that is slower than
its matrix-matrix kernel for two rows. Target-only decoding is all one-token steps, so the baseline every speedup
is divided by paid that. ``one`` is torch's own path (every layer a plain ``nn.Linear``), ``paired`` the layers
that :func:`~specadapt.models.hardware.use_paired_rows` switches (on any CPU, so both are measured wherever it
runs; ``machine.paired_bf16_rows`` says which one the package picks there: a timing probe in the first two runs,
the CPU's kind since).

1. Forward passes: the target and the bf16 draft, a context of ``--context`` random tokens cached, a pass over one
   token in each variant and over two tokens (``one``), interleaved in alternating order, ``--passes`` each; medians.
2. Generations, greedy: ``--methods`` (target-only and the default method, whose int4 draft has no bf16 layer to
   pair: only its target's one-token passes change) on prompts ``--skip``+1..``--skip``+``--n`` of each dataset's
   ``--split``, both variants per prompt in an order that alternates over prompts and repeats; tokens/s, and
   whether the two variants' outputs are identical (bf16: a different kernel rounds differently, so near-ties may
   flip; float32 models are never switched). Writes JSON.

``--layers`` times instead each kind of linear layer of both models (all of a model's layers of that kind in a
row, one row against the row paired, random inputs, ``--passes`` sweeps alternating, medians): what the rule of
which layers to pair (``PAIRED_MIN_IN_FEATURES``, ``PAIRED_MIN_ELEMENTS``) rests on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import mean, median

import torch

OUT = Path(__file__).resolve().parent / "results" / "one_row_cost.json"
VARIANTS = ("one", "paired")


def switch(models, variant: str) -> int:
    """Every model in ``variant``; returns how many layers are paired."""
    from specadapt.models.hardware import use_paired_rows

    paired = 0
    for model in models:
        use_paired_rows(model, on=False)
        if variant == "paired":
            paired += use_paired_rows(model, anywhere=True)
    return paired


def time_passes(model, context: int, passes: int) -> dict[str, float]:
    """Median seconds of a one-token pass in each variant and of a two-token pass, over ``context`` cached tokens;
    ``paired_layers``: how many of the model's layers the paired variant switches."""
    from transformers import DynamicCache

    cache, vocab = DynamicCache(), model.config.vocab_size
    cells = [("one", 1), ("paired", 1), ("one", 2)]
    times: dict[str, list[float]] = {f"{v}_{n}": [] for v, n in cells}
    with torch.inference_mode():
        model(torch.randint(100, vocab, (1, context)), past_key_values=cache, use_cache=True)
        for i in range(passes + 1):
            for variant, n in cells if i % 2 else cells[::-1]:
                switch([model], variant)
                tokens = torch.randint(100, vocab, (1, n))
                start = time.perf_counter()
                model(tokens, past_key_values=cache, use_cache=True)
                if i:  # the first sweep warms up
                    times[f"{variant}_{n}"].append(time.perf_counter() - start)
                cache.crop(-n)
    return {**{cell: median(ts) for cell, ts in times.items()}, "paired_layers": switch([model], "paired")}


def time_layer_kinds(model, passes: int) -> dict[str, dict]:
    """Per kind of linear layer (its name's last part): its shape, how many, and the median seconds of one bf16 row
    through all of them with torch's product and paired."""
    from torch.nn import functional as F

    kinds: dict[str, list] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            kinds.setdefault(name.rsplit(".", 1)[-1], []).append(module)
    out = {}
    with torch.inference_mode():
        for kind, layers in kinds.items():
            row = torch.randn(1, layers[0].in_features, dtype=torch.bfloat16)
            cells = {"one": lambda m: F.linear(row, m.weight, m.bias),
                     "paired": lambda m: F.linear(row.repeat(2, 1), m.weight, m.bias)}
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for i in range(passes + 1):
                for variant in VARIANTS if i % 2 else VARIANTS[::-1]:
                    start = time.perf_counter()
                    for layer in layers:
                        cells[variant](layer)
                    if i:
                        times[variant].append(time.perf_counter() - start)
            out[kind] = {"shape": list(layers[0].weight.shape), "layers": len(layers),
                         **{v: median(ts) for v, ts in times.items()}}
    return out


def summarize(records: list[dict], variants: tuple[str, str] = VARIANTS) -> list[dict]:
    """Per method: mean tokens/s of each of the two ``variants``, the second's ÷ the first's overall, per repeat and
    per pair of generations (the same prompt in the same repeat), and the pairs with identical outputs."""
    base, other = variants
    rows = []
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        tps = {v: mean(r["tokens_per_s"] for r in mine if r["variant"] == v) for v in variants}
        per_repeat = []
        for k in sorted({r["repeat"] for r in mine}):
            of = {v: mean(r["tokens_per_s"] for r in mine if r["variant"] == v and r["repeat"] == k) for v in variants}
            per_repeat.append(of[other] / of[base])
        others = [r for r in mine if r["variant"] == other]
        first = {(r["repeat"], r["example_id"]): r["tokens_per_s"] for r in mine if r["variant"] == base}
        per_pair = [r["tokens_per_s"] / first[r["repeat"], r["example_id"]] for r in others]
        rows.append({"method": method, "generations": len(others), "tokens_per_s": tps,
                     "ratio": tps[other] / tps[base], "ratio_per_repeat": per_repeat, "ratio_per_pair": per_pair,
                     "identical": sum(r["identical"] for r in others)})
    return rows


def main(argv: list[str] | None = None) -> None:
    from specadapt import SpecDecoder
    from specadapt.api import DEFAULT_METHOD
    from specadapt.bench.datasets import load_dataset
    from specadapt.engine import RequestConfig
    from specadapt.io import recorded_args, write_json_atomic
    from specadapt.methods import make_method
    from specadapt.models import zoo
    from specadapt.models.hardware import PAIRED_MIN_ELEMENTS, PAIRED_MIN_IN_FEATURES, machine
    from specadapt.models.loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="humaneval,mt-bench,gsm8k")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--skip", type=int, default=20, help="start after each dataset's first SKIP prompts of --split")
    parser.add_argument("--n", type=int, default=2, help="prompts per dataset")
    parser.add_argument("--methods", default=f"autoregressive,{DEFAULT_METHOD}")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--context", type=int, default=300, help="cached tokens behind the timed forward passes")
    parser.add_argument("--passes", type=int, default=40, help="timed forward passes per cell")
    parser.add_argument("--layers", action="store_true", help="time each kind of linear layer instead (see above)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.layers:
        kinds = {}
        for name in (zoo.DEFAULT_TARGET, zoo.DEFAULT_DRAFT):
            kinds[name] = time_layer_kinds(load_model(name, "bfloat16", "cpu"), args.passes)
            for kind, cell in kinds[name].items():
                print(f"{name} {kind} {cell['shape']} x{cell['layers']}: {1e3 * cell['one']:.1f} -> "
                      f"{1e3 * cell['paired']:.1f} ms", flush=True)
        write_json_atomic(args.out, {"settings": {"passes": args.passes, "threads": args.threads}, "machine": machine(),
                                     "layer_kinds": kinds})
        print(f"wrote {args.out}")
        return

    forwards = {}
    for name in (zoo.DEFAULT_TARGET, zoo.DEFAULT_DRAFT):
        model = load_model(name, "bfloat16", "cpu")
        forwards[name] = time_passes(model, args.context, args.passes)
        cells = forwards[name]
        print(f"{name}: one token {1e3 * cells['one_1']:.1f} ms, paired {1e3 * cells['paired_1']:.1f} ms, "
              f"two tokens {1e3 * cells['one_2']:.1f} ms", flush=True)
        del model

    decoder = SpecDecoder.from_pretrained()
    models = [decoder.engine.target, decoder.engine.draft]
    methods = args.methods.split(",")
    prompts = [(name, ex) for name in args.datasets.split(",")
               for ex in load_dataset(name, args.skip + args.n, args.split)[args.skip:]]
    for variant in VARIANTS:  # warm-up
        switch(models, variant)
        for method in methods:
            decoder.generate("def f(x):", method=method, max_new_tokens=8)
    records: list[dict] = []
    for repeat in range(args.repeats):
        for p, (name, ex) in enumerate(prompts):
            ids = decoder.encode(ex.messages, chat=True)
            for method in methods:
                outputs = {}
                order = VARIANTS if (p + repeat) % 2 == 0 else VARIANTS[::-1]
                for position, variant in enumerate(order):
                    switch(models, variant)
                    start = time.perf_counter()
                    result = decoder.engine.generate([ids], make_method(method), RequestConfig(args.max_new_tokens))[0]
                    wall = time.perf_counter() - start
                    outputs[variant] = result.token_ids
                    records.append({"dataset": name, "example_id": ex.id, "method": method, "variant": variant,
                                    "repeat": repeat, "order": position, "tokens": len(result.token_ids),
                                    "wall_s": wall, "tokens_per_s": len(result.token_ids) / wall})
                same = outputs["one"] == outputs["paired"]
                for r in records[-2:]:
                    r["identical"] = same
                last = {r["variant"]: r for r in records[-2:]}
                print(f"r{repeat} {ex.id} {method}: {last['one']['tokens_per_s']:.2f} -> "
                      f"{last['paired']['tokens_per_s']:.2f} tok/s, identical {same}", flush=True)
    summary = summarize(records)
    print(f"{'method':<16} {'one tok/s':>9} {'paired tok/s':>12} {'ratio':>6}  per repeat  identical")
    for s in summary:
        print(f"{s['method']:<16} {s['tokens_per_s']['one']:>9.2f} {s['tokens_per_s']['paired']:>12.2f} "
              f"{s['ratio']:>6.3f}  {', '.join(f'{r:.3f}' for r in s['ratio_per_repeat'])}  "
              f"{s['identical']}/{s['generations']}")
    write_json_atomic(args.out, {"settings": recorded_args(args),
                                 "paired_min_elements": PAIRED_MIN_ELEMENTS, "paired_min_in_features": PAIRED_MIN_IN_FEATURES,
                                 "paired_layers": switch(models, "paired"), "machine": machine(),
                                 "forwards": forwards, "summary": summary, "records": records})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
