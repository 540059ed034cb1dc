"""Load benchmark of `specadapt serve`: throughput and latency at 1, 2, 4, 8 concurrent clients.

    python benchmarks/serve_load.py                                   # default pair, autoregressive vs fixed:4
    python benchmarks/serve_load.py --target smollm2-135m-instruct --draft smollm2-135m-instruct \\
        --concurrency 1,2 --requests-per-client 2 --max-tokens 16 --dtype float32 --device cpu   # a quick check

The server runs in this process (uvicorn in a thread, loopback only, a free port), one app per method on
the same loaded models, all up for the whole run (``--fresh-servers``: started afresh for each repeat). Clients
are threads using the official ``openai`` client, each sending ``--requests-per-client`` streaming chat requests
one after another (prompts of ``--datasets``
from ``--split``, default MT-Bench and HumanEval test prompts, alternating, greedy,
``stream_options.include_usage``). A cell stops issuing requests after ``--time-limit`` seconds. Cells run
concurrency by concurrency with the methods side by side in a rotated order, ``--repeats`` times; the
ratio to autoregressive is given pooled and per repeat (its spread).

Per (method, concurrency): output tokens/s = all completion tokens / wall time of the cell;
TTFT = request sent -> first content chunk; TPOT = (last chunk - first chunk) / (tokens - 1), per request;
p50/p95 over the cell's requests; acceptance and mean accepted length pooled from ``usage.spec_decode``.
The server's load rule is ``--spec-load`` (default ``auto``, as ``specadapt serve``); a method string may
name its own after ``@``, so one run compares them, e.g. ``--methods autoregressive,fixed:4@auto,fixed:4@off``
(``off``: raw speculation, which shows where it stops paying; ``static`` uses ``--spec-max-batch`` and
``--spec-load-k``; ``auto-defer``: ``auto`` with ``--spec-auto-defer``, leaving a lone request's draft length
to a policy that prices its own drafts; ``auto-cold``: ``auto`` without the server's warm-up, ``--warmup-tokens 0``
(the default in ``cpu_avx2/serve_load_pad1_tune.json``, whose bare label means it; in the others since
``cpu_avx2/serve_load_warmup4_tune.json`` the bare label means ``--warmup-tokens 32``); ``auto-warm``: ``auto``
with ``--warmup-tokens 32``). Every server also gets one 8-token request before its cells. A label ending in
``/fused`` serves that method with ``--fused-first-round`` (a request's first round drafts too; every run before ``cpu_avx2/serve_load_first_token*.json`` served so), e.g.
``--methods autoregressive,adaedl+lookup,adaedl+lookup/fused``; one ending in ``/noprefix`` serves it without a
prefix cache (both: ``/fused/noprefix``). (In ``serve_load_prefix_tune.json``, from before the server kept one by
default, a bare label served without one and ``/prefix`` with 4096 tokens.) (``serve_load_ride_tune.json`` measured riding,
commit 3e6feed, since reverted: its ``/noride`` label served without it.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "serve_load.json"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Server:
    """One app on a free loopback port, served by uvicorn in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def one_request(client, model: str, messages: list[dict], max_tokens: int) -> dict:
    sent = time.perf_counter()
    first = last = None
    usage = None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    tokens = usage["completion_tokens"]
    return {
        "tokens": tokens,
        "ttft": (first or time.perf_counter()) - sent,
        "tpot": (last - first) / (tokens - 1) if first is not None and tokens > 1 else None,
        "spec": usage["spec_decode"],
    }


def run_cell(url: str, model: str, prompts: list[list[dict]], concurrency: int, per_client: int, max_tokens: int,
             time_limit: float) -> dict:
    import openai

    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def client_thread(c: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        for i in range(per_client):
            if time.perf_counter() - start > time_limit:
                return
            try:
                r = one_request(client, model, prompts[(c * per_client + i) % len(prompts)], max_tokens)
            except Exception as exc:  # noqa: BLE001  (report, keep measuring the others)
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    drafted = sum(r["spec"]["num_draft_tokens"] for r in results)
    accepted = sum(r["spec"]["num_accepted_tokens"] for r in results)
    rounds = sum(r["spec"]["rounds"] for r in results)
    ttft = [r["ttft"] for r in results]
    tpot = [r["tpot"] for r in results if r["tpot"] is not None]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": errors,
        "output_tokens": tokens,
        "wall_s": wall,
        "output_tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
        "tpot_p50_s": percentile(tpot, 0.5), "tpot_p95_s": percentile(tpot, 0.95),
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_accepted_length": 1 + accepted / rounds if rounds else None,
        "load_capped_rounds": sum(r["spec"]["load_capped_rounds"] for r in results),
    }


