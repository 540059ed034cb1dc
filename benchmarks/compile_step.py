"""Does ``torch.compile`` make the draft's step cheaper on a CPU? The engine's lean step against the same step over
fixed-size buffers (``models/graphed.py`` without capture: static shapes, so one compiled graph serves every step)
eager and compiled with inductor, for the default draft in bf16 and int4.

    python benchmarks/compile_step.py                # the default draft, 2 threads, a few minutes

Each runner prefills ``--context`` random tokens, then every timed step feeds one token and rolls it back; the
variants are timed round-robin (``--rounds`` rounds of ``--steps`` steps), and the median over rounds of the mean
step is reported with the largest logit difference from the lean step. For the compiled graph to have no breaks,
the machine checks the int4 layer makes per call (``models/hardware.py``: is bf16 native here?) are answered with
their value first (``torch.compile`` cannot trace a cached function). Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import median

import torch

from specadapt.io import write_json_atomic
from specadapt.models import graphed, hardware, quant, zoo
from specadapt.models.graphed import GraphedRunner
from specadapt.models.hardware import machine
from specadapt.models.loading import load_model
from specadapt.models.runner import ModelRunner


def compiled_bodies() -> None:
    """Make every fixed-buffer step run a compiled body (one per buffers, block width and kept logits)."""
    body, compiled = graphed._Slab._body, {}

    def run(self, block, keep):
        key = (id(self), id(block), keep)
        if key not in compiled:
            compiled[key] = torch.compile(lambda: body(self, block, keep), dynamic=False, fullgraph=True)
        return compiled[key]()

    graphed._Slab._body = run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    p.add_argument("--schemes", default="bf16,int4")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "compile_step.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    native = hardware.native_bf16()  # answered once, outside any compiled graph
    hardware.native_bf16 = lambda: native
    eager_body = graphed._Slab._body
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 30000, (1, args.context), generator=g)
    tokens = torch.randint(100, 30000, (64, 1, 1), generator=g)
    keep = torch.zeros(1, dtype=torch.long)
    variants: dict[str, tuple] = {}  # name -> (runner, compiled?)
    for scheme in args.schemes.split(","):
        model = load_model(args.draft, "bfloat16", "cpu")
        if scheme != "bf16":
            quant.quantize_model(model, scheme, 32)
        for kind in ("lean", "fixed buffers", "fixed buffers, compiled"):
            runner = ModelRunner(model, lean_steps=True) if kind == "lean" else GraphedRunner(model, capture=False)
            runner.add_rows(1)
            runner.forward(prompt)
            variants[f"{scheme} {kind}"] = (runner, kind.endswith("compiled"))
    compiled_body = None

    def step(name: str, i: int) -> torch.Tensor:
        runner, compiled = variants[name]
        graphed._Slab._body = compiled_body if compiled else eager_body
        logits = runner.forward(tokens[i % 64])[0]
        runner.keep_tail(1, keep)
        return logits

    compiled_bodies()
    compiled_body = graphed._Slab._body
    t0 = time.perf_counter()
    with torch.inference_mode():
        for name in variants:
            for i in range(3):  # warm-up: the compilation happens here
                step(name, i)
        warm_s = time.perf_counter() - t0
        diff = {}
        for name in variants:
            ref = step(f"{name.split()[0]} lean", 5)
            diff[name] = float((step(name, 5) - ref).abs().max())
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds):
            for name in variants:
                t0 = time.perf_counter()
                for i in range(args.steps):
                    step(name, i)
                times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in times.items()), flush=True)
    graphed._Slab._body = eager_body
    rows = {}
    for name, t in times.items():
        base = times[f"{name.split()[0]} lean"]
        rows[name] = {"step_ms": round(median(t), 2), "rounds_ms": [round(x, 2) for x in t],
                      "vs_lean": round(median(a / b for a, b in zip(t, base)), 3),
                      "max_logit_diff_vs_lean": round(diff[name], 4)}
        print(f"{name:<34}{rows[name]['step_ms']:>8.2f} ms  x{rows[name]['vs_lean']:.3f} of lean  "
              f"max |logit diff| {rows[name]['max_logit_diff_vs_lean']}")
    payload = {"benchmark": "compile_step", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "environment": machine(), "warm_up_and_compile_s": round(warm_s, 1), "per_step": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, payload, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
