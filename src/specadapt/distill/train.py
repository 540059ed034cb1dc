"""Draft distillation for speculative decoding: DistillSpec and AdaSPEC.

Both train a draft to imitate the target token by token on answer tokens
(prompt tokens are context only), with divergences computed per token over the
whole vocabulary in fp32.

DistillSpec (arXiv 2310.08461) baseline
    Loss = mean over answer tokens of D(P_target || Q_draft), D one of
    ``fkl`` KL(P||Q), ``rkl`` KL(Q||P), ``jsd`` the generalised Jensen-Shannon
    divergence beta*KL(P||M) + (1-beta)*KL(Q||M), M = beta*P + (1-beta)*Q
    (beta = 0.5), ``tvd`` 1/2 sum |P - Q|. Data: the fixed answers, or
    on-policy: with probability ``on_policy`` a micro-batch's answers are
    replaced by samples from the current draft (temperature 1 by default),
    scored by the live target (DistillSpec's "student-generated" data; 1.0 =
    fully on-policy, in between = their mixture).

AdaSPEC (arXiv 2510.19779) selective distillation
    Stage 1 trains a reference model R from the draft's initial checkpoint with
    the DistillSpec recipe above. Stage 2 trains the draft Q from the same
    initial checkpoint; per micro-batch, every answer token t gets
    ``dL(t) = D(P_t||Q_t) - D(P_t||R_t)`` (D = forward KL by default; target and
    reference frozen) and only the ``ceil(k*n)`` tokens with the largest dL
    keep their loss (k = 0.4): tokens the same-capacity reference could learn
    but the draft has not yet. ``k*n`` is rounded to 9 decimals before the
    ceiling (so 0.7 of 10 tokens keeps 7), at least one token is kept, and ties
    go to the earlier token (row-major position within the micro-batch).
    Normalisation ``all`` (the official code): sum over kept tokens / number
    of all answer tokens; ``kept``: mean over kept tokens. With k = 1 both
    equal plain distillation.

Target distributions come from a cache built once per data set
(:mod:`specadapt.distill.teacher_cache`: top-k log-probs + remaining mass;
divergences between the coarsened distributions, a lower bound of the exact
ones), or ``teacher="exact"``: the live target, full vocabulary.

Training runs on the Hugging Face Trainer (accelerate underneath): multi-GPU
with ``torchrun``/``accelerate launch``, DeepSpeed ZeRO-1/2 with
``deepspeed=CONFIG``, bf16 mixed precision, gradient checkpointing,
checkpoints every ``save_steps`` and automatic resumption (a run resumed
mid-epoch ends with the weights of an uninterrupted one; tested). The frozen
target and reference are plain modules on each process (ZeRO-3 partitioning of
them and on-policy sampling under ZeRO-3 are not wired). On CPU, several
processes join one gloo group: ``accelerate launch --multi_gpu --num_processes 2``
(accelerate's ``--cpu`` launcher starts only one process without MPI); they
train what one process trains (tested).

LoRA (``lora_rank`` > 0, :mod:`specadapt.distill.lora`): only peft adapters
train, from an init fixed by ``seed``; each stage is saved merged (a plain
model folder) and as ``<stage>/adapter``, which loads onto the stock draft.

Equal-compute bookkeeping: every stage records in its metrics' ``compute`` the
sequences, non-padding tokens and answer tokens its draft trained on, the
tokens that kept their loss, the frozen target's and reference's forward
tokens, optimizer steps and wall-clock seconds (all sittings); distill.json's
``compute`` lists them per stage with their total. A DistillSpec run and an
AdaSPEC run with the same settings have equal draft-stage counts; AdaSPEC's
reference stage is listed on its own as the extra compute it is.

Output layout (``out/``)::

    distill.json       settings, data summary, the stages' metrics, "compute" (per stage and total)
    teacher_cache/     the cached target distributions (shareable: --teacher-cache)
    reference/         AdaSPEC stage 1 (= the DistillSpec forward-KL draft); HF folder
    draft/             the trained draft: save_pretrained folder + tokenizer, stage.json
    <stage>/adapter/   with --lora-rank: the stage's LoRA adapter (the folder above holds it merged)
    .specadapt-manifest.json  the entries above: --overwrite deletes only those, a folder without it is refused
    <stage>/checkpoints/  Trainer checkpoints while a stage runs (removed when it finishes)
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from ..errors import SpecAdaptError
from ..io import OutputFolder, write_json_atomic
from .data import TrainExample
from .lora import DEFAULT_TARGETS as DEFAULT_LORA_TARGETS
from .lora import ADAPTER_DIR, apply_lora, is_lora, save_lora_stage
from .teacher_cache import LOGP_FLOOR, TeacherCache, coarse_student, coarse_teacher

METHODS = ("adaspec", "distillspec")
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")
NORMALIZATIONS = ("all", "kept")
TEACHER_MODES = ("cached", "exact")
PRECISIONS = ("bf16", "fp32")
STAGE_FILE = "stage.json"


# ---------------------------------------------------------------- divergences


def token_divergence(kind: str, teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence [n] between two log-probability tensors [n, m] (computed in fp32)."""
    lp = teacher_logp.float().clamp_min(LOGP_FLOOR)
    lq = student_logp.float().clamp_min(LOGP_FLOOR)
    p, q = lp.exp(), lq.exp()
    if kind == "fkl":
        return (p * (lp - lq)).sum(-1)
    if kind == "rkl":
        return (q * (lq - lp)).sum(-1)
    if kind == "jsd":
        lm = torch.logsumexp(torch.stack([lp + math.log(beta), lq + math.log(1.0 - beta)]), dim=0)
        return beta * (p * (lp - lm)).sum(-1) + (1.0 - beta) * (q * (lq - lm)).sum(-1)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    raise SpecAdaptError(f"unknown divergence {kind!r}; use one of: {', '.join(DIVERGENCES)}.")


