"""LoRA drafts for ``specadapt distill --lora-rank R`` (through peft).

With LoRA only low-rank adapters train: W' = W + (alpha / r) * B @ A for each
targeted linear layer, everything else stays the stock draft. A finished stage
is saved twice:

``<stage>/``          the merged draft (a plain Hugging Face folder, as without LoRA),
                      so generate, bench, eval-draft and AdaSPEC's reference load it unchanged
``<stage>/adapter/``  the adapter alone (adapter_config.json + adapter_model.safetensors,
                      a few MB): :func:`load_adapter` puts it onto the stock draft
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import SpecAdaptError

if TYPE_CHECKING:
    from .train import DistillSettings

ADAPTER_DIR = "adapter"
# The attention and MLP projections of Llama / Qwen / Mistral-style decoders.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _peft():
    try:
        import peft
    except ImportError:
        raise SpecAdaptError("LoRA adapters need the peft package: pip install peft.") from None
    return peft


def apply_lora(model: PreTrainedModel, settings: DistillSettings, base_name: str | None = None) -> tuple[PreTrainedModel, dict]:
    """Wrap ``model`` with fresh LoRA adapters (only they train); returns the peft model and parameter counts.

    ``base_name`` is recorded in the adapter's config as the model it belongs on (e.g. the --draft-init)."""
    peft = _peft()
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in settings.lora_targets if t not in linear]
    if missing:
        raise SpecAdaptError(
            f"--lora-targets {','.join(missing)} name no linear layer of this draft; its linear layers are: "
            f"{', '.join(linear)}. Pick from those."
        )
    config = peft.LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,  # no dropout: a stage's result depends only on its settings (resume, multi-process tests)
        target_modules=list(settings.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # A is initialised at random: from --seed, so that AdaSPEC's reference and draft start from the same adapter
    # and a resumed or multi-process run starts where a single uninterrupted one did.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        wrapped = peft.get_peft_model(model, config)
    if base_name is not None:
        wrapped.peft_config["default"].base_model_name_or_path = base_name
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())  # base + adapters
    return wrapped, {"trainable_parameters": trainable, "parameters": total, "lora_rank": settings.lora_rank}


def is_lora(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def save_lora_stage(model: PreTrainedModel, stage_dir: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Write the adapter to ``stage_dir/adapter`` and the merged draft to ``stage_dir`` (``model`` is merged in place)."""
    stage_dir = Path(stage_dir)
    model.save_pretrained(str(stage_dir / ADAPTER_DIR))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(stage_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(stage_dir))


def load_adapter(base: PreTrainedModel, adapter_dir: str | Path, merge: bool = False) -> PreTrainedModel:
    """The stock draft ``base`` with a saved adapter on it (``merge``: folded into its weights, peft removed)."""
    peft = _peft()
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise SpecAdaptError(f"{adapter_dir} holds no LoRA adapter (no adapter_config.json); give OUT/draft/{ADAPTER_DIR}.")
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    return model.merge_and_unload() if merge else model


# The adapter config fields that define a plain LoRA adapter (newer peft versions write many more, all at their
# defaults for specadapt's adapters, which older versions refuse as unknown).
PORTABLE_CONFIG = ("peft_type", "task_type", "base_model_name_or_path", "r", "lora_alpha", "lora_dropout",
                   "target_modules", "bias", "fan_in_fan_out", "use_rslora", "use_dora", "modules_to_save",
                   "layers_to_transform", "rank_pattern", "alpha_pattern", "inference_mode")


def export_adapter(src: str | Path, dst: str | Path, base: str | None = None, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Copy the adapter in ``src`` to a new folder ``dst`` in a form to hand out: its tensors in ``dtype`` (half the
    bytes of the float32 ones training writes), its config naming ``base`` (a built-in name, not a path of the
    machine it trained on; default: the base it names), and no generated model card (peft's names that path)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    weights = src / "adapter_model.safetensors"
    if not (src / "adapter_config.json").exists() or not weights.exists():
        raise SpecAdaptError(f"{src} holds no saved LoRA adapter (adapter_config.json + adapter_model.safetensors).")
    if dst.exists() and any(dst.iterdir()):
        raise SpecAdaptError(f"{dst} exists and is not empty; give a new folder (nothing is overwritten).")
    full = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    config = {k: full[k] for k in PORTABLE_CONFIG if k in full}  # what the adapter is, readable by older peft too
    if base is not None:
        config["base_model_name_or_path"] = base
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return dst


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Export a LoRA adapter (e.g. OUT/draft/adapter of specadapt distill) "
                                "in bf16, naming its base, into a new folder.")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--base", default=None, help="the base model to name (e.g. a built-in name)")
    args = p.parse_args(argv)
    print(export_adapter(args.src, args.dst, args.base))


__all__ = ["ADAPTER_DIR", "DEFAULT_TARGETS", "apply_lora", "export_adapter", "is_lora", "load_adapter", "save_lora_stage"]


if __name__ == "__main__":
    main()
