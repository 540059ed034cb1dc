"""How often would prompt lookup propose the target's next token? Counted along the target's greedy outputs.

    python benchmarks/lookup_coverage.py benchmarks/results/tune_int4_16

For every position of the target's output (a `specadapt bench` run's target-only records, re-tokenised, after
the prompt as the engine encodes it), ``specadapt.lookup.lookup_next`` with match length n over the prompt and
the output so far: *coverage* is the share of positions where it proposes a token, *right* the share where the
proposal is the target's token, *precision* right ÷ coverage. No model runs. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specadapt.bench.runner import load_settings, target_outputs
from specadapt.io import write_json_atomic
from specadapt.lookup import lookup_next
from specadapt.models.loading import load_tokenizer
from specadapt.text import as_messages, encode_chat

OUT = Path(__file__).resolve().parent / "results" / "lookup_coverage.json"


def count(prompt: list[int], output: list[int], n: int) -> tuple[int, int]:
    """(positions with a proposal, positions whose proposal is the output's token) along ``output``."""
    text, proposed, right = list(prompt), 0, 0
    for token in output:
        guess = lookup_next(text, n)
        proposed += guess is not None
        right += guess == token
        text.append(token)
    return proposed, right


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a greedy `specadapt bench` output folder")
    p.add_argument("--ngrams", default="2,3,4,5,6,8,12,16", help="match lengths to count")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    settings = load_settings(args.run)
    ngrams = [int(x) for x in args.ngrams.split(",")]
    tokenizer = load_tokenizer(settings.target)
    totals: dict[str, dict] = {}
    for example, _, output in target_outputs(args.run, settings, tokenizer):
        prompt = encode_chat(tokenizer, as_messages(example.messages), settings.target)
        d = totals.setdefault(example.dataset, {"examples": 0, "positions": 0, **{str(n): [0, 0] for n in ngrams}})
        d["examples"] += 1
        d["positions"] += len(output)
        for n in ngrams:
            proposed, right = count(prompt, output, n)
            d[str(n)][0] += proposed
            d[str(n)][1] += right
    result = {"run": str(args.run), "ngrams": ngrams, "datasets": {}}
    for ds, d in totals.items():
        rows = {str(n): {"coverage": d[str(n)][0] / d["positions"], "right": d[str(n)][1] / d["positions"],
                         "precision": d[str(n)][1] / max(1, d[str(n)][0])} for n in ngrams}
        result["datasets"][ds] = {"examples": d["examples"], "positions": d["positions"], "ngrams": rows}
        print(ds, "  ".join(f"n={n}: coverage {r['coverage']:.1%}, right {r['right']:.1%}, precision {r['precision']:.1%}"
                            for n, r in rows.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