# ---------------------------------------------------------------- the selective mask


def num_kept(n: int, k: float) -> int:
    """ceil(k * n) with k * n rounded to 9 decimals first (float noise), at least 1 when n >= 1."""
    return min(n, max(1, math.ceil(round(k * n, 9)))) if n else 0


def selective_mask(delta: torch.Tensor, k: float) -> torch.Tensor:
    """True for the ``num_kept(n, k)`` entries of ``delta`` [n] with the largest values; ties: lower index wins."""
    check_fraction(k)
    n = delta.numel()
    order = torch.sort(delta.detach().flatten(), descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[: num_kept(n, k)]] = True
    return mask.view_as(delta)


def check_fraction(k: float) -> None:
    if not isinstance(k, (int, float)) or isinstance(k, bool) or not (0.0 < float(k) <= 1.0):
        raise SpecAdaptError(
            f"--k (the fraction of answer tokens AdaSPEC keeps) must be in (0, 1], got {k!r}; "
            "AdaSPEC uses 0.4, and 1 is plain distillation."
        )


@dataclass
class TeacherBatch:
    """The target's distributions at a micro-batch's answer positions: exact [n, V] or cached top-k."""

    logp: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logp: torch.Tensor | None = None
    rest_logp: torch.Tensor | None = None

    def pair(self, model_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher, model) log-probs over the same outcomes: the vocabulary, or the k + 1 cached buckets."""
        if self.logp is not None:
            return self.logp, model_logp
        return coarse_teacher(self.topk_logp, self.rest_logp), coarse_student(model_logp, self.topk_ids)

    def argmax(self) -> torch.Tensor:
        return self.logp.argmax(-1) if self.logp is not None else self.topk_ids[:, 0]


def distill_loss(
    student_logp: torch.Tensor,
    teacher: TeacherBatch,
    *,
    divergence: str = "fkl",
    beta: float = 0.5,
    reference_logp: torch.Tensor | None = None,
    k: float = 0.4,
    normalize: str = "all",
) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch from the draft's log-probs [n, V] at its n answer positions.

    Without ``reference_logp``: the mean divergence (DistillSpec). With it: AdaSPEC's selective loss."""
    t, s = teacher.pair(student_logp)
    per_token = token_divergence(divergence, t, s, beta)
    n = per_token.numel()
    stats = {"divergence": float(per_token.detach().mean()), "tokens": n}
    if reference_logp is None:
        return per_token.mean(), stats
    if normalize not in NORMALIZATIONS:
        raise SpecAdaptError(f"unknown normalisation {normalize!r}; use one of: {', '.join(NORMALIZATIONS)}.")
    with torch.no_grad():
        _, r = teacher.pair(reference_logp)
        delta = per_token.detach() - token_divergence(divergence, t, r, beta)
    mask = selective_mask(delta, k)
    kept = int(mask.sum())
    total = (per_token * mask).sum()
    loss = total / n if normalize == "all" else total / kept
    stats.update(kept_fraction=kept / n, delta_mean=float(delta.mean()), delta_kept_mean=float(delta[mask].mean()))
    return loss, stats


# ---------------------------------------------------------------- settings


