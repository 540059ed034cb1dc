"""Would tree drafting pay on this CPU? Its value modelled from measured parts, before building it.

    python benchmarks/tree_value.py benchmarks/results/tune_int4_16 --threads 2

A tree drafts, beside the chain, a second candidate at some depths: the draft's second most likely token,
followed by a few of the draft's own tokens, all verified in the same target pass (a tree attention mask). At
temperature 0 a branch helps exactly when the chain is rejected at a depth where the branch's token is the
target's; what it then gains is its own run of agreement. Both are read off one teacher-forced draft pass along
the target's greedy output (as ``specadapt.bench.replay`` does): where the branch token is the target's token,
the branch continues along the target's text, so its agreement is the draft's teacher-forced agreement there.

Shapes: a chain of K tokens (``D`` = 0), or a chain of K plus one branch of ``m`` tokens at each depth below
``D``. A round's cost is measured, in this process, on the run's models as the engine runs them: the target's
forward over the 1 + K + D·m tokens it verifies, and each draft step over the tokens fed together in it (the
chain's next token plus the next token of every branch still being drafted; a branch at depth d starts from the
chain's step d + 1 logits and needs m - 1 more steps). Not modelled (both shapes alike): prefill, the engine's
per-round bookkeeping, the cost of tree masks. Rounds never draft past the output's end.

Prompts: the run's examples with a target-only record (tune prompts: no choice touches the test split). Writes
JSON (``--out``) and prints, per dataset, the draft's top-1 / top-2 agreement and the best chain and tree shape.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from bisect import bisect_left
from pathlib import Path
from statistics import mean, median

import torch
from tqdm import tqdm

from draft_cost import Stepper  # the same timed, rolled-back step (benchmarks/ is on the path of a script run)
from specadapt.bench.replay import make_trajectory
from specadapt.bench.runner import load_settings, target_outputs
from specadapt.io import write_json_atomic
from specadapt.models.hardware import compile_fused_products, machine

OUT = Path(__file__).resolve().parent / "results" / "tree_value.json"
VERIFY_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40)


def runs_of_agreement(match: list[bool]) -> list[int]:
    """run[i] = how many tokens from position i on the draft's top-1 gets right in a row (run[len] = 0)."""
    run = [0] * (len(match) + 1)
    for i in range(len(match) - 1, -1, -1):
        run[i] = run[i + 1] + 1 if match[i] else 0
    return run


def draft_rows(k: int, depths: int, m: int) -> list[int]:
    """Tokens fed at each draft step of a round: the chain's (steps 1..k) and branch d's (steps d + 2 .. d + m)."""
    steps = max(k, depths - 1 + m) if depths else k
    return [int(t <= k) + sum(d + 2 <= t <= d + m for d in range(depths)) for t in range(1, steps + 1)]


def simulate(match1: list[bool], match2: list[bool], k: int, depths: int, m: int, draft_s, verify_s) -> dict:
    """One greedy generation along the target's output, shape (k, depths, m): its rounds, tokens and modelled
    seconds. ``match1[i]`` / ``match2[i]``: the draft's first / second choice at position i is the target's token.
    ``draft_s(n)``: a draft step feeding n tokens; ``verify_s(n)``: the target's pass over n tokens."""
    n = len(match1)
    run = runs_of_agreement(match1)
    pos = rounds = branch_wins = 0
    seconds = 0.0
    while pos < n:
        k_eff = min(k, n - pos - 1)  # the last token is always the target's
        d_eff = min(depths, k_eff) if m > 1 else 0
        accepted = min(run[pos], k_eff)
        tokens = accepted + 1
        if accepted < d_eff and match2[pos + accepted]:  # the chain fails where a branch holds the target's token
            tokens += 1 + min(run[pos + accepted + 1], m - 1)
            branch_wins += 1
        tokens = min(tokens, n - pos)
        seconds += sum(draft_s(r) for r in draft_rows(k_eff, d_eff, m)) + verify_s(1 + k_eff + d_eff * m)
        pos += tokens
        rounds += 1
    return {"rounds": rounds, "tokens": n, "seconds": seconds, "branch_wins": branch_wins}


def interpolate(table: dict[int, float]):
    """A cost at any width from costs measured at some widths (linear between them, flat beyond the last)."""
    xs = sorted(table)

    def cost(n: int) -> float:
        if n in table:
            return table[n]
        j = bisect_left(xs, n)
        if j >= len(xs):
            return table[xs[-1]] * n / xs[-1]
        lo, hi = xs[j - 1], xs[j]
        return table[lo] + (table[hi] - table[lo]) * (n - lo) / (hi - lo)

    return cost


