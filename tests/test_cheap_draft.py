"""benchmarks/cheap_draft.py: method labels, resume, the summary's spread and verdicts, and its BENCHMARKS.md block."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import IdTokenizer, perturbed_copy, tiny_llama

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cd():
    return load("cheap_draft")


# ----------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------


def test_labels_are_expanded_over_the_drafts(cd):
    labels = cd.expand_methods("fixed:best,adaedl@int4,hf-assisted,hf-assisted:6", ["bf16", "int4"])
    assert [lab.label for lab in labels] == [
        "autoregressive", "fixed:best@bf16", "fixed:best@int4", "adaedl@int4", "hf-assisted@bf16",
        "hf-assisted@int4", "hf-assisted:6@bf16", "hf-assisted:6@int4"]
    by = {lab.label: lab for lab in labels}
    assert by["autoregressive"].draft is None and by["autoregressive"].kind == "ours"
    assert (by["fixed:best@int4"].kind, by["fixed:best@int4"].base, by["fixed:best@int4"].k) == ("ours", "fixed:best", "best")
    assert by["fixed:best@int4"].method_for("mt-bench", {"mt-bench": 2}) == "fixed:2"
    assert (by["hf-assisted@bf16"].kind, by["hf-assisted@bf16"].k) == ("hf", None)
    assert (by["hf-assisted:6@int4"].k, by["hf-assisted:6@int4"].draft) == (6, "int4")
    assert cd.parse_label("fixed:6@int4+v32768").k == 6
    assert cd.parse_label("adaedl:gamma=0.3@bf16").base == "adaedl:gamma=0.3"
    assert cd.parse_draft("int4+v32768") == ("int4", 32768)


@pytest.mark.parametrize("text", ["fixed:6@int3", "autoregressive@int4", "hf-assisted:0@bf16", "nosuchmethod@bf16",
                                  "hf-assisted:x"])
def test_bad_labels_are_refused(cd, text):
    with pytest.raises(SystemExit):
        cd.parse_label(text)


def test_a_label_twice_is_refused(cd):
    with pytest.raises(SystemExit, match="twice"):
        cd.expand_methods("fixed:4,fixed:4@int4", ["bf16", "int4"])
    with pytest.raises(SystemExit, match="best-k"):
        cd.Label("fixed:best@bf16", "ours", "fixed:best", "bf16", "best").k_for("gsm8k", {"humaneval": 8})


# ----------------------------------------------------------------------------
# summary on fixed records
# ----------------------------------------------------------------------------


def rec(method, example, repeat, tps, tokens=(1, 2, 3), draft=None, kind="ours", stats=True, k=None):
    r = {"dataset": "humaneval", "example_id": example, "method": method, "repeat": repeat, "tokens_per_s": tps,
         "tokens": len(tokens), "token_ids": list(tokens), "draft": draft, "kind": kind, "k": k, "session": "s"}
    if stats and kind == "ours":
        drafted = 0 if method == "autoregressive" else 4
        r.update(rounds=2 if drafted else 3, drafted=drafted, accepted=1 if drafted else 0,
                 position_reached=[2] if drafted else [], position_accepted=[1] if drafted else [],
                 draft_time_s=0.4 if drafted else 0.0, target_time_s=1.0 if drafted else 0.6, total_time_s=1.5)
    return r


def fixed_records():
    """Two examples × two repeats: target-only 10 tok/s; fixed:4@bf16 and @int4, HF assisted with both drafts."""
    rows = []
    speeds = {"fixed:4@bf16": (15, 16), "fixed:4@int4": (20, 24), "hf-assisted@bf16": (14, 14),
              "hf-assisted@int4": (19, 25)}
    for repeat in (0, 1):
        for ex in ("a", "b"):
            rows.append(rec("autoregressive", ex, repeat, 10.0))
            for m, (r0, r1) in speeds.items():
                draft = m.split("@")[1]
                hf = m.startswith("hf")
                tokens = (1, 2, 9) if (m == "fixed:4@int4" and ex == "b") else (1, 2, 3)
                rows.append(rec(m, ex, repeat, float(r0 if repeat == 0 else r1), tokens, draft,
                                "hf" if hf else "ours", k=None if hf else 4))
    return rows


def test_summary_speedups_spreads_and_verdicts(cd):
    methods = ["autoregressive", "fixed:4@bf16", "fixed:4@int4", "hf-assisted@bf16", "hf-assisted@int4"]
    s = cd.summarize(fixed_records(), methods, ["bf16", "int4"])
    t, c = s["datasets"]["humaneval"], s["comparisons"]["humaneval"]
    assert t["fixed:4@int4"]["speedup"] == pytest.approx(2.2)  # (20 + 24) / 2 / 10
    assert t["fixed:4@int4"]["speedup_per_repeat"] == {"0": pytest.approx(2.0), "1": pytest.approx(2.4)}
    assert t["fixed:4@int4"]["speedup_spread"] == pytest.approx(0.2828, abs=1e-4)
    assert t["fixed:4@int4"]["identical_to_target_only"] == 0.5 and t["fixed:4@int4"]["identical_pairs"] == "2/4"
    assert t["fixed:4@bf16"]["identical_to_target_only"] == 1.0
    assert t["fixed:4@bf16"]["acceptance_rate"] == 0.25 and t["fixed:4@bf16"]["mean_accepted_length"] == 1.5
    assert t["hf-assisted@int4"]["acceptance_rate"] is None
    # vs target-only: per-repeat gains +100% / +140%: well above their spread.
    assert c["fixed:4@int4"]["vs_target_only"]["verdict"] == "win"
    # int4 vs bf16 for the same method: per repeat 20/15 − 1 = 33%, 24/16 − 1 = 50% → win.
    other = c["fixed:4@int4"]["vs_reference_draft"]
    assert other["reference"] == "fixed:4@bf16" and other["gain"] == pytest.approx(2.2 / 1.55 - 1)
    assert other["verdict"] == "win"
    assert "vs_reference_draft" not in c["fixed:4@bf16"]
    # vs HF assisted with the same draft: 20/19 − 1 = +5.3%, 24/25 − 1 = −4% → tie.
    hf = c["fixed:4@int4"]["vs_hf_assisted"]
    assert hf["reference"] == "hf-assisted@int4" and hf["verdict"] == "tie"
    assert c["fixed:4@bf16"]["vs_hf_assisted"]["verdict"] == "win"
    assert c["hf-assisted@int4"]["vs_reference_draft"]["reference"] == "hf-assisted@bf16"
    # c from the engine's stats: draft step 0.4 s / 4 drafted = 100 ms; target-only forward 0.6 s / 3 = 200 ms;
    # verification 1.0 s / 2 rounds = 500 ms.
    assert s["c"]["int4"]["c"] == pytest.approx(0.5) and s["c"]["int4"]["c_verify"] == pytest.approx(0.2)
    # One repeat only: no spread, so undecided.
    one = cd.summarize([r for r in fixed_records() if r["repeat"] == 0], methods, ["bf16", "int4"])
    assert one["comparisons"]["humaneval"]["fixed:4@int4"]["vs_target_only"]["verdict"] == "undecided"
    text = cd.markdown(s, {"split": "test", "max_new_tokens": 16}, {"target only": {"peak_rss_MB": 100.0}})
    assert "| `fixed:4@int4` | 22.00 | 2.20× ± 0.28 |" in text and "win" in text


# ----------------------------------------------------------------------------
# an end-to-end run with tiny models: resume and the time limit
# ----------------------------------------------------------------------------


class Tok(IdTokenizer):
    eos_token_id = None


@pytest.fixture(scope="module")
def tiny():
    target = tiny_llama(0)
    return target, Tok(), perturbed_copy(target, 0.2)


def encode(messages):
    text = messages[-1]["content"][:24]
    return [2 + ord(ch) % 60 for ch in text]


def run(cd, tiny, out, *extra):
    args = cd.parse_args(["--n", "1", "--repeats", "2", "--max-new-tokens", "6", "--datasets", "humaneval,mt-bench",
                          "--methods", "autoregressive,fixed:best,adaedl,hf-assisted,hf-assisted:best",
                          "--drafts", "bf16,int8", "--best-k", "humaneval=3,mt-bench=2", "--dtype", "float32",
                          "--no-rss", "--no-progress", "--out", str(out), *extra])
    return cd.run(args, [], models=tiny, encode=encode, log=lambda *_: None)


def test_run_resumes_and_stops_at_the_time_limit(cd, tiny, tmp_path):
    out = tmp_path / "run"
    s = run(cd, tiny, out, "--time-limit", "0")  # stops before the first generation, partial summary written
    assert s["progress"] == {"complete": False, "generations": 0, "expected": 2 * 2 * 9, "generations_summarized": 0}
    assert json.loads((out / "summary.json").read_text())["progress"]["complete"] is False
    s = run(cd, tiny, out)
    assert s["progress"]["complete"] and s["progress"]["generations"] == 36
    lines = (out / "records.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert {r["k"] for r in recs if r["method"] == "fixed:best@int8" and r["dataset"] == "mt-bench"} == {2}
    assert {r["k"] for r in recs if r["method"] == "hf-assisted:best@bf16" and r["dataset"] == "humaneval"} == {3}
    # Every lossless method reproduces target-only's tokens (fp32).
    t = s["datasets"]["humaneval"]
    assert all(e["identical_to_target_only"] == 1.0 for m, e in t.items() if m != "autoregressive")
    # Per prompt and repeat, every method once, in an order rotated from one prompt to the next.
    firsts = [r["method"] for r in recs if r["order"] == 0]
    assert len(set(firsts)) == 4
    settings = json.loads((out / "settings.json").read_text())
    assert str(tmp_path) not in json.dumps(settings) and "--out" not in settings["command"]
    assert settings["hf_assisted_defaults"]["int8"]["num_assistant_tokens_schedule"] is not None
    # Lose the last 5 generations and cut the line before them in half: a resume redoes exactly those 6.
    kept = lines[:-6] + [lines[-6][:20]]
    (out / "records.jsonl").write_text("\n".join(kept), encoding="utf-8")
    s = run(cd, tiny, out)
    again = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(again) == 36 and len({cd.record_key(r) for r in again}) == 36
    assert len({r["session"] for r in again}) == 2 and again[:30] == recs[:30]
    assert [cd.record_key(r) for r in again[30:]] == [cd.record_key(r) for r in recs[30:]]  # the same rotation
    # Other settings are refused; --n may change (a smaller one reports on fewer prompts).
    with pytest.raises(SystemExit, match="other settings"):
        run(cd, tiny, out, "--temperature", "0.5")


def test_other_draft_models_join_the_run_and_are_compared_with_the_stock_draft(cd, tiny, tmp_path):
    target, tok, stock = tiny
    other = tiny_llama(7)  # unrelated weights: it drafts other tokens than the stock draft
    args = cd.parse_args(["--n", "1", "--repeats", "1", "--max-new-tokens", "6", "--datasets", "humaneval",
                          "--methods", "autoregressive,fixed:3", "--drafts", "bf16,other:bf16,other:int8",
                          "--draft-models", "other=runs/other/draft", "--dtype", "float32", "--no-rss",
                          "--no-progress", "--out", str(tmp_path / "run")])
    s = cd.run(args, [], models=(target, tok, stock, {"other": other}), encode=encode, log=lambda *_: None)
    t = s["datasets"]["humaneval"]
    assert set(t) == {"autoregressive", "fixed:3@bf16", "fixed:3@other:bf16", "fixed:3@other:int8"}
    assert all(t[m]["identical_to_target_only"] == 1.0 for m in t if m != "autoregressive")
    recs = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    drafted = {r["method"]: (r["accepted"], r["drafted"]) for r in recs if r["method"] != "autoregressive"}
    assert drafted["fixed:3@other:bf16"] != drafted["fixed:3@bf16"]  # a different model drafted
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())["settings"]
    assert settings["draft_models"] == {"other": "runs/other/draft"}
    assert cd.draft_model_of("other:int4+v32768") == "other" and cd.parse_draft("other:int4+v32768") == ("int4", 32768)


def test_mt_bench_second_turns_run_from_their_whole_conversation(cd, tiny, tmp_path):
    seen = []

    def encode_all(messages):
        seen.append([m["role"] for m in messages])
        return encode([{"content": " ".join(m["content"][:8] for m in messages)}])

    args = cd.parse_args(["--n", "1", "--repeats", "1", "--max-new-tokens", "6", "--datasets", "mt-bench-turn2",
                          "--methods", "autoregressive,adaedl+lookup", "--drafts", "bf16", "--dtype", "float32",
                          "--no-rss", "--no-progress", "--out", str(tmp_path / "run")])
    s = cd.run(args, [], models=tiny, encode=encode_all, log=lambda *_: None)
    assert seen == [["user", "assistant", "user"]]
    assert s["datasets"]["mt-bench-turn2"]["adaedl+lookup@bf16"]["identical_to_target_only"] == 1.0
    assert "MT-Bench, second turns" in cd.markdown(s, json.loads((tmp_path / "run" / "settings.json").read_text())["settings"], None)
    with pytest.raises(SystemExit, match="--datasets: use some of humaneval, mt-bench, gsm8k, mt-bench-turn2"):
        cd.run_settings(cd.parse_args(["--datasets", "mt-bench-3"]))


def test_a_policy_that_measures_its_price_records_it(cd, tiny, tmp_path):
    args = cd.parse_args(["--n", "1", "--repeats", "1", "--max-new-tokens", "12", "--datasets", "humaneval",
                          "--methods", "autoregressive,marginal:cost=auto,marginal", "--drafts", "bf16",
                          "--dtype", "float32", "--no-rss", "--no-progress", "--out", str(tmp_path / "run")])
    cd.run(args, [], models=tiny, encode=encode, log=lambda *_: None)
    recs = {r["method"]: r for r in map(json.loads, (tmp_path / "run" / "records.jsonl").read_text().splitlines())}
    assert 0.01 <= recs["marginal:cost=auto@bf16"]["measured_cost"] <= 1.0
    assert 0.01 <= recs["marginal:cost=auto@bf16"]["measured_lookup_cost"] <= 1.0
    assert not any(k.startswith("measured") for m in ("marginal@bf16", "autoregressive") for k in recs[m])


@pytest.mark.parametrize("extra, message", [
    (["--drafts", "int4,other:int4"], "which --draft-models does not give"),
    (["--drafts", "int4", "--draft-models", "int4=x"], "NAME=MODEL pairs"),
    (["--drafts", "int4", "--draft-models", "a=x,a=y"], "twice"),
    (["--drafts", "int4,9a:int4"], "unknown draft variant"),
])
def test_bad_draft_models_are_refused(cd, extra, message):
    with pytest.raises(SystemExit, match=message):
        cd.run_settings(cd.parse_args(["--methods", "fixed:3", *extra]))


# ----------------------------------------------------------------------------
# the BENCHMARKS.md block
# ----------------------------------------------------------------------------


def test_check_detects_an_edited_number_in_the_cheap_draft_block(cd, tmp_path, capsys, monkeypatch):
    renderer = load("render_benchmarks")
    results = tmp_path / "cheap_draft"
    results.mkdir()
    settings = {"methods": ["autoregressive", "fixed:4@bf16", "fixed:4@int4", "hf-assisted@bf16", "hf-assisted@int4"],
                "drafts": ["bf16", "int4"], "split": "test", "max_new_tokens": 16, "dataset_max_new_tokens": {}}
    (results / "settings.json").write_text(json.dumps({"settings": settings}), encoding="utf-8")
    (results / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fixed_records()), encoding="utf-8")
    monkeypatch.setattr(renderer, "CHEAP_DRAFT_RESULTS", results)
    doc = tmp_path / "BENCHMARKS.md"
    shutil.copy(ROOT / "BENCHMARKS.md", doc)
    assert renderer.main(["--file", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    block = re.search(r"<!-- generated:cheap-draft -->\n(.*?)<!-- /generated:cheap-draft -->", text, re.S).group(1)
    assert "2.20× ± 0.28" in block
    doc.write_text(text.replace(block, block.replace("2.20× ± 0.28", "2.30× ± 0.28")), encoding="utf-8")
    assert renderer.main(["--check", "--file", str(doc)]) == 1
    assert "cheap-draft" in capsys.readouterr().err
    assert renderer.main(["--file", str(doc)]) == 0 and doc.read_text(encoding="utf-8") == text


def test_a_run_cut_short_has_every_repeat_of_its_finished_prompts_and_reports_only_those(cd):
    labels = cd.expand_methods("fixed:2", ["int4"])
    prompts = {"humaneval": [{"dataset": "humaneval", "id": "h0"}, {"dataset": "humaneval", "id": "h1"}],
               "gsm8k": [{"dataset": "gsm8k", "id": "g0"}]}
    plan = cd.schedule(prompts, labels, 2)
    assert [(p["id"], r) for p, r, _ in plan] == [("h0", 0), ("h0", 1), ("g0", 0), ("g0", 1), ("h1", 0), ("h1", 1)]
    assert [[lab.label for lab in labs] for _, _, labs in plan[:2]] == [
        ["autoregressive", "fixed:2@int4"], ["fixed:2@int4", "autoregressive"]]
    records = [rec(m, e, r, 1.0) for e in ("a", "b") for m in ("autoregressive", "fixed:2@int4") for r in (0, 1)]
    records = records[:-1]  # example b lacks fixed:2@int4 in repeat 1
    used = cd.complete_examples(records, ["autoregressive", "fixed:2@int4"], 2)
    assert {r["example_id"] for r in used} == {"a"} and len(used) == 4


def test_target_verdicts_respect_the_spread(cd):
    assert cd._verdict(4.0, 0.3, 3.5) == "met" and cd._verdict(1.85, 0.11, 1.8) == "met within spread"
    assert cd._verdict(1.13, 0.01, 1.15) == "missed" and cd._verdict(None, None, 1.0) == "–"
    assert cd._verdict(1.13, 0.07, 1.15) == "missed within spread" and cd._verdict(1.13, None, 1.15) == "missed"
    # Shown to 3 decimals only where 2 would round a miss up to the target.
    assert cd._pm(1.1491, 0.049, target=1.15) == "1.149× ± 0.049" and cd._pm(1.1491, 0.049) == "1.15× ± 0.05"
    assert cd._pm(1.143, 0.049, target=1.15) == "1.14× ± 0.05"


def test_targets_of_a_run_with_only_the_cheap_draft_compare_it_with_hf_given_that_draft_alone(cd):
    """A run with ``--drafts int4`` has no bf16 reference: the targets against HF with the bf16 draft are left out,
    not judged against HF with the int4 one."""
    methods = ["autoregressive", "fixed:4@int4", "hf-assisted@int4"]
    records = [r for r in fixed_records() if r["method"] in methods]
    text = cd.targets_markdown(cd.summarize(records, methods, ["int4"]))
    assert "HF defaults) ≥ 1.15×" in text and "≥ 1.8×" not in text and "≥ 1.3×" not in text
    with_bf16 = ["autoregressive", "fixed:4@bf16", "fixed:4@int4", "hf-assisted@bf16", "hf-assisted@int4"]
    assert "`hf-assisted@bf16` (HF defaults) ≥ 1.8×" in cd.targets_markdown(cd.summarize(fixed_records(), with_bf16, ["bf16", "int4"]))


def test_targets_judge_a_method_frozen_before_the_run_instead_of_the_runs_best(cd):
    """With ``frozen``, the method chosen beforehand is judged (speedup and against HF), not the best of the run."""
    methods = ["autoregressive", "fixed:4@bf16", "fixed:4@int4", "fixed:2@int4", "hf-assisted@bf16", "hf-assisted@int4"]
    records = fixed_records() + [rec("fixed:2@int4", ex, r, 30.0, draft="int4", k=2) for r in (0, 1) for ex in "ab"]
    best = cd.targets_markdown(cd.summarize(records, methods, ["bf16", "int4"]))
    assert "| HumanEval | best speedup ≥ 3.5× | `fixed:2@int4` 3.00× ± 0.00 | missed |" in best
    frozen = cd.targets_markdown(cd.summarize(records, methods, ["bf16", "int4"]), frozen={"humaneval": "fixed:4@int4"})
    assert "| HumanEval | frozen method speedup ≥ 3.5× | `fixed:4@int4` 2.20× ± 0.28 | missed |" in frozen
    assert "`fixed:4@int4` ÷ `hf-assisted@bf16` (HF defaults) ≥ 1.8×" in frozen and "fixed:2@int4" not in frozen


def test_batch_draft_step_times_every_variant_by_batch_size_and_restores_the_switch(tmp_path, monkeypatch):
    from conftest import save_tiny_checkpoint
    from specadapt.models import quant

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports draft_cost's Stepper, as when run as a script

    words = [f"w{i}" for i in range(62)]
    save_tiny_checkpoint(tmp_path / "target", 0, words)
    save_tiny_checkpoint(tmp_path / "draft", 1, words)
    switch = quant.DEQUANTIZE_ROWS
    out = tmp_path / "steps.json"
    load("batch_draft_step").main(["--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"),
                                   "--batches", "1,5", "--context", "8", "--steps", "1", "--rounds", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    models = ["target", "draft bf16", "draft int8", "draft int4", "draft int4, kernel at every B"]
    assert [(r["model"], r["batch"]) for r in data["rows"]] == [(m, b) for m in models for b in (1, 5)]
    assert all(len(r["rounds_ms"]) == 2 and (r["model"] == "target") == ("c" not in r) for r in data["rows"])
    assert data["settings"]["dequantize_rows"] == switch and quant.DEQUANTIZE_ROWS == switch  # put back after each cell


def test_a_variant_built_in_place_is_the_loaded_model_quantized(cd):
    """The peak-RSS probe quantizes the loaded draft itself, as a user's load does: no float copy stays alive."""
    from specadapt.models.quant import Int4Linear

    model = tiny_llama(3)
    built = cd.build_drafts(model, IdTokenizer(), ["int4"], in_place=True)
    assert built["int4"] is model
    assert isinstance(model.lm_head, Int4Linear)
    copied = cd.build_drafts(tiny_llama(3), IdTokenizer(), ["int4", "int8"])  # a run's variants: copies
    assert copied["int4"] is not copied["int8"]
    with pytest.raises(ValueError, match="in_place builds one variant"):
        cd.build_drafts(tiny_llama(3), IdTokenizer(), ["int4", "int8"], in_place=True)


