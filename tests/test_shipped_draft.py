"""The draft that ships as a LoRA adapter (``data/drafts/``): found by name, shaped for its base, merged exactly;
and the export that makes such a folder from ``specadapt distill``'s adapter."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from specadapt.cli import app
from specadapt.distill.lora import PORTABLE_CONFIG, export_adapter, load_adapter
from specadapt.errors import SpecAdaptError
from specadapt.models import loading, zoo

NAME = "qwen2.5-coder-0.5b-instruct-adaspec"
PREFIX = "base_model.model.model.layers."
# Qwen2.5-Coder-0.5B-Instruct: 24 layers, hidden 896, MLP 4864, 2 key/value heads of 64.
QWEN_05B_IN_OUT = {"self_attn.q_proj": (896, 896), "self_attn.k_proj": (896, 128), "self_attn.v_proj": (896, 128),
                   "self_attn.o_proj": (896, 896), "mlp.gate_proj": (896, 4864), "mlp.up_proj": (896, 4864),
                   "mlp.down_proj": (4864, 896)}


def test_a_shipped_draft_resolves_to_its_adapter_on_a_zoo_base():
    assert set(zoo.SHIPPED_DRAFTS) == {NAME}
    for name, draft in zoo.SHIPPED_DRAFTS.items():
        folder = zoo.shipped_draft_dir(name)
        assert draft.base in zoo.ZOO and name not in zoo.ZOO
        assert loading.resolve(name) == (str(folder), "adapter")
        assert loading.adapter_base(folder) == draft.base
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        assert set(config) <= set(PORTABLE_CONFIG)  # no field an older peft would refuse
    assert zoo.builtin_names() == [*zoo.ZOO, NAME]


def test_the_shipped_adapter_fits_every_projection_of_its_base_and_is_trained():
    config = json.loads((zoo.shipped_draft_dir(NAME) / "adapter_config.json").read_text(encoding="utf-8"))
    rank = config["r"]
    assert rank == 16 and config["lora_alpha"] == 16.0
    with safe_open(str(zoo.shipped_draft_dir(NAME) / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        expected = {f"{PREFIX}{layer}.{module}.lora_{ab}.weight"
                    for layer in range(24) for module in QWEN_05B_IN_OUT for ab in "AB"}
        assert keys == expected
        for layer in (0, 11, 23):
            for module, (n_in, n_out) in QWEN_05B_IN_OUT.items():
                a = f.get_tensor(f"{PREFIX}{layer}.{module}.lora_A.weight")
                b = f.get_tensor(f"{PREFIX}{layer}.{module}.lora_B.weight")
                assert a.dtype == b.dtype == torch.bfloat16
                assert a.shape == (rank, n_in) and b.shape == (n_out, rank)
                assert torch.isfinite(a).all() and torch.isfinite(b).all()
                assert b.abs().max() > 0  # B starts at zero: a nonzero B is a trained adapter


def test_models_lists_the_shipped_draft_and_setup_prepares_its_base(monkeypatch):
    prepared = []
    monkeypatch.setattr(zoo, "ensure_model", lambda name: prepared.append(name) or zoo.model_dir(name))
    result = CliRunner().invoke(app, ["setup", NAME])
    assert result.exit_code == 0, result.output
    assert prepared == ["qwen2.5-coder-0.5b-instruct"]
    listing = CliRunner().invoke(app, ["models"], env={"COLUMNS": "300"})
    assert listing.exit_code == 0 and NAME in listing.output and "draft (LoRA on qwen2.5-coder-0.5b-instruct)" in listing.output
    unknown = CliRunner().invoke(app, ["setup", "no-such-model"])
    assert isinstance(unknown.exception, SpecAdaptError)  # main() prints it as one line
    assert str(unknown.exception) == f"unknown built-in model 'no-such-model'; known: {', '.join(zoo.builtin_names())}."


def _trained_adapter(tmp_path):
    """A tiny model with a random (as if trained) LoRA on it, saved the way peft saves one."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_llama(0), config)
    model.save_pretrained(str(tmp_path / "src"))
    return tmp_path / "src"


