"""How much of a prompt does the draft need? Teacher-forced agreement of the draft with the target's greedy
output when the draft sees only the last W tokens of the prompt.

    python benchmarks/draft_context.py --threads 2

Why: in the server, feeding the draft a joining prompt costs about a third of the target's pass over it, and at
8 clients with short answers that cost eats what drafting gains (BENCHMARKS.md, "Latest: a batch's draft steps
through the int4 kernel"). A draft that saw only the prompt's tail would cost less to feed; this measures what
that would do to acceptance, before anything is built. On tune prompts (no choice is made on test prompts).

For each prompt: the target's greedy answer (``--max-new-tokens``, target-only decoding through the engine),
then one draft pass over (the prompt's last W tokens + the answer); agreement = the share of answer tokens the
draft's argmax predicts (greedy acceptance, teacher-forced), per W in ``--windows`` (0: the whole prompt).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "draft_context.json"


def main(argv: list[str] | None = None) -> None:
    from specadapt import SpecDecoder
    from specadapt.bench.datasets import load_dataset
    from specadapt.engine import RequestConfig
    from specadapt.methods import make_method
    from specadapt.models import zoo
    from specadapt.models.hardware import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mt-bench,humaneval,gsm8k")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--n", type=int, default=6, help="prompts per dataset")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--windows", default="0,128,64,32", help="prompt tokens the draft sees (0: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    windows = [int(w) for w in args.windows.split(",")]
    decoder = SpecDecoder.from_pretrained(zoo.DEFAULT_TARGET, zoo.DEFAULT_DRAFT, draft_quant=zoo.DEFAULT_DRAFT_QUANT)
    rows = []
    for name in args.datasets.split(","):
        for ex in load_dataset(name, args.n, args.split):
            prompt = decoder.encode(ex.messages, chat=True)
            answer = decoder.engine.generate([prompt], make_method("autoregressive"),
                                             RequestConfig(args.max_new_tokens))[0].token_ids
            row = {"dataset": name, "example": ex.id, "prompt_tokens": len(prompt), "answer_tokens": len(answer)}
            for w in windows:
                seen = prompt[-w:] if w else prompt
                ids = torch.tensor([seen + answer])
                with torch.inference_mode():
                    logits = decoder.draft(ids).logits[0]
                # position i predicts token i + 1: the answer's tokens are predicted from len(seen) - 1 on
                predicted = logits[len(seen) - 1 : len(seen) - 1 + len(answer)].argmax(-1).tolist()
                row[f"agree_{w}"] = sum(p == a for p, a in zip(predicted, answer)) / max(1, len(answer))
            rows.append(row)
            print(name, ex.id, len(prompt), {w: round(row[f"agree_{w}"], 3) for w in windows}, flush=True)
    summary = {}
    for name in args.datasets.split(","):
        mine = [r for r in rows if r["dataset"] == name]
        tokens = sum(r["answer_tokens"] for r in mine)
        summary[name] = {"prompts": len(mine), "mean_prompt_tokens": sum(r["prompt_tokens"] for r in mine) / len(mine),
                         **{f"agree_{w}": sum(r[f"agree_{w}"] * r["answer_tokens"] for r in mine) / tokens for w in windows}}
    print(f"{'dataset':<12} {'prompt tokens':>13} " + " ".join(f"{'all' if not w else 'last ' + str(w):>9}" for w in windows))
    for name, s in summary.items():
        print(f"{name:<12} {s['mean_prompt_tokens']:>13.0f} " + " ".join(f"{s[f'agree_{w}']:>9.3f}" for w in windows))
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "machine": machine(), "summary": summary, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