def test_ratios_by_total_time_weigh_every_second_alike(cd, tmp_path):
    """The by-time block divides all tokens by all seconds, beside the file's mean of per-prompt tokens/s: a prompt
    run fast (a: 40 tok/s against 10) lifts the mean of speeds (2.5x) more than it saves time (1.6x)."""
    renderer = load("render_benchmarks")
    methods = ["autoregressive", "fixed:4@int4"]
    seconds = {("autoregressive", "a"): 1.0, ("autoregressive", "b"): 1.0, ("fixed:4@int4", "a"): 0.25, ("fixed:4@int4", "b"): 1.0}
    records = []
    for repeat in (0, 1):
        for (method, ex), wall in seconds.items():
            r = rec(method, ex, repeat, 10 / wall, tokens=tuple(range(10)), draft=method.partition("@")[2] or None)
            records.append({**r, "wall_s": wall})
    folder = tmp_path / "run"
    folder.mkdir()
    settings = {"methods": methods, "drafts": ["int4"], "repeats": 2}
    (folder / "settings.json").write_text(json.dumps({"settings": settings}), encoding="utf-8")
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    table = renderer.cheap_draft_by_time(folder, {"humaneval": "fixed:4@int4"}, references=("autoregressive",))()
    assert "| HumanEval | `fixed:4@int4` | `autoregressive` | 2.500 | 1.600 (1.600, 1.600) |" in table