def measure_costs(target, draft, context: int, rounds: int, draft_widths: list[int], verify_widths: list[int]) -> dict:
    """Median seconds of the target's forward over n tokens and the draft's lean step over n tokens (one row),
    round-robin in this process."""
    vocab = target.get_input_embeddings().num_embeddings
    cells = {("target", n): Stepper(target, context, n, vocab, n, "hf-packed") for n in verify_widths}
    cells |= {("draft", n): Stepper(draft, context, n, vocab, 100 + n, "lean") for n in draft_widths}
    times: dict = {cell: [] for cell in cells}
    for _ in tqdm(range(rounds), desc="costs", unit="round"):
        for cell, stepper in cells.items():
            times[cell].append(stepper.time_steps(2 if cell[0] == "target" else 4))
    return {role: {n: median(ts) for (r, n), ts in times.items() if r == role} for role in ("target", "draft")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a greedy `specadapt bench` output folder (its target-only outputs)")
    p.add_argument("--max-k", type=int, default=16)
    p.add_argument("--max-depths", type=int, default=4, help="branches at depths 0 .. D - 1, D up to this")
    p.add_argument("--max-branch", type=int, default=6, help="tokens per branch, m up to this")
    p.add_argument("--context", type=int, default=256, help="tokens in the cache while costs are timed")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (median)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = load_settings(args.run)
    if settings.temperature != 0:
        sys.exit("error: the model needs a greedy run (temperature 0): only then is a lossless output the target's own.")
    from specadapt.api import SpecDecoder

    decoder = SpecDecoder.from_pretrained(settings.target, settings.draft, dtype=settings.dtype, device="cpu",
                                          draft_quant=settings.draft_quant, draft_group_size=settings.draft_group_size)
    outputs = target_outputs(args.run, settings, decoder.tokenizer, decoder.engine.eos_token_ids)
    along: dict[str, list[tuple[list[bool], list[bool]]]] = {}
    for example, _, out_ids in tqdm(outputs, desc="teacher-forced", unit="example"):
        with torch.inference_mode():
            traj = make_trajectory(decoder.draft, decoder.encode(example.messages), out_ids,
                                   settings.max_new_tokens_for(example.dataset), want_hidden=False)
        top = traj.draft_logits.topk(2, dim=-1).indices
        y = torch.tensor(out_ids)
        along.setdefault(example.dataset, []).append(((top[:, 0] == y).tolist(), (top[:, 1] == y).tolist()))

    compile_fused_products(decoder.target, decoder.draft)  # not inside a timed step
    widest = 1 + args.max_k + args.max_depths * args.max_branch
    costs = measure_costs(decoder.target, decoder.draft, args.context, args.rounds,
                          list(range(1, args.max_depths + 2)), [w for w in VERIFY_WIDTHS if w <= widest])
    draft_s, verify_s = interpolate(costs["draft"]), interpolate(costs["target"])
    shapes = [(k, 0, 1) for k in range(1, args.max_k + 1)] + list(itertools.product(
        range(1, args.max_k + 1), range(1, args.max_depths + 1), range(2, args.max_branch + 1)))
    result = {"run": str(args.run), "settings": {k: v for k, v in vars(args).items() if k not in ("run", "out")},
              "machine": machine(), "costs_s": costs, "datasets": {}}
    for dataset, pairs in along.items():
        top1 = [x for m1, _ in pairs for x in m1]
        wrong = [b for m1, m2 in pairs for a, b in zip(m1, m2) if not a]
        rows = {}
        for k, d, m in shapes:
            sims = [simulate(m1, m2, k, d, m, draft_s, verify_s) for m1, m2 in pairs]
            rows[f"{k},{d},{m}"] = {
                "speedup": mean(len(m1) * verify_s(1) / s["seconds"] for (m1, _), s in zip(pairs, sims)),
                "tokens_per_round": sum(s["tokens"] for s in sims) / sum(s["rounds"] for s in sims),
                "branch_wins": sum(s["branch_wins"] for s in sims), "rounds": sum(s["rounds"] for s in sims)}
        chain = max((key for key in rows if key.split(",")[1] == "0"), key=lambda key: rows[key]["speedup"])
        tree = max((key for key in rows if key.split(",")[1] != "0"), key=lambda key: rows[key]["speedup"])
        result["datasets"][dataset] = {
            "examples": len(pairs), "positions": len(top1), "top1_agreement": sum(top1) / len(top1),
            "top2_given_top1_wrong": sum(wrong) / max(1, len(wrong)), "best_chain": chain, "best_tree": tree,
            "tree_over_chain": rows[tree]["speedup"] / rows[chain]["speedup"], "shapes": rows}
        print(f"{dataset}: top-1 {sum(top1) / len(top1):.3f}, top-2 when top-1 is wrong {sum(wrong) / max(1, len(wrong)):.3f}; "
              f"best chain K={chain.split(',')[0]} {rows[chain]['speedup']:.2f}× ({rows[chain]['tokens_per_round']:.2f} "
              f"tokens/round); best tree (K, D, m)=({tree}) {rows[tree]['speedup']:.2f}× "
              f"({rows[tree]['tokens_per_round']:.2f}); tree ÷ chain {rows[tree]['speedup'] / rows[chain]['speedup']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
