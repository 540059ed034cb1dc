"""Nothing a user wrote is lost: every command that writes a folder deletes or replaces only what its manifest
proves it wrote, and checks everything before it touches the disk. Plus input validation with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specadapt import SpecAdaptError
from specadapt.io import MANIFEST_FILE, OutputFolder


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its text: what a test compares before and after a refused command."""
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def user_folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


# ---------------------------------------------------------------- the shared helper


def test_output_folder_claims_records_and_removes_only_its_own_files(tmp_path):
    folder = OutputFolder(tmp_path / "run", "bench")
    assert folder.check(["a.json"]) is None  # a new folder: nothing to check, nothing written
    assert not folder.path.exists()
    folder.claim(key={"k": 1}, files=["a.json"])
    (folder.path / "a.json").write_text("ours")
    folder.record("sub")
    (folder.path / "sub").mkdir()
    (folder.path / "sub" / "x").write_text("ours too")
    (folder.path / "notes.txt").write_text("the user's")
    assert folder.key == {"k": 1} and folder.owns("a.json") and not folder.owns("notes.txt")
    assert folder.remove("a.json", "sub", "notes.txt") == ["a.json", "sub"]
    assert sorted(p.name for p in folder.path.iterdir()) == [MANIFEST_FILE, "notes.txt"]
    assert (folder.path / "notes.txt").read_text() == "the user's"
    assert json.loads((folder.path / MANIFEST_FILE).read_text())["files"] == []


