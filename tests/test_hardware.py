"""The machine record every benchmark carries, and the warning for bf16 on a CPU without native bf16."""

import warnings

import pytest
import torch

from specadapt import SpecDecoder
from specadapt import cli
from specadapt.errors import SpecAdaptWarning
from specadapt.models import hardware

from conftest import save_tiny_checkpoint

WORDS = [f"w{i}" for i in range(62)]


@pytest.fixture
def slow_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    save_tiny_checkpoint(root / "target", 0, WORDS)
    save_tiny_checkpoint(root / "draft", 1, WORDS)
    return root


def test_machine_names_the_cpu_kind():
    record = hardware.machine()
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["native_bf16"] is hardware.native_bf16() and record["torch_threads"] == torch.get_num_threads()
    assert isinstance(record["cpu"], str) and record["cpu"]


def test_the_warning_is_only_for_bf16_on_a_cpu_without_native_bf16(slow_bf16, monkeypatch):
    message = hardware.slow_bf16_warning(torch.bfloat16, torch.device("cpu"))
    assert "has no native bf16 matrix instructions" in message and "--method autoregressive" in message
    assert hardware.slow_bf16_warning(torch.float32, torch.device("cpu")) is None
    assert hardware.slow_bf16_warning(torch.bfloat16, torch.device("cuda")) is None
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    assert hardware.slow_bf16_warning(torch.bfloat16, torch.device("cpu")) is None


def test_loading_a_bf16_pair_warns_once_and_target_only_does_not(slow_bf16, checkpoints):
    target, draft = str(checkpoints / "target"), str(checkpoints / "draft")
    with pytest.warns(SpecAdaptWarning, match="no native bf16"):
        SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecAdaptWarning)
        SpecDecoder.from_pretrained(target, None, dtype="bfloat16", device="cpu")  # no drafts to verify
        SpecDecoder.from_pretrained(target, draft, dtype="float32", device="cpu")
        SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu", target_quant="int4")


def test_the_cli_prints_the_warning_as_one_line(capsys):
    cli._show_warning(SpecAdaptWarning("this CPU is slow"), SpecAdaptWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert err.strip() == "warning: this CPU is slow"
