"""What a forward over w tokens costs against a one-token step, per model and dtype: the property speculative
decoding rests on. Verifying K drafted tokens is one target forward over K + 1 tokens; it pays only if that
forward costs little more than a one-token step. On a CPU with native bf16 matrix instructions it does; on one
without (AVX2), torch's bf16 products of more than one row take a slow path (specadapt.models.hardware).

    python benchmarks/width_cost.py --out benchmarks/results/cpu_avx2/width_cost.json

Each variant (target and draft, in each ``--dtypes``; the draft also int4-quantized as the engine runs it) is
prefilled with ``--context`` random tokens once; each timed forward feeds w tokens after it and is rolled back,
so every forward sees the same context. ``prefill`` is one prompt of ``--prompt`` tokens into an empty cache.
On a CPU without native bf16, each bf16 model is timed twice: as torch runs it, and with its blocks of
``WIDE_ROWS`` or more rows multiplied in float32 (what ``load_model`` switches on there); the target a third
time, keeping float32 copies of its weights (``keep_float32_copies``: blocks of ``COPY_ROWS`` or more rows); where
``transposed_products_win``, each float32 model too: in ``F.linear``'s layout and as ``W @ x.T``.
Variants and widths are timed round-robin over ``--rounds`` rounds, the order of the variants rotated from
round to round (machine load, and the state a variant leaves behind, hit them alike); the median
over rounds is reported, and each width's ratio to the one-token step of the same variant. Writes JSON with
the machine it ran on.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from statistics import median

import torch

from specadapt.models import zoo
from specadapt.models.hardware import (keep_float32_copies, machine, transposed_products_win,
                                      use_float32_for_wide_products, use_fused_products,
                                      use_transposed_float32_products, wants_float32_products)
from specadapt.models.loading import load_model
from specadapt.models.quant import quantize_model
from specadapt.models.runner import ModelRunner

OUT = Path(__file__).resolve().parent / "results" / "cpu_avx2" / "width_cost.json"


class Variant:
    """A model with ``context`` tokens in its cache; ``time(w)`` runs one forward of w tokens and rolls it back.
    ``wide``: its linear layers take this CPU's faster path (bf16: wide blocks in float32; float32: the transposed
    layout) (True), or torch's own (False), or as loaded (None). ``copies``: a bf16 model keeps float32 copies of
    its weights (``keep_float32_copies``). ``fused``: its blocks of a few rows take one fused pass over the bf16
    weights (``use_fused_products``)."""

    def __init__(self, model, context: int, prompt: int, lean: bool, seed: int, wide: bool | None = None,
                 runner: ModelRunner | None = None, copies: bool = False, fused: bool = False) -> None:
        """``runner``: share another variant's (the same model timed another way, over the very same cache)."""
        self.model, self.lean, self.prompt, self.wide, self.copies = model, lean, prompt, wide, copies
        self.fused = fused
        self._switch()
        self.g = torch.Generator().manual_seed(seed)
        self.runner = runner
        if runner is None:
            self.runner = ModelRunner(model, lean_steps=lean)
            self.runner.add_rows(1)
            self.runner.forward(self._ids(context))

    def _ids(self, n: int) -> torch.Tensor:
        return torch.randint(100, 30000, (1, n), generator=self.g)

    def _switch(self) -> None:
        if wants_float32_products(self.model.dtype, self.model.device):
            keep_float32_copies(self.model, self.copies)
        if self.wide is not None:
            switch = use_float32_for_wide_products if self.model.dtype == torch.bfloat16 else use_transposed_float32_products
            switch(self.model, self.wide)
        use_fused_products(self.model, self.fused)

    def time(self, width: int) -> float:
        self._switch()
        ids = self._ids(width)
        t0 = time.perf_counter()
        self.runner.forward(ids, keep=1)
        spent = time.perf_counter() - t0
        self.runner.keep_tail(width, torch.zeros(1, dtype=torch.long))
        return spent

    def time_prefill(self) -> float:
        self._switch()
        fresh = ModelRunner(self.model, lean_steps=self.lean)
        fresh.add_rows(1)
        t0 = time.perf_counter()
        fresh.forward(self._ids(self.prompt), keep=1)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=zoo.DEFAULT_TARGET)
    p.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--widths", default="1,2,4,8,16")
    p.add_argument("--context", type=int, default=256, help="tokens in the KV cache")
    p.add_argument("--prompt", type=int, default=128, help="tokens of the timed prefill")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]

    variants: dict[str, Variant] = {}
    for dtype in args.dtypes.split(","):
        models = {"target": load_model(args.target, dtype, "cpu"), "draft": load_model(args.draft, dtype, "cpu")}
        for role, model in models.items():
            lean, seed = role == "draft", 1 if role == "target" else 2
            plain = variants[f"{role} {dtype}"] = Variant(model, args.context, args.prompt, lean, seed, wide=False)
            if wants_float32_products(model.dtype, model.device):  # this CPU: time bf16 both ways, on one cache
                variants[f"{role} {dtype}, wide blocks in float32"] = Variant(
                    model, args.context, args.prompt, lean, seed, wide=True, runner=plain.runner)
                variants[f"{role} {dtype}, fused blocks"] = Variant(  # as load_model leaves it
                    model, args.context, args.prompt, lean, seed, wide=True, runner=plain.runner, fused=True)
                if role == "target":  # and with float32 copies of its weights, as a speculative pair's target
                    variants[f"{role} {dtype}, float32 copies"] = Variant(
                        model, args.context, args.prompt, lean, seed, wide=True, runner=plain.runner, copies=True)
            if model.dtype == torch.float32 and transposed_products_win():  # and float32 in both layouts
                variants[f"{role} {dtype}, W @ x.T"] = Variant(
                    model, args.context, args.prompt, lean, seed, wide=True, runner=plain.runner)
        int4 = copy.deepcopy(models["draft"])
        quantize_model(int4, "int4")
        variants[f"draft int4 ({dtype} model)"] = Variant(int4, args.context, args.prompt, True, seed=3)
        print(f"loaded {dtype}", flush=True)

    times: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotated: no variant always follows the same one
            v = variants[name]
            for w in widths:
                times[name].setdefault(str(w), []).append(v.time(w))
            times[name].setdefault("prefill", []).append(v.time_prefill())
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    rows = {}
    print(f"\n{'variant':<34}" + "".join(f"{'w=' + str(w):>10}" for w in widths) + f"{'prefill':>10}   (ms; ratio to w=1)")
    for name, by_width in times.items():
        ms = {k: median(v) * 1e3 for k, v in by_width.items()}
        rows[name] = {"ms": {k: round(x, 2) for k, x in ms.items()},
                      "ratio_to_one": {k: round(x / ms["1"], 3) for k, x in ms.items()}}
        print(f"{name:<34}" + "".join(f"{ms[str(w)]:>10.1f}" for w in widths) + f"{ms['prefill']:>10.1f}")
        print(f"{'':<34}" + "".join(f"{ms[str(w)] / ms['1']:>10.2f}" for w in widths) + f"{ms['prefill'] / ms['1']:>10.2f}")
    payload = {"benchmark": "width_cost", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "machine": machine(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