def test_output_folder_refuses_what_it_cannot_prove_is_its_own(tmp_path):
    foreign = user_folder(tmp_path / "mine", {"notes.txt": "n", "report.md": "m"})
    with pytest.raises(SpecAdaptError) as exc:
        OutputFolder(foreign, "bench").check()
    assert str(exc.value) == (
        f"--out {foreign} already holds files that specadapt bench did not write (notes.txt, report.md); "
        "choose a new or empty folder (nothing was changed)."
    )
    owned = OutputFolder(tmp_path / "run", "bench")
    owned.claim(files=["summary.json"])
    (owned.path / "report.md").write_text("the user's own report")  # same name as a file bench writes
    with pytest.raises(SpecAdaptError) as exc:
        owned.check(["summary.json", "report.md"])
    assert str(exc.value) == (
        f"--out {owned.path} holds report.md, which specadapt bench did not write; move it away or choose "
        "another --out (nothing was changed)."
    )
    with pytest.raises(SpecAdaptError, match="was written by specadapt bench, not specadapt eval-draft"):
        OutputFolder(owned.path, "eval-draft").check()
    (owned.path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(SpecAdaptError, match="is unreadable .*cannot tell which files there are its own"):
        owned.check()
    blocked = user_folder(tmp_path, {"file.txt": "x"}) / "file.txt"
    with pytest.raises(SpecAdaptError) as exc:
        OutputFolder(blocked, "bench").check()
    assert str(exc.value) == f"--out {blocked} is a file; give a folder."
    with pytest.raises(SpecAdaptError, match="cannot write to --out .*choose a writable folder"):
        OutputFolder(blocked / "sub", "bench").claim()


# ---------------------------------------------------------------- bench


def invoke(args: list[str]):
    from specadapt.cli import app

    return CliRunner().invoke(app, args)


def test_bench_overwrite_never_deletes_a_users_report_summary_or_settings(tmp_path):
    # The reproduction: a folder that is not a benchmark, holding names bench also writes.
    mine = user_folder(tmp_path / "mine", {"notes.txt": "n\n", "report.md": "m\n", "summary.json": "{}\n"})
    before = tree(mine)
    res = invoke(["bench", "--datasets", "humaneval", "--limit", "1", "--methods", "autoregressive",
                  "--out", str(mine), "--overwrite"])
    assert isinstance(res.exception, SpecAdaptError)
    assert "specadapt bench did not write (notes.txt, report.md, summary.json)" in str(res.exception)
    assert tree(mine) == before
    # A folder holding only such names is not taken over either.
    only = user_folder(tmp_path / "only", {"report.md": "m", "summary.json": "{}", "settings.json": "{}"})
    res = invoke(["bench", "--datasets", "humaneval", "--limit", "1", "--methods", "autoregressive",
                  "--out", str(only), "--overwrite"])
    assert isinstance(res.exception, SpecAdaptError) and "did not write" in str(res.exception)
    assert tree(only) == {"report.md": "m", "summary.json": "{}", "settings.json": "{}"}


def test_bench_overwrite_deletes_only_its_own_files(tmp_path):
    from test_bench import TinyDecoder, settings_for

    from specadapt.bench.runner import run_bench

    prompts = user_folder(tmp_path, {"p.jsonl": json.dumps({"prompt": "hello there"}) + "\n"}) / "p.jsonl"
    out = tmp_path / "run"
    run_bench(settings_for(prompts, limit=1), out, decoder=TinyDecoder(), progress=False, log=lambda _: None)
    (out / "notes.txt").write_text("my notes on this run")
    run_bench(settings_for(prompts, limit=1, max_new_tokens=4), out, overwrite=True, decoder=TinyDecoder(),
              progress=False, log=lambda _: None)
    assert (out / "notes.txt").read_text() == "my notes on this run"
    assert json.loads((out / "settings.json").read_text())["settings"]["max_new_tokens"] == 4


@pytest.mark.parametrize("text, reason", [
    ("{broken", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ('{"mine": 1}', "KeyError: 'settings'"),
    ('{"settings": [1]}', "'settings' is not an object"),
])
def test_bench_a_corrupt_settings_json_in_its_own_folder_is_a_clear_error(tmp_path, text, reason):
    from test_bench import TinyDecoder, settings_for

    from specadapt.bench.runner import run_bench

    prompts = user_folder(tmp_path, {"p.jsonl": json.dumps({"prompt": "hello there"}) + "\n"}) / "p.jsonl"
    out = tmp_path / "run"
    run_bench(settings_for(prompts, limit=1), out, decoder=TinyDecoder(), progress=False, log=lambda _: None)
    (out / "settings.json").write_text(text)
    with pytest.raises(SpecAdaptError) as exc:
        run_bench(settings_for(prompts, limit=1), out, decoder=TinyDecoder(), progress=False, log=lambda _: None)
    assert str(exc.value) == (
        f"{out / 'settings.json'} is not a readable benchmark settings file ({reason}); rerun with --overwrite to "
        "start the run again in this folder, or choose another --out."
    )
    assert (out / "settings.json").read_text() == text  # nothing changed
    run_bench(settings_for(prompts, limit=1), out, overwrite=True, decoder=TinyDecoder(), progress=False,
              log=lambda _: None)
    assert json.loads((out / "settings.json").read_text())["settings"]["limit"] == 1


def test_bench_a_users_settings_json_is_not_read_as_a_run(tmp_path):
    mine = user_folder(tmp_path / "mine", {"settings.json": '{"theme": "dark"}'})
    res = invoke(["bench", "--datasets", "humaneval", "--limit", "1", "--methods", "autoregressive", "--out", str(mine)])
    assert isinstance(res.exception, SpecAdaptError)
    assert str(res.exception) == (
        f"--out {mine} already holds files that specadapt bench did not write (settings.json); "
        "choose a new or empty folder (nothing was changed)."
    )


def test_bench_compare_of_a_summary_without_datasets_is_a_clear_error(tmp_path):
    a = user_folder(tmp_path / "a", {"summary.json": '{"progress": {}}'})
    b = user_folder(tmp_path / "b", {"summary.json": '{"datasets": {}}'})
    res = invoke(["bench", "--compare", str(a), str(b)])
    assert isinstance(res.exception, SpecAdaptError)
    assert str(res.exception) == (
        f'{a / "summary.json"} is not a `specadapt bench` summary (no "datasets" table of methods); give the --out '
        "folder of a finished benchmark run."
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0"])
def test_bench_exec_timeout_must_be_finite(tmp_path, value):
    res = invoke(["bench", "--datasets", "humaneval", "--limit", "1", "--methods", "autoregressive",
                  "--out", str(tmp_path / "run"), "--exec-timeout", value])
    assert isinstance(res.exception, SpecAdaptError)
    assert str(res.exception) == f"exec timeout must be a finite number of seconds > 0, got {float(value)}."
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- train-head


def test_train_head_never_deletes_head_or_trainer_of_a_foreign_folder(tmp_path):
    # The reproduction: without --overwrite, head/ and trainer/ of a foreign folder were deleted.
    t = user_folder(tmp_path / "t", {"head/important.txt": "x", "trainer/keep.txt": "y"})
    for extra in ([], ["--overwrite"]):
        res = invoke(["train-head", "--out", str(t), "--draft", "smollm2-135m-instruct", "--responses", "dataset",
                      "--num-prompts", "4", *extra])
        assert isinstance(res.exception, SpecAdaptError)
        assert str(res.exception) == (
            f"--out {t} already holds files that specadapt train-head did not write (head, trainer); "
            "choose a new or empty folder (nothing was changed)."
        )
        assert tree(t) == {"head/important.txt": "x", "trainer/keep.txt": "y"}


def test_train_head_checks_the_tokenizers_before_it_changes_the_folder(tmp_path, monkeypatch):
    from specadapt.heads import pipeline, train_head
    from specadapt.heads.config import TrainHeadConfig
    from specadapt.models import loading

    out = tmp_path / "run"
    OutputFolder(out, "train-head").claim(files=pipeline.OUTPUT_ENTRIES)
    user_folder(out, {"head/config.json": "{}", "head/head.safetensors": "w", "trainer/settings.json": "{}",
                      "report.md": "the last run's report"})
    before = tree(out)

    def refuse(spec: str):
        raise SpecAdaptError(f"could not load tokenizer {spec!r}")

    monkeypatch.setattr(loading, "load_tokenizer", refuse)
    config = TrainHeadConfig(output=str(out), draft="smollm2-135m-instruct", responses="dataset", num_prompts=4,
                             overwrite=True)
    with pytest.raises(SpecAdaptError, match="could not load tokenizer"):
        train_head(config)
    assert tree(out) == before  # --overwrite deletes nothing until every check has passed


def test_train_head_overwrite_keeps_a_users_file_in_its_folder(tmp_path):
    from specadapt.heads import pipeline
    from specadapt.heads.config import TrainHeadConfig

    out = tmp_path / "run"
    OutputFolder(out, "train-head").claim(files=pipeline.OUTPUT_ENTRIES)
    user_folder(out, {"head/config.json": "{}", "report.md": "old", "notes.txt": "mine"})
    config = TrainHeadConfig(output=str(out), draft="smollm2-135m-instruct", responses="dataset", num_prompts=4,
                             overwrite=True)
    pipeline.prepare_output(out, config)
    assert not (out / "head").exists() and not (out / "report.md").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "settings.json").exists()


# ---------------------------------------------------------------- distill


def test_teacher_cache_never_removes_a_folder_it_cannot_prove_it_built(tmp_path):
    from conftest import tiny_llama
    from test_distill import _examples

    from specadapt.distill.teacher_cache import build_cache, cache_key

    target, examples = tiny_llama(0, init_range=0.3), _examples()
    key = cache_key(target, "data-hash", 8)
    # The issue: any progress.json with another key made build_cache delete the whole folder.
    mine = user_folder(tmp_path / "mine", {"progress.json": '{"key": "other"}', "thesis.tex": "years of work"})
    with pytest.raises(SpecAdaptError) as exc:
        build_cache(mine, target, examples, key, batch_tokens=20, progress=False)
    assert str(exc.value) == (
        f"--teacher-cache {mine} already holds files that specadapt distill (teacher cache) did not write "
        "(progress.json, thesis.tex); choose a new or empty folder (nothing was changed)."
    )
    assert tree(mine) == {"progress.json": '{"key": "other"}', "thesis.tex": "years of work"}
    # Its own cache, interrupted under another key: only the cache's files are replaced.
    own = tmp_path / "own"
    build_cache(own, target, examples, key, batch_tokens=20, progress=False)
    (own / ".complete").unlink()
    (own / "progress.json").write_text(json.dumps({"key": {**key, "top_k": 4}, "batch_tokens": 20, "batches_done": 1}))
    (own / "notes.txt").write_text("mine")
    cache = build_cache(own, target, examples, key, batch_tokens=20, progress=False)
    assert cache.top_k == 8 and (own / "notes.txt").read_text() == "mine"


def test_distill_overwrite_refuses_a_foreign_folder_and_a_cache_it_did_not_build(tmp_path, monkeypatch):
    from specadapt.distill.teacher_cache import remove_cache
    from specadapt.distill.train import DistillSettings, run_distill

    mine = user_folder(tmp_path / "mine", {"draft/config.json": "{}", "notes.txt": "n"})
    with pytest.raises(SpecAdaptError) as exc:
        run_distill("no-such-target", "shallow:1", "gsm8k", mine, DistillSettings(), overwrite=True, log=lambda m: None)
    assert str(exc.value) == (
        f"--out {mine} already holds files that specadapt distill did not write (draft, notes.txt); "
        "choose a new or empty folder (nothing was changed)."
    )
    assert tree(mine) == {"draft/config.json": "{}", "notes.txt": "n"}
    # --overwrite with a mismatching cache used to remove the --teacher-cache folder whole.
    legacy = user_folder(tmp_path / "legacy", {"meta.json": "{}", ".complete": "", "mine.txt": "x"})
    with pytest.raises(SpecAdaptError, match="specadapt distill \\(teacher cache\\) did not write"):
        remove_cache(legacy)
    assert tree(legacy) == {"meta.json": "{}", ".complete": "", "mine.txt": "x"}


# ---------------------------------------------------------------- eval-draft


def test_eval_draft_never_replaces_an_earlier_evaluation_silently(tmp_path):
    from conftest import IdTokenizer, perturbed_copy, tiny_llama

    from specadapt.distill.data import EvalPrompt
    from specadapt.distill.eval_draft import EvalSettings, evaluate_drafts

    target = tiny_llama(0, init_range=0.3)
    drafts = {"close": perturbed_copy(target, 0.3)}
    prompts = [EvalPrompt("a", (1, 2, 3))]
    settings = EvalSettings(max_new_tokens=4, ks=(2,), speculative=False, warmup=False)
    out = tmp_path / "eval"
    evaluate_drafts(target, IdTokenizer(), drafts, prompts, settings, out=out, log=lambda m: None)
    first = tree(out)
    with pytest.raises(SpecAdaptError) as exc:
        evaluate_drafts(target, IdTokenizer(), drafts, prompts, settings, out=out, log=lambda m: None)
    assert str(exc.value) == (
        f"--out {out} already holds an evaluation (eval.json, eval.md); pass --overwrite to replace it, "
        "or choose another --out."
    )
    assert tree(out) == first
    (out / "notes.md").write_text("mine")
    evaluate_drafts(target, IdTokenizer(), drafts, prompts, settings, out=out, overwrite=True, log=lambda m: None)
    assert (out / "notes.md").read_text() == "mine"
    # A folder of the user's own, eval.json included, is never written to.
    mine = user_folder(tmp_path / "mine", {"eval.json": '{"my": "results"}'})
    with pytest.raises(SpecAdaptError, match="specadapt eval-draft did not write \\(eval.json\\)"):
        evaluate_drafts(target, IdTokenizer(), drafts, prompts, settings, out=mine, overwrite=True, log=lambda m: None)
    assert tree(mine) == {"eval.json": '{"my": "results"}'}


def test_eval_draft_out_pointing_at_a_file_is_a_clear_error(tmp_path):
    blocked = user_folder(tmp_path, {"results.txt": "x"}) / "results.txt"
    res = invoke(["eval-draft", "--target", "no-such-model", "--draft", "shallow:1", "--out", str(blocked)])
    assert isinstance(res.exception, SpecAdaptError)
    assert str(res.exception) == f"--out {blocked} is a file; give a folder."
    assert blocked.read_text() == "x"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name, message", [
    ("meta", "unknown device 'meta'; use auto, cpu, cuda or cuda:N."),
    ("mps", "device 'mps' (Apple GPUs) is not supported; use --device cpu."),
    ("mps:0", "device 'mps:0' (Apple GPUs) is not supported; use --device cpu."),
    ("cuda:x", "unknown device 'cuda:x'; use auto, cpu, cuda or cuda:N."),
    ("gpu", "unknown device 'gpu'; use auto, cpu, cuda or cuda:N."),
    ("", "unknown device ''; use auto, cpu, cuda or cuda:N."),
])
def test_parse_device_accepts_only_auto_cpu_cuda(name, message):
    from specadapt.models.loading import parse_device

    with pytest.raises(SpecAdaptError) as exc:
        parse_device(name)
    assert str(exc.value) == message