@dataclass
class DistillSettings:
    """Everything a distillation run depends on; validated on construction (user mistakes → SpecAdaptError)."""

    method: str = field(default="adaspec", metadata={
        "help": "adaspec (reference, then selective draft) or distillspec."})
    divergence: str = field(default="fkl", metadata={"help": "fkl, rkl, jsd or tvd."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Mixture weight of the JSD."})
    k: float = field(default=0.4, metadata={
        "help": "AdaSPEC: fraction of answer tokens kept per micro-batch, in (0, 1]."})
    normalize: str = field(default="all", metadata={
        "help": "AdaSPEC loss: 'all' (sum over kept / all tokens, official) or 'kept' (mean over kept)."})
    on_policy: float = field(default=0.0, metadata={
        "help": "Fraction of micro-batches whose answers are sampled from the draft (DistillSpec on-policy)."})
    on_policy_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of on-policy answers."})
    on_policy_max_new_tokens: int = field(default=128, metadata={"help": "Length limit of on-policy answers."})
    teacher: str = field(default="cached", metadata={
        "help": "cached (top-k target distributions computed once) or exact (live target, full vocabulary)."})
    cache_top_k: int = field(default=64, metadata={"help": "Target tokens stored per position in the cache."})
    teacher_cache: str | None = field(default=None, metadata={
        "help": "Cache folder (default OUT/teacher_cache; share it between runs on the same data)."})
    cache_batch_tokens: int = field(default=2048, metadata={
        "help": "Padded tokens per target forward pass while building the cache."})
    reference: str | None = field(default=None, metadata={
        "help": "AdaSPEC: an existing reference model (e.g. a distillspec draft) instead of training one."})
    train_parts: str = field(default="all", metadata={
        "help": "What trains: all, layers, head, layers+head.", "flag": "--train"})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs per stage."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps per stage (overrides --epochs)."})
    batch_size: int = field(default=16, metadata={
        "help": "Sequences per optimizer step (all processes, accumulation included)."})
    micro_batch_size: int = field(default=4, metadata={"help": "Sequences per forward pass and process."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate.", "flag": "--lr"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    schedule: str = field(default="constant", metadata={
        "help": "Learning-rate schedule (a transformers scheduler name)."})
    warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps."})
    match_kept_tokens: bool = field(default=False, metadata={
        "help": "AdaSPEC draft: batch / k and epochs / k (as many loss tokens per step as the reference)."})
    max_examples: int | None = field(default=None, metadata={"help": "Use the first N examples of the data."})
    max_length: int = field(default=512, metadata={"help": "Truncate sequences to this many tokens."})
    precision: str = field(default="bf16", metadata={"help": "bf16 (mixed precision) or fp32."})
    target_dtype: str = field(default="bfloat16", metadata={"help": "dtype of the frozen target."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass: less memory, about a third more compute."})
    lora_rank: int = field(default=0, metadata={
        "help": "LoRA rank of the draft's adapters (peft); 0 = full fine-tuning (then --train picks the parts)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator: updates are (alpha / rank) * B @ A."})
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), metadata={
        "help": "Linear layers (by name) that get LoRA adapters."})
    group_by_length: bool = field(default=True, metadata={
        "help": "Random batches instead of length-grouped ones.", "flag": "--no-group-by-length", "negated": True})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    save_steps: int = field(default=100, metadata={
        "help": "Checkpoint every N steps (an interrupted stage resumes from the last)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep Trainer checkpoints after a stage finishes."})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed config JSON (ZeRO-1/2)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N."})
    progress: bool = field(default=True, metadata={
        "help": "No progress bars.", "flag": "--no-progress", "negated": True})
    time_limit: float | None = field(default=None, metadata={
        "help": "Minutes: stop after the first cache batch or optimizer step past this, with a checkpoint "
                "(rerun the same command to resume)."})


    def __post_init__(self) -> None:
        def one_of(name: str, value: str, options: Sequence[str]) -> None:
            if value not in options:
                raise SpecAdaptError(f"unknown {name} {value!r}; use one of: {', '.join(options)}.")

        one_of("--method", self.method, METHODS)
        one_of("--divergence", self.divergence, DIVERGENCES)
        one_of("--normalize", self.normalize, NORMALIZATIONS)
        one_of("--teacher", self.teacher, TEACHER_MODES)
        one_of("--precision", self.precision, PRECISIONS)
        from .shallow import TRAIN_PARTS

        one_of("--train", self.train_parts, TRAIN_PARTS)
        check_fraction(self.k)
        if not 0.0 < self.jsd_beta < 1.0:
            raise SpecAdaptError(f"--jsd-beta must be in (0, 1), got {self.jsd_beta}.")
        if not 0.0 <= self.on_policy <= 1.0:
            raise SpecAdaptError(f"--on-policy is a fraction of micro-batches in [0, 1], got {self.on_policy}.")
        if self.on_policy_temperature <= 0:
            raise SpecAdaptError(f"--on-policy-temperature must be > 0, got {self.on_policy_temperature}.")
        for name in ("batch_size", "micro_batch_size", "cache_top_k", "on_policy_max_new_tokens", "save_steps", "logging_steps", "cache_batch_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecAdaptError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}.")
        if self.batch_size % self.micro_batch_size:
            raise SpecAdaptError(
                f"--batch-size {self.batch_size} is not a multiple of --micro-batch-size {self.micro_batch_size}; "
                "the difference is made up by gradient accumulation, so pick a multiple."
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise SpecAdaptError(f"--max-steps must be >= 1 (or omitted to train --epochs), got {self.max_steps}.")
        if self.epochs <= 0:
            raise SpecAdaptError(f"--epochs must be > 0, got {self.epochs}.")
        if self.learning_rate <= 0:
            raise SpecAdaptError(f"--lr must be > 0, got {self.learning_rate}.")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise SpecAdaptError(f"--lora-rank must be an integer >= 0 (0 = full fine-tuning), got {self.lora_rank!r}.")
        if self.lora_rank:
            if self.train_parts != "all":
                raise SpecAdaptError(
                    f"--train {self.train_parts} is for full fine-tuning; with --lora-rank only the LoRA adapters train: "
                    "drop --train, or set --lora-rank 0."
                )
            if self.lora_alpha <= 0:
                raise SpecAdaptError(f"--lora-alpha must be > 0, got {self.lora_alpha}.")
            if not self.lora_targets:
                raise SpecAdaptError(f"--lora-targets is empty; name linear layers, e.g. {','.join(DEFAULT_LORA_TARGETS)}.")
        if self.time_limit is not None and self.time_limit <= 0:
            raise SpecAdaptError(f"--time-limit must be a positive number of minutes, got {self.time_limit}.")
        if self.method == "distillspec" and self.reference:
            raise SpecAdaptError("--reference is for --method adaspec (DistillSpec trains no reference); drop it.")

    def stage_fields(self, stage: str) -> dict:
        """The settings a stage's result depends on."""
        ignored = {"progress", "save_steps", "logging_steps", "keep_checkpoints", "device", "deepspeed", "cache_batch_tokens",
                   "teacher_cache", "time_limit"}
        if not stage.endswith("/selective"):  # settings only the selective stage reads
            ignored |= {"k", "normalize", "match_kept_tokens", "reference", "method"}
        if not self.lora_rank:  # unused without LoRA (and absent from runs made before LoRA existed)
            ignored |= {"lora_rank", "lora_alpha", "lora_targets"}
        return {k: v for k, v in asdict(self).items() if k not in ignored}

    def stage_key(self, stage: str) -> str:
        """A hash of what a stage's result depends on: a checkpoint is resumed only under the same key."""
        return hashlib.sha256(json.dumps([stage, self.stage_fields(stage)], sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- data


class DistillDataset(Dataset):
    """Training examples with, when a cache is given, the cached target rows of their answer positions."""

    def __init__(self, examples: Sequence[TrainExample], cache: TeacherCache | None = None) -> None:
        if cache is not None and len(cache) != len(examples):
            raise SpecAdaptError("the teacher cache does not match the training examples; rebuild it with --overwrite.")
        self.examples, self.cache = list(examples), cache

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        item = {"input_ids": torch.tensor(e.input_ids, dtype=torch.long), "prompt_len": e.prompt_len}
        if self.cache is not None:
            item["teacher_ids"], item["teacher_logp"], item["teacher_rest"] = self.cache.rows(i)
        return item


@dataclass
class DistillCollator:
    """Right-pads a micro-batch; cached target rows are concatenated in row-major answer-position order."""

    pad_id: int = 0

    def __call__(self, items: list[dict]) -> dict:
        rows = [it["input_ids"] for it in items]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            attention_mask[i, : len(r)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_len": torch.tensor([it["prompt_len"] for it in items], dtype=torch.long),
            "lengths": torch.tensor([len(r) for r in rows], dtype=torch.long),
        }
        if "teacher_ids" in items[0]:
            for key in ("teacher_ids", "teacher_logp", "teacher_rest"):
                batch[key] = torch.cat([it[key] for it in items])
        return batch


def answer_mask(prompt_len: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] True at the positions whose next token is an answer token (prompt_len - 1 .. length - 2)."""
    pos = torch.arange(width, device=prompt_len.device)[None]
    return (pos >= prompt_len[:, None] - 1) & (pos < lengths[:, None] - 1)


def answer_logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fp32 logits [n, V] at the masked positions; the output head runs only from the first answer position on."""
    width = input_ids.shape[1]
    first = int(mask.any(0).nonzero()[0])
    keep = width - first
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False).logits
    return logits[mask[:, first:]].float()


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Target and reference: eval mode (no dropout), no parameter ever asks for a gradient."""
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------- the trainer


class StopWhen(TrainerCallback):
    """Ends training after the optimizer step at which ``stop()`` first holds, with a checkpoint of that step
    (``--time-limit``: the stage resumes from it)."""

    def __init__(self, stop: Callable[[], bool]) -> None:
        self.stop, self.stopped = stop, False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            return control
        stop = torch.tensor([int(self.stop())], device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(stop, 0)  # process 0's clock decides, so every process stops at one step
        if stop.item():
            self.stopped = control.should_save = control.should_training_stop = True
        return control


class DistillTrainer(Trainer):
    """Trainer whose loss is distillation from a frozen target (cached or live), optionally selective (AdaSPEC)."""

    def __init__(
        self,
        *args,
        settings: DistillSettings,
        selective: bool = False,
        target: PreTrainedModel | None = None,
        reference: PreTrainedModel | None = None,
        eos_token_ids: Sequence[int] = (),
        pad_id: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Our loss is a per-micro-batch mean: let the Trainer divide it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self.settings = settings
        self.selective = selective
        if selective and reference is None:
            raise SpecAdaptError("AdaSPEC's selective stage needs a reference model.")
        if (settings.teacher == "exact" or settings.on_policy > 0) and target is None:
            raise SpecAdaptError("exact or on-policy distillation needs the live target model.")
        # Frozen helpers live outside self.model, so the optimizer and the wrappers never see them.
        self.target = freeze(target).to(self.args.device) if target is not None else None
        self.reference = freeze(reference).to(self.args.device) if reference is not None else None
        self.eos_token_ids = list(eos_token_ids)
        self.pad_id = pad_id
        self._policy_rng = random.Random(settings.seed)
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        # Equal-compute bookkeeping: this process's counts since the stage began (restored on resume, summed
        # over processes when read); wall-clock seconds of earlier sittings are added to this one's.
        self.counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
        self._seconds_before = 0.0
        self._started = time.perf_counter()

    def train(self, *args, **kwargs):
        self._started = time.perf_counter()
        return super().train(*args, **kwargs)

    def compute_totals(self) -> dict:
        """The stage's counts over all processes so far, with its optimizer steps and wall-clock seconds."""
        values = torch.tensor([self.counts[k] for k in COUNTS], dtype=torch.float64, device=self.args.device)
        if self.args.world_size > 1:
            values = self.accelerator.reduce(values, "sum")
        totals = {k: int(v) for k, v in zip(COUNTS, values.tolist())}
        seconds = self._seconds_before + time.perf_counter() - self._started
        return {**totals, "optimizer_steps": self.state.global_step, "wall_seconds": round(seconds, 3)}

    def restore_counts(self, checkpoint: str | Path) -> None:
        """Counts and the on-policy coin's state at ``checkpoint``; they are totals, so only process 0 holds them."""
        path = Path(checkpoint) / COUNTS_FILE
        if not path.exists():  # a checkpoint written before the counts existed
            return
        saved = json.loads(path.read_text())
        self._seconds_before = float(saved.get("wall_seconds", 0.0))
        if saved.get("policy_rng") is not None:
            self._policy_rng.setstate(_as_rng_state(saved["policy_rng"]))
        if self.is_world_process_zero():
            self.counts.update({k: int(saved.get(k, 0)) for k in COUNTS})

    def _save_checkpoint(self, model, trial) -> None:
        # Counts first, into the folder the checkpoint is about to fill: a checkpoint never lacks them.
        totals = self.compute_totals()  # every process takes part in the reduction
        if self.is_world_process_zero():
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / COUNTS_FILE, {**totals, "policy_rng": self._policy_rng.getstate()}, indent=None)
        super()._save_checkpoint(model, trial)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.settings.group_by_length and isinstance(dataset, DistillDataset):
            # Lengths from the examples themselves (the default sampler would read every item, cache rows included).
            # Grouped by the global batch, so that N processes see the sequences one process would.
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size,
                lengths=dataset.lengths,
            )
        return super()._get_train_sampler(train_dataset)

    @torch.no_grad()
    def _frozen_logp(self, model: PreTrainedModel, inputs: dict, mask: torch.Tensor) -> torch.Tensor:
        if model.training:  # nothing may switch a frozen model back to training mode
            model.eval()
        return torch.log_softmax(answer_logits(model, inputs["input_ids"], inputs["attention_mask"], mask), -1)

    def _sample_on_policy(self, model: torch.nn.Module, inputs: dict) -> dict:
        """Replace the batch's answers by samples from the current draft (DistillSpec's on-policy data)."""
        draft = self.accelerator.unwrap_model(model)
        prompts = [inputs["input_ids"][i, : int(p)] for i, p in enumerate(inputs["prompt_len"])]
        width = max(len(p) for p in prompts)
        device = inputs["input_ids"].device
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding for generation
            ids[i, width - len(p) :] = p
            att[i, width - len(p) :] = 1
        was_training = draft.training
        draft.eval()
        with torch.no_grad():
            out = draft.generate(
                input_ids=ids,
                attention_mask=att,
                do_sample=True,
                temperature=self.settings.on_policy_temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=self.settings.on_policy_max_new_tokens,
                min_new_tokens=1,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_token_ids or None,
            )
        draft.train(was_training)
        rows = []
        for i, p in enumerate(prompts):
            new = out[i, width:].tolist()
            for t, tok in enumerate(new):
                if tok in self.eos_token_ids:
                    new = new[: t + 1]
                    break
            rows.append(torch.tensor(p.tolist() + new, dtype=torch.long))
        batch = DistillCollator(self.pad_id)([{"input_ids": r, "prompt_len": len(p)} for r, p in zip(rows, prompts)])
        return {key: value.to(device) for key, value in batch.items()}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        s = self.settings
        on_policy = s.on_policy > 0 and model.training and self._policy_rng.random() < s.on_policy
        if on_policy:
            inputs = self._sample_on_policy(model, inputs)
        mask = answer_mask(inputs["prompt_len"], inputs["lengths"], inputs["input_ids"].shape[1])
        if model.training:
            n_tokens, n_answer = int(inputs["attention_mask"].sum()), int(mask.sum())
            self.counts["sequences"] += int(inputs["input_ids"].shape[0])
            self.counts["tokens_seen"] += n_tokens
            self.counts["answer_tokens"] += n_answer
            live_target = on_policy or s.teacher == "exact" or "teacher_ids" not in inputs
            self.counts["target_forward_tokens"] += n_tokens if live_target else 0
            self.counts["reference_forward_tokens"] += n_tokens if self.selective else 0
        student_logp = torch.log_softmax(answer_logits(model, inputs["input_ids"], inputs["attention_mask"], mask), -1)
        if on_policy or s.teacher == "exact" or "teacher_ids" not in inputs:
            teacher = TeacherBatch(logp=self._frozen_logp(self.target, inputs, mask))
        else:
            teacher = TeacherBatch(None, inputs["teacher_ids"], inputs["teacher_logp"], inputs["teacher_rest"])
        reference_logp = self._frozen_logp(self.reference, inputs, mask) if self.selective else None
        loss, stats = distill_loss(
            student_logp,
            teacher,
            divergence=s.divergence,
            beta=s.jsd_beta,
            reference_logp=reference_logp,
            k=s.k,
            normalize=s.normalize,
        )
        with torch.no_grad():
            stats["agree"] = float((student_logp.argmax(-1) == teacher.argmax()).float().mean())
        stats["on_policy"] = float(on_policy)
        if model.training:
            self.counts["loss_tokens"] += round(stats.get("kept_fraction", 1.0) * stats["tokens"])
        for key, value in stats.items():
            self._sums[key] += value
        self._count += 1
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._count and "loss" in logs:
            for key, value in self._sums.items():
                logs[key if key != "tokens" else "answer_tokens"] = value if key == "tokens" else value / self._count
            self._sums.clear()
            self._count = 0
        super().log(logs, start_time)


