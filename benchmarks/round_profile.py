"""Where one round of the engine spends its time: each named step of the loop timed with the device synchronized
around it, and torch's profiler over the same rounds (the ops that take the most host and device time).

    python benchmarks/round_profile.py --device cuda --random-weights --target .gpu/target --draft .gpu/draft

The engine's stats split a round into draft and target time only; this splits the target's side further
(padding the pending tokens, the runner's forward: buffer checks, input copies, the graph replay, copying the
logits out) and adds the acceptance and commit steps. Synchronizing around each step serializes host and device
work, so the parts add up to more than an unsynchronized round: read them as where the time is, not as a round's
length. Greedy ``--method`` (default fixed:6) from a random prompt of ``--context`` tokens, no end-of-sequence.
Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch

from draft_cost import random_model

from specadapt import SpeculativeEngine
from specadapt import engine as loop
from specadapt.engine import Batch, RequestConfig
from specadapt.io import write_json_atomic
from specadapt.methods import make_method
from specadapt.models import graphed
from specadapt.models.hardware import machine
from specadapt.models.loading import load_model, load_tokenizer

# (owner, attribute, label): what gets timed, outermost first.
TIMED = [
    (Batch, "_draft", "draft (all steps)"),
    (Batch, "_verify", "verify (target side)"),
    (Batch, "_accept", "accept"),
    (Batch, "_commit", "commit"),
    (loop, "left_pad", "  left_pad (pending tokens)"),
    (graphed.GraphedRunner, "_slab_for", "  runner: buffer check"),
    (graphed._Slab, "run", "  runner: inputs + replay + copy out"),
    (graphed._Slab, "expose", "  runner: cache views"),
]


class Timers:
    def __init__(self, device: torch.device) -> None:
        self.device, self.total, self.calls, self.on = device, defaultdict(float), defaultdict(int), False
        self.saved = []

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)
        self.saved.append((owner, name, fn))

        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            self.sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.total[label] += time.perf_counter() - t0
            self.calls[label] += 1
            return out

        setattr(owner, name, timed)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--random-weights", action="store_true", help="models from their configs (timings only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--method", default="fixed:6")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "round_profile.json")
    args = p.parse_args(argv)

    load = random_model if args.random_weights else load_model
    target, draft = (load(name, "bfloat16", args.device) for name in (args.target, args.draft))
    engine = SpeculativeEngine(target, draft, load_tokenizer(args.target), [])
    prompt = torch.randint(100, 30000, (args.context,), generator=torch.Generator().manual_seed(0)).tolist()
    config = RequestConfig(max_new_tokens=args.max_new_tokens)
    engine.generate([prompt], make_method(args.method), config)  # warm-up: graphs captured

    timers = Timers(engine.device)
    for owner, name, label in TIMED:
        timers.wrap(owner, name, label)
    timers.on = True
    stats = engine.generate([prompt], make_method(args.method), config)[0].stats
    timers.on = False
    for owner, name, fn in timers.saved:
        setattr(owner, name, fn)

    activities = [torch.profiler.ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        plain = engine.generate([prompt], make_method(args.method), config)[0].stats
    wall = time.perf_counter() - t0  # under the profiler: slower than a clean run
    events = prof.key_averages()
    top = sorted(events, key=lambda e: e.cpu_time_total, reverse=True)[:25]
    ops = [{"op": e.key, "calls": e.count, "cpu_ms": round(e.cpu_time_total / 1e3, 2),
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
            "device_ms": round(getattr(e, "device_time_total", 0.0) / 1e3, 2)} for e in top]

    rounds = stats.rounds
    parts = {label: {"ms_per_round": round(1e3 * timers.total[label] / rounds, 3), "calls": timers.calls[label]}
             for _, _, label in TIMED}
    print(f"{rounds} rounds, {stats.generated_tokens} tokens, {stats.drafted} drafted, {stats.accepted} accepted")
    for label, row in parts.items():
        print(f"{label:<40}{row['ms_per_round']:>9.2f} ms/round  ({row['calls']} calls)")
    print(f"\nprofiled run: {plain.rounds} rounds in {wall:.2f} s; top ops by host time:")
    for o in ops:
        print(f"{o['op'][:48]:<50}{o['calls']:>7}{o['cpu_ms']:>10.1f}{o['self_cpu_ms']:>10.1f}{o['device_ms']:>10.1f}")
    payload = {"benchmark": "round_profile", "settings": {k: str(v) for k, v in vars(args).items() if k != "out"},
               "environment": machine(), "rounds": rounds, "generated_tokens": stats.generated_tokens,
               "drafted": stats.drafted, "accepted": stats.accepted, "parts": parts,
               "profiled": {"rounds": plain.rounds, "wall_s": round(wall, 3), "top_ops_by_host_time": ops}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, payload, indent=1)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
