"""What a draft step costs against a target call, with the draft in bf16, int8 or int4 and with a full or a
frequency-ranked head; where a draft step's time goes; and what it buys end to end in specadapt's engine.

    python benchmarks/draft_cost.py                      # the default pair, bf16, 2 threads, a few minutes
    python benchmarks/draft_cost.py --steps 40 --rounds 3 --engine-prompts 0   # a quick look

Part 1 (per step): each model prefills ``--context`` random tokens once; then one timed step feeds one token
(a draft step or target decode) or 8 tokens (a verification of 7 drafts), through specadapt's ``ModelRunner``
as the engine does, and rolls the cache back, so every step sees the same context. All variants are timed
round-robin (``--rounds`` rounds of ``--steps`` / ``--rounds`` steps each), so machine load hits them alike;
the median over rounds of the mean step time is reported, and the minimum (the least disturbed round). ``c`` =
draft step / target decode (1 token) and ``c_verify`` = draft step / verify-8, each the median of the ratios
within a round; ``c_of_min`` = the ratio of the minima.

Each model runs the way the engine runs it (on a CPU the draft through specadapt's lean DecodeStep, the target
through the transformers forward with specadapt's packed attention; on a GPU both replay CUDA graphs of the lean
step, ``graphed``) and, with ``--forwards``, also the other ways: ``[hf-packed]``, ``[hf-sdpa]`` (transformers'
own SDPA attention, the state before either existed), ``[lean]``, ``[graphed]``. The target is timed each of
these ways too (except ``lean``), and a draft row's ``c`` is against the target run the same way where there is
one, else against the engine's: the per-step overhead before and after.

Breakdown: in each round, after its clean steps, a variant runs half as many steps again with forward hooks on
every linear layer (and the head) timing them; "rest" is the step time minus their sum (embedding, norms,
rotary, attention over the cache, Python/HF overhead). The median shares over rounds are applied to the clean
step time. The hooks add a few microseconds per layer, counted in "rest" (so "rest" is a slight overestimate).

Part 2 (engine): ``--engine-prompts`` HumanEval chat prompts, ``fixed:6`` with each draft variant against
target-only greedy decoding through the same engine (``autoregressive``), ``--max-new-tokens`` each: tokens/s
and whether the output ids equal target-only greedy's (bf16: the batched verification may round differently
from a one-token pass, so a mismatch is numerics, not a lossy rule; the fp32 exactness tests are in
tests/test_quant.py).

On a GPU (``--device cuda``) only bf16 drafts exist (quantization is CPU-only) and the per-layer breakdown is
skipped (hooks would time asynchronous launches); every timed block ends with a device synchronize.
``--random-weights`` builds both models from their configs with random weights, on the device: timings only
(a step's cost does not depend on the weights' values; acceptance does, so the engine runs and the head's
coverage are skipped; ``--engine-repeats`` times the engine's draft and target per token instead). It lets a
machine that cannot receive the weights (a GPU box reached through a small transfer) time the pair's shapes:
only config.json and the tokenizer files travel.

``--target-schemes int8,int4`` also times the target quantized so (``--target-quant``; its output is lossless
w.r.t. that quantized target only) with the same breakdown, and reports each target's decode tokens/s (one
token per step at ``--context``), the figure llama.cpp's ``tg`` reports.

Also records the weights' bytes of each variant and the process's peak RSS. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path
from statistics import median
from typing import Sequence

import torch
from torch import nn

from specadapt.models import zoo
from specadapt.models.hardware import machine
from specadapt.models.draft_vocab import restrict_vocabulary, shipped_ranking
from specadapt.models.loading import eos_token_ids, load_model, load_tokenizer
from specadapt.models.quant import QUANT_LINEARS, quantize_model
from specadapt.models.attention import NAME as PACKED
from specadapt.models.graphed import GraphedRunner
from specadapt.models.runner import ModelRunner


def model_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if t.device.type != "meta"}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class LinearTimer:
    """Times every linear layer (float or quantized) with forward hooks; the head separately. ``extra``: layers the
    model runs outside its module tree (the lean step's fused projections)."""

    def __init__(self, model: nn.Module, extra: Sequence[nn.Module] = ()) -> None:
        self.linear_s = self.head_s = 0.0
        head = model.get_output_embeddings()
        self.handles = []
        for module in [*model.modules(), *extra]:
            if isinstance(module, (nn.Linear, *QUANT_LINEARS)):
                is_head = module is head or module is getattr(head, "proj", None)
                self.handles.append(module.register_forward_pre_hook(self._pre))
                self.handles.append(module.register_forward_hook(self._post_head if is_head else self._post))

    def _pre(self, module, args) -> None:
        self._t0 = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.linear_s += time.perf_counter() - self._t0

    def _post_head(self, module, args, output) -> None:
        self.head_s += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def engine_forward(device: str, role: str) -> str:
    """How the engine runs a (Llama/Qwen2) ``role`` ('draft' or 'target') here, as ``models.graphed.make_runner``
    picks."""
    return "graphed" if device == "cuda" else "lean" if role == "draft" else "hf-packed"


class Stepper:
    """A model with a prefilled cache of ``rows`` rows; ``step()`` runs one forward of ``n`` tokens per row and rolls
    it back.

    ``forward``: how the model runs: ``lean`` (specadapt's DecodeStep, the engine's draft on a CPU), ``graphed``
    (the same step replayed from CUDA graphs over fixed buffers, the engine's draft and target on a GPU),
    ``hf-packed`` (the transformers forward with specadapt's packed attention, the engine's target on a CPU) or
    ``hf-sdpa`` (the transformers forward with its own SDPA attention, as before either existed)."""

    def __init__(self, model: nn.Module, context: int, n: int, vocab: int, seed: int, forward: str = "hf-packed",
                 rows: int = 1) -> None:
        self.model, self.n, self.vocab, self.forward = model, n, vocab, forward
        self.device = model.device
        self.runner = GraphedRunner(model) if forward == "graphed" else ModelRunner(model, lean_steps=forward == "lean")
        self._prepare()
        self.runner.add_rows(rows)
        g = torch.Generator().manual_seed(seed)
        low, high = min(100, vocab // 2), min(30000, vocab)  # ordinary tokens of a real vocabulary (any of a tiny one)
        self.tokens = torch.randint(low, high, (64, rows, n), generator=g).to(self.device)
        self.keep = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.runner.forward(torch.randint(low, high, (rows, context), generator=g).to(self.device))
        self.i = 0
        self.step()  # warm-up

    def _prepare(self) -> None:
        self.model.set_attn_implementation("sdpa" if self.forward == "hf-sdpa" else PACKED)

    def step(self) -> None:
        self.runner.forward(self.tokens[self.i % 64], keep=self.n)
        self.runner.keep_tail(self.n, self.keep)
        self.i += 1

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_steps(self, k: int) -> float:
        self._prepare()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(k):
            self.step()
        self.sync()
        return (time.perf_counter() - t0) / k

    def breakdown(self, k: int) -> dict:
        lean = self.runner.lean  # None where the model runs the transformers forward
        timer = LinearTimer(self.model, lean.fused_layers() if lean is not None else ())
        try:
            total = self.time_steps(k)
        finally:
            timer.close()
        lin, head = timer.linear_s / k, timer.head_s / k
        return {"step_ms": total * 1e3, "linear_ms": lin * 1e3, "head_ms": head * 1e3, "rest_ms": (total - lin - head) * 1e3}


def random_model(folder: str, dtype: str, device: str) -> nn.Module:
    """The model ``folder``'s config.json describes, with seeded random weights (``--random-weights``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    return model.eval()


def draft_variants(draft: nn.Module, tokenizer, schemes: list[str], fr_size: int, group: int) -> dict[str, nn.Module]:
    ranking = shipped_ranking(tokenizer)
    if ranking is None:
        raise SystemExit("no shipped token ranking for this tokenizer")
    out: dict[str, nn.Module] = {}
    for scheme in schemes:
        for fr in (False, True):
            model = copy.deepcopy(draft)
            if fr:
                restrict_vocabulary(model, tokenizer, fr_size, ranking)
            if scheme != "bf16":
                quantize_model(model, scheme, group if scheme == "int4" else None)
            out[f"draft {scheme} {'FR' + str(fr_size) if fr else 'full'}"] = model
    return out


def target_variants(target: nn.Module, schemes: list[str], group: int) -> dict[str, nn.Module]:
    """Quantized copies of the target (``--target-quant``: lossless w.r.t. that quantized target, not the bf16 one)."""
    out = {}
    for scheme in schemes:
        model = copy.deepcopy(target)
        quantize_model(model, scheme, group if scheme == "int4" else None, "target")
        out[f"target {scheme} 1 token"] = model
    return out


def per_step(args, target, variants: dict[str, nn.Module], vocab: int, targets: dict[str, nn.Module] | None = None) -> dict:
    """Each model the way the engine runs it (:func:`engine_forward`), plus ``--forwards``' other ways (a
    ``[forward]`` suffix; the target too, except ``lean``): what the packed attention, the lean step and the CUDA
    graphs each save."""
    device = target.device.type
    on_target, on_draft = engine_forward(device, "target"), engine_forward(device, "draft")
    steppers = {"target 1 token": Stepper(target, args.context, 1, vocab, 0, on_target),
                "target verify-8": Stepper(target, args.context, 8, vocab, 0, on_target)}
    others = [f for f in args.forwards.split(",") if f]
    for forward in others:
        if forward not in (on_target, "lean"):
            steppers[f"target 1 token [{forward}]"] = Stepper(target, args.context, 1, vocab, 0, forward)
            steppers[f"target verify-8 [{forward}]"] = Stepper(target, args.context, 8, vocab, 0, forward)
    for name, model in (targets or {}).items():
        steppers[name] = Stepper(model, args.context, 1, vocab, 0)
    for name, model in variants.items():
        steppers[name] = Stepper(model, args.context, 1, vocab, 0, on_draft)
        for forward in others:
            if forward != on_draft:
                steppers[f"{name} [{forward}]"] = Stepper(model, args.context, 1, vocab, 0, forward)
    per_round = max(1, args.steps // args.rounds)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    on_cpu = target.device.type == "cpu"  # the hooks time launches, not work, on a GPU
    shares: dict[str, list[dict]] = {k: [] for k in steppers if "verify-8" not in k and on_cpu}
    with torch.inference_mode():
        for r in range(args.rounds):
            for name, s in steppers.items():
                # The target costs 3x a bf16 draft step: fewer target steps keep the run short.
                k = max(1, per_round // 3) if name.startswith("target") else per_round
                times[name].append(s.time_steps(k))
                if name in shares:  # the same steps again with every linear layer timed
                    b = s.breakdown(max(1, k // 2))
                    shares[name].append({part: b[part + "_ms"] / b["step_ms"] for part in ("linear", "head", "rest")})
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f}" for k, v in times.items()), flush=True)
    step_ms = {k: median(v) * 1e3 for k, v in times.items()}
    rows = {}
    for name, ms in step_ms.items():
        row = {"step_ms": round(ms, 2), "rounds_ms": [round(t * 1e3, 2) for t in times[name]]}
        if name.startswith("draft"):
            # Ratios within a round, then their median: load that shifts between rounds cancels.
            # Against the target run the same way where it was (the state before the packed attention for
            # [hf-sdpa], before the CUDA graphs for [hf-packed] on a GPU), else the engine's.
            suffix = name[name.index(" ["):] if " [" in name else ""
            suffix = suffix if "target 1 token" + suffix in times else ""
            one, verify = times["target 1 token" + suffix], times["target verify-8" + suffix]
            c = [d / t for d, t in zip(times[name], one)]
            cv = [d / t for d, t in zip(times[name], verify)]
            row.update(c=round(median(c), 3), c_verify=round(median(cv), 3),
                       weights_MB=round(model_bytes(variants[name.split(" [")[0]]) / 2**20, 1))
            # The least disturbed round of each: on a shared machine the closest to an idle one.
            row.update(c_of_min=round(min(times[name]) / min(one), 3))
        row["min_ms"] = round(min(times[name]) * 1e3, 2)
        if name.startswith("target") and "verify-8" not in name:  # decode speed, comparable with llama.cpp's tg
            row["decode_tokens_per_s"] = round(1e3 / ms, 2)
            row["decode_tokens_per_s_of_min"] = round(1e3 / row["min_ms"], 2)
            if name in (targets or {}):
                row["weights_MB"] = round(model_bytes(targets[name]) / 2**20, 1)
        if name in shares:
            frac = {part: median(x[part] for x in shares[name]) for part in ("linear", "head", "rest")}
            row["breakdown_share"] = {part: round(v, 3) for part, v in frac.items()}
            row["breakdown_ms"] = {part: round(v * ms, 2) for part, v in frac.items()}  # shares applied to the clean time
        rows[name] = row
    rows["target 1 token"]["weights_MB"] = round(model_bytes(target) / 2**20, 1)
    return rows


def engine_runs(args, target, tokenizer, variants: dict[str, nn.Module]) -> dict:
    from specadapt.bench.datasets import load_dataset
    from specadapt.engine import RequestConfig, SpeculativeEngine
    from specadapt.methods import make_method

    eos = eos_token_ids(target, tokenizer)
    examples = load_dataset("humaneval", args.engine_prompts)
    prompts = [tokenizer.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=True) for e in examples]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    config = RequestConfig(max_new_tokens=args.max_new_tokens)
    runs: dict[str, dict] = {}
    engines = {"target only (autoregressive)": (SpeculativeEngine(target, None, tokenizer, eos), "autoregressive")}
    for name in args.engine_variants.split(","):
        engines[f"fixed:6 + {name}"] = (SpeculativeEngine(target, variants[f"draft {name}"], tokenizer, eos), "fixed:6")
    for label, (engine, method) in engines.items():
        engine.generate([prompts[0][:16]], make_method(method), RequestConfig(max_new_tokens=4))  # warm-up
        runs[label] = {"tokens": 0, "seconds": 0.0, "outputs": [], "acceptance": []}
    for i, ids in enumerate(prompts):  # prompt by prompt, every engine in turn: load hits all alike
        for label, (engine, method) in engines.items():
            t0 = time.perf_counter()
            result = engine.generate([ids], make_method(method), config)[0]
            dt = time.perf_counter() - t0
            run = runs[label]
            run["tokens"] += len(result.token_ids)
            run["seconds"] += dt
            run["outputs"].append(result.token_ids)
            run["acceptance"].append(result.stats.mean_accepted_length if method != "autoregressive" else None)
            print(f"  prompt {i}: {label}: {len(result.token_ids) / dt:.2f} tok/s", flush=True)
    reference = runs["target only (autoregressive)"]["outputs"]
    summary = {}
    for label, run in runs.items():
        same = [out == ref for out, ref in zip(run["outputs"], reference)]
        prefix = [next((j for j, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref))) for out, ref in zip(run["outputs"], reference)]
        summary[label] = {
            "tokens_per_s": round(run["tokens"] / run["seconds"], 3),
            "tokens": run["tokens"],
            "seconds": round(run["seconds"], 2),
            "identical_to_target_greedy": f"{sum(same)}/{len(same)}",
            "common_prefix_tokens": prefix,
            "mean_accepted_length": run["acceptance"],
        }
    base = summary["target only (autoregressive)"]["tokens_per_s"]
    for row in summary.values():
        row["speedup"] = round(row["tokens_per_s"] / base, 3)
    return {"prompts": [e.id for e in examples], "max_new_tokens": args.max_new_tokens, "results": summary}


def engine_timing(args, target, tokenizer, variants: dict[str, nn.Module]) -> dict:
    """With random weights (``--random-weights``): the engine's own time per drafted token and per target round,
    ``fixed:6`` greedy from a random prompt of ``--context`` tokens, no end-of-sequence: what a draft step costs
    inside the loop (its sampling and bookkeeping included), against the target's rounds; and transformers'
    ``generate`` on the same models, target-only and assisted with the same constant K (no confidence stopping).
    Random drafts are almost never accepted, so every speculative run makes one token per round: tokens/s compare
    the cost of a round, not speedups, which need real weights."""
    from specadapt.engine import RequestConfig, SpeculativeEngine
    from specadapt.methods import make_method

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 30000, (args.context,), generator=g).tolist()
    config = RequestConfig(max_new_tokens=args.max_new_tokens)
    # label -> (engine, method); transformers' rows: (the assistant draft or None, None)
    runs = {"target only (autoregressive)": (SpeculativeEngine(target, None, tokenizer, []), "autoregressive")}
    drafts = {name: variants[f"draft {name}"] for name in args.engine_variants.split(",") if f"draft {name}" in variants}
    for name, draft in drafts.items():
        runs[f"fixed:6 + {name}"] = (SpeculativeEngine(target, draft, tokenizer, []), "fixed:6")
    runs["transformers generate (target only)"] = (None, None)
    vocab = target.get_output_embeddings().weight.shape[0]
    for name, draft in drafts.items():  # transformers' assistant must score the target's whole vocabulary
        if draft.get_output_embeddings().weight.shape[0] == vocab:
            runs[f"transformers assisted K=6 + {name}"] = (draft, None)
    times: dict[str, list[dict]] = {label: [] for label in runs}
    for r in range(args.engine_repeats + 1):  # the first pass warms up (and captures the graphs)
        for label, (engine, method) in runs.items():
            if method is None:
                times[label].append(hf_generate(target, engine, prompt, args.max_new_tokens))
                continue
            t0 = time.perf_counter()
            s = engine.generate([prompt], make_method(method), config)[0].stats
            row = {"tokens_per_s": s.generated_tokens / (time.perf_counter() - t0),
                   "target_ms_per_round": 1e3 * s.target_time_s / s.rounds, "accepted": s.accepted}
            if s.drafted:
                row["draft_ms_per_token"] = 1e3 * s.draft_time_s / s.drafted
            times[label].append(row)
    rows = {label: {k: round(median(x[k] for x in runs[1:]), 3) for k in runs[0]} for label, runs in times.items()}
    one = rows["target only (autoregressive)"]["target_ms_per_round"]
    for row in rows.values():
        if "draft_ms_per_token" in row:
            row["c_in_engine"] = round(row["draft_ms_per_token"] / one, 3)
    return {"prompt_tokens": args.context, "max_new_tokens": args.max_new_tokens, "repeats": args.engine_repeats,
            "method": "fixed:6", "results": rows}


def hf_generate(target: nn.Module, draft: nn.Module | None, prompt: list[int], n: int) -> dict:
    """transformers' greedy ``generate`` for exactly ``n`` new tokens (no end-of-sequence), assisted by ``draft``
    with a constant 6 tokens per round when given: its tokens/s."""
    ids = torch.tensor([prompt], device=target.device)
    kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    if draft is not None:
        gc = draft.generation_config
        gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold = 6, "constant", 0.0
        kwargs["assistant_model"] = draft
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = target.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    if target.device.type == "cuda":
        torch.cuda.synchronize(target.device)
    return {"tokens_per_s": (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)}


def coverage(tokenizer, size: int) -> dict:
    """Share of tokens of held-out text whose id a head of ``size`` keeps: lowest ids vs the shipped ranking."""
    from specadapt.bench.datasets import load_dataset

    ranking = shipped_ranking(tokenizer)
    top = set(ranking[:size].tolist())
    texts = {
        "humaneval prompts": [e.reference["prompt"] for e in load_dataset("humaneval", 40)],
        "gsm8k test questions": [e.messages[-1]["content"] for e in load_dataset("gsm8k", 200)],
        "mt-bench questions": [e.messages[-1]["content"] for e in load_dataset("mt-bench", 80)],
    }
    out = {}
    for name, items in texts.items():
        ids = [i for t in items for i in tokenizer(t, add_special_tokens=False)["input_ids"]]
        out[name] = {"tokens": len(ids), "lowest_ids": round(sum(i < size for i in ids) / len(ids), 4), "frequency_ranked": round(sum(i in top for i in ids) / len(ids), 4)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=zoo.DEFAULT_TARGET)
    p.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    p.add_argument("--schemes", default="bf16,int8,int4")
    p.add_argument("--target-schemes", default="", help="also time the target quantized so, e.g. int8,int4 (--target-quant)")
    p.add_argument("--fr-size", type=int, default=32768, help="frequency-ranked head size")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--forwards", default="hf-sdpa,hf-packed",
                   help="also time each draft (and the target) run these other ways: hf-sdpa, hf-packed, lean, graphed (see Stepper)")
    p.add_argument("--context", type=int, default=256, help="tokens in the KV cache")
    p.add_argument("--steps", type=int, default=240, help="timed draft steps per variant (target: a third)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--engine-prompts", type=int, default=3, help="HumanEval prompts for the engine runs (0: skip)")
    p.add_argument("--engine-variants", default="bf16 full,int4 full,int4 FR32768")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--engine-repeats", type=int, default=0,
                   help="with --random-weights: time the engine's draft and target per token this many times")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 drafts only there)")
    p.add_argument("--random-weights", action="store_true",
                   help="both models from their configs with random weights: step timings only (see above)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "draft_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(args.target)
    load = random_model if args.random_weights else load_model
    target, draft = (load(name, "bfloat16", args.device) for name in (args.target, args.draft))
    vocab = target.get_output_embeddings().weight.shape[0]
    t0 = time.perf_counter()
    variants = draft_variants(draft, tokenizer, args.schemes.split(","), args.fr_size, args.group_size)
    build_s = time.perf_counter() - t0
    del draft
    print(f"built {len(variants)} draft variants in {build_s:.1f}s", flush=True)

    targets = target_variants(target, [x for x in args.target_schemes.split(",") if x], args.group_size)
    steps = per_step(args, target, variants, vocab, targets)
    print(f"\n{'model':<38}{'step ms':>9}{'c':>7}{'c_ver8':>8}{'linear':>9}{'head':>8}{'rest':>8}{'MB':>8}")
    for name, row in steps.items():
        b = row.get("breakdown_ms", {})
        print(f"{name:<38}{row['step_ms']:>9.1f}{row.get('c', float('nan')):>7.3f}{row.get('c_verify', float('nan')):>8.3f}"
              f"{b.get('linear', float('nan')):>9.1f}{b.get('head', float('nan')):>8.1f}{b.get('rest', float('nan')):>8.1f}{row.get('weights_MB', float('nan')):>8.0f}")
    cover = None if args.random_weights else coverage(tokenizer, args.fr_size)
    if cover:
        print("\ncoverage of held-out text by a head of", args.fr_size, json.dumps(cover, indent=1))
    engine = timing = None
    if args.engine_prompts and not args.random_weights:
        engine = engine_runs(args, target, tokenizer, variants)
        print()
        for label, row in engine["results"].items():
            print(f"{label:<36}{row['tokens_per_s']:>8.2f} tok/s  x{row['speedup']:.2f}  identical {row['identical_to_target_greedy']}  prefix {row['common_prefix_tokens']}")
    if args.engine_repeats and args.random_weights:
        timing = engine_timing(args, target, tokenizer, variants)
        print()
        for label, row in timing["results"].items():
            print(f"{label:<36}" + "  ".join(f"{k} {v}" for k, v in row.items()))
    payload = {
        "benchmark": "draft_cost",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},  # where it was written is no setting
        "environment": machine(),
        "quantize_seconds_all_variants": round(build_s, 1),
        "engine_forward": {role: engine_forward(args.device, role) for role in ("target", "draft")},
        "per_step": steps,
        "fr_head_coverage": cover,
        "engine": engine,
        "engine_timing": timing,
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_MB": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
