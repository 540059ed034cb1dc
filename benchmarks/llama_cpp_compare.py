"""Target-only decoding of the default target: llama.cpp against specadapt, on the same GGUF file and CPU.

    pip install llama-cpp-python          # builds llama.cpp from source for this CPU
    python benchmarks/llama_cpp_compare.py --threads 2

The default target reaches specadapt as a GGUF file (Q4_K_M, fetched by ``specadapt setup``). llama.cpp runs that
file as it is; specadapt dequantizes it to bf16 (``--target-quant none``) and can quantize that again with its own
weight-only schemes (``--target-quant int8``, ``int4``: torch's CPU kernels, one scale per row / per 32 inputs).
So all engines decode the same weights up to their quantization: llama.cpp's Q4_K_M blocks, their exact bf16
values, and specadapt's int8 and int4 of those values.

Same prompts (token ids, the chat template as the benchmarks apply it), greedy, exactly ``--new-tokens`` tokens
(end of sequence ignored), the same threads; every engine once per prompt and repeat, in rotated order. Per
generation: the prompt's prefill, then one token per forward. Decode ms per token = the seconds after the first
generated token ÷ the tokens after it, so the prefill is not in it. Also per engine: how many of its greedy tokens
equal the bf16 target's before the first difference. Prints a table; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch

from specadapt.bench.datasets import load_dataset
from specadapt.engine import RequestConfig, SpeculativeEngine
from specadapt.errors import SpecAdaptError
from specadapt.io import write_json_atomic
from specadapt.methods import make_method
from specadapt.models import zoo
from specadapt.models.hardware import machine
from specadapt.models.loading import load_model, load_tokenizer
from specadapt.models.quant import quantize_model
from specadapt.text import encode_chat

OUT = Path(__file__).resolve().parent / "results" / "llama_cpp_compare.json"


class LlamaCpp:
    """llama.cpp through llama-cpp-python: greedy decoding over token ids, one token per forward."""

    def __init__(self, gguf: Path, threads: int, context: int) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise SystemExit("llama-cpp-python is not installed: pip install llama-cpp-python (it builds llama.cpp "
                             "from source, a few minutes).") from exc
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, verbose=False)
        self.vocab = self.llm.n_vocab()
        self.version = llama_cpp.__version__

    def _argmax(self) -> int:
        return int(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,)).argmax())

    def generate(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        """(tokens, prefill seconds, seconds for the tokens after the first)."""
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        out = [self._argmax()]
        first = time.perf_counter()
        while len(out) < new_tokens:
            self.llm.eval([out[-1]])
            out.append(self._argmax())
        return out, first - start, time.perf_counter() - first


class Specadapt:
    """specadapt's engine, target only (the method ``autoregressive``); per-token timing through ``on_tokens``."""

    def __init__(self, target, tokenizer) -> None:
        self.engine = SpeculativeEngine(target, None, tokenizer, [])  # no end of sequence: every run is N tokens
        self.method = make_method("autoregressive")

    def generate(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        config = RequestConfig(max_new_tokens=new_tokens, eos_token_ids=())
        stamps: list[float] = []
        start = time.perf_counter()
        stamp = lambda row, tokens: stamps.append(time.perf_counter())  # noqa: E731  (after each round's tokens)
        result = self.engine.generate([ids], self.method, config, stamp)[0]
        end = time.perf_counter()
        if len(result.token_ids) != new_tokens:
            raise SpecAdaptError(f"expected {new_tokens} tokens, got {len(result.token_ids)}")
        return result.token_ids, stamps[0] - start, end - stamps[0]


def prompts(datasets: list[str], n: int, split: str, tokenizer, name: str) -> list[dict]:
    """The first ``n`` prompts of ``split`` of each dataset, as token ids under the chat template."""
    out = []
    for ds in datasets:
        for e in load_dataset(ds, n, split):
            out.append({"dataset": ds, "id": e.id, "ids": encode_chat(tokenizer, e.messages, name)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=zoo.DEFAULT_TARGET, help="a built-in name (its GGUF is what llama.cpp runs)")
    p.add_argument("--engines", default="llama.cpp,bf16,int8,int4", help="llama.cpp and specadapt's target quantizations")
    p.add_argument("--datasets", default="humaneval,mt-bench,gsm8k")
    p.add_argument("--split", default="tune", help="timing only: nothing is chosen on these prompts")
    p.add_argument("--n", type=int, default=2, help="prompts per dataset")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - {"llama.cpp", "bf16", "int8", "int4"})
    if unknown:
        p.error(f"unknown engine(s) {', '.join(unknown)}: use llama.cpp, bf16, int8, int4")

    zoo.ensure_model(args.target)
    gguf = zoo.gguf_path(args.target)
    tokenizer = load_tokenizer(args.target)
    target = load_model(args.target, "bfloat16", "cpu") if set(engines) - {"llama.cpp"} else None
    runners = {}
    for name in engines:
        if name == "llama.cpp":
            runners[name] = LlamaCpp(gguf, args.threads, context=2048)
        elif name == "bf16":
            runners[name] = Specadapt(target, tokenizer)
        else:
            model = copy.deepcopy(target)
            quantize_model(model, name, None, "target")
            runners[name] = Specadapt(model, tokenizer)
    work = prompts(args.datasets.split(","), args.n, args.split, tokenizer, args.target)
    for runner in runners.values():  # warm-up: first calls allocate and pick kernels
        runner.generate(work[0]["ids"], 4)

    records = []
    for repeat in range(args.repeats):
        for i, prompt in enumerate(work):
            order = engines[(i + repeat) % len(engines):] + engines[:(i + repeat) % len(engines)]
            for name in order:
                tokens, prefill, rest = runners[name].generate(prompt["ids"], args.new_tokens)
                records.append({"engine": name, "repeat": repeat, "dataset": prompt["dataset"], "id": prompt["id"],
                                "prompt_tokens": len(prompt["ids"]), "tokens": tokens, "prefill_s": prefill,
                                "decode_s": rest, "decode_ms_per_token": 1000 * rest / (len(tokens) - 1)})
                print(f"{repeat} {prompt['id']:>16} {name:>9}: prefill {prefill * 1000:7.0f} ms, "
                      f"decode {records[-1]['decode_ms_per_token']:6.1f} ms/token")

    reference = {(r["id"], r["repeat"]): r["tokens"] for r in records if r["engine"] == "bf16"}
    summary = {}
    for name in engines:
        mine = [r for r in records if r["engine"] == name]
        same = []
        for r in mine:
            ref = reference.get((r["id"], r["repeat"]))
            if ref is not None:
                same.append(next((k for k, (a, b) in enumerate(zip(r["tokens"], ref)) if a != b), len(ref)))
        ms = median(r["decode_ms_per_token"] for r in mine)
        summary[name] = {"decode_ms_per_token": ms, "decode_tokens_per_s": 1000 / ms,
                         "decode_ms_per_repeat": {k: median(r["decode_ms_per_token"] for r in mine if r["repeat"] == k)
                                                  for k in range(args.repeats)},
                         "prefill_tokens_per_s": sum(r["prompt_tokens"] for r in mine) / sum(r["prefill_s"] for r in mine),
                         "tokens_equal_to_bf16_before_first_difference": same}
    result = {"benchmark": "llama_cpp_compare", "settings": {**vars(args), "out": None, "gguf": gguf.name},
              "machine": machine(), "llama_cpp_python": getattr(runners.get("llama.cpp"), "version", None),
              "summary": summary, "records": records}
    print(f"\n{'engine':>10} {'decode ms/token':>16} {'tokens/s':>9} {'prefill tokens/s':>17}  tokens equal to bf16's")
    for name, s in summary.items():
        print(f"{name:>10} {s['decode_ms_per_token']:16.1f} {s['decode_tokens_per_s']:9.2f} "
              f"{s['prefill_tokens_per_s']:17.1f}  {s['tokens_equal_to_bf16_before_first_difference']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