def test_parse_device_good_names():
    import torch

    from specadapt.models.loading import parse_device

    assert parse_device("cpu") == torch.device("cpu") and parse_device(" CPU ") == torch.device("cpu")
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SpecAdaptError, match="no CUDA GPU is available here; use --device cpu"):
            parse_device("cuda:0")


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_generate_with_a_bad_device_is_a_clear_error_before_loading(device):
    res = invoke(["generate", "hello", "--target", "no/such/model", "--method", "autoregressive", "--device", device])
    assert isinstance(res.exception, SpecAdaptError)
    assert str(res.exception).startswith(f"device {device!r} (Apple GPUs) is not supported" if device == "mps"
                                         else f"unknown device {device!r}")


def test_bench_with_a_bad_device_is_refused_before_the_folder_is_made(tmp_path):
    res = invoke(["bench", "--datasets", "humaneval", "--limit", "1", "--methods", "autoregressive",
                  "--out", str(tmp_path / "run"), "--device", "meta"])
    assert isinstance(res.exception, SpecAdaptError)
    assert str(res.exception) == "unknown device 'meta'; use auto, cpu, cuda or cuda:N."
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- generate --prompt-file


def test_read_prompt_from_a_file_or_stdin(tmp_path, monkeypatch):
    import io

    from specadapt.cli import read_prompt

    long_prompt = "def f():\n    return 1\n" * 8000  # ~190 KiB: more than one command-line argument may hold
    (tmp_path / "p.txt").write_text(long_prompt + "\n", encoding="utf-8")
    assert read_prompt(None, str(tmp_path / "p.txt")) == long_prompt
    (tmp_path / "crlf.txt").write_bytes("héllo\r\n".encode())
    assert read_prompt(None, str(tmp_path / "crlf.txt")) == "héllo"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("from stdin\n".encode())))
    assert read_prompt(None, "-") == "from stdin"
    assert read_prompt("as argument", None) == "as argument"


