"""Draft initialisation: an existing model, or a shallow copy of the target.

A shallow copy keeps the target's embeddings, a subset of its decoder layers
(by default the first N), its final norm and its output head. It shares the
target's tokenizer and vocabulary by construction, and before any training its
layers compute exactly what the target's first layers compute.

``--draft-init`` spellings: ``shallow:N`` (the first N layers) or
``shallow:0,1,2,29`` (these layers, in this order), or any model spec that
:func:`specadapt.models.loading.resolve` accepts (built-in name, folder, Hub id).

What trains (``--train``):

``all``          every parameter
``layers``       the decoder layers and the final norm; embeddings and head frozen
``head``         the final norm and the output head (with tied embeddings: the embeddings too)
``layers+head``  everything except untied input embeddings
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..errors import SpecAdaptError

TRAIN_PARTS = ("all", "layers", "head", "layers+head")


def parse_draft_init(spec: str) -> list[int] | None:
    """Layer indices for ``shallow:...`` (validated later against the target), None for a model spec."""
    if not spec.startswith("shallow:"):
        return None
    body = spec.split(":", 1)[1].strip()
    try:
        if "," in body:
            layers = [int(x) for x in body.split(",") if x.strip()]
        else:
            layers = list(range(int(body)))
    except ValueError:
        raise SpecAdaptError(
            f"bad draft init {spec!r}: write shallow:N (the first N target layers) or shallow:i,j,k (layer indices)."
        ) from None
    if not layers:
        raise SpecAdaptError(f"bad draft init {spec!r}: a shallow copy needs at least one layer, e.g. shallow:4.")
    return layers


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The qualified name and the ModuleList of a causal LM's decoder layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name.endswith("layers"):
            return name, module
    raise SpecAdaptError(
        f"cannot find the decoder layers of {type(model).__name__} (no ModuleList of num_hidden_layers={n} modules); "
        "use an existing smaller model as --draft-init instead of shallow:N."
    )


def shallow_copy(target: PreTrainedModel, layers: int | Sequence[int], dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A new model with the target's embeddings, head, final norm and the given decoder layers."""
    prefix, modules = decoder_layers(target)
    total = len(modules)
    chosen = list(range(layers)) if isinstance(layers, int) else [int(i) for i in layers]
    if not chosen or any(not 0 <= i < total for i in chosen) or len(set(chosen)) != len(chosen):
        raise SpecAdaptError(
            f"shallow copy layers {chosen} are invalid for a target with {total} layers: "
            f"give 1..{total} layers, each index in 0..{total - 1}, no repeats (e.g. shallow:4)."
        )
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(chosen)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == total:
        config.layer_types = [layer_types[i] for i in chosen]  # sliding/full attention per kept layer
    new_index = {old: new for new, old in enumerate(chosen)}
    state = {}
    for key, value in target.state_dict().items():
        if key.startswith(prefix + "."):
            old, rest = key[len(prefix) + 1 :].split(".", 1)
            if int(old) not in new_index:
                continue
            key = f"{prefix}.{new_index[int(old)]}.{rest}"
        state[key] = value.detach().to(dtype)
    draft = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = draft.load_state_dict(state, strict=False)
    # Tied heads may appear under one name only; anything else missing is a real mismatch.
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise SpecAdaptError(
            f"shallow copy of {type(target).__name__} failed (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {unexpected[:3]}); use an existing smaller model as --draft-init."
        )
    draft.generation_config = copy.deepcopy(target.generation_config)
    return draft.eval()


def set_trainable(model: PreTrainedModel, parts: str) -> dict:
    """Freeze all but ``parts`` (see module docstring); returns trainable and total parameter counts."""
    if parts not in TRAIN_PARTS:
        raise SpecAdaptError(f"unknown --train {parts!r}; use one of: {', '.join(TRAIN_PARTS)}.")
    prefix, _ = decoder_layers(model)
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    for name, p in model.named_parameters():
        in_layers = name.startswith(prefix + ".")
        is_head, is_embed = p is head, p is embed
        other = not (in_layers or is_head or is_embed)  # the final norm and similar small parts
        if parts == "all":
            train = True
        elif parts == "layers":
            train = in_layers or other
        elif parts == "head":
            train = is_head or other
        else:  # layers+head
            train = in_layers or other or is_head
        p.requires_grad_(train)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_parameters": trainable, "parameters": total}
