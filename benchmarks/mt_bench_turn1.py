"""The first answers that ``mt-bench-turn2``'s prompts carry: the default target's greedy answer to each MT-Bench question.

    python benchmarks/mt_bench_turn1.py --threads 2

A second MT-Bench turn ("Rewrite your previous response...") follows the model's own first answer. Spec-Bench
generates that answer in the same run, so every method decodes its own second prompt; here it is generated once, by
the target alone (``specadapt target-responses``: greedy, bf16, at most 256 tokens), and shipped, so every method
and Hugging Face's assisted generation decode the same second prompt. Questions go in split order (tune, test, then
train), so a time-limited run (``--time-limit``, minutes; rerun to resume) has the splits that runs use first.
Writes ``src/specadapt/data/mt_bench_turn1_answers.jsonl`` once all 80 are answered (``--overwrite`` to replace it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from specadapt.bench.datasets import load_dataset
from specadapt.models import zoo

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "specadapt" / "data" / "mt_bench_turn1_answers.jsonl"
WORK = ROOT / "runs" / "mt_bench_turn1"
MAX_NEW_TOKENS = 256


def question_id(example_id: str) -> int:
    return int(example_id.split("/")[1])  # "mt_bench/81"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=zoo.DEFAULT_TARGET)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=None, help="minutes (rerun to resume)")
    parser.add_argument("--work", type=Path, default=WORK, help="where the prompts and the raw answers go")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists: give --overwrite to replace it.")
    examples = [ex for split in ("tune", "test", "train") for ex in load_dataset("mt-bench", None, split)]
    args.work.mkdir(parents=True, exist_ok=True)
    prompts, answers = args.work / "prompts.jsonl", args.work / "answers.jsonl"
    prompts.write_text("".join(json.dumps({"id": ex.id, "prompt": ex.messages[-1]["content"]}, ensure_ascii=False)
                               + "\n" for ex in examples), encoding="utf-8")
    command = [sys.executable, "-m", "specadapt", "target-responses", "--target", args.target,
               "--datasets", str(prompts), "--out", str(answers), "--max-new-tokens", str(MAX_NEW_TOKENS),
               "--max-prompt-tokens", "4096"]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--time-limit", str(args.time_limit)] if args.time_limit else []
    subprocess.run(command, check=True)
    rows = {row["id"]: row for row in map(json.loads, answers.read_text(encoding="utf-8").splitlines())}
    missing = [ex.id for ex in examples if ex.id not in rows]
    if missing:
        print(f"{len(missing)} questions still unanswered (rerun to resume): {', '.join(missing[:5])}...")
        return 1
    args.out.write_text("".join(json.dumps({
        "question_id": question_id(ex.id), "answer": rows[ex.id]["response"], "finished": rows[ex.id]["finished"],
        "tokens": rows[ex.id]["tokens"], "target": rows[ex.id]["target"], "max_new_tokens": MAX_NEW_TOKENS,
    }, ensure_ascii=False) + "\n" for ex in sorted(examples, key=lambda ex: question_id(ex.id))), encoding="utf-8")
    print(f"wrote {args.out}: {len(examples)} answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