# What DistillTrainer counts per stage (distill.json "compute"): sequences and non-padding tokens through the
# draft's training forward passes, answer tokens (loss positions), tokens that kept their loss (AdaSPEC: the
# selected ones), and tokens the frozen target (live teacher) and reference ran forward on.
COUNTS = ("sequences", "tokens_seen", "answer_tokens", "loss_tokens", "target_forward_tokens", "reference_forward_tokens")
COUNTS_FILE = "distill_counts.json"


def _as_rng_state(state: list) -> tuple:
    """random.Random state from JSON (lists back to the tuples setstate wants)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


# ---------------------------------------------------------------- stages


def stage_finished(path: str | Path) -> bool:
    path = Path(path)
    if not (path / STAGE_FILE).exists():
        return False
    try:
        return bool(json.loads((path / STAGE_FILE).read_text()).get("finished"))
    except (OSError, json.JSONDecodeError):
        return False


def _process_state(settings: DistillSettings):
    """accelerate's process state. On a CPU-only run it must be created with cpu=True, or processes started by
    ``accelerate launch``/``torchrun`` would each train alone instead of as one gloo group."""
    from accelerate import PartialState

    on_cpu = settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available())
    return PartialState(cpu=on_cpu)


def _world_size(settings: DistillSettings) -> int:
    return _process_state(settings).num_processes


def stage_schedule(settings: DistillSettings, selective: bool) -> tuple[int, float, int | None]:
    """(batch size, epochs, max steps) of a stage; AdaSPEC's draft stage can be matched in kept tokens."""
    batch, epochs, steps = settings.batch_size, settings.epochs, settings.max_steps
    if selective and settings.match_kept_tokens:
        # Batch / k and epochs / k: the same optimizer steps as the reference, each with as many loss-bearing tokens.
        unit = settings.micro_batch_size * _world_size(settings)
        batch = max(unit, math.ceil(batch / settings.k / unit) * unit)
        epochs = epochs / settings.k
    return batch, epochs, steps


