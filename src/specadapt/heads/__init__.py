"""SpecDec++ acceptance heads: the head and its format, and training heads for any draft/target pair.

>>> from specadapt.heads import TrainHeadConfig, train_head, tune_head
>>> result = train_head(TrainHeadConfig(output="runs/qwen-head", responses="dataset"))
>>> tune_head(result.head_dir)            # picks the threshold h by measured speed

Modules: :mod:`.format` (the head, its folder format, built-in heads), :mod:`.config`
(settings of a training run), :mod:`.data` (prompts, responses, teacher-forced labels;
cached stages), :mod:`.trainer` (loss, datasets, Trainer), :mod:`.report` (AUC,
calibration, plots), :mod:`.pipeline` (the whole run and the output layout),
:mod:`.tune` (threshold sweep). The command line is ``specadapt train-head`` /
``specadapt tune-head``; docs/train-head.md describes both.
"""

from __future__ import annotations

from typing import Any

from .format import (
    BUILTIN_HEADS_DIR,
    CONFIG_FILE,
    DRAFT_FEATURES,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_INPUTS,
    WEIGHTS_FILE,
    AcceptanceHead,
    builtin_heads,
    distribution_features,
    draft_features,
    load_head,
    read_head_config,
    resolve_head,
    save_head,
)

# Decoding with a head imports this package; the training side (transformers' Trainer, data
# stages) loads only when one of its names is asked for.
_TRAINING = {
    "TrainHeadConfig": "config",
    "TrainHeadResult": "pipeline",
    "train_head": "pipeline",
    "TuneResult": "tune",
    "tune_head": "tune",
}


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        from importlib import import_module

        return getattr(import_module(f".{_TRAINING[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AcceptanceHead",
    "BUILTIN_HEADS_DIR",
    "CONFIG_FILE",
    "DRAFT_FEATURES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEAD_INPUTS",
    "WEIGHTS_FILE",
    "builtin_heads",
    "distribution_features",
    "draft_features",
    "load_head",
    "read_head_config",
    "resolve_head",
    "save_head",
    *_TRAINING,
]
