"""Distillation runs on tiny models: LoRA (adapter + merged draft), equal-compute bookkeeping, resuming
mid-epoch, and 2 processes under accelerate equal to 1."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import crash_at_checkpoint, tiny_llama
from safetensors.torch import load_file
from test_distill import _examples, fast_settings, tiny_setup  # noqa: F401  (tiny_setup is a fixture)

from specadapt.distill.lora import apply_lora, load_adapter
from specadapt.distill.shallow import shallow_copy
from specadapt.distill.train import COUNTS, run_distill, stage_finished, train_stage

ROOT = Path(__file__).resolve().parents[1]


def _lora_stage(tmp_path, name, **kw):
    target = tiny_llama(0, init_range=0.3)
    settings = fast_settings(method="distillspec", teacher="exact", lora_rank=4, lora_alpha=8.0, learning_rate=1e-2, **kw)
    student, counts = apply_lora(shallow_copy(target, 1).train(), settings)
    metrics = train_stage(tmp_path / name, student, _examples(8), settings, selective=False, target=target)
    return target, counts, metrics


# ---------------------------------------------------------------- LoRA


def test_lora_merged_draft_is_base_plus_scaled_adapter_and_the_adapter_loads_onto_the_stock_draft(tmp_path):
    target, counts, metrics = _lora_stage(tmp_path, "draft")
    out = tmp_path / "draft"
    assert metrics["adapter"] == str(out / "adapter") and (out / "adapter" / "adapter_config.json").exists()
    base = shallow_copy(target, 1).state_dict()
    merged = load_file(out / "model.safetensors")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    prefix = "base_model.model."
    adapted = {k[len(prefix) : -len(".lora_A.weight")] for k in adapter if k.endswith(".lora_A.weight")}
    assert len(adapted) == 7  # q, k, v, o, gate, up, down of the one layer
    assert counts["trainable_parameters"] == sum(v.numel() for v in adapter.values())
    # the adapter's random init comes from --seed: AdaSPEC's reference and draft start from the same one
    settings = fast_settings(lora_rank=4)
    first, second = (apply_lora(shallow_copy(target, 1), settings)[0].state_dict() for _ in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert set(merged) == set(base)
    for name, weight in base.items():
        stem = name[: -len(".weight")]
        if stem in adapted:
            delta = adapter[f"{prefix}{stem}.lora_B.weight"] @ adapter[f"{prefix}{stem}.lora_A.weight"] * (8.0 / 4)
            assert delta.abs().max() > 0, name  # the adapter did train
            torch.testing.assert_close(merged[name], weight + delta, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(merged[name], weight), name  # LoRA leaves every other weight as it was
    from transformers import AutoModelForCausalLM

    on_base = load_adapter(shallow_copy(target, 1), out / "adapter").eval()
    merged_model = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(on_base(x).logits, merged_model(x).logits, rtol=1e-5, atol=1e-5)


def test_an_adapter_folder_loads_as_a_draft_merged_onto_its_base(tmp_path):
    from specadapt.errors import SpecAdaptError
    from specadapt.models.loading import load_model

    target, _, _ = _lora_stage(tmp_path, "draft")
    base_dir = tmp_path / "base"
    shallow_copy(target, 1).save_pretrained(base_dir)
    config_path = tmp_path / "draft" / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(base_dir)}))
    from_adapter = load_model(str(tmp_path / "draft" / "adapter"), "float32", "cpu")
    merged = load_model(str(tmp_path / "draft"), "float32", "cpu")
    assert not any("lora" in name for name, _ in from_adapter.named_parameters())  # merged: a plain model
    x = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(from_adapter(x).logits, merged(x).logits, rtol=1e-5, atol=1e-5)
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(SpecAdaptError, match="does not name its base model"):
        load_model(str(tmp_path / "draft" / "adapter"), "float32", "cpu")


def test_lora_with_gradient_checkpointing_trains_the_same_adapter(tmp_path):
    _lora_stage(tmp_path, "plain")
    _lora_stage(tmp_path, "checkpointed", gradient_checkpointing=True)
    a = load_file(tmp_path / "plain" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "checkpointed" / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- equal compute


def test_distillspec_and_adaspec_record_equal_draft_compute(tiny_setup):
    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    for method in ("adaspec", "distillspec"):
        run_distill(target, "shallow:1", data, root / method, fast_settings(method=method), log=lambda m: None)
    ada = json.loads((root / "adaspec" / "distill.json").read_text())["compute"]
    ds = json.loads((root / "distillspec" / "distill.json").read_text())["compute"]
    assert set(ada["stages"]) == {"reference", "draft"} and set(ds["stages"]) == {"draft"}
    same = ("sequences", "tokens_seen", "answer_tokens", "optimizer_steps")
    d, r, a = ds["stages"]["draft"], ada["stages"]["reference"], ada["stages"]["draft"]
    assert d["optimizer_steps"] == 2 and d["sequences"] == 2 * 4 and d["tokens_seen"] > d["answer_tokens"] > 0
    assert {k: a[k] for k in same} == {k: d[k] for k in same}  # the AdaSPEC draft stage = the DistillSpec run
    assert {k: r[k] for k in same} == {k: d[k] for k in same}  # and so is its reference stage (same recipe)
    assert d["loss_tokens"] == d["answer_tokens"] and 0 < a["loss_tokens"] < a["answer_tokens"]  # k = 0.4 kept
    assert a["reference_forward_tokens"] == a["tokens_seen"] and d["reference_forward_tokens"] == 0
    assert all(s["wall_seconds"] > 0 for s in (d, r, a))
    assert ada["total"]["tokens_seen"] == 2 * d["tokens_seen"] and ada["total"]["optimizer_steps"] == 4
    assert ds["total"] == {k: v for k, v in d.items()}
    assert "'reference' (stage 1" in ada["note"] and "extra compute" in ada["note"]


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("variant", ["full", "lora+on-policy"])
def test_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, variant):
    target = tiny_llama(0, init_range=0.3)
    extra = {"lora_rank": 4, "on_policy": 0.5, "on_policy_max_new_tokens": 3} if variant != "full" else {}
    # 12 examples, 4 per step: one epoch is 3 steps; the crash comes after step 1's checkpoint
    settings = fast_settings(method="distillspec", teacher="exact", max_steps=None, epochs=1, save_steps=1,
                             learning_rate=1e-2, **extra)

    def student():
        model = shallow_copy(target, 1).train()
        return apply_lora(model, settings)[0] if settings.lora_rank else model

    whole = train_stage(tmp_path / "whole", student(), _examples(12), settings, selective=False, target=target)
    crash_at_checkpoint(monkeypatch, step=1)
    with pytest.raises(KeyboardInterrupt):
        train_stage(tmp_path / "split", student(), _examples(12), settings, selective=False, target=target)
    monkeypatch.undo()
    assert not stage_finished(tmp_path / "split")
    logs = []
    resumed = train_stage(tmp_path / "split", student(), _examples(12), settings, selective=False, target=target,
                          log=logs.append)
    assert logs[0].endswith("checkpoint-1") and whole["steps"] == resumed["steps"] == 3
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    counted = [k for k in COUNTS]  # tokens and sequences of both sittings together equal the uninterrupted run's
    assert {k: resumed["compute"][k] for k in counted} == {k: whole["compute"][k] for k in counted}


# ---------------------------------------------------------------- several processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(root: Path, out: str, *extra: str) -> list[dict]:
    """tests/distill_launch.py in two gloo processes (``extra``: its optional arguments); each process's summary."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend for CPU process groups")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(ROOT / "tests" / "distill_launch.py"),
               str(root / "target"), str(root / "data.jsonl"), str(root / out), *extra]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the two processes did not end within 300 s: one waits for the other (stopped at different steps?)")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The processes share stdout: find each summary wherever it landed, not only at a line's start.
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(done.stdout, m.end())[0] for m in re.finditer("SUMMARY ", done.stdout)]


