"""Evidence rules: dataset splits, the test-split guard, win/loss/tie verdicts, and BENCHMARKS.md regenerated
from the committed records."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from specadapt import SpecAdaptError
from specadapt.bench import report
from specadapt.bench.datasets import DATASET_NAMES, load_dataset
from specadapt.bench.splits import DATASET_SIZES, SPLITS, refuse_test_split, split_range

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_splits_are_disjoint_and_cover_the_dataset(name):
    ranges = {s: set(split_range(name, s)) for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not ranges[a] & ranges[b], f"{name}: {a} and {b} overlap"
    assert set().union(*ranges.values()) == set(range(len(load_dataset(name))))
    assert all(ranges.values())  # no split is empty
    assert set(split_range(name, "all")) == set(range(DATASET_SIZES[name]))


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_load_dataset_returns_a_splits_examples_tagged(name):
    everything = load_dataset(name, split="all")
    for split in SPLITS:
        examples = load_dataset(name, split=split)
        assert [e.index for e in examples] == list(split_range(name, split))
        assert {e.split for e in examples} == {split}
        assert [e.id for e in examples] == [everything[i].id for i in split_range(name, split)]
    assert load_dataset(name, 3, split="test") == load_dataset(name, split="test")[:3]  # limit: the split's first


def test_test_split_avoids_every_prompt_used_for_choices_so_far():
    test = {e.id for e in load_dataset("humaneval", split="test")}
    # Reported and tuned on (HumanEval/0-23), and the SpecDec++ heads' training problems (HumanEval/82-163).
    used = {f"HumanEval/{i}" for i in [*range(24), *range(82, 164)]}
    assert not test & used
    mt_used = {e.id for e in load_dataset("mt-bench", 24)}  # the first 16 reported, the next 8 tuned on
    assert not mt_used & {e.id for e in load_dataset("mt-bench", split="test")}
    assert not {e.id for e in load_dataset("gsm8k", 16)} & {e.id for e in load_dataset("gsm8k", split="test")}


def test_mt_bench_questions_fall_in_the_same_split_in_spec_bench():
    mt = {e.id: e.split for e in load_dataset("mt-bench")}
    spec = {e.id.replace("spec-bench/", ""): e.split for e in load_dataset("spec-bench") if e.category == "mt_bench"}
    assert spec == mt


def test_unknown_split_and_unknown_dataset():
    with pytest.raises(SpecAdaptError, match="unknown split 'dev'; use one of train, tune, test"):
        load_dataset("humaneval", split="dev")
    with pytest.raises(SpecAdaptError, match="has no built-in splits"):
        split_range("gsm9k", "test")


def test_refuse_test_split():
    with pytest.raises(SpecAdaptError) as err:
        refuse_test_split("test", "tune-head")
    assert str(err.value) == (
        "tuning on the test split is refused: tune-head would make choices on the test split, which "
        "`specadapt bench` reports; use --split tune (or --split train to fit weights)."
    )
    with pytest.raises(SpecAdaptError, match=r"^tuning on the test split is refused: .*use --split tune"):
        refuse_test_split("all", "distill")  # every example includes the test split
    refuse_test_split("tune", "tune-head")  # allowed: returns quietly
    refuse_test_split("train", "train-head")
    with pytest.raises(SpecAdaptError, match="unknown split"):
        refuse_test_split("dev", "tune-head")


# ----------------------------------------------------------------------------
# verdicts
# ----------------------------------------------------------------------------


def rec(example: str, method: str, tps: float, repeat: int) -> dict:
    return {"dataset": "d", "example_id": example, "method": method, "repeat": repeat, "tokens_per_s": tps,
            "tokens": 10, "rounds": 5, "drafted": 8, "accepted": 5, "position_reached": [], "position_accepted": [],
            "finish_reason": "length", "text": "x", "score": None, "order": 0}


def stored(speeds: dict[str, list[float]]) -> list[dict]:
    """Two examples per repeat, both at the same tok/s, so each repeat's speedup is speed / target-only's."""
    return [rec(ex, m, tps, r) for m, per_repeat in speeds.items() for r, tps in enumerate(per_repeat) for ex in "ab"]


def test_verdicts_against_best_fixed_k_and_target_only_with_known_spread():
    records = stored({
        "autoregressive": [2.0, 2.0, 2.0],
        "fixed:2": [3.0, 3.0, 3.0],  # 1.5x every repeat
        "fixed:4": [3.6, 3.2, 3.4],  # 1.8, 1.6, 1.7: the best fixed K, 1.7x
        "clear-win": [4.0, 3.6, 3.8],  # 2.0, 1.8, 1.9 against 1.8, 1.6, 1.7: +11.1%, +12.5%, +11.8%
        "tie": [3.8, 3.0, 3.4],  # 1.9, 1.5, 1.7: gains +5.6%, -6.2%, 0: mean ~0, spread ~5.9%
        "clear-loss": [3.0, 2.8, 3.0],
    })
    methods = ["autoregressive", "fixed:2", "fixed:4", "clear-win", "tie", "clear-loss"]
    summary = report.summarize(records, methods)
    table, comparisons = summary["datasets"]["d"], summary["comparisons"]["d"]
    assert report.best_fixed_k(table) == "fixed:4"
    assert table["fixed:4"]["speedup"] == pytest.approx(1.7)
    assert table["fixed:4"]["speedup_spread"] == pytest.approx(0.1)  # sample sd of 1.8, 1.6, 1.7
    win = comparisons["clear-win"]["vs_best_fixed_k"]
    assert win["reference"] == "fixed:4" and win["gain"] == pytest.approx(1.9 / 1.7 - 1)
    assert win["spread"] == pytest.approx(report.stdev([2.0 / 1.8 - 1, 1.8 / 1.6 - 1, 1.9 / 1.7 - 1]))
    assert win["verdict"] == "win"
    assert comparisons["tie"]["vs_best_fixed_k"]["verdict"] == "tie"
    assert comparisons["tie"]["vs_target_only"]["verdict"] == "win"  # 1.7x with a spread of 0.2
    assert comparisons["clear-loss"]["vs_best_fixed_k"]["verdict"] == "loss"
    assert "vs_best_fixed_k" not in comparisons["fixed:4"]  # the best is not compared with itself
    assert comparisons["fixed:2"]["vs_best_fixed_k"]["verdict"] == "loss"
    # The report states the rule and each verdict.
    text = report.render_report({"settings": {"target": "T", "draft": "D", "dtype": "bf16", "temperature": 0.0,
                                              "max_new_tokens": 8, "repeats": 3}, "environment": {}}, summary)
    assert report.VERDICT_RULE in text
    assert "| `clear-win` | +90.0% ± 10.0% (win) | `fixed:4`: +11.8% ± 0.7% (win) |" in text
    assert "(tie)" in text and "(loss)" in text


def test_a_single_repeat_is_undecided():
    summary = report.summarize(stored({"autoregressive": [2.0], "fixed:4": [3.0], "m": [4.0]}),
                               ["autoregressive", "fixed:4", "m"])
    c = summary["comparisons"]["d"]["m"]
    assert c["vs_best_fixed_k"]["gain"] == pytest.approx(1 / 3) and c["vs_best_fixed_k"]["spread"] is None
    assert c["vs_best_fixed_k"]["verdict"] == "undecided" and c["vs_target_only"]["verdict"] == "undecided"


def test_verdict_rule():
    assert report.verdict(0.05, 0.02) == "win" and report.verdict(-0.05, 0.02) == "loss"
    assert report.verdict(0.02, 0.05) == "tie" and report.verdict(0.05, 0.05) == "tie"  # must exceed the spread
    assert report.verdict(0.05, None) == "undecided" and report.verdict(None, 0.1) == "undecided"


def test_examples_split_over_processes_are_found():
    rows = [{**rec("a", m, 2.0, 0), "session": s, "order": o}
            for m, s, o in (("autoregressive", "s1", 0), ("fixed:4", "s1", 1), ("m", "s2", 2))]
    rows += [{**rec("b", m, 2.0, 0), "session": "s2", "order": o} for o, m in enumerate(("autoregressive", "fixed:4"))]
    assert report.split_across_sessions(rows) == ["d:a"]
    assert report.split_across_sessions([{k: v for k, v in r.items() if k != "session"} for r in rows]) is None
    # Without session ids: an example whose rotation order falls back was resumed in another process.
    old = [{**rec("a", "autoregressive", 2.0, 0), "order": 2}, {**rec("a", "fixed:4", 2.0, 0), "order": 0},
           {**rec("b", "autoregressive", 2.0, 0), "order": 0}, {**rec("b", "fixed:4", 2.0, 0), "order": 1}]
    assert report.inferred_split_examples(old) == ["d:a"]


# ----------------------------------------------------------------------------
# BENCHMARKS.md regenerated from the records
# ----------------------------------------------------------------------------


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_benchmarks", ROOT / "benchmarks" / "render_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def renderer():
    return load_renderer()


def test_benchmarks_md_matches_the_committed_records(renderer, capsys):
    assert renderer.main(["--check"]) == 0, capsys.readouterr().err


def test_check_fails_when_a_generated_number_is_edited_by_hand(renderer, tmp_path, capsys):
    copy = tmp_path / "BENCHMARKS.md"
    shutil.copy(ROOT / "BENCHMARKS.md", copy)
    text = copy.read_text(encoding="utf-8")
    block = re.search(r"<!-- generated:maxk-check -->\n(.*?)<!-- /generated:maxk-check -->", text, re.S)
    assert block and "+9.9%" in block.group(1)
    copy.write_text(text.replace(block.group(1), block.group(1).replace("+9.9%", "+12.0%")), encoding="utf-8")
    assert renderer.main(["--check", "--file", str(copy)]) == 1
    assert "maxk-check" in capsys.readouterr().err
    # Regenerating restores the records' number, and then the check passes.
    assert renderer.main(["--file", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == text
    assert renderer.main(["--check", "--file", str(copy)]) == 0


def test_check_fails_when_a_block_is_missing(renderer, tmp_path, capsys):
    copy = tmp_path / "BENCHMARKS.md"
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    copy.write_text(re.sub(r"<!-- generated:h01-check -->.*?<!-- /generated:h01-check -->\n", "", text, flags=re.S),
                    encoding="utf-8")
    assert renderer.main(["--check", "--file", str(copy)]) == 1
    assert "missing blocks: h01-check" in capsys.readouterr().err


def test_the_targets_index_lists_each_block_of_targets_with_its_run_and_its_misses(renderer):
    doc = ("## Server\n\n### Today's defaults\n\n<!-- generated:serve-load-sweep-targets -->\n"
           "<!-- /generated:serve-load-sweep-targets -->\n\n### Distillation\n\n"
           "<!-- generated:shipped-draft-targets -->\n<!-- /generated:shipped-draft-targets -->\n"
           "<!-- generated:distill-mix-adaspec -->\n<!-- /generated:distill-mix-adaspec -->\n"
           "<!-- generated:serve-load-sweep -->\n<!-- /generated:serve-load-sweep -->\n")  # not a block of targets
    rows = renderer.targets_index(doc).splitlines()[2:]
    assert rows == [
        "| `specadapt serve` | Today's defaults | `serve-load-sweep-targets` | AMD EPYC (AVX512, native bf16: yes) | "
        "gsm8k: test from 60, 3 repeats | 5 met, 1 missed within spread | "
        "`adaedl+lookup` ÷ target-only at 8 client(s) ≥ 1 (0.99 (1.02, 1.06, 0.89)) |",
        "| AdaSPEC on the real pair | Distillation | `shipped-draft-targets` | AMD EPYC (AVX512, native bf16: yes) | "
        "HumanEval, MT-Bench, GSM8K: test 7–12, 2 repeats | 1 met, 2 missed | "
        "mt-bench `AdaSPEC` ≥ +10% (+2.0% ± 1.4%); gsm8k `AdaSPEC` ≥ +10% (+5.7% ± 2.6%) |",
        "| AdaSPEC on the real pair | Distillation | `distill-mix-adaspec` | AMD EPYC (AVX512, native bf16: yes) | "
        "HumanEval, MT-Bench, GSM8K: test 1–6, 2 repeats | 2 met, 1 missed | mt-bench AdaSPEC ≥ DistillSpec in "
        "acceptance (62.4% → 64.5% (+2.0 pts); 0.760 → 0.756 (-0.4 pts)) |"]


def test_the_prompt_ledger_counts_records_and_the_prompts_a_run_names(renderer, tmp_path, monkeypatch):
    import json

    (tmp_path / "run_a").mkdir()
    rows = [{"dataset": "gsm8k", "example_id": "gsm8k/1119"}, {"dataset": "mt-bench", "example_id": "mt_bench/81"}]
    (tmp_path / "run_a" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = {"datasets": "gsm8k", "split": "test", "skip": 4, "concurrency": "1,2", "requests_per_client": 2}
    (tmp_path / "serve_load_x.json").write_text(json.dumps({"settings": settings, "rows": []}), encoding="utf-8")
    monkeypatch.setattr(renderer, "RESULTS", tmp_path)
    assert renderer.prompt_ledger().splitlines()[2:] == [
        "| GSM8K | test | 200 | 1, 5–8 | 2 | 2 |",  # gsm8k/1119 opens the test split; the server sent 2 × 2 from the 5th
        "| MT-Bench | tune | 32 | 1 | 1 | 2 |"]


def test_seed_claims_are_judged_on_complete_examples_by_the_frozen_rule(renderer):
    records = stored({"autoregressive": [2.0, 2.0], "fixed:6": [3.0, 3.0], "fixed:10": [3.2, 3.4],
                      "specdecpp": [3.6, 3.7], "adaedl": [3.3, 3.4], "adasd": [3.7, 3.8]})
    # An example cut short by the time limit (no adaedl in repeat 1) is left out of every method's numbers.
    records += [rec("c", m, 9.0, r) for m in ("autoregressive", "fixed:6", "fixed:10", "specdecpp", "adasd")
                for r in (0, 1)] + [rec("c", "adaedl", 9.0, 0)]
    methods = ["autoregressive", "fixed:6", "fixed:10", "specdecpp", "adaedl", "adasd"]
    used = report.complete_examples(records, methods, repeats=2)
    assert {r["example_id"] for r in used} == {"a", "b"} and len(used) == 2 * 2 * len(methods)
    c = report.summarize(used, methods)["comparisons"]["d"]
    spec, edl = c["specdecpp"]["vs_best_fixed_k"], c["adaedl"]["vs_best_fixed_k"]
    assert spec["reference"] == "fixed:10" and spec["gain"] == pytest.approx(3.65 / 3.3 - 1)  # +10.6%
    assert renderer.claim_verdict("specdecpp", spec, None) == "met"
    assert renderer.claim_verdict("specdecpp", {**spec, "gain": 0.05, "spread": 0.01, "verdict": "win"}, None) == "missed"
    assert renderer.claim_verdict("adaedl", edl, None) == "tie"  # 3.3/3.2, 3.4/3.4: +1.5% ± 2.2%
    adasd = c["adasd"]["vs_best_fixed_k"]
    assert renderer.claim_verdict("adasd", adasd, -0.01) == "met"
    assert renderer.claim_verdict("adasd", adasd, -0.02) == "missed (accuracy)"  # the paper's bound: under 2 points
    assert renderer.claim_verdict("adaedl", {**edl, "gain": -0.1, "spread": 0.01, "verdict": "loss"}, None) == "missed"


def test_benchmarks_md_states_corrected_facts():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "identical tokens to each other on every prompt" not in text
    assert "records of the two further examples it had begun stay in the folder" not in text
    assert "+5.0% over fixed:8** | **1.45×" not in text  # the h = 0.1 check: the records give +4.8%
    assert "best of those five timed runs" in text
    assert "Not reproducible from committed data" in text
    assert "ratio of means" in text and "mean over\nprompts of (method tokens/s ÷ target-only tokens/s on the same prompt)" not in text
