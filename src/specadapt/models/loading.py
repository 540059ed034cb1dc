"""Load models and tokenizers from a built-in name, a local folder, a GGUF file or a Hub id.

Every failure a user can cause (a wrong path, an unknown id, a corrupt
checkpoint, a draft whose tokenizer differs from the target's) becomes a
:class:`SpecAdaptError` that says what to do.

A user's ``.gguf`` file is dequantized once into specadapt's cache (keyed by the
file's content and the dtype, :func:`specadapt.models.zoo.converted_gguf_model`),
like the built-in models; later loads read the converted checkpoint.

Hub ids: before the first one is loaded, a connection to the Hub is tried for a
few seconds; if it fails (or ``HF_HUB_OFFLINE=1`` is set) the Hub client runs
offline, so a model in the local Hugging Face cache still loads and anything
else fails at once with a message saying the machine may be offline.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import SpecAdaptError
from . import zoo
from .attention import use_packed_attention
from .hardware import (use_float32_for_wide_products, use_paired_rows, use_transposed_float32_products,
                       wants_float32_products)

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise SpecAdaptError(f"unknown dtype {name!r}; use one of: bfloat16, float32, float16.")
    return DTYPES[name]


def parse_device(name: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device; anything else (``meta``, ``mps``, typos) is refused
    here with a clear message rather than failing later inside torch."""
    if isinstance(name, torch.device):
        return name
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "mps" or text.startswith("mps:"):
        raise SpecAdaptError(f"device {name!r} (Apple GPUs) is not supported; use --device cpu.")
    if text == "cpu":
        return torch.device("cpu")
    kind, colon, index = text.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise SpecAdaptError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise SpecAdaptError(f"device {name!r} asked for, but no CUDA GPU is available here; use --device cpu.")
    if colon and int(index) >= torch.cuda.device_count():
        raise SpecAdaptError(
            f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
        )
    return torch.device(text)


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else path-shaped is meant as a path.
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1 or "\\" in spec