def load_record(scheduler, rounds: int) -> dict:
    """What the server's load rule did in a cell's ``rounds`` rounds: per batch size, how many rounds ran with
    each draft-length cap ("none": uncapped), and what an ``auto`` rule had learned by the cell's end."""
    sizes, caps = (list(history)[-rounds:] if rounds else [] for history in (scheduler.batch_sizes, scheduler.caps))
    by_batch: dict[str, dict[str, int]] = {}
    for size, cap in zip(sizes, caps):
        counts, key = by_batch.setdefault(str(size), {}), "none" if cap is None else str(cap)
        counts[key] = counts.get(key, 0) + 1
    record = {"rounds": rounds, "caps_by_batch": by_batch,
              "round_log": [None if r is None else [r.rows, r.K, r.draft_width, r.target_width, round(r.draft_s, 4),
                                                   round(r.target_s, 4), round(r.prefill_s, 4), sum(r.accepted)]
                            for r in (list(scheduler.records)[-rounds:] if rounds else [])]}
    if hasattr(scheduler.load_rule, "summary"):
        record["load_rule"] = scheduler.load_rule.summary()
    return record


def prompt_order(n: int, datasets: list[str], skip: int = 0, available: int | None = None) -> list[tuple[str, int]]:
    """(dataset, index within its split) of the prompts :func:`load_prompts` sends, in order: alternating between
    ``datasets``, each from its prompt ``skip + 1`` on, ``n`` in all, or fewer where the shortest split has only
    ``available`` prompts from there on."""
    groups = n if available is None else min(n, available)
    return [(name, skip + i) for i in range(groups) for name in datasets][:n]


def load_prompts(n: int, datasets: list[str], split: str, skip: int = 0) -> list[list[dict]]:
    """``n`` chat prompts from ``split`` of ``datasets`` (each from its prompt ``skip + 1`` on), alternating between them."""
    from specadapt.bench.datasets import load_dataset

    examples = {name: load_dataset(name, skip + n, split) for name in datasets}
    available = min(max(0, len(e) - skip) for e in examples.values())
    return [examples[name][i].messages for name, i in prompt_order(n, datasets, skip, available)]


def throughput_ratios(rows: list[dict], methods: list[str], against: str = "autoregressive") -> dict:
    """Per method and concurrency: its output tokens/s ÷ that of the server ``against``, pooled over repeats (ratio
    of the summed rates) and per repeat (the spread)."""
    base = {(r["concurrency"], r.get("repeat", 0)): r["output_tokens_per_s"] for r in rows if r["method"] == against}
    out: dict = {}
    for method in (m for m in methods if m != against):
        mine = [r for r in rows if r["method"] == method and base.get((r["concurrency"], r.get("repeat", 0)))]
        for c in dict.fromkeys(r["concurrency"] for r in mine):
            cell = [r for r in mine if r["concurrency"] == c]
            per = [r["output_tokens_per_s"] / base[(c, r.get("repeat", 0))] for r in cell]
            pooled = sum(r["output_tokens_per_s"] for r in cell) / sum(base[(c, r.get("repeat", 0))] for r in cell)
            out.setdefault(method, {})[c] = {"ratio": pooled, "per_repeat": per}
    return out