def test_top_p_cost_summary_pairs_the_variants_and_counts_identical_outputs():
    """benchmarks/top_p_cost.py's summary, as BENCHMARKS.md renders it: per sampling setting and method, each variant's
    mean tokens/s, their ratio per repeat, ms per row choosing the nucleus, and the pairs whose tokens were identical."""
    tp = load("top_p_cost")
    records = []
    for repeat, (sort_tps, cand_tps) in enumerate([(10.0, 12.0), (10.0, 11.0)]):
        for variant, tps in (("sort", sort_tps), ("candidates", cand_tps)):
            records.append({"sampling": "t0.7-p0.9", "method": "adaedl", "variant": variant, "repeat": repeat,
                            "tokens_per_s": tps, "wall_s": 10.0, "nucleus_s": 1.0 if variant == "sort" else 0.1,
                            "nucleus_rows": 100, "found": [90, 10, 0], "identical": repeat == 0})
    (row,) = tp.summarize(records)
    assert row["tokens_per_s"] == {"sort": 10.0, "candidates": 11.5} and row["ratio"] == pytest.approx(1.15)
    assert row["ratio_per_repeat"] == pytest.approx([1.2, 1.1]) and row["found"] == [180, 20, 0] and row["identical"] == 1
    assert row["nucleus_ms_per_row"] == pytest.approx({"sort": 10.0, "candidates": 1.0})
    assert row["nucleus_share_of_time"] == pytest.approx({"sort": 0.1, "candidates": 0.01})
    import torch

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert tp.full_sort_nucleus(probs, 0.75).tolist() == [[False, False, True, True]]  # the reference it replaced


