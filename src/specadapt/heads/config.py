"""Settings of a head-training run, validated up front so that a mistake costs seconds, not an hour."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecAdaptError
from ..models import zoo
from .format import HEAD_INPUTS

RESPONSE_MODES = ("target", "dataset")
HIDDEN_MODES = ("cache", "recompute")
CHAT_MODES = ("auto", "always", "never")

# Settings that decide what the data stages produce; changing one of them invalidates data/.
DATA_KEYS = (
    "target",
    "draft",
    "data",
    "num_prompts",
    "dev_fraction",
    "responses",
    "max_prompt_tokens",
    "max_response_tokens",
    "response_temperature",
    "response_top_p",
    "response_method",
    "label_temperature",
    "mix_ratio",
    "hidden",
    "head_input",
    "chat",
    "seed",
    "dtype",
)
# Settings that decide the training run; changing one of them invalidates trainer/ checkpoints.
TRAIN_KEYS = (
    "num_blocks",
    "shared_blocks",
    "reject_weight",
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "warmup",
    "weight_decay",
    "max_steps",
)


@dataclass
class TrainHeadConfig:
    """Everything ``specadapt train-head`` needs. Defaults: the SpecDec++ recipe, sized for ~400 prompts.

    Deviations from the paper's numbers (3 epochs, batch 4 x accumulation 8, lr unpublished) are on
    purpose: with a few hundred prompts instead of 40k, the paper's schedule would take only a few
    dozen optimizer steps. Here: 10 epochs of batch 4 (sequences), lr 1e-3, cosine, warmup 3 %, and
    the checkpoint with the lowest dev loss is kept (epochs are cheap on cached hidden states).

    The metadata's help texts are the ``specadapt train-head`` options' (:mod:`specadapt.cli_options`).
    """

    output: str = field(metadata={"help": "Output folder (data/, trainer/, head/, report). Rerun to resume.", "flag": ("--out", "-o")})
    target: str = field(default=zoo.DEFAULT_TARGET, metadata={"help": "Target model: built-in name, folder, .gguf file or Hub id."})
    draft: str = field(default=zoo.DEFAULT_DRAFT, metadata={
        "help": "Draft model (same tokenizer as the target); the head is for this draft."})
    data: tuple[str, ...] = field(default=("gsm8k", "sharegpt", "humaneval"), metadata={
        "help": "Comma-separated prompt sources: gsm8k, sharegpt, humaneval, or .jsonl files."})
    num_prompts: int = field(default=400, metadata={"help": "Number of prompts (train + dev), mixed round-robin over the sources."})
    dev_fraction: float = field(default=0.1, metadata={
        "help": "Share of prompts kept for the dev split (calibration, AUC, tune-head)."})
    # Data
    responses: str = field(default="target", metadata={
        "help": "target: the target samples each response (the paper's recipe); dataset: the data set's own responses "
                "(much cheaper)."})
    max_prompt_tokens: int = field(default=512, metadata={"help": "Skip prompts longer than this."})
    max_response_tokens: int = field(default=256, metadata={"help": "Response length cap."})
    response_temperature: float = field(default=0.7, metadata={"help": "Temperature for the target's responses (0 = greedy)."})
    response_top_p: float = field(default=0.9, metadata={"help": "Nucleus mass for the target's responses."})
    response_method: str = field(default="heuristic", metadata={
        "help": "Lossless speculative method used to sample the responses."})
    gen_batch_size: int = field(default=1, metadata={"help": "Prompts per batch when sampling responses (raise on a GPU)."})
    label_temperature: float = field(default=1.0, metadata={
        "help": "The draft samples its token from softmax(logits/T): 1 = the paper; 0 = greedy labels."})
    mix_ratio: float = field(default=0.15, metadata={"help": "Token mixing: share of positions that hold the target's token."})
    hidden: str = field(default="cache", metadata={
        "help": "cache: store the draft's hidden states (epochs nearly free); recompute: run the draft while training "
                "(less disk)."})
    head_input: str = field(default="consumed", metadata={
        "help": "consumed: the paper's input, the state at the draft token's position (read one step late); producing: "
                "the state that produced the token plus its log-probability, entropy and log(1 - probability) (no lag, "
                "no mixing); features: those three features alone (the shipped head)."})
    chat: str = field(default="auto", metadata={"help": "Chat template for chat-style prompts: auto, always, never."})
    seed: int = field(default=0, metadata={"help": "Seed for prompt choice, sampling, mixing and initialisation."})
    # Head and training
    num_blocks: int = field(default=3, metadata={"help": "Residual blocks of the head."})
    shared_blocks: bool = field(default=True, metadata={
        "help": "One set of block weights (official code) or one per block.", "flag": "--shared-blocks/--independent-blocks"})
    reject_weight: float = field(default=6.0, metadata={"help": "Loss weight of the reject class."})
    epochs: float = field(default=10.0, metadata={"help": "Training epochs (the checkpoint with the lowest dev loss is kept)."})
    batch_size: int = field(default=4, metadata={"help": "Sequences per device and step."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (cosine schedule, 3% warm-up)."})
    warmup: float = 0.03
    weight_decay: float = 0.0
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: use --epochs)."})
    # Runtime (not part of any fingerprint)
    dtype: str = field(default="bfloat16", metadata={"help": "bfloat16, float32 or float16 (the models; the head trains in fp32)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N (under accelerate launch: one GPU per process)."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace a finished head (cached data with the same settings is reused).", "flag": "--overwrite"})
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form fields added to the head's config

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = tuple(s.strip() for s in self.data.split(",") if s.strip())
        self.data = tuple(self.data)
        if not self.data:
            raise SpecAdaptError("no prompt sources given; pass --data with gsm8k, sharegpt, humaneval or a .jsonl file.")
        if not str(self.output).strip():
            raise SpecAdaptError("no output folder given; pass --out DIR.")
        _int_at_least("num_prompts", self.num_prompts, 2, "one train and one dev prompt at the least")
        if not (isinstance(self.dev_fraction, (int, float)) and 0.0 < self.dev_fraction <= 0.5):
            raise SpecAdaptError(f"dev_fraction must be in (0, 0.5], got {self.dev_fraction!r}; 0.1 is a good choice.")
        _choice("responses", self.responses, RESPONSE_MODES)
        _choice("hidden", self.hidden, HIDDEN_MODES)
        _choice("chat", self.chat, CHAT_MODES)
        _choice("head_input", self.head_input, HEAD_INPUTS)
        if self.head_input != "consumed" and self.hidden != "cache":
            raise SpecAdaptError(
                f"head_input={self.head_input!r} takes its inputs from the label stage's own draft pass, so it needs "
                "hidden='cache' (the default); drop --hidden recompute."
            )
        _int_at_least("max_prompt_tokens", self.max_prompt_tokens, 1)
        _int_at_least("max_response_tokens", self.max_response_tokens, 1)
        _int_at_least("gen_batch_size", self.gen_batch_size, 1)
        _int_at_least("num_blocks", self.num_blocks, 0)
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("grad_accum", self.grad_accum, 1)
        if not (isinstance(self.response_temperature, (int, float)) and self.response_temperature >= 0):
            raise SpecAdaptError(f"response_temperature must be >= 0 (0 = greedy), got {self.response_temperature!r}.")
        if not (isinstance(self.response_top_p, (int, float)) and 0 < self.response_top_p <= 1):
            raise SpecAdaptError(f"response_top_p must be in (0, 1], got {self.response_top_p!r}.")
        if not (isinstance(self.label_temperature, (int, float)) and self.label_temperature >= 0):
            raise SpecAdaptError(f"label_temperature must be >= 0 (1 = the paper's raw softmax, 0 = greedy), got {self.label_temperature!r}.")
        if not (isinstance(self.mix_ratio, (int, float)) and 0.0 <= self.mix_ratio < 1.0):
            raise SpecAdaptError(f"mix_ratio must be in [0, 1) (the share of target tokens; the paper uses 0.15), got {self.mix_ratio!r}.")
        if not (isinstance(self.reject_weight, (int, float)) and self.reject_weight > 0):
            raise SpecAdaptError(f"reject_weight must be > 0 (the paper uses 6), got {self.reject_weight!r}.")
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0 and math.isfinite(self.epochs)):
            raise SpecAdaptError(f"epochs must be > 0, got {self.epochs!r}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise SpecAdaptError(f"lr must be > 0, got {self.lr!r}.")
        if not (isinstance(self.warmup, (int, float)) and 0 <= self.warmup < 1):
            raise SpecAdaptError(f"warmup must be a fraction in [0, 1), got {self.warmup!r}.")
        if not isinstance(self.max_steps, int) or self.max_steps == 0 or self.max_steps < -1:
            raise SpecAdaptError(f"max_steps must be -1 (use epochs) or >= 1, got {self.max_steps!r}.")
        # Imported late: methods register on import, and a bad name should fail here, not after an hour.
        from ..methods import make_method

        if self.responses == "target":
            method = make_method(self.response_method)
            from ..sampling import SamplingParams

            if not method.describe(SamplingParams(self.response_temperature, 0, self.response_top_p))["lossless"]:
                raise SpecAdaptError(
                    f"response_method {self.response_method!r} is lossy: the responses must be the target's own samples. "
                    "Use a lossless method such as heuristic, fixed:4 or autoregressive."
                )

    def data_settings(self) -> dict[str, Any]:
        """The data fingerprint; paths are made absolute so that ./x and /abs/x count as the same source."""
        from ..sources import is_builtin

        d = asdict(self)
        d["data"] = [s if is_builtin(s) else str(Path(s).expanduser().resolve()) for s in self.data]
        d["target"], d["draft"] = model_ref(self.target), model_ref(self.draft)
        if d["head_input"] == "features":
            d["head_input"] = "producing"  # one data folder trains both kinds of no-lag head
        return {k: d[k] for k in DATA_KEYS}

    def train_settings(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in TRAIN_KEYS}


def model_ref(spec: str) -> str:
    """How a run records a model: built-in names and Hub ids as given, local paths made absolute."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _int_at_least(name: str, value: Any, low: int, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SpecAdaptError(f"{name} must be an integer >= {low}{f' ({why})' if why else ''}, got {value!r}.")


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise SpecAdaptError(f"{name} must be one of {', '.join(options)}, got {value!r}.")
