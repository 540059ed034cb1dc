"""Bad input to `specadapt distill` gets one SpecAdaptError that names the problem and the fix (exact messages)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import crash_at_checkpoint, save_tiny_checkpoint
from test_distill import fast_settings, tiny_setup  # noqa: F401  (tiny_setup is a fixture)

from specadapt.distill.train import DistillSettings, run_distill
from specadapt.errors import SpecAdaptError


def _refused(message: str, call, *args, **kwargs) -> None:
    with pytest.raises(SpecAdaptError, match="^" + re.escape(message) + "$"):
        call(*args, **kwargs)


def _run(target, draft_init, data, out, settings=None):
    return run_distill(target, draft_init, data, out, settings or fast_settings(method="distillspec"), log=lambda m: None)


def test_tokenizer_mismatch_between_draft_and_target(tiny_setup):
    root = tiny_setup
    target, other = str(root / "target"), str(root / "other")
    save_tiny_checkpoint(other, 1, ["completely", "different", "words"])
    # 19 vs 5 entries; <unk> and </s> are shared, the other 17 + 3 differ
    _refused(
        f"the draft {other!r} and target {target!r} have different tokenizers (vocabulary sizes 5 vs 19, 20 entries "
        "differ). Speculative decoding needs a draft that shares the target's tokenizer: pick a draft from the same "
        "model family.",
        _run, target, other, str(root / "data.jsonl"), root / "out",
    )


@pytest.mark.parametrize("k", [0, 1.5])
def test_k_outside_zero_one(k):
    _refused(f"--k (the fraction of answer tokens AdaSPEC keeps) must be in (0, 1], got {k!r}; AdaSPEC uses 0.4, "
             "and 1 is plain distillation.", DistillSettings, k=k)


def test_missing_data_file(tiny_setup):
    root = tiny_setup
    missing = str(root / "missing.jsonl")
    _refused(f"training data {missing!r} not found: use gsm8k, sharegpt, humaneval or the path of a .jsonl file "
             'with "prompt" and "response" per line.', _run, str(root / "target"), "shallow:1", missing, root / "out")


def test_lora_settings():
    _refused("--train layers is for full fine-tuning; with --lora-rank only the LoRA adapters train: drop --train, "
             "or set --lora-rank 0.", DistillSettings, lora_rank=8, train_parts="layers")
    _refused("--lora-rank must be an integer >= 0 (0 = full fine-tuning), got -1.", DistillSettings, lora_rank=-1)


def test_time_limit_must_be_positive():
    _refused("--time-limit must be a positive number of minutes, got 0.0.", DistillSettings, time_limit=0.0)


def test_lora_targets_that_name_no_layer(tiny_setup):
    root = tiny_setup
    _refused("--lora-targets qkv name no linear layer of this draft; its linear layers are: down_proj, gate_proj, "
             "k_proj, lm_head, o_proj, q_proj, up_proj, v_proj. Pick from those.",
             _run, str(root / "target"), "shallow:1", str(root / "data.jsonl"), root / "out",
             fast_settings(method="distillspec", lora_rank=2, lora_targets=["qkv"]))


# ---------------------------------------------------------------- an --out that holds a different run


def test_out_holding_files_distill_did_not_write_or_another_commands_run(tiny_setup):
    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep me")
    _refused(f"--out {root / 'mine'} already holds files that specadapt distill did not write (notes.txt); "
             "choose a new or empty folder (nothing was changed).", _run, target, "shallow:1", data, root / "mine")
    (root / "bench").mkdir()
    (root / "bench" / ".specadapt-manifest.json").write_text(json.dumps({"format": 1, "command": "bench", "key": None, "files": []}))
    _refused(f"--out {root / 'bench'} was written by specadapt bench, not specadapt distill; choose another --out "
             "(nothing was changed).", _run, target, "shallow:1", data, root / "bench")


def test_out_holding_a_finished_draft(tiny_setup):
    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    _run(target, "shallow:1", data, root / "out")
    _refused(f"{root / 'out' / 'draft'} already holds a finished draft; pass --overwrite to retrain, or choose "
             "another --out.", _run, target, "shallow:1", data, root / "out")


def test_out_holding_an_unfinished_run_of_another_draft_init_or_settings(tiny_setup, monkeypatch):
    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    crash_at_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _run(target, "shallow:1", data, root / "out", fast_settings(method="distillspec", save_steps=1))
    monkeypatch.undo()
    again = "rerun with the same command to resume it, or pass --overwrite to start again (or choose another --out)."
    draft = root / "out" / "draft"
    _refused(f"{draft} holds an unfinished run of another draft init (draft init: shallow:1 → shallow:2); {again}",
             _run, target, "shallow:2", data, root / "out", fast_settings(method="distillspec", save_steps=1))
    _refused(f"{draft} holds an unfinished run with different settings (learning_rate: 0.0003 → 0.001); {again}",
             _run, target, "shallow:1", data, root / "out",
             fast_settings(method="distillspec", save_steps=1, learning_rate=1e-3))