def _assert_same_draft(root: Path, one: str, two: str) -> None:
    """The two-process run ``two`` trained what the one-process run ``one`` trained, on the same compute."""
    stages = json.loads((root / two / "distill.json").read_text())["stages"]
    assert stages["draft"]["processes"] == 2
    single = json.loads((root / one / "distill.json").read_text())["stages"]["draft"]
    assert single["processes"] == 1
    same = ("sequences", "tokens_seen", "answer_tokens", "loss_tokens", "optimizer_steps")
    assert {k: stages["draft"]["compute"][k] for k in same} == {k: single["compute"][k] for k in same}
    a, b = load_file(root / one / "draft" / "model.safetensors"), load_file(root / two / "draft" / "model.safetensors")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_two_cpu_processes_under_accelerate_train_what_one_process_trains(tiny_setup):
    """``accelerate launch --cpu --num_processes 2`` starts a single process on a machine without MPI (its CPU
    launcher hands multi-process runs to mpirun), so the two gloo processes are started the way GPUs are
    (``--multi_gpu``: torchrun underneath); distill joins them as one CPU group (PartialState(cpu=True))."""
    root = _one_process_run(tiny_setup)
    assert _launch_two(root, "two") == [{"stopped": None}] * 2
    _assert_same_draft(root, "one", "two")


def _one_process_run(root: Path) -> Path:
    from distill_launch import SETTINGS

    from specadapt.distill.train import DistillSettings

    run_distill(str(root / "target"), "shallow:1", str(root / "data.jsonl"), root / "one", DistillSettings(**SETTINGS),
                log=lambda m: None)
    return root


def test_two_processes_stop_at_one_step_under_a_time_limit_and_resume(tiny_setup):
    """A time limit that process 0 passes at once and the other never: both processes stop after one optimizer
    step (process 0's clock decides), and the second sitting resumes to the one-process weights."""
    root = _one_process_run(tiny_setup)
    first = _launch_two(root, "split", "1e-9", "1e9")  # both processes stop after the same step
    assert first == [{"stopped": {"stage": "draft", "stopped": True, "steps": 1, "max_steps": 2}}] * 2
    assert not (root / "split" / "draft" / "model.safetensors").exists()
    assert _launch_two(root, "split", "1e-9", "1e9") == [{"stopped": None}] * 2
    _assert_same_draft(root, "one", "split")


def test_cli_adaspec_with_lora_saves_adapters_for_both_stages(tiny_setup):
    from typer.testing import CliRunner

    from specadapt.cli import app

    root = tiny_setup
    result = CliRunner().invoke(app, [
        "distill", "--target", str(root / "target"), "--draft-init", "shallow:1", "--data", str(root / "data.jsonl"),
        "--out", str(root / "cli"), "--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "2",
        "--precision", "fp32", "--device", "cpu", "--no-progress", "--cache-top-k", "4",
        "--lora-rank", "2", "--lora-alpha", "4", "--lora-targets", "q_proj,v_proj", "--gradient-checkpointing",
    ])
    assert result.exit_code == 0, result.output
    for stage in ("reference", "draft"):
        config = json.loads((root / "cli" / stage / "adapter" / "adapter_config.json").read_text())
        assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 2
        assert config["base_model_name_or_path"] == "shallow:1"
        assert (root / "cli" / stage / "model.safetensors").exists()  # and the merged draft beside it
    record = json.loads((root / "cli" / "distill.json").read_text())
    assert record["settings"]["lora_rank"] == 2 and record["stages"]["draft"]["adapter"].endswith("draft/adapter")