def main(argv: list[str] | None = None) -> None:
    from specadapt.api import DEFAULT_METHOD
    from specadapt.bench.runner import split_methods
    from specadapt.models import zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=zoo.DEFAULT_TARGET)
    parser.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    parser.add_argument("--methods", default=f"autoregressive,{DEFAULT_METHOD}", help="comma-separated method strings (semicolons where a method's settings hold commas)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated client counts")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--datasets", default="mt-bench,humaneval", help="prompts from these, alternating")
    parser.add_argument("--split", default="test", help="split of --datasets (test: no choice was made on it)")
    parser.add_argument("--skip", type=int, default=0, help="start after each dataset's first SKIP prompts of --split "
                        "(prompts no earlier run reported on)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over every (concurrency, method) cell; the ratio's spread is across them")
    parser.add_argument("--fresh-servers", action="store_true",
                        help="start every method's server afresh for each repeat (what a newly started server does)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per cell before clients stop issuing requests")
    parser.add_argument("--spec-load", default="auto", choices=["auto", "static", "off"],
                        help="the server's load rule for methods without @rule")
    parser.add_argument("--spec-max-batch", type=int, default=8, help="--spec-load static: the threshold")
    parser.add_argument("--spec-load-k", type=int, default=0, help="--spec-load static: draft tokens above it")
    parser.add_argument("--spec-auto-margin", type=float, default=None,
                        help="--spec-load auto: gain drafting must promise (default: the server's)")
    parser.add_argument("--draft-quant", default=zoo.DEFAULT_DRAFT_QUANT,
                        help="the draft's quantization (serve_load.json and serve_load_spec_max_batch1.json: none)")
    parser.add_argument("--draft-vocab", default=zoo.DEFAULT_DRAFT_VOCAB,
                        help="the draft's output head: full or N token ids")
    parser.add_argument("--prefix-cache-tokens", type=int, default=None,
                        help="the servers' prefix cache (default: the server's; a label ending in /noprefix keeps none)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--no-float32-copies", dest="float32_copies", action="store_false",
                        help="a bf16 target on a CPU without native bf16 keeps no float32 copy of its weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs on a shared machine)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from specadapt import SpecDecoder
    from specadapt.models.hardware import compile_fused_products, machine
    from specadapt.serve import ServeSettings, create_app

    hf_logging.disable_progress_bar()
    methods = split_methods(args.methods)
    levels = [int(c) for c in args.concurrency.split(",")]
    decoder = SpecDecoder.from_pretrained(args.target, args.draft, dtype=args.dtype, device=args.device,
                                          draft_quant=args.draft_quant, draft_vocab=args.draft_vocab,
                                          float32_copies=args.float32_copies)
    compile_fused_products(decoder.target, decoder.draft)
    prompts = load_prompts(max(levels) * args.requests_per_client, args.datasets.split(","), args.split, args.skip)
    rows = []

    def prefix_cache(flags: list[str]) -> dict:
        if "noprefix" in flags:
            return {"prefix_cache_tokens": 0}
        return {} if args.prefix_cache_tokens is None else {"prefix_cache_tokens": args.prefix_cache_tokens}

    def start_servers(stack: contextlib.ExitStack) -> dict:
        servers = {}
        for method in methods:  # one server per method, all up at once, so cells can interleave
            spec, *flags = method.split("/")
            name, _, rule = spec.partition("@")
            rule = rule or args.spec_load
            defer, warmup = rule == "auto-defer", {"auto-cold": 0, "auto-warm": 32}.get(rule)
            settings = ServeSettings(target=args.target, draft=args.draft, draft_quant=args.draft_quant,
                                     draft_vocab=args.draft_vocab, method=name, early_first_token="fused" not in flags,
                                     **prefix_cache(flags),
                                     model_name="bench", max_batch_size=max(levels), max_queue=max(levels),
                                     spec_load="auto" if defer or warmup is not None else rule, spec_auto_defer=defer,
                                     spec_max_batch=args.spec_max_batch, spec_load_k=args.spec_load_k,
                                     **({} if warmup is None else {"warmup_tokens": warmup}),
                                     **({} if args.spec_auto_margin is None else {"spec_auto_margin": args.spec_auto_margin}))
            servers[method] = stack.enter_context(Server(create_app(decoder, settings)))
            run_cell(servers[method].url, "bench", prompts[:1], 1, 1, 8, args.time_limit)  # warm-up
        return servers

    with contextlib.ExitStack() as stack:
        servers = start_servers(stack)
        for repeat in range(args.repeats):
            if args.fresh_servers and repeat:  # each repeat on servers that have served nothing but the warm-ups
                stack.close()
                servers = start_servers(stack)
            # Concurrency by concurrency, the methods side by side in an order rotated per cell, so slow drift of
            # the machine's speed spreads over them instead of favouring whichever ran first.
            for i, c in enumerate(levels):
                shift = (repeat * len(levels) + i) % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    scheduler = servers[method].app.state.scheduler
                    before = scheduler.rounds
                    stores = {name: store for name, store in scheduler.engine.prefixes.items() if store is not None}
                    for store in stores.values():  # cells repeat prompts: a cell reuses only its own prompts' prefixes
                        store.clear()
                    row = {"method": method, "repeat": repeat, **run_cell(
                        servers[method].url, "bench", prompts, c, args.requests_per_client, args.max_tokens,
                        args.time_limit), **load_record(scheduler, scheduler.rounds - before)}
                    if stores:
                        row["prefix_reused_tokens"] = {name: store.reused_tokens for name, store in stores.items()}
                    rows.append(row)
                    print(f"{method:>16} x{c} (repeat {repeat}): {row['output_tokens_per_s']:.1f} tok/s", file=sys.stderr)

    def cell(value, spec):
        return "-" if value is None else format(value, spec)

    header = f"{'method':>16} {'clients':>7} {'reqs':>5} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} " \
             f"{'TPOT p50':>9} {'TPOT p95':>9} {'accept':>7} {'MAL':>5}"
    print(header)
    for r in rows:
        print(f"{r['method']:>16} {r['concurrency']:>7} {r['requests']:>5} {cell(r['output_tokens_per_s'], '.1f'):>8} "
              f"{cell(r['ttft_p50_s'], '.3f'):>9} {cell(r['ttft_p95_s'], '.3f'):>9} {cell(r['tpot_p50_s'], '.4f'):>9} "
              f"{cell(r['tpot_p95_s'], '.4f'):>9} {cell(r['acceptance_rate'], '.3f'):>7} {cell(r['mean_accepted_length'], '.2f'):>5}")
    ratios = throughput_ratios(rows, methods)
    for method, by_c in ratios.items():
        print(f"{method} / autoregressive throughput: " + ", ".join(
            f"x{c}: {r['ratio']:.2f}" + (f" (repeats {', '.join(f'{v:.2f}' for v in r['per_repeat'])})"
                                        if len(r["per_repeat"]) > 1 else "") for c, r in by_c.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}  # where it was written is no setting
    first = f", from each one's prompt {args.skip + 1}" if args.skip else ""
    settings["prompts"] = f"{args.datasets} ({args.split} split{first}), alternating, chat, greedy"
    settings.update(decoder.engine.draft_setup)  # what "auto" resolved to, and the head it kept
    args.out.write_text(json.dumps({"settings": settings, "machine": machine(), "rows": rows, "ratios": ratios}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