GGUF_MAGIC = b"GGUF"
HUB_PROBE_TIMEOUT_S = 3.0
_hub_reachable: bool | None = None  # probed once per process


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub accepts a connection within ``timeout`` seconds (False under
    ``HF_HUB_OFFLINE=1``). Asked once per process, before the first Hub id is loaded."""
    global _hub_reachable
    if _hub_reachable is None:
        from urllib.parse import urlparse

        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            _hub_reachable = False
        else:
            url = urlparse(constants.ENDPOINT)
            try:
                socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                         timeout=timeout).close()
                _hub_reachable = True
            except OSError:
                _hub_reachable = False
    return _hub_reachable


def _prepare_hub_load() -> bool:
    """Before loading a Hub id: with the Hub unreachable, switch the Hub client to offline mode, so a model in
    the local Hub cache still loads and a mistyped id fails at once instead of after ~50 s of retries.
    Returns whether the Hub is reachable."""
    if hub_reachable():
        return True
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # read at every request through huggingface_hub.is_offline_mode()
    return False


def _check_gguf(path: Path, spec: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SpecAdaptError(f"cannot read {spec!r}: {exc.strerror or exc}.") from None
    if magic != GGUF_MAGIC:
        raise SpecAdaptError(
            f"{spec!r} is not a GGUF file (it does not start with the GGUF magic bytes); give a model file in "
            "llama.cpp's GGUF format, or a checkpoint folder."
        )


def resolve(spec: str) -> tuple[str, str | None]:
    """Return (what to pass to from_pretrained, None), (the path of a .gguf file, "gguf"), or (a LoRA adapter's
    folder, "adapter")."""
    if spec in zoo.ZOO:
        return str(zoo.ensure_model(spec)), None
    if spec in zoo.SHIPPED_DRAFTS:
        return str(zoo.shipped_draft_dir(spec)), "adapter"
    path = Path(os.path.expanduser(spec))
    if path.is_file() and path.suffix == ".gguf":
        _check_gguf(path, spec)
        return str(path), "gguf"
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "adapter_config.json").exists():
            return str(path), "adapter"
        if not (path / "config.json").exists():
            raise SpecAdaptError(
                f"{spec!r} is a folder but holds no config.json: not a Hugging Face checkpoint. "
                "Point to the folder that save_pretrained wrote, or to a .gguf file."
            )
        return str(path), None
    if path.exists():
        raise SpecAdaptError(f"{spec!r} is a file but not a .gguf model; give a checkpoint folder or a .gguf file.")
    if _looks_like_path(spec):
        raise SpecAdaptError(
            f"model path {spec!r} does not exist. Give an existing checkpoint folder, a .gguf file, a Hugging Face id, "
            f"or a built-in model: {', '.join(zoo.builtin_names())}."
        )
    return spec, None  # a Hub id


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    where, kind = resolve(spec)
    online = True
    if kind == "adapter" and not (Path(where) / "tokenizer_config.json").exists():
        return load_tokenizer(adapter_base(Path(where)))
    if kind == "gguf":
        where = str(zoo.converted_gguf_tokenizer(Path(where)))  # converted once, keyed by the file's content
    elif not Path(where).exists():
        online = _prepare_hub_load()
    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise SpecAdaptError(_load_failure(spec, "tokenizer", exc, online)) from None


def load_model(spec: str, dtype: str | torch.dtype = "bfloat16", device: str | torch.device = "auto") -> PreTrainedModel:
    """A model by name, folder, .gguf file, Hub id, or LoRA adapter folder (the adapter merged into the model its
    ``adapter_config.json`` names, e.g. ``specadapt distill``'s ``OUT/draft/adapter``), ready for the engine."""
    target_device = parse_device(device)  # a bad --device fails before the (slow) load
    torch_dtype = parse_dtype(dtype)
    where, kind = resolve(spec)
    if kind == "adapter":
        from ..distill.lora import load_adapter

        model = load_adapter(_from_pretrained(adapter_base(Path(where)), torch_dtype), where, merge=True)
    else:
        model = _from_pretrained(spec, torch_dtype)
    use_packed_attention(model)
    model = model.to(target_device).eval()
    if wants_float32_products(torch_dtype, target_device):  # prompts and wide blocks: see models/hardware.py
        use_float32_for_wide_products(model)
    elif torch_dtype == torch.float32 and target_device.type == "cpu":  # a few rows: see models/hardware.py
        use_transposed_float32_products(model)
    elif torch_dtype == torch.bfloat16 and target_device.type == "cpu":  # one row: see models/hardware.py
        use_paired_rows(model)
    return model


def _from_pretrained(spec: str, torch_dtype: torch.dtype) -> PreTrainedModel:
    """The Hugging Face model ``spec`` names (not an adapter), as stored."""
    where, kind = resolve(spec)
    online = True
    if kind == "adapter":
        raise SpecAdaptError(f"{spec!r} is a LoRA adapter; an adapter's base must be a full model.")
    if kind == "gguf":
        # Dequantized once into the cache (per content and dtype), not on every load.
        where = str(zoo.converted_gguf_model(Path(where), torch_dtype))
    elif not Path(where).exists():
        online = _prepare_hub_load()
    try:
        return AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise SpecAdaptError(_load_failure(spec, "model", exc, online)) from None


def adapter_base(folder: Path) -> str:
    """The model a LoRA adapter folder belongs on (``base_model_name_or_path`` of its ``adapter_config.json``)."""
    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise SpecAdaptError(f"{folder}/adapter_config.json cannot be read ({exc}); is {folder} a LoRA adapter?") from None
    if not base:
        raise SpecAdaptError(
            f"the LoRA adapter in {folder} does not name its base model (base_model_name_or_path is empty); "
            "load the base with --draft and the adapter with specadapt.distill.lora.load_adapter, or set the field."
        )
    return str(base)


def _load_failure(spec: str, what: str, exc: Exception, online: bool = True) -> str:
    text = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    path = Path(os.path.expanduser(spec))
    if any(word in text.lower() for word in ("deserializ", "header", "corrupt", "truncat", "invalid", "unexpected eof")):
        hint = "The checkpoint looks corrupt or incomplete: re-create it (for a built-in model: specadapt setup --force)."
    elif path.is_file():
        hint = "Check that the file is a complete GGUF model (llama.cpp's format)."
    elif path.exists():
        hint = "Check that the folder is a complete Hugging Face checkpoint (config, weights, tokenizer)."
    elif not online:
        hint = (
            f"It is not a built-in model ({', '.join(zoo.builtin_names())}), an existing folder or .gguf file, nor in the local "
            "Hugging Face cache, and the Hub cannot be reached (this machine may be offline, or HF_HUB_OFFLINE=1 "
            "is set): check the spelling, or give a local folder or .gguf file."
        )
    else:
        hint = (
            f"It is not a built-in model ({', '.join(zoo.builtin_names())}), an existing folder or .gguf file, "
            "and could not be loaded as a Hugging Face Hub id (check the spelling; this machine may be offline)."
        )
    return f"could not load {what} {spec!r}: {text}. {hint}"


def check_same_tokenizer(target: PreTrainedTokenizerBase, draft: PreTrainedTokenizerBase, names: tuple[str, str]) -> None:
    """Speculative decoding compares token ids, so draft and target must tokenize identically."""
    tv, dv = target.get_vocab(), draft.get_vocab()
    if tv != dv:
        differing = len(set(tv.items()) ^ set(dv.items()))
        raise SpecAdaptError(
            f"the draft {names[1]!r} and target {names[0]!r} have different tokenizers "
            f"(vocabulary sizes {len(dv)} vs {len(tv)}, {differing} entries differ). Speculative decoding needs a draft "
            "that shares the target's tokenizer: pick a draft from the same model family."
        )


def token_id_list(*sources: int | Sequence[int] | None) -> list[int]:
    """The distinct token ids in ``sources`` (each an id, a list of ids or None), in order of first appearance;
    negative ids (configs' "none") are left out."""
    ids: list[int] = []
    for source in sources:
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) >= 0 and int(i) not in ids:
                ids.append(int(i))
    return ids


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a generation: the generation config's, the model config's and the tokenizer's."""
    return token_id_list(getattr(model.generation_config, "eos_token_id", None), model.config.eos_token_id,
                         tokenizer.eos_token_id)
