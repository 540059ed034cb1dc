"""Training SpecDec++ acceptance heads for any draft/target pair sharing a tokenizer.

>>> from specadapt.train import TrainHeadConfig, train_head, tune_head
>>> result = train_head(TrainHeadConfig(output="runs/qwen-head", responses="dataset"))
>>> tune_head(result.head_dir)            # picks the threshold h by measured speed

Modules: :mod:`.sources` (prompt data), :mod:`.head_data` (prompts, responses,
teacher-forced labels; cached stages), :mod:`.head_trainer` (loss, datasets,
Trainer), :mod:`.report` (AUC, calibration, plots), :mod:`.pipeline` (the whole
run and the output layout), :mod:`.tune_head` (threshold sweep). The command
line is ``specadapt train-head`` / ``specadapt tune-head``; docs/train-head.md
describes both.
"""

from .config import TrainHeadConfig
from .pipeline import TrainHeadResult, train_head
from .tune_head import TuneResult, tune_head

__all__ = ["TrainHeadConfig", "TrainHeadResult", "TuneResult", "train_head", "tune_head"]
