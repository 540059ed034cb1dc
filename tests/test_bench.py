"""`specadapt bench`: metric identities, report from stored results, resume, comparison, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import IdTokenizer, perturbed_copy, tiny_llama

from specadapt import SpecAdaptError, SpeculativeEngine
from specadapt.bench import report
from specadapt.bench.runner import RECORDS_FILE, BenchSettings, load_settings, read_records, run_bench


def record(example: str, method: str, *, tps: float, tokens: int = 10, rounds: int = 10, drafted: int = 0,
           accepted: int = 0, repeat: int = 0, text: str = "x", correct: bool | None = None, dataset: str = "d",
           positions: tuple[list[int], list[int]] = ([], [])) -> dict:
    return {
        "dataset": dataset, "example_id": example, "category": None, "task": "none", "method": method,
        "lossless": True, "repeat": repeat, "order": 0, "prompt_tokens": 5, "tokens": tokens,
        "wall_s": tokens / tps, "tokens_per_s": tps, "finish_reason": "length", "rounds": rounds,
        "drafted": drafted, "accepted": accepted, "position_reached": positions[0],
        "position_accepted": positions[1], "draft_time_s": 0.0, "target_time_s": 0.0,
        "text": text, "score": None if correct is None else {"correct": correct},
    }


STORED = [
    record("a", "autoregressive", tps=2.0, correct=True, text="one two"),
    record("b", "autoregressive", tps=4.0, correct=False, text="three"),
    # fixed:4 on a: 12 tokens in 4 rounds, 8 of 16 drafted accepted; on b: 10 tokens in 5 rounds, 5 of 20
    record("a", "fixed:4", tps=5.0, tokens=12, rounds=4, drafted=16, accepted=8, correct=True, text="one two",
           positions=([4, 3], [3, 2])),
    record("b", "fixed:4", tps=7.0, tokens=10, rounds=5, drafted=20, accepted=5, correct=True, text="three four",
           positions=([5], [2])),
]


def test_metric_identities_on_stored_results():
    summary = report.summarize(STORED, ["autoregressive", "fixed:4"])
    ar, fx = summary["datasets"]["d"]["autoregressive"], summary["datasets"]["d"]["fixed:4"]
    assert ar["mean_accepted_length"] == 1.0 and ar["acceptance_rate"] is None and ar["speedup"] == 1.0
    assert ar["verification_rate"] == 1.0 and ar["discard_rate"] == 0.0
    assert fx["acceptance_rate"] == pytest.approx(13 / 36)  # accepted / drafted, pooled
    assert fx["mean_accepted_length"] == pytest.approx(1 + 13 / 9)  # 1 + accepted / rounds
    assert fx["mean_accepted_length"] == pytest.approx(22 / 9)  # = generated tokens / rounds
    assert fx["mean_draft_length"] == pytest.approx(36 / 9)
    assert fx["speedup"] == pytest.approx(6.0 / 3.0)  # mean per-example tok/s over that of target-only
    assert fx["verification_rate"] == pytest.approx(9 / 22) and fx["discard_rate"] == pytest.approx(23 / 22)
    assert fx["accuracy"] == 1.0 and fx["accuracy_change"] == pytest.approx(0.5)
    # ROUGE-L F1 with target-only's text: "one two" vs itself 1, "three four" vs "three" 2/3
    assert fx["agreement_exact"] == 0.5 and fx["agreement_overlap"] == pytest.approx((1 + 2 / 3) / 2)
    assert fx["acceptance_by_position"] == [pytest.approx(5 / 9), pytest.approx(2 / 3)]  # pooled per position


def test_accuracy_change_is_paired_per_example_in_a_partial_run():
    rows = [record("a", "autoregressive", tps=2.0, correct=False),  # b's target-only run is still missing
            record("a", "fixed:4", tps=4.0, correct=True), record("b", "fixed:4", tps=4.0, correct=False)]
    fx = report.summarize(rows, ["autoregressive", "fixed:4"])["datasets"]["d"]["fixed:4"]
    assert fx["accuracy"] == 0.5 and fx["accuracy_change"] == 1.0  # not 0.5 - 0.0: only a is compared


def test_speedup_spread_across_repeats():
    rows = [record("a", "autoregressive", tps=2.0, repeat=r) for r in (0, 1)]
    rows += [record("a", "fixed:4", tps=t, repeat=r, drafted=4, accepted=2, rounds=2) for r, t in ((0, 4.0), (1, 6.0))]
    fx = report.summarize(rows, ["autoregressive", "fixed:4"])["datasets"]["d"]["fixed:4"]
    assert fx["speedup"] == pytest.approx(2.5)
    assert fx["speedup_spread"] == pytest.approx(2 ** -0.5)  # sample std of 2.0 and 3.0
    assert fx["speedup_per_repeat"] == [pytest.approx(2.0), pytest.approx(3.0)]


def test_report_and_plots_from_stored_results(tmp_path):
    summary = report.summarize(STORED, ["autoregressive", "fixed:4"], {"fixed:4": {"lossless": True}})
    run = {"settings": {"target": "T", "draft": "D", "dtype": "bfloat16", "temperature": 0.0,
                        "max_new_tokens": 16, "repeats": 1}, "environment": {"cpu": "test cpu", "torch_threads": 2}}
    report.write_report(tmp_path, run, summary)
    text = (tmp_path / "report.md").read_text()
    assert "## d (2 examples)" in text and "| `fixed:4` | yes | 6.00 | 2.00× |" in text
    assert "100.0% (+50.0)" in text  # accuracy and its change vs target-only
    for name in ("speedup.png", "tradeoff.png", "acceptance_by_position.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_reports_differences(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, rows in ((a, STORED), (b, [dict(r, tokens_per_s=r["tokens_per_s"] * 2) for r in STORED])):
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(report.summarize(rows, ["autoregressive", "fixed:4"])))
    rows = {(r["dataset"], r["method"]): r for r in report.compare(a, b)}
    va, vb, delta = rows[("d", "fixed:4")]["tokens_per_s"]
    assert (va, vb, delta) == (6.0, 12.0, 6.0)
    assert rows[("d", "fixed:4")]["speedup"][2] == pytest.approx(0.0)
    assert "6.00 → 12.00 (+6.00)" in report.format_comparison(report.compare(a, b))[1]
    with pytest.raises(SpecAdaptError, match="no summary.json"):
        report.compare(a, tmp_path / "missing")


# ----------------------------------------------------------------------------
# the runner on tiny models
# ----------------------------------------------------------------------------


class TinyDecoder:
    """What run_bench needs of a SpecDecoder, over tiny random models and an id tokenizer."""

    def __init__(self) -> None:
        self.target = tiny_llama(0)
        self.draft = perturbed_copy(self.target, 0.2)
        self.tokenizer = IdTokenizer()
        self.engine = SpeculativeEngine(self.target, self.draft, self.tokenizer, [])
        self.calls = 0
        self.fail_after: int | None = None
        generate = self.engine.generate

        def counted(*args, **kwargs):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt
            self.calls += 1
            return generate(*args, **kwargs)

        self.engine.generate = counted

    def encode(self, messages: list[dict]) -> list[int]:
        return [1 + ord(c) % 60 for c in messages[-1]["content"][:12]]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt number {i}"}) + "\n" for i in range(3)))
    return path


def settings_for(prompts_file, **kw) -> BenchSettings:
    base = dict(target="tiny", draft="tiny-draft", methods="fixed:3,heuristic", datasets=[],
                dataset_files=[str(prompts_file)], max_new_tokens=8, warmup=0, dtype="float32", device="cpu")
    return BenchSettings(**{**base, **kw})


def test_run_writes_records_summary_and_report(tmp_path, prompts_file):
    dec = TinyDecoder()
    summary = run_bench(settings_for(prompts_file), tmp_path / "run", decoder=dec, progress=False, log=lambda _: None)
    records = read_records(tmp_path / "run")
    assert len(records) == 9 and dec.calls == 9  # 3 prompts x (autoregressive + 2 methods)
    table = summary["datasets"]["file"]
    assert list(table) == ["autoregressive", "fixed:3", "heuristic"]  # the baseline is added first
    assert table["autoregressive"]["mean_accepted_length"] == 1.0
    assert table["fixed:3"]["agreement_exact"] == 1.0  # fp32 greedy: lossless means identical text
    for r in records:
        assert r["tokens"] == 8 and r["tokens"] == r["accepted"] + r["rounds"]
    assert {r["order"] for r in records if r["method"] == "autoregressive"} == {0, 1, 2}  # rotated order
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "speedup.png").exists()
    # token agreement: only for target-only (the reference level, 1.0 in fp32) and lossy methods
    assert all(r["target_agreement"] == 1.0 for r in records if r["method"] == "autoregressive")
    assert all("target_agreement" not in r for r in records if r["method"] != "autoregressive")
    assert summary["progress"] == {"complete": True, "generations": 9, "expected": 9}


def test_an_examples_stop_strings_end_every_methods_generation(tmp_path, prompts_file, monkeypatch):
    from specadapt.bench import runner

    settings = settings_for(prompts_file, methods="fixed:3,heuristic", limit=1)
    run_bench(settings, tmp_path / "free", decoder=TinyDecoder(), progress=False, log=lambda _: None)
    free = read_records(tmp_path / "free")
    assert {r["tokens"] for r in free} == {8}
    prefix = " ".join(free[0]["text"].split()[:3])  # IdTokenizer text: the ids, space-separated
    example = dataclasses.replace(runner.load_examples(settings)[0], stop=(prefix,))
    monkeypatch.setattr(runner, "load_examples", lambda _settings: [example])
    run_bench(settings, tmp_path / "stopped", decoder=TinyDecoder(), progress=False, log=lambda _: None)
    stopped = read_records(tmp_path / "stopped")
    assert len(stopped) == 3
    assert all(r["finish_reason"] == "stop" and r["tokens"] == 3 and r["text"] == prefix for r in stopped)


def test_a_dataset_cap_overrides_max_new_tokens_and_is_reported(tmp_path, prompts_file):
    out = tmp_path / "run"
    run_bench(settings_for(prompts_file, dataset_max_new_tokens={"file": 5}, limit=1), out, decoder=TinyDecoder(),
              progress=False, log=lambda _: None)
    assert {r["tokens"] for r in read_records(out)} == {5}
    assert "max 8 new tokens (file: 5)" in (out / "report.md").read_text()


def test_lossy_method_gets_token_agreement_in_records_summary_and_report(tmp_path, prompts_file):
    out = tmp_path / "run"
    summary = run_bench(settings_for(prompts_file, methods="adasd:n_min=0,scope=request;", max_new_tokens=16), out,
                        decoder=TinyDecoder(), progress=False, log=lambda _: None)
    lossy = [r for r in read_records(out) if r["method"] == "adasd:n_min=0,scope=request"]
    assert len(lossy) == 3
    target = TinyDecoder().target  # the same seeded weights as the run's
    # TinyDecoder encodes the first 12 characters: the three prompts have the same ids
    prompt = TinyDecoder().encode([{"role": "user", "content": "prompt number 0"}])
    for r in lossy:
        tokens = [int(t) for t in r["text"].split()]  # IdTokenizer text: the ids
        with torch.inference_mode():  # the target's argmax after each prefix, one forward pass per position
            argmax = [int(target(torch.tensor([prompt + tokens[:i]])).logits[0, -1].argmax()) for i in range(len(tokens))]
        assert r["target_agreement"] == pytest.approx(sum(a == t for a, t in zip(argmax, tokens)) / len(tokens))
        assert r["target_agreement"] == 15 / 16  # exactly one of its 16 tokens is not the target's choice
    entry = summary["datasets"]["file"]["adasd:n_min=0,scope=request"]
    assert entry["target_agreement"] == pytest.approx(sum(r["target_agreement"] for r in lossy) / len(lossy))
    assert "token agreement" in (out / "report.md").read_text()


def test_interrupted_run_resumes_without_redoing(tmp_path, prompts_file):
    out = tmp_path / "run"
    dec = TinyDecoder()
    dec.fail_after = 4
    with pytest.raises(KeyboardInterrupt):
        run_bench(settings_for(prompts_file), out, decoder=dec, progress=False, log=lambda _: None)
    assert len(read_records(out)) == 4
    partial = json.loads((out / "summary.json").read_text())  # a partial report from what finished
    assert partial["progress"] == {"complete": False, "generations": 4, "expected": 9}
    assert "Partial run" in (out / "report.md").read_text()
    with open(out / RECORDS_FILE, "a") as f:
        f.write('{"dataset": "file", "exampl')  # a line cut short by the interruption
    dec.fail_after, dec.calls = None, 0
    messages = []
    run_bench(settings_for(prompts_file), out, decoder=dec, progress=False, log=messages.append)
    assert dec.calls == 5 and len(read_records(out)) == 9  # only the 5 missing generations ran
    assert "resuming" in messages[0]
    keys = [(r["example_id"], r["method"]) for r in read_records(out)]
    assert len(set(keys)) == 9
    # The rotation continues where it stopped: p1's methods start one place on, as in an uninterrupted run.
    order = {(r["example_id"], r["method"]): r["order"] for r in read_records(out)}
    assert [order[("p1", m)] for m in ("fixed:3", "heuristic", "autoregressive")] == [0, 1, 2]
    # p1 was measured partly before and partly after the interruption: the summary and report say so.
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["sessions"]) == 2 and summary["split_across_sessions"] == ["file:p1"]
    assert "measured in different processes" in (out / "report.md").read_text() and "file:p1" in (out / "report.md").read_text()
    dec.calls = 0
    run_bench(settings_for(prompts_file), out, decoder=dec, progress=False, log=lambda _: None)
    assert dec.calls == 0  # a finished run only rebuilds its summary


def test_a_changed_limit_extends_or_narrows_a_run(tmp_path, prompts_file):
    out, dec = tmp_path / "run", TinyDecoder()
    run_bench(settings_for(prompts_file, limit=2), out, decoder=dec, progress=False, log=lambda _: None)
    assert dec.calls == 6
    dec.calls, messages = 0, []
    summary = run_bench(settings_for(prompts_file, limit=1), out, decoder=dec, progress=False, log=messages.append)
    assert dec.calls == 0 and summary["progress"] == {"complete": True, "generations": 3, "expected": 3}
    assert summary["datasets"]["file"]["fixed:3"]["examples"] == 1
    assert any("--limit changed from 2 to 1" in m for m in messages)
    assert len(read_records(out)) == 6  # the second example's records are kept, not deleted
    assert json.loads((out / "settings.json").read_text())["settings"]["limit"] == 1
    summary = run_bench(settings_for(prompts_file, limit=3), out, decoder=dec, progress=False, log=lambda _: None)
    assert dec.calls == 3 and summary["progress"]["generations"] == 9  # only the third example ran


def test_results_record_paths_relative_to_the_output_folder(tmp_path, prompts_file):
    from specadapt.heads import AcceptanceHead, save_head

    head = save_head(AcceptanceHead(32, 1), tmp_path / "heads" / "h")  # specdecpp records its head folder resolved
    label = f"specdecpp:head={head},threshold=0.5"
    out = tmp_path / "runs" / "a"
    run_bench(settings_for(prompts_file, methods=["fixed:3", label]), out, decoder=TinyDecoder(), progress=False,
              log=lambda _: None)
    run = json.loads((out / "settings.json").read_text())
    assert run["settings"]["dataset_files"] == ["../../prompts.jsonl"]
    assert run["methods"][label]["policy_settings"]["head"] == "../../heads/h"
    for name in ("settings.json", "summary.json", "report.md"):
        text = (out / name).read_text().replace(label, "")  # the method label is the user's own string
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, name
    assert [Path(f).resolve() for f in load_settings(out).dataset_files] == [prompts_file.resolve()]
    # The run and its data moved together still resume, from any working directory.
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "runs", moved / "runs")
    shutil.move(prompts_file, moved / "prompts.jsonl")
    dec = TinyDecoder()
    run_bench(settings_for(moved / "prompts.jsonl", methods=["fixed:3", label]), moved / "runs" / "a", decoder=dec,
              progress=False, log=lambda _: None)
    assert dec.calls == 0


def test_a_run_recorded_with_absolute_dataset_paths_still_resumes(tmp_path, prompts_file):
    out = tmp_path / "run"
    run_bench(settings_for(prompts_file, limit=2), out, decoder=TinyDecoder(), progress=False, log=lambda _: None)
    run = json.loads((out / "settings.json").read_text())
    run["settings"]["dataset_files"] = [str(prompts_file.resolve())]  # what earlier versions wrote
    (out / "settings.json").write_text(json.dumps(run))
    assert load_settings(out).dataset_files == [str(prompts_file.resolve())]
    dec = TinyDecoder()
    summary = run_bench(settings_for(prompts_file, limit=3), out, decoder=dec, progress=False, log=lambda _: None)
    assert dec.calls == 3 and summary["progress"]["generations"] == 9  # only the third example ran
    other = tmp_path / "other.jsonl"
    shutil.copyfile(prompts_file, other)
    with pytest.raises(SpecAdaptError, match=r"other settings \(dataset_files\)"):
        run_bench(settings_for(other), out, decoder=TinyDecoder(), progress=False)


def test_output_folder_protection(tmp_path, prompts_file):
    out = tmp_path / "run"
    run_bench(settings_for(prompts_file), out, decoder=TinyDecoder(), progress=False, log=lambda _: None)
    with pytest.raises(SpecAdaptError, match="other settings .*max_new_tokens"):
        run_bench(settings_for(prompts_file, max_new_tokens=6), out, decoder=TinyDecoder(), progress=False)
    summary = run_bench(settings_for(prompts_file, max_new_tokens=6), out, overwrite=True, decoder=TinyDecoder(),
                        progress=False, log=lambda _: None)
    assert summary["datasets"]["file"]["fixed:3"]["mean_tokens"] == 6
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SpecAdaptError, match="specadapt bench did not write"):
        run_bench(settings_for(prompts_file), foreign, decoder=TinyDecoder(), progress=False)
    with pytest.raises(SpecAdaptError, match="specadapt bench did not write"):  # --overwrite deletes only our files
        run_bench(settings_for(prompts_file), foreign, overwrite=True, decoder=TinyDecoder(), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    blocked = tmp_path / "file.txt"
    blocked.write_text("x")
    with pytest.raises(SpecAdaptError, match="cannot write|is a file"):
        run_bench(settings_for(prompts_file), blocked / "sub", decoder=TinyDecoder(), progress=False)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"datasets": ["imagenet"]}, "unknown dataset 'imagenet'; known: humaneval"),
        ({"methods": "fixed:4,warp-drive"}, "warp-drive"),
        ({"methods": "fixed:4,fixed:4"}, "twice"),
        ({"repeats": 0}, "repeats must be an integer >= 1"),
        ({"temperature": -1.0}, "temperature"),
        ({"datasets": [], "dataset_files": []}, "no datasets"),
        ({"dataset_max_new_tokens": {"gsm8k": 8}}, "cap for 'gsm8k', which this run does not benchmark"),
        ({"dataset_max_new_tokens": {"file": 0}}, "cap for file must be an integer >= 1"),
    ],
)
def test_bad_settings(prompts_file, kw, message):
    with pytest.raises(SpecAdaptError, match=message):
        settings_for(prompts_file, **kw)


def test_time_limit_stops_with_a_partial_report_and_resumes(tmp_path, prompts_file):
    out = tmp_path / "run"
    dec, messages = TinyDecoder(), []
    summary = run_bench(settings_for(prompts_file), out, decoder=dec, progress=False, log=messages.append,
                        time_limit_s=0.0)
    assert dec.calls == 0 and summary["progress"]["complete"] is False
    assert "time limit" in messages[-1] and "Partial run" in (out / "report.md").read_text()
    summary = run_bench(settings_for(prompts_file), out, decoder=dec, progress=False, log=lambda _: None)
    assert dec.calls == 9 and summary["progress"]["complete"] is True


def test_a_run_does_not_resume_on_another_kind_of_machine(tmp_path, prompts_file):
    out = tmp_path / "run"
    run_bench(settings_for(prompts_file), out, decoder=TinyDecoder(), progress=False, log=lambda _: None,
              time_limit_s=0.0)
    stored = json.loads((out / "settings.json").read_text())
    stored["environment"]["cpu_capability"] = "OTHER"
    (out / "settings.json").write_text(json.dumps(stored))
    dec = TinyDecoder()
    with pytest.raises(SpecAdaptError, match=r"measured on another machine \(cpu_capability 'OTHER' there, '.+' here\)"
                                             r".*Resume it on such a machine, or use another --out"):
        run_bench(settings_for(prompts_file), out, decoder=dec, progress=False, log=lambda _: None)
    assert dec.calls == 0 and json.loads((out / "settings.json").read_text()) == stored  # nothing run or rewritten


def test_cli_rejects_a_malformed_dataset_cap(tmp_path):
    from typer.testing import CliRunner

    from specadapt.cli import app

    res = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "run"), "--dataset-max-new-tokens", "mt-bench:128"])
    assert res.exit_code != 0
    assert "DATASET=N pairs" in res.output + str(res.exception) and not (tmp_path / "run").exists()


def test_bench_runs_the_test_split_and_records_it(tmp_path, prompts_file):
    out = tmp_path / "run"
    settings = settings_for(prompts_file, datasets=["mt-bench"], dataset_files=[], limit=2, methods="fixed:3")
    assert settings.split == "test"  # the default: what results report
    summary = run_bench(settings, out, decoder=TinyDecoder(), progress=False, log=lambda _: None)
    records = read_records(out)
    assert {(r["example_id"], r["split"], r["index"]) for r in records} == {("mt_bench/88", "test", 56),
                                                                           ("mt_bench/98", "test", 57)}
    assert json.loads((out / "settings.json").read_text())["settings"]["split"] == "test"
    assert summary["split"] == "test" and summary["example_indices"] == {"mt-bench": [56, 57]}
    assert "Split: `test` (example indices mt-bench: 56–57)" in (out / "report.md").read_text()
    # A run recorded before splits existed took the first examples of the whole dataset: it does not resume as test.
    stored = json.loads((out / "settings.json").read_text())
    del stored["settings"]["split"]
    (out / "settings.json").write_text(json.dumps(stored))
    with pytest.raises(SpecAdaptError, match=r"other settings \(split\)"):
        run_bench(settings, out, decoder=TinyDecoder(), progress=False, log=lambda _: None)
    assert load_settings(out).split == "all"  # e.g. for replaying it: the examples it did run
    run_bench(dataclasses.replace(settings, split="all"), out, decoder=TinyDecoder(), progress=False,
              log=lambda _: None)  # resumes as what it was
    with pytest.raises(SpecAdaptError, match="unknown split 'dev'"):
        settings_for(prompts_file, split="dev")