def training_arguments(stage_dir: Path, settings: DistillSettings, selective: bool) -> TrainingArguments:
    batch, epochs, max_steps = stage_schedule(settings, selective)
    world = _world_size(settings)
    per_step = settings.micro_batch_size * world
    if batch % per_step:
        raise SpecAdaptError(
            f"batch size {batch} is not a multiple of micro-batch size x processes ({settings.micro_batch_size} x {world}); "
            "change --batch-size or --micro-batch-size."
        )
    cuda = torch.cuda.is_available() and settings.device != "cpu"
    try:
        return _arguments(stage_dir, settings, batch // per_step, epochs, max_steps, cuda)
    except ValueError as exc:  # e.g. an unknown scheduler name
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecAdaptError(f"invalid training setting: {first}") from None


def _arguments(stage_dir: Path, settings: DistillSettings, accumulation: int, epochs: float, max_steps: int | None, cuda: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(stage_dir / "checkpoints"),
        per_device_train_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps is not None else -1,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.schedule,
        warmup_steps=settings.warmup_steps,
        bf16=settings.precision == "bf16",
        use_cpu=not cuda,
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=not settings.progress,
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        seed=settings.seed,
        deepspeed=settings.deepspeed,
    )


def train_stage(
    stage_dir: str | Path,
    student: PreTrainedModel,
    examples: Sequence[TrainExample],
    settings: DistillSettings,
    *,
    selective: bool,
    tokenizer: PreTrainedTokenizerBase | None = None,
    cache: TeacherCache | None = None,
    target: PreTrainedModel | None = None,
    reference: PreTrainedModel | None = None,
    eos_token_ids: Sequence[int] = (),
    pad_id: int = 0,
    info: dict | None = None,
    log: Callable[[str], None] = print,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Train one stage into ``stage_dir`` (resuming its checkpoints), save it as a normal HF folder, return metrics.

    ``stop``: asked after each optimizer step; when it holds, the stage ends there with a checkpoint and the
    result is ``{"stopped": True, "steps": ..., "max_steps": ...}`` (nothing saved as finished)."""
    stage_dir = Path(stage_dir)
    stage = stage_dir.name + ("/selective" if selective else "")
    key = settings.stage_key(stage)
    run = {"target": (info or {}).get("target"), "draft init": (info or {}).get("draft_init"),
           "data": ((info or {}).get("data") or {}).get("hash")}
    key_file = stage_dir / "stage_key.json"
    last = None
    if (stage_dir / "checkpoints").is_dir():
        old = json.loads(key_file.read_text()) if key_file.exists() else {}
        _check_unfinished(stage_dir, old, key, run, settings.stage_fields(stage))
        last = get_last_checkpoint(str(stage_dir / "checkpoints"))
    stage_dir.mkdir(parents=True, exist_ok=True)
    if _process_state(settings).is_main_process:  # every process read it above; one writer, and never half a file
        write_json_atomic(key_file, {"key": key, "run": run, "settings": settings.stage_fields(stage)}, indent=None, default=str)
    if last:
        log(f"resuming {stage_dir.name} from {last}")
    args = training_arguments(stage_dir, settings, selective)
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=DistillDataset(examples, cache if settings.teacher == "cached" else None),
        data_collator=DistillCollator(pad_id),
        processing_class=tokenizer,
        settings=settings,
        selective=selective,
        target=target if (settings.teacher == "exact" or settings.on_policy > 0) else None,
        reference=reference,
        eos_token_ids=eos_token_ids,
        pad_id=pad_id,
    )
    if last:
        trainer.restore_counts(last)
    stopper = StopWhen(stop) if stop is not None else None
    if stopper is not None:
        trainer.add_callback(stopper)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    elapsed = time.perf_counter() - started
    if stopper is not None and stopper.stopped:
        steps = {"stopped": True, "steps": trainer.state.global_step, "max_steps": trainer.state.max_steps}
        trainer.accelerator.wait_for_everyone()
        del trainer
        gc.collect()
        return steps
    compute = trainer.compute_totals()
    lora = is_lora(trainer.model)
    if lora:  # the adapter and the merged draft; the Trainer alone would save only the adapter
        if trainer.is_world_process_zero():
            save_lora_stage(trainer.model, stage_dir, tokenizer)
    else:
        trainer.save_model(str(stage_dir))
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "seconds": elapsed,
        "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "processes": args.world_size,
        "compute": compute,
        "adapter": str(stage_dir / ADAPTER_DIR) if lora else None,
        "last_log": history[-1] if history else None,
    }
    if trainer.is_world_process_zero():
        record = {"finished": True, "stage": stage_dir.name, "selective": selective, "metrics": metrics, **(info or {})}
        write_json_atomic(stage_dir / STAGE_FILE, record, default=str)
        write_json_atomic(stage_dir / "log_history.json", trainer.state.log_history, indent=1)
        if not settings.keep_checkpoints:
            shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # other processes load this stage's output next
    del trainer
    gc.collect()
    return metrics


def _check_unfinished(stage_dir: Path, old: dict, key: str, run: dict, fields: dict) -> None:
    """An unfinished stage is resumed only by the run that started it: same target, draft init, data, settings."""
    if old.get("key") == key and old.get("run", run) == run:
        return
    again = "rerun with the same command to resume it, or pass --overwrite to start again (or choose another --out)."
    was = old.get("run") or {}
    differ = [k for k in run if k in was and was[k] != run[k]]
    if differ:
        shown = "; ".join(f"{k}: {was[k]} → {run[k]}" for k in differ)
        raise SpecAdaptError(f"{stage_dir} holds an unfinished run of another {' and '.join(differ)} ({shown}); {again}")
    before = old.get("settings") or {}
    changed = [k for k in sorted(set(before) | set(fields)) if before.get(k) != fields.get(k)]
    shown = f" ({'; '.join(f'{k}: {before.get(k)} → {fields.get(k)}' for k in changed[:4])})" if before and changed else ""
    raise SpecAdaptError(f"{stage_dir} holds an unfinished run with different settings{shown}; {again}")


# ---------------------------------------------------------------- the whole run


def _check_reference(reference_dir: Path, target: str, draft_init: str, data_hash: str) -> dict:
    """A reference left by an earlier run is reused only if it matches this run's target, init and data; its
    stage record."""
    record = json.loads((reference_dir / STAGE_FILE).read_text())
    was = {"target": record.get("target"), "draft init": record.get("draft_init"), "data": (record.get("data") or {}).get("hash")}
    now = {"target": target, "draft init": draft_init, "data": data_hash}
    differ = [k for k in now if was[k] != now[k]]
    if differ:
        raise SpecAdaptError(
            f"{reference_dir} was trained with another {' and '.join(differ)}; AdaSPEC needs a reference from the same "
            "starting point and data: pass --overwrite to retrain it, or choose another --out."
        )
    return record


# What distill writes in --out (see specadapt.io.OutputFolder): the only entries it ever deletes.
OUTPUT_ENTRIES = ("teacher_cache", "reference", "draft", "distill.json")


def _is_legacy_output(out: Path, folder: OutputFolder) -> bool:
    """A distill output written before manifests: recognised by distill.json (with its "stages") or a stage
    folder's stage.json naming that stage. Only distill's entries are then claimed."""
    if folder.manifest_path.exists() or not out.is_dir():
        return False
    try:
        record = json.loads((out / "distill.json").read_text())
        if isinstance(record, dict) and isinstance(record.get("stages"), dict):
            return True
    except (OSError, ValueError):
        pass
    for stage in ("draft", "reference"):
        try:
            record = json.loads((out / stage / STAGE_FILE).read_text())
            if isinstance(record, dict) and record.get("stage") == stage:
                return True
        except (OSError, ValueError):
            continue
    return False


def compute_summary(stages: dict, adaspec: bool, external_reference: bool = False) -> dict:
    """distill.json's "compute": each stage's counts and their total, with what to compare.

    A DistillSpec run and an AdaSPEC run with the same settings have equal draft-stage counts (tokens seen,
    answer tokens, optimizer steps); AdaSPEC's reference stage comes on top and is listed on its own."""
    per_stage = {name: stage.get("compute") for name, stage in stages.items() if stage.get("compute")}
    keys = [k for k in (*COUNTS, "optimizer_steps", "wall_seconds") if all(k in c for c in per_stage.values())]
    total = {k: round(sum(c[k] for c in per_stage.values()), 3) for k in keys} if per_stage else {}
    if not adaspec:
        note = "DistillSpec: one stage (draft); compare its counts with an AdaSPEC run's draft stage."
    elif external_reference:
        note = ("AdaSPEC with --reference: the reference was trained elsewhere and its compute is not counted; "
                "the draft stage adds a frozen reference forward per micro-batch (reference_forward_tokens).")
    else:
        note = ("AdaSPEC: 'reference' (stage 1, the DistillSpec recipe) is extra compute a DistillSpec run does not "
                "spend; 'draft' (stage 2) matches a DistillSpec run's draft in tokens seen and optimizer steps and adds "
                "a frozen reference forward per micro-batch (reference_forward_tokens); 'total' is both stages.")
    return {"stages": per_stage, "total": total, "note": note}


def run_distill(
    target: str,
    draft_init: str,
    data: str,
    out: str | Path,
    settings: DistillSettings | None = None,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """``specadapt distill``: build (or reuse) the teacher cache, train the stage(s), write ``out/distill.json``.

    With ``settings.time_limit`` the run may end early, resumable: the summary then has ``"stopped"`` (what was
    under way, how far it got) and only the stages that finished."""
    from ..models import loading
    from .data import build_train_examples, examples_fingerprint
    from .shallow import parse_draft_init, set_trainable, shallow_copy
    from .teacher_cache import build_cache, cache_key, remove_cache

    settings = settings or DistillSettings()
    deadline = None if settings.time_limit is None else time.monotonic() + 60 * settings.time_limit
    stop = None if deadline is None else (lambda: time.monotonic() > deadline)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SpecAdaptError(f"--out {out} is a file; give a folder for the distillation outputs.")
    folder = OutputFolder(out, "distill")
    legacy = _is_legacy_output(out, folder)
    if not legacy:
        folder.check(OUTPUT_ENTRIES)  # a folder distill did not write is refused before anything else happens
    layers = parse_draft_init(draft_init)
    tokenizer = loading.load_tokenizer(target)
    if layers is None:
        loading.check_same_tokenizer(tokenizer, loading.load_tokenizer(draft_init), (target, draft_init))
    examples, data_info = build_train_examples(tokenizer, data, settings.max_examples, settings.max_length)
    adaspec = settings.method == "adaspec"
    draft_dir = out / "draft"
    reference_dir = Path(settings.reference).expanduser() if settings.reference else out / "reference"
    if settings.reference and not (reference_dir / "config.json").exists():
        raise SpecAdaptError(f"--reference {settings.reference} is not a model folder (no config.json); give a trained draft folder.")
    if stage_finished(draft_dir) and not overwrite:
        raise SpecAdaptError(f"{draft_dir} already holds a finished draft; pass --overwrite to retrain, or choose another --out.")
    state = _process_state(settings)
    device = state.device if settings.device == "auto" else loading.parse_device(settings.device)
    log(f"loading target {target}")
    target_model = freeze(loading.load_model(target, settings.target_dtype, device))
    # Everything checked and the target loaded: only now does the folder change, and only in entries it owns.
    if state.is_main_process:
        if legacy:
            folder.adopt(OUTPUT_ENTRIES)
        folder.claim(files=OUTPUT_ENTRIES)
        if overwrite:
            folder.remove("draft", *([] if settings.reference else ["reference"]), forget=False)
    state.wait_for_everyone()
    vocab = target_model.get_output_embeddings().weight.shape[0]
    eos_ids = loading.eos_token_ids(target_model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)

    def make_student() -> tuple[PreTrainedModel, dict]:
        if layers is not None:
            student = shallow_copy(target_model, layers, torch.float32)
        else:
            student = loading.load_model(draft_init, "float32", "cpu")
            width = student.get_output_embeddings().weight.shape[0]
            if width != vocab:
                raise SpecAdaptError(
                    f"draft init {draft_init!r} has {width} output logits but target {target!r} has {vocab}: "
                    "distillation compares distributions token by token, so pick a draft with the target's vocabulary."
                )
        counts = set_trainable(student, settings.train_parts)
        student.config.use_cache = True  # saved configs should decode with a KV cache
        if settings.lora_rank:
            student, counts = apply_lora(student, settings, base_name=draft_init)
        return student.train(), counts

    cache = None
    cache_info = None
    if settings.teacher == "cached":
        cache_dir = Path(settings.teacher_cache).expanduser() if settings.teacher_cache else out / "teacher_cache"
        key = cache_key(target_model, examples_fingerprint(examples), settings.cache_top_k)
        with state.main_process_first():
            try:
                cache = TeacherCache.open_if_valid(cache_dir, key)
            except SpecAdaptError:
                if not overwrite:
                    raise
                remove_cache(cache_dir)  # only a cache whose manifest proves it built it
            if cache is None and state.is_main_process:
                log(f"computing target distributions for {len(examples)} examples → {cache_dir}")
                cache = build_cache(cache_dir, target_model, examples, key, batch_tokens=settings.cache_batch_tokens,
                                    progress=settings.progress, stop=stop)
            elif cache is not None:
                log(f"reusing the teacher cache in {cache_dir}")
        if cache is None:  # stopped by the time limit (other processes: the main process stopped building it)
            return {"stopped": {"stage": "teacher cache", "path": str(cache_dir)}}
        cache_info = {"path": str(cache_dir), **{k: v for k, v in cache.meta.items() if k != "key"}}

    data_info = {**data_info, "hash": examples_fingerprint(examples)}
    info = {"target": target, "draft_init": draft_init, "data": data_info, "settings": asdict(settings)}
    stages: dict[str, dict] = {}

    def record() -> dict:
        """distill.json after each stage, so that a run stopped between stages has the record of what finished."""
        summary = {
            **info,
            "teacher_cache": cache_info,
            "reference": str(reference_dir) if adaspec else None,
            "draft": str(draft_dir),
            "stages": stages,
            "next": f"specadapt eval-draft --target {target} --draft {draft_dir} --data gsm8k --out {out / 'eval'}",
        }
        if state.is_main_process:
            previous = json.loads((out / "distill.json").read_text()) if (out / "distill.json").exists() else {}
            summary["stages"] = {**previous.get("stages", {}), **stages}
            summary["compute"] = compute_summary(summary["stages"], adaspec, external_reference=bool(settings.reference))
            write_json_atomic(out / "distill.json", summary, default=str)
        return summary

    reference = None
    if adaspec:
        if stage_finished(reference_dir) or settings.reference:
            if not settings.reference:
                stages["reference"] = _check_reference(reference_dir, target, draft_init, data_info["hash"])["metrics"]
            log(f"reusing the reference model in {reference_dir}")
        else:
            log("stage 1/2: reference model (forward-KL distillation on all answer tokens)")
            student, counts = make_student()
            metrics = train_stage(
                reference_dir, student, examples, settings, selective=False, tokenizer=tokenizer, cache=cache,
                target=target_model, eos_token_ids=eos_ids, pad_id=pad_id, info={**info, **counts}, log=log, stop=stop,
            )
            del student
            if metrics.get("stopped"):
                return {**record(), "stopped": {"stage": "reference", **metrics}}
            stages["reference"] = metrics
        record()
        ref_dtype = "bfloat16" if settings.precision == "bf16" else "float32"
        reference = freeze(loading.load_model(str(reference_dir), ref_dtype, device))
        if reference.get_output_embeddings().weight.shape[0] != vocab:
            raise SpecAdaptError(f"reference {reference_dir} has another vocabulary than the target; give a reference of the target's vocabulary.")
    log("stage 2/2: draft (selective AdaSPEC distillation)" if adaspec else "draft (DistillSpec distillation)")
    student, counts = make_student()
    metrics = train_stage(
        draft_dir, student, examples, settings, selective=adaspec, tokenizer=tokenizer, cache=cache,
        target=target_model, reference=reference, eos_token_ids=eos_ids, pad_id=pad_id, info={**info, **counts}, log=log,
        stop=stop,
    )
    if metrics.get("stopped"):
        return {**record(), "stopped": {"stage": "draft", **metrics}}
    stages["draft"] = metrics
    return record()


__all__ = [
    "DIVERGENCES",
    "METHODS",
    "DistillCollator",
    "DistillDataset",
    "DistillSettings",
    "DistillTrainer",
    "TeacherBatch",
    "answer_mask",
    "distill_loss",
    "num_kept",
    "run_distill",
    "selective_mask",
    "stage_finished",
    "token_divergence",
    "train_stage",
]
