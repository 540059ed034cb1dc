"""Named splits of the built-in datasets: ``train``, ``tune`` and ``test``, fixed by index ranges.

A split is a contiguous range of indices into a dataset's fixed order (the order
:func:`specadapt.bench.datasets.load_dataset` returns with ``split="all"``; for
``mt-bench`` and ``spec-bench`` that order is round-robin over categories /
subtasks, so every range below covers every category evenly). The three splits
of a dataset are disjoint and together cover it.

- ``test``: what ``specadapt bench`` reports by default. Nothing may be chosen on
  it (thresholds, draft lengths, which method to ship); the tuning commands
  refuse it (:func:`refuse_test_split`).
- ``tune``: for choosing settings (``tune-head``, picking a method's knobs).
- ``train``: for fitting weights (``train-head``, ``distill``).

Why these ranges (earlier work used these prompts for choices):

- ``humaneval`` (164): the shipped SpecDec++ heads were *trained* on
  HumanEval/82–163, ``tune-head`` tuned on HumanEval/16–23, and every timed
  check so far reported HumanEval/0–15, with settings chosen after looking at
  them. The only problems no choice has touched are 24–81, so test = 42–81
  (40), tune = 0–41 (it holds the problems already used for choices), train =
  82–163 (where the heads were trained).
- ``mt-bench`` (80; index i is category i mod 8, its (i // 8)-th question):
  earlier runs reported indices 0–15 and tuned on 16–23. Test = the last 24
  (56–79: the 8th–10th question of every category), tune = 0–31 (the used ones
  and the next 8), train = 32–55. ``mt-bench-turn2`` (the same questions'
  second turns, added after every first-turn test prompt had been used) has
  the same ranges, so a question's two turns share a split.
- ``gsm8k`` (1319 test problems; the heads and the few-shot turns come from
  GSM8K *train*, a different file): earlier runs reported 0–15. Test = the last
  200 (1119–1318), tune = 0–199, train = 200–1118.
- ``spec-bench`` (480; index i is subtask i mod 6, its (i // 6)-th question):
  test = 336–479 (the last 24 questions of every subtask), tune = 0–191 (the
  first 32 of each), train = 192–335. Its ``mt_bench`` subtask is MT-Bench
  itself, ordered as ``mt-bench`` orders it, so an MT-Bench question is in the
  same split in both datasets. Its ``math_reasoning`` rows, though, are 80
  GSM8K test problems at scattered indices: the ``gsm8k`` and ``spec-bench``
  splits do not agree on them, so do not tune on one of the two and report
  the other.

``split="all"`` is the whole dataset in its fixed order (runs made before splits
existed used its first examples).
"""

from __future__ import annotations

from ..errors import SpecAdaptError

SPLITS: tuple[str, ...] = ("train", "tune", "test")
ALL = "all"  # the whole dataset, in its fixed order

# (start, stop) per split, Python range convention; see the module docstring for why.
_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "humaneval": {"tune": (0, 42), "test": (42, 82), "train": (82, 164)},
    "gsm8k": {"tune": (0, 200), "train": (200, 1119), "test": (1119, 1319)},
    "mt-bench": {"tune": (0, 32), "train": (32, 56), "test": (56, 80)},
    "mt-bench-turn2": {"tune": (0, 32), "train": (32, 56), "test": (56, 80)},  # mt-bench's questions, same splits
    "spec-bench": {"tune": (0, 192), "train": (192, 336), "test": (336, 480)},
}
DATASET_SIZES: dict[str, int] = {name: max(stop for _, stop in r.values()) for name, r in _RANGES.items()}


def check_split(split: str) -> str:
    """``split`` if it names a split (or ``all``), else a clear error."""
    if split not in (*SPLITS, ALL):
        raise SpecAdaptError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} (or {ALL!r} for every example).")
    return split


def split_range(name: str, split: str) -> range:
    """The indices of ``split`` in dataset ``name``'s fixed order (``all``: every index)."""
    key = name.strip().lower().replace("_", "-")
    if key not in _RANGES:
        raise SpecAdaptError(f"dataset {name!r} has no built-in splits; known: {', '.join(_RANGES)}.")
    check_split(split)
    if split == ALL:
        return range(DATASET_SIZES[key])
    return range(*_RANGES[key][split])


def refuse_test_split(split: str, purpose: str) -> None:
    """Raise when a command that makes choices (``purpose``: tuning, training, ...) is pointed at the test split.

    Numbers reported on the test split mean something only if nothing was chosen on it."""
    if split in (ALL, "test"):
        what = "the test split" if split == "test" else "every example (split 'all' includes the test split)"
        raise SpecAdaptError(
            f"tuning on the test split is refused: {purpose} would make choices on {what}, "
            "which `specadapt bench` reports; use --split tune (or --split train to fit weights)."
        )
    check_split(split)