def test_export_writes_bf16_tensors_and_names_the_base_and_merges_to_base_plus_adapter(tmp_path):
    src = _trained_adapter(tmp_path)
    dst = export_adapter(src, tmp_path / "dst", base="tiny-base")
    config = json.loads((dst / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == "tiny-base" and set(config) <= set(PORTABLE_CONFIG)
    assert sorted(p.name for p in dst.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    original, exported = load_file(src / "adapter_model.safetensors"), load_file(dst / "adapter_model.safetensors")
    assert set(exported) == set(original)
    for key, value in exported.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, original[key].to(torch.bfloat16))
    base = tiny_llama(0)
    merged = load_adapter(tiny_llama(0), dst, merge=True)
    checked = 0
    for name, weight in base.state_dict().items():
        stem = "base_model.model." + name[: -len(".weight")]
        if f"{stem}.lora_A.weight" in exported:
            delta = exported[f"{stem}.lora_B.weight"].float() @ exported[f"{stem}.lora_A.weight"].float() * (8 / 4)
            torch.testing.assert_close(merged.state_dict()[name], weight + delta, rtol=1e-6, atol=1e-6)
            checked += 1
        else:
            assert torch.equal(merged.state_dict()[name], weight), name
    assert checked == 3 * 2  # q, v and down of both layers


def test_export_refuses_a_folder_in_use_and_a_folder_without_an_adapter(tmp_path):
    src = _trained_adapter(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(SpecAdaptError, match="exists and is not empty; give a new folder"):
        export_adapter(src, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(SpecAdaptError, match="holds no saved LoRA adapter"):
        export_adapter(tmp_path / "taken", tmp_path / "new")


@pytest.mark.skipif(not zoo.is_available("qwen2.5-coder-0.5b-instruct"),
                    reason="needs the default draft prepared (specadapt setup)")
def test_loading_the_shipped_draft_by_name_gives_the_stock_draft_plus_the_adapter():
    draft = loading.load_model(NAME, "float32", "cpu")
    stock = loading.load_model("qwen2.5-coder-0.5b-instruct", "float32", "cpu")
    adapter = load_file(zoo.shipped_draft_dir(NAME) / "adapter_model.safetensors")
    assert not any("lora" in name for name, _ in draft.named_parameters())
    for layer in (0, 23):
        for module in QWEN_05B_IN_OUT:
            stem = f"{PREFIX}{layer}.{module}"
            delta = adapter[f"{stem}.lora_B.weight"].float() @ adapter[f"{stem}.lora_A.weight"].float()
            name = f"model.layers.{layer}.{module}.weight"
            assert torch.equal(draft.state_dict()[name], stock.state_dict()[name] + delta), name
    assert torch.equal(draft.state_dict()["model.norm.weight"], stock.state_dict()["model.norm.weight"])


@pytest.mark.skipif(not (zoo.is_available("qwen2.5-coder-0.5b-instruct") and zoo.is_available("qwen2.5-coder-1.5b-instruct")),
                    reason="needs the default pair prepared (specadapt setup)")
def test_the_shipped_draft_decodes_losslessly_in_float32():
    from specadapt import SpecDecoder

    decoder = SpecDecoder.from_pretrained(draft=NAME, dtype="float32", device="cpu")
    prompts = ["Write a Python function that returns the n-th Fibonacci number.",
               "Explain in two sentences why the sky is blue."]
    for prompt in prompts:
        ids = torch.tensor([decoder.encode(prompt, chat=True)])
        own = decoder.target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        result = decoder.generate(prompt, method="adaedl", max_new_tokens=24, chat=True)
        assert result.token_ids == own[0, ids.shape[1]:].tolist()
        assert result.stats.accepted > 0
