"""Load models and tokenizers from a built-in name, a local folder, a GGUF file or a Hub id.

Every failure a user can cause (a wrong path, an unknown id, a corrupt
checkpoint, a draft whose tokenizer differs from the target's) becomes a
:class:`SpecAdaptError` that says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import SpecAdaptError
from . import zoo

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


def resolve(spec: str) -> tuple[str, str | None]:
    """Return (what to pass to from_pretrained, gguf file name or None)."""
    if spec in zoo.ZOO:
        return str(zoo.ensure_model(spec)), None
    path = Path(os.path.expanduser(spec))
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
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
            f"or a built-in model: {', '.join(zoo.ZOO)}."
        )
    return spec, None  # a Hub id


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    where, gguf = resolve(spec)
    try:
        return AutoTokenizer.from_pretrained(where, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise SpecAdaptError(_load_failure(spec, "tokenizer", exc)) from None


def load_model(spec: str, dtype: str | torch.dtype = "bfloat16", device: str | torch.device = "auto") -> PreTrainedModel:
    target_device = parse_device(device)  # a bad --device fails before the (slow) load
    where, gguf = resolve(spec)
    kwargs = {"dtype": parse_dtype(dtype)}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise SpecAdaptError(_load_failure(spec, "model", exc)) from None
    return model.to(target_device).eval()


def _load_failure(spec: str, what: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if any(word in text.lower() for word in ("deserializ", "header", "corrupt", "truncat", "invalid", "unexpected eof")):
        hint = "The checkpoint looks corrupt or incomplete: re-create it (for a built-in model: specadapt setup --force)."
    elif Path(spec).exists():
        hint = "Check that the folder is a complete Hugging Face checkpoint (config, weights, tokenizer)."
    else:
        hint = (
            f"It is not a built-in model ({', '.join(zoo.ZOO)}), an existing folder or .gguf file, "
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