@pytest.mark.parametrize("args, message", [
    (["hello", "--prompt-file", "p.txt"], "give the prompt either as an argument or with --prompt-file, not both."),
    ([], "no prompt: give it as an argument, or with --prompt-file PATH ('-' for standard input)."),
    (["--prompt-file", "missing.txt"], "--prompt-file missing.txt: no such file; give the path of a text file holding "
                                       "the prompt."),
    (["--prompt-file", "folder"], "--prompt-file folder is a folder; give the path of a text file holding the prompt."),
    (["--prompt-file", "latin1.txt"], "--prompt-file latin1.txt is not UTF-8 text; save the prompt as UTF-8."),
    (["--prompt-file", "empty.txt"], "the prompt is empty; give some text to continue."),
])
def test_generate_prompt_file_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    user_folder(tmp_path, {"p.txt": "hi", "empty.txt": "\n", "folder/x": ""})
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    res = invoke(["generate", *args, "--method", "autoregressive"])
    assert isinstance(res.exception, SpecAdaptError)
    assert str(res.exception) == message


def test_generate_reads_a_long_prompt_from_stdin(tmp_path):
    from conftest import save_tiny_checkpoint

    from specadapt.cli import app

    save_tiny_checkpoint(tmp_path / "tiny", 0, ["the", "cat", "sat"])
    prompt = "the" + " " * 200_000 + "cat"  # over 128 KiB, yet two tokens for the tiny model's 512-token window
    res = CliRunner().invoke(app, ["generate", "--prompt-file", "-", "--target", str(tmp_path / "tiny"), "--method",
                                   "autoregressive", "--max-new-tokens", "2", "--dtype", "float32", "--device", "cpu",
                                   "--json"], input=prompt)
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout.strip().splitlines()[-1])["token_ids"]) == 2


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_inside_a_command_prints_one_line_and_exits_130(monkeypatch, capsys):
    import sys

    from specadapt import api, cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api.SpecDecoder, "from_pretrained", interrupted)  # Ctrl-C while the models load
    monkeypatch.setattr(sys, "argv", ["specadapt", "generate", "hello", "--method", "autoregressive"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted (Ctrl-C)"


def test_sigint_to_a_running_specadapt_prints_interrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    # The command waits for its prompt on stdin, so the signal arrives while the command runs. Ctrl-C's usual
    # handler first: a child of a background job (e.g. `nohup ... &`) inherits SIGINT ignored.
    code = ("import signal, sys, specadapt.cli as c; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "print('ready', flush=True); "
            "sys.argv = ['specadapt', 'generate', '--prompt-file', '-', '--method', 'autoregressive']; c.main()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TERM": "dumb"})
    try:
        assert proc.stdout.readline().strip() == "ready"
        # Into main() and the command: wait until it blocks reading its prompt (Linux tells where a process
        # sleeps; on a busy machine the imports alone can take seconds), else give it a few seconds.
        wchan = f"/proc/{proc.pid}/wchan"
        deadline = time.monotonic() + (60 if os.path.exists(wchan) else 3)
        while time.monotonic() < deadline:
            if os.path.exists(wchan) and "pipe" in open(wchan).read():
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C)"


