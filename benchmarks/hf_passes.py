"""Where a generation's time goes, ours against Hugging Face assisted generation given the same draft: target
passes, draft forwards and their seconds.

    python benchmarks/hf_passes.py --threads 2

``cheap_draft.py`` times HF's ``generate(assistant_model=draft)`` as a whole. To say why a method is faster or
slower than it, this counts what each run did: forward hooks on the target and on the draft module (the same
objects our engine runs) count and time every call of either model's transformers forward; our engine runs the
draft's few-token steps through its lean step, which the hooks do not see, so for our methods the draft's calls
and seconds come from the engine's own per-request statistics (``drafted``, ``draft_time_s``). Same prompts as
``cheap_draft.py`` (``--split``, ``--n``, chat template, greedy, no stop strings), the int4 draft, each method
once per prompt in alternating order. Nothing is chosen from this: it explains measured results. Writes JSON
(``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cheap_draft import Runner, build_drafts, load_prompts, parse_label  # benchmarks/ is on a script's path
from specadapt.models import zoo
from specadapt.models.hardware import machine

OUT = Path(__file__).resolve().parent / "results" / "hf_passes.json"


class CallTimer:
    """Counts and times the calls of a module's forward (hooks on the module itself, not its children)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls, self.seconds, self.positions = 0, 0.0, 0
        self.handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                        module.register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += 0 if ids is None else ids.shape[-1]
        self._t0 = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.calls += 1
        self.seconds += time.perf_counter() - self._t0

    def take(self) -> dict:
        out = {"calls": self.calls, "seconds": self.seconds, "positions": self.positions}
        self.calls, self.seconds, self.positions = 0, 0.0, 0
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=zoo.DEFAULT_TARGET)
    parser.add_argument("--draft", default=zoo.DEFAULT_DRAFT)
    parser.add_argument("--methods", default="adaedl@int4,specdecpp@int4,hf-assisted@int4")
    parser.add_argument("--datasets", default="mt-bench,gsm8k,humaneval")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from specadapt.models.loading import eos_token_ids, load_model, load_tokenizer
    from specadapt.text import encode_chat

    transformers.logging.set_verbosity_error()
    tokenizer = load_tokenizer(args.target)
    target = load_model(args.target, "bfloat16", "cpu")
    drafts = build_drafts(load_model(args.draft, "bfloat16", "cpu"), tokenizer, ["int4"], in_place=True)
    eos = eos_token_ids(target, tokenizer)
    runner = Runner(target, drafts, tokenizer, eos, best_k={})
    settings = {"datasets": args.datasets.split(","), "split": args.split, "gsm8k_shots": 0}
    prompts = load_prompts(settings, args.n, lambda messages: encode_chat(tokenizer, messages, args.target))
    labels = [parse_label(m) for m in args.methods.split(",")]
    timers = {"target": CallTimer(target), "draft": CallTimer(drafts["int4"])}
    first = settings["datasets"][0]
    runner.run(labels[0], first, prompts[first][0]["ids"], 8)  # warm-up
    for t in timers.values():
        t.take()
    records = []
    for i in range(args.n):
        for ds in settings["datasets"]:
            prompt = prompts[ds][i]
            order = labels if i % 2 == 0 else labels[::-1]
            for lab in order:
                tokens, wall, finish, stats = runner.run(lab, ds, prompt["ids"], args.max_new_tokens)
                calls = {name: t.take() for name, t in timers.items()}
                rec = {"dataset": ds, "example_id": prompt["id"], "method": lab.label, "tokens": len(tokens),
                       "wall_s": wall, "target": calls["target"], "draft_hooked": calls["draft"]}
                if stats is not None:
                    rec["engine"] = {"rounds": stats.rounds, "drafted": stats.drafted, "accepted": stats.accepted,
                                     "draft_time_s": stats.draft_time_s, "target_time_s": stats.target_time_s}
                records.append(rec)
                print(f"{ds} {prompt['id']} {lab.label}: {len(tokens)} tokens in {wall:.1f} s, "
                      f"{calls['target']['calls']} target passes ({calls['target']['seconds']:.1f} s), "
                      f"{calls['draft']['calls']} hooked draft calls ({calls['draft']['seconds']:.1f} s)", flush=True)
    for t in timers.values():
        t.close()
    summary = {}
    for ds in settings["datasets"]:
        for lab in labels:
            rows = [r for r in records if r["dataset"] == ds and r["method"] == lab.label]
            tokens, wall = sum(r["tokens"] for r in rows), sum(r["wall_s"] for r in rows)
            passes, target_s = sum(r["target"]["calls"] for r in rows), sum(r["target"]["seconds"] for r in rows)
            if rows and "engine" in rows[0]:  # our lean draft steps: the engine's statistics
                draft_calls = sum(r["engine"]["drafted"] for r in rows)
                draft_s = sum(r["engine"]["draft_time_s"] for r in rows)
            else:
                draft_calls = sum(r["draft_hooked"]["calls"] for r in rows)
                draft_s = sum(r["draft_hooked"]["seconds"] for r in rows)
            summary[f"{ds} {lab.label}"] = {
                "dataset": ds, "method": lab.label, "generations": len(rows), "tokens": tokens, "tok_s": tokens / wall,
                "target_passes": passes, "tokens_per_target_pass": tokens / passes, "target_ms_per_pass": 1e3 * target_s / passes,
                "draft_calls": draft_calls, "draft_calls_per_token": draft_calls / tokens,
                "draft_ms_per_call": 1e3 * draft_s / draft_calls if draft_calls else None,
                "target_share": target_s / wall, "draft_share": draft_s / wall, "other_share": 1 - (target_s + draft_s) / wall,
            }
    print(json.dumps(summary, indent=1))
    payload = {"benchmark": "hf_passes", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "environment": machine(), "summary": summary, "records": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
