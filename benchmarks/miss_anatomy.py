"""Where does the draft miss the target's greedy token? By how sure the target itself was there.

    python benchmarks/miss_anatomy.py benchmarks/results/tune_int4_16 --threads 2 \\
        --draft qwen2.5-coder-0.5b-instruct --draft qwen2.5-coder-0.5b-instruct-adaspec

Along the target's greedy outputs of a `specadapt bench` run (its target-only records), one teacher-forced pass of
the target gives, at every position, the probability p of its own greedy token; one pass of each draft (int4, as
the engine runs it on CPU) gives its argmax there. Positions are bucketed by p: a draft that misses where the
target puts most of its mass on one token has something to learn; where the target itself spreads its mass over
near-equal tokens (p < 0.5), which of them is its argmax is close to a coin toss for any smaller model. Reported
per dataset and draft: each bucket's share of positions, the draft's agreement in it, and its share of the
draft's misses. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from specadapt.bench.runner import load_settings, target_outputs
from specadapt.io import write_json_atomic
from specadapt.models.loading import load_model
from specadapt.models.quant import quantize_model, resolve_scheme

OUT = Path(__file__).resolve().parent / "results" / "miss_anatomy.json"
EDGES = (0.0, 0.5, 0.8, 0.95, 1.0 + 1e-9)  # buckets of the target's probability of its own greedy token


def bucket_of(p: float) -> int:
    return next(i for i in range(len(EDGES) - 1) if EDGES[i] <= p < EDGES[i + 1])


def tabulate(p_target: list[float], agree: list[bool]) -> list[dict]:
    """Per bucket of p_target: share of positions, the draft's agreement there, share of the draft's misses."""
    misses = sum(not a for a in agree)
    rows = []
    for b in range(len(EDGES) - 1):
        inside = [a for p, a in zip(p_target, agree) if bucket_of(p) == b]
        rows.append({"p_from": EDGES[b], "p_to": min(EDGES[b + 1], 1.0), "positions": len(inside),
                     "share": len(inside) / len(agree),
                     "agreement": sum(inside) / len(inside) if inside else None,
                     "share_of_misses": sum(not a for a in inside) / misses if misses else 0.0})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a greedy `specadapt bench` output folder")
    p.add_argument("--draft", action="append", default=[], help="a draft to examine (repeat the option)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = load_settings(args.run)
    if settings.temperature != 0:
        sys.exit("error: needs a greedy run (temperature 0).")
    from specadapt.api import SpecDecoder

    decoder = SpecDecoder.from_pretrained(settings.target, None, dtype=settings.dtype, device="cpu")
    drafts = {}
    for name in args.draft or [settings.draft]:
        model = load_model(name, settings.dtype, "cpu")
        scheme = resolve_scheme(settings.draft_quant, model.device)  # as the run (and the engine) quantized it
        if scheme != "none":
            quantize_model(model, scheme, settings.draft_group_size if scheme == "int4" else None)
        drafts[name] = model
    data: dict[str, dict] = {}
    outputs = target_outputs(args.run, settings, decoder.tokenizer, decoder.engine.eos_token_ids)
    for example, _, out_ids in tqdm(outputs, desc="teacher-forced", unit="example"):
        ids = torch.tensor([decoder.encode(example.messages) + out_ids[:-1]])
        y = torch.tensor(out_ids)
        d = data.setdefault(example.dataset, {"p_target": [], "agree": {name: [] for name in drafts}})
        with torch.inference_mode():
            probs = decoder.target(input_ids=ids, logits_to_keep=len(out_ids)).logits[0].float().softmax(-1)
            d["p_target"] += probs.gather(1, y[:, None])[:, 0].tolist()
            for name, model in drafts.items():
                top = model(input_ids=ids, logits_to_keep=len(out_ids)).logits[0].argmax(-1)
                d["agree"][name] += (top == y).tolist()
    result = {"run": str(args.run), "drafts": list(drafts), "edges": list(EDGES[:-1]) + [1.0], "datasets": {}}
    for ds, d in data.items():
        result["datasets"][ds] = {"positions": len(d["p_target"]),
                                  "drafts": {name: {"agreement": sum(a) / len(a), "buckets": tabulate(d["p_target"], a)}
                                             for name, a in d["agree"].items()}}
        for name, row in result["datasets"][ds]["drafts"].items():
            cells = ", ".join(f"p {b['p_from']:.2f}-{b['p_to']:.2f}: {b['share']:.0%} of positions, agreement "
                              f"{b['agreement'] if b['agreement'] is None else round(b['agreement'], 3)}, "
                              f"{b['share_of_misses']:.0%} of misses" for b in row["buckets"])
            print(f"{ds} / {name}: agreement {row['agreement']:.3f}; {cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