# ---------------------------------------------------------------- smaller cases


def test_two_dataset_files_without_ids_are_not_duplicates(tmp_path):
    from specadapt.bench.runner import BenchSettings, load_examples

    a = user_folder(tmp_path, {"a.jsonl": '{"prompt": "one"}\n{"prompt": "two"}\n'}) / "a.jsonl"
    b = user_folder(tmp_path, {"b.jsonl": '{"prompt": "three"}\n'}) / "b.jsonl"
    settings = BenchSettings(methods="autoregressive", datasets=[], dataset_files=[str(a), str(b)], limit=None)
    assert [e.id for e in load_examples(settings)] == ["file/0", "file2/0", "file/1"]
    # Explicit ids that collide across files are still refused, naming the id.
    c = user_folder(tmp_path, {"c.jsonl": '{"id": "q1", "prompt": "x"}\n'}) / "c.jsonl"
    settings = BenchSettings(methods="autoregressive", datasets=[], dataset_files=[str(c), str(c)], limit=None)
    with pytest.raises(SpecAdaptError) as exc:
        load_examples(settings)
    assert str(exc.value) == (
        "two examples of dataset 'file' share the id 'q1' (two --dataset-file lines, or two files); give every "
        "line of --dataset-file a unique id."
    )


def test_a_file_named_gguf_that_is_not_gguf_says_file_not_folder(tmp_path):
    from specadapt.models import loading

    fake = user_folder(tmp_path, {"model.gguf": "garbage"}) / "model.gguf"
    for load in (loading.load_tokenizer, lambda spec: loading.load_model(spec, "float32", "cpu")):
        with pytest.raises(SpecAdaptError) as exc:
            load(str(fake))
        assert str(exc.value) == (
            f"{str(fake)!r} is not a GGUF file (it does not start with the GGUF magic bytes); give a model file in "
            "llama.cpp's GGUF format, or a checkpoint folder."
        )
    assert "folder" not in loading._load_failure(str(fake), "model", ValueError("bad tensor type")).split(". ", 1)[1]