def test_one_row_cost_summary_pairs_the_variants_per_method_and_repeat():
    """benchmarks/one_row_cost.py's summary, as BENCHMARKS.md renders it: per method, each variant's mean tokens/s,
    paired ÷ one row overall and per repeat, and the pairs whose tokens were identical."""
    orc = load("one_row_cost")
    records = []
    for method, rates in (("autoregressive", [(4.0, 4.4), (4.0, 4.2)]), ("adaedl", [(10.0, 10.0), (10.0, 9.0)])):
        for repeat, (one, paired) in enumerate(rates):
            for variant, tps in (("one", one), ("paired", paired)):
                records.append({"method": method, "variant": variant, "repeat": repeat, "example_id": "p",
                                "tokens_per_s": tps, "identical": method == "adaedl" or repeat == 1})
    target_only, default = orc.summarize(records)
    assert target_only["method"] == "autoregressive" and target_only["ratio"] == pytest.approx(1.075)
    assert target_only["ratio_per_repeat"] == pytest.approx([1.1, 1.05]) and target_only["identical"] == 1
    assert default["tokens_per_s"] == {"one": 10.0, "paired": 9.5} and default["identical"] == 2
    assert default["ratio_per_pair"] == pytest.approx([1.0, 0.9])


def test_the_pair_summary_takes_other_variants_and_divides_the_second_by_the_first():
    """benchmarks/target_only_check.py's summary: engine ÷ hf-generate, through one_row_cost.summarize."""
    orc, check = load("one_row_cost"), load("target_only_check")
    records = [{"method": "autoregressive", "variant": v, "repeat": 0, "example_id": "p", "tokens_per_s": tps,
                "identical": True} for v, tps in zip(check.VARIANTS, (4.0, 4.2))]
    (row,) = orc.summarize(records, check.VARIANTS)
    assert check.VARIANTS == ("hf-generate", "engine") and row["ratio"] == pytest.approx(1.05)
    assert row["ratio_per_pair"] == pytest.approx([1.05]) and row["identical"] == 1 and row["generations"] == 1
