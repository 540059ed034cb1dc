"""Is specadapt's target-only decoding, the baseline every speedup is divided by, as fast as transformers' own greedy
``generate`` on the same model? Both in one process, on the same prompts and the same module objects.

    python benchmarks/target_only_check.py --threads 2

A baseline slower than the library's own would inflate every speedup. ``engine`` is ``autoregressive`` through
specadapt's decoding loop, ``hf-generate`` is ``target.generate(do_sample=False)`` with the same end-of-sequence
ids and limit; both use the target as loaded (on a CPU with AVX512-BF16, its one-token products paired:
``one_row_cost.py``). Prompts ``--skip``+1..``--skip``+``--n`` of each dataset's ``--split``, chat-formatted, both
variants per prompt in an order that alternates over prompts and repeats, ``--repeats`` times; tokens/s and whether
the two greedy outputs are identical token for token. Writes JSON; the summary is ``one_row_cost.summarize``'s, with
the ratio engine ÷ hf-generate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "target_only_check.json"
VARIANTS = ("hf-generate", "engine")  # the ratio: engine ÷ hf-generate


def main(argv: list[str] | None = None) -> None:
    from one_row_cost import summarize  # benchmarks/ is on the path of a script run
    from specadapt import SpecDecoder
    from specadapt.bench.datasets import load_dataset
    from specadapt.engine import RequestConfig
    from specadapt.io import recorded_args, write_json_atomic
    from specadapt.methods import make_method
    from specadapt.models.hardware import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="humaneval,mt-bench,gsm8k")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--skip", type=int, default=24, help="start after each dataset's first SKIP prompts of --split")
    parser.add_argument("--n", type=int, default=2, help="prompts per dataset")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    decoder = SpecDecoder.from_pretrained()
    target, eos = decoder.engine.target, decoder.engine.eos_token_ids
    method = make_method("autoregressive")

    def generate(variant: str, ids: list[int], max_new_tokens: int) -> list[int]:
        if variant == "engine":
            return decoder.engine.generate([ids], method, RequestConfig(max_new_tokens))[0].token_ids
        input_ids = torch.tensor([ids], dtype=torch.long, device=target.device)
        with torch.inference_mode():
            out = target.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
        return out[0, input_ids.shape[1]:].tolist()

    warm = decoder.encode("def f(x):")
    for variant in VARIANTS:
        generate(variant, warm, 8)
    prompts = [(name, ex) for name in args.datasets.split(",")
               for ex in load_dataset(name, args.skip + args.n, args.split)[args.skip:]]
    records: list[dict] = []
    for repeat in range(args.repeats):
        for p, (name, ex) in enumerate(prompts):
            ids = decoder.encode(ex.messages, chat=True)
            outputs = {}
            for position, variant in enumerate(VARIANTS if (p + repeat) % 2 == 0 else VARIANTS[::-1]):
                start = time.perf_counter()
                outputs[variant] = generate(variant, ids, args.max_new_tokens)
                wall = time.perf_counter() - start
                records.append({"dataset": name, "example_id": ex.id, "method": "autoregressive", "variant": variant,
                                "repeat": repeat, "order": position, "tokens": len(outputs[variant]), "wall_s": wall,
                                "tokens_per_s": len(outputs[variant]) / wall})
            same = outputs["engine"] == outputs["hf-generate"]
            for r in records[-2:]:
                r["identical"] = same
            last = {r["variant"]: r for r in records[-2:]}
            print(f"r{repeat} {ex.id}: hf-generate {last['hf-generate']['tokens_per_s']:.2f}, engine "
                  f"{last['engine']['tokens_per_s']:.2f} tok/s, identical {same}", flush=True)
    (row,) = summarize(records, VARIANTS)
    print(f"engine ÷ hf-generate {row['ratio']:.3f} ({', '.join(f'{r:.3f}' for r in row['ratio_per_repeat'])}), "
          f"identical {row['identical']}/{row['generations']}")
    write_json_atomic(args.out, {"settings": recorded_args(args),
                                 "machine": machine(), "summary": [row], "records": records})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