def test_a_mistyped_hub_id_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    import time

    from huggingface_hub import constants

    from specadapt.models import loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)  # restored after the test
    monkeypatch.setattr(loading, "_hub_reachable", False)
    started = time.perf_counter()
    with pytest.raises(SpecAdaptError) as exc:
        loading.load_tokenizer("qwen-coder-mistyped")
    assert time.perf_counter() - started < 10
    assert "the Hub cannot be reached (this machine may be offline, or HF_HUB_OFFLINE=1 is set)" in str(exc.value)
    assert constants.HF_HUB_OFFLINE is True


def test_hub_offline_setting_is_honoured_without_a_network_probe(monkeypatch):
    import socket

    from huggingface_hub import constants

    from specadapt.models import loading

    def no_network(*args, **kwargs):
        raise AssertionError("probed the network although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(loading, "_hub_reachable", None)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert loading.hub_reachable() is False


# ---------------------------------------------------------------- a user's GGUF, converted once


def test_a_users_gguf_is_converted_once_keyed_by_its_content(tmp_path, monkeypatch):
    import os

    import torch
    from conftest import save_tiny_checkpoint

    from specadapt.models import loading, zoo

    monkeypatch.setenv("SPECADAPT_CACHE", str(tmp_path / "cache"))
    conversions, hashes = [], []

    def fake_convert(gguf: Path, out_dir: Path, dtype) -> None:  # a tiny checkpoint instead of dequantizing
        conversions.append((gguf.read_bytes(), dtype))
        save_tiny_checkpoint(out_dir, 0, ["the", "cat"])

    sha256_file = zoo._sha256_file

    def counted_sha256(path, *args, **kwargs):
        hashes.append(Path(path).name)
        return sha256_file(path, *args, **kwargs)

    monkeypatch.setattr(zoo, "_convert_user_gguf", fake_convert)
    monkeypatch.setattr(zoo, "_sha256_file", counted_sha256)
    gguf = user_folder(tmp_path, {"m.gguf": "GGUF version one"}) / "m.gguf"

    model = loading.load_model(str(gguf), "float32", "cpu")
    assert model.dtype == torch.float32 and conversions == [(b"GGUF version one", torch.float32)] and hashes == ["m.gguf"]
    loading.load_model(str(gguf), "float32", "cpu")
    assert len(conversions) == 1 and len(hashes) == 1  # neither re-hashed nor converted again
    loading.load_tokenizer(str(gguf))
    loading.load_tokenizer(str(gguf))
    assert [d for _, d in conversions] == [torch.float32, None] and len(hashes) == 1
    # Touched but unchanged: hashed again (size and mtime are not content), not converted again.
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    loading.load_model(str(gguf), "float32", "cpu")
    assert len(conversions) == 2 and len(hashes) == 2
    # New content under the same path: converted afresh.
    gguf.write_text("GGUF version two")
    loading.load_model(str(gguf), "float32", "cpu")
    assert conversions[-1] == (b"GGUF version two", torch.float32) and len(hashes) == 3
    # The same bytes in another file share the conversion.
    copy = user_folder(tmp_path / "elsewhere", {"copy.gguf": "GGUF version one"}) / "copy.gguf"
    loading.load_model(str(copy), "float32", "cpu")
    assert len(conversions) == 3
    folder = zoo.converted_gguf_model(copy, torch.float32)
    assert folder.parent.parent == tmp_path / "cache" / "converted" and (folder / "config.json").is_file()


def test_a_failed_conversion_leaves_nothing_half_made(tmp_path, monkeypatch):
    from specadapt.models import loading, zoo

    monkeypatch.setenv("SPECADAPT_CACHE", str(tmp_path / "cache"))
    gguf = user_folder(tmp_path, {"m.gguf": "GGUF but cut short"}) / "m.gguf"
    with pytest.raises(SpecAdaptError, match=r"could not convert .*m.gguf'.*complete GGUF model"):
        loading.load_model(str(gguf), "float32", "cpu")  # the real converter on a broken file
    folders = [p.relative_to(tmp_path / "cache" / "converted") for p in (tmp_path / "cache" / "converted").rglob("*")
               if p.is_dir()]
    assert len(folders) == 1 and len(folders[0].parts) == 1  # the content's folder, empty: no temp, no float32/
    assert not list((tmp_path / "cache" / "converted").rglob(zoo.MARKER))


def test_a_bench_run_from_before_manifests_still_resumes_and_keeps_its_other_files(tmp_path):
    from test_bench import TinyDecoder, settings_for

    from specadapt.bench.runner import read_records, run_bench

    prompts = user_folder(tmp_path, {"p.jsonl": "".join(json.dumps({"prompt": f"p {i}"}) + "\n" for i in range(2))})
    out = tmp_path / "run"
    run_bench(settings_for(prompts / "p.jsonl", limit=1), out, decoder=TinyDecoder(), progress=False,
              log=lambda _: None)
    (out / MANIFEST_FILE).unlink()  # as an older specadapt left it
    (out / "replay.json").write_text("made by another tool")
    dec = TinyDecoder()
    run_bench(settings_for(prompts / "p.jsonl", limit=2), out, decoder=dec, progress=False, log=lambda _: None)
    assert dec.calls == 3 and len(read_records(out)) == 6  # resumed: only the second example ran
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert "replay.json" not in manifest["files"] and "records.jsonl" in manifest["files"]
    run_bench(settings_for(prompts / "p.jsonl", limit=1, max_new_tokens=4), out, overwrite=True, decoder=TinyDecoder(),
              progress=False, log=lambda _: None)
    assert (out / "replay.json").read_text() == "made by another tool"


def test_train_head_and_distill_outputs_from_before_manifests_are_recognised(tmp_path):
    from specadapt.distill.train import DistillSettings, run_distill
    from specadapt.heads import pipeline
    from specadapt.heads.config import TrainHeadConfig

    out = tmp_path / "heads"
    config = TrainHeadConfig(output=str(out), draft="smollm2-135m-instruct", responses="dataset", num_prompts=4)
    pipeline.prepare_output(out, config)
    (out / MANIFEST_FILE).unlink()  # as an older specadapt left it
    (out / "notes.txt").write_text("mine")
    pipeline.prepare_output(out, config)
    assert "notes.txt" not in json.loads((out / MANIFEST_FILE).read_text())["files"]
    # Not recognised: a data/settings.json that is not train-head's fingerprint.
    other = user_folder(tmp_path / "other", {"data/settings.json": '{"lr": 1}', "trainer/settings.json": "{}"})
    with pytest.raises(SpecAdaptError, match="specadapt train-head did not write \\(data, trainer\\)"):
        pipeline.prepare_output(other, config, apply=False)

    old = user_folder(tmp_path / "distilled", {"distill.json": '{"stages": {}}', "notes.txt": "mine"})
    with pytest.raises(SpecAdaptError, match="model path '/no/such/target' does not exist"):  # past the folder check
        run_distill("/no/such/target", "shallow:1", "gsm8k", old, DistillSettings(), log=lambda m: None)
    assert tree(old) == {"distill.json": '{"stages": {}}', "notes.txt": "mine"}


def test_a_teacher_cache_from_before_manifests_resumes(tmp_path):
    from conftest import tiny_llama
    from test_distill import _examples

    from specadapt.distill.teacher_cache import build_cache, cache_key

    target, examples = tiny_llama(0, init_range=0.3), _examples()
    key = cache_key(target, "data-hash", 8)
    cache = tmp_path / "c"
    build_cache(cache, target, examples, key, batch_tokens=20, progress=False)
    (cache / MANIFEST_FILE).unlink()
    (cache / ".complete").unlink()
    (cache / "progress.json").write_text(json.dumps({"key": key, "batch_tokens": 20, "batches_done": 1}))
    assert build_cache(cache, target, examples, key, batch_tokens=20, progress=False).top_k == 8
    assert (cache / MANIFEST_FILE).exists()


def test_parse_device_checks_the_cuda_index(monkeypatch):
    import torch

    from specadapt.models.loading import parse_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda") == torch.device("cuda") and parse_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(SpecAdaptError) as exc:
        parse_device("cuda:2")
    assert str(exc.value) == "device 'cuda:2' asked for, but this machine has 2 CUDA GPU(s) (cuda:0 to cuda:1)."


def test_recorded_args_keep_no_machine_paths(tmp_path, monkeypatch):
    """What benchmark scripts write into committed results: paths relative to where they ran, or only a name."""
    import argparse

    from specadapt.io import recorded_args

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(out=tmp_path / "results" / "x.json", data=Path("/elsewhere/data.jsonl"), n=2, split="tune")
    assert recorded_args(args) == {"out": str(Path("results") / "x.json"), "data": "data.jsonl", "n": 2, "split": "tune"}
