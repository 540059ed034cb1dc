"""Training the acceptance head with the Hugging Face ``Trainer`` (so ``accelerate launch`` gives multi-GPU).

Only the head trains. Two input modes:

- ``cache``: the draft's hidden states at the draft-token positions were stored by the
  label stage; a batch is those rows of a few sequences, flattened (no padding). Epochs
  cost only the head's own forward/backward.
- ``recompute``: a batch holds token sequences; the collator draws the token mixing afresh
  (target token with probability ``mix_ratio``) and the frozen draft computes the hidden
  states in the forward pass. The draft is not a registered submodule, so checkpoints and
  DDP see only the head.

Loss (SpecDec++): ``L = sum_t [w (1 - y_t) (-log(1 - s_t)) + y_t (-log s_t)] / sum_t [w (1 - y_t) + y_t]``
over the draft-token positions, with ``s_t`` the head's softmax probability of class 1
(accept) and ``w`` the weight of the reject class (6 in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import SpecAdaptError
from .format import AcceptanceHead
from .data import SequenceLabels


def weighted_soft_bce(logits: torch.Tensor, labels: torch.Tensor, reject_weight: float = 6.0) -> torch.Tensor:
    """The class-weighted soft binary cross-entropy above; ``logits`` [N, 2] (index 1 = accept), ``labels`` [N] in [0, 1]."""
    logp = torch.log_softmax(logits.float(), -1)  # log(1 - s), log s without overflow
    y = labels.float()
    num = (reject_weight * (1 - y) * -logp[..., 0] + y * -logp[..., 1]).sum()
    den = (reject_weight * (1 - y) + y).sum()
    if float(den) == 0.0:  # an empty batch: zero loss that still belongs to the graph
        return logits.sum() * 0.0
    return num / den


# ---------------------------------------------------------------- datasets and collators


class CachedHiddenDataset(Dataset):
    """One item per sequence: its cached head inputs (hidden states [n, d], and draft features [n, 3]
    for a "producing" or "features" head) and labels [n] at the loss positions."""

    def __init__(self, items: Sequence[SequenceLabels]) -> None:
        self.rows = []
        for it in items:
            if it.hidden is None or it.hidden.shape[0] == 0:
                continue
            hidden, features = it.head_inputs()
            row = {"hidden": hidden, "labels": it.labels[it.draft_mask].float()}
            if features is not None:
                row["features"] = features
            self.rows.append(row)
        if len(self.rows) != sum(1 for it in items if int(it.draft_mask.sum()) > 0):
            raise SpecAdaptError(
                "the cached label files hold no hidden states (they were made with hidden='recompute'); "
                "train with hidden='recompute' or rerun the label stage with hidden='cache'."
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def collate_cached(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([r[key] for r in rows]) for key in rows[0]}


class SequenceDataset(Dataset):
    """One item per sequence, as tokens: for ``recompute`` mode."""

    def __init__(self, items: Sequence[SequenceLabels]) -> None:
        self.rows = [
            {"input_ids": it.input_ids.long(), "prompt_len": it.prompt_len, "draft_tokens": it.draft_tokens.long(), "labels": it.labels.float()}
            for it in items
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class MixingCollator:
    """Builds the mixed training inputs for ``recompute`` mode and marks where the loss is taken.

    For each response position a fresh coin decides: the target's token (probability
    ``mix_ratio``) or the draft's sampled token. Output (right-padded): ``input_ids``,
    ``attention_mask``, ``loss_mask`` (True exactly at positions holding a draft token) and
    ``labels`` (y_t at the position of Y_t, the head-input position; 0 elsewhere).
    """

    def __init__(self, mix_ratio: float, generator: torch.Generator | None = None) -> None:
        self.mix_ratio = mix_ratio
        self.generator = generator

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        labels = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, r in enumerate(rows):
            P, seq = r["prompt_len"], r["input_ids"]
            R = len(seq) - P
            use_draft = torch.rand(R, generator=self.generator) >= self.mix_ratio
            ids[i, : len(seq)] = seq
            ids[i, P : P + R] = torch.where(use_draft, r["draft_tokens"], seq[P:])
            attention[i, : len(seq)] = 1
            loss_mask[i, P : P + R] = use_draft
            labels[i, P : P + R] = r["labels"]
        return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask, "labels": labels}


# ---------------------------------------------------------------- the module the Trainer optimises


class HeadTrainingModule(nn.Module):
    """The head plus the loss; with a ``draft`` (recompute mode) it also runs the frozen draft."""

    def __init__(self, head: AcceptanceHead, reject_weight: float = 6.0, draft: nn.Module | None = None) -> None:
        super().__init__()
        self.head = head
        self.reject_weight = reject_weight
        # Not a submodule: never trained, saved, or synchronised by DDP.
        object.__setattr__(self, "_draft", draft)
        if draft is not None:
            draft.requires_grad_(False).eval()

    def forward(
        self,
        labels: torch.Tensor,
        hidden: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if hidden is None:
            if self._draft is None or input_ids is None or loss_mask is None:
                raise ValueError("give either cached hidden states, or input_ids + loss_mask with a draft model")
            hidden, labels = self._draft_hidden(input_ids, attention_mask, loss_mask), labels[loss_mask]
        logits = self.head(hidden.float(), features)
        return {"loss": weighted_soft_bce(logits, labels, self.reject_weight), "logits": logits}

    @torch.no_grad()
    def _draft_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, loss_mask: torch.Tensor) -> torch.Tensor:
        draft = self._draft
        if draft.device != input_ids.device:
            draft.to(input_ids.device)
        out = draft(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1][loss_mask].float()


# ---------------------------------------------------------------- Trainer


def steps_per_epoch(n_sequences: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    per_step = batch_size * grad_accum * world
    return max(1, -(-n_sequences // per_step))


def build_trainer(
    module: HeadTrainingModule,
    train_set: Dataset,
    dev_set: Dataset,
    collator,
    output_dir: Path,
    config,
    use_cpu: bool,
    world: int = 1,
):
    """A ``Trainer`` that evaluates and checkpoints once per epoch and keeps the checkpoint with the lowest dev loss."""
    from transformers import Trainer, TrainingArguments

    epoch_steps = steps_per_epoch(len(train_set), config.batch_size, config.grad_accum, world)
    total = config.max_steps if config.max_steps > 0 else int(epoch_steps * config.epochs + 0.999)
    every = min(epoch_steps, total)  # "once per epoch", as a step count so max_steps runs also evaluate
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=float(config.epochs),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup,  # a float < 1 is a fraction of the total steps
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=max(1, total // 50),
        logging_first_step=True,
        report_to="none",
        seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=not use_cpu,
        use_cpu=use_cpu,
        disable_tqdm=not config.progress,
    )
    return Trainer(model=module, args=args, train_dataset=train_set, eval_dataset=dev_set, data_collator=collator)


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


# ---------------------------------------------------------------- dev predictions (for the report)


@torch.no_grad()
def predict(
    head: AcceptanceHead,
    items: Sequence[SequenceLabels],
    draft: nn.Module | None = None,
    mix_ratio: float = 0.15,
    seed: int = 0,
    batch_tokens: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's P(accept), the soft labels and the draft's own q(Y_t) at every loss position of ``items``.

    Cached hidden states are used where present; otherwise the draft recomputes them over a
    mixed sequence drawn with ``seed`` (fixed, so reports are comparable)."""
    head = head.eval()
    device = head.out.weight.device
    preds, labels, q = [], [], []
    generator = torch.Generator().manual_seed(seed)
    collator = MixingCollator(mix_ratio, generator)
    for it in items:
        features = None
        if it.hidden is not None:
            mask = it.draft_mask
            hidden, features = it.head_inputs()
            hidden = hidden.to(device)
            y = it.labels[mask]
            logq = it.logq[mask]
        else:
            if draft is None:
                raise ValueError("no cached hidden states and no draft to recompute them")
            batch = collator([SequenceDataset([it]).rows[0]])
            loss_mask = batch["loss_mask"]
            out = draft(input_ids=batch["input_ids"].to(draft.device), output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1][loss_mask.to(draft.device)].to(device)
            y = batch["labels"][loss_mask]
            logq = it.logq[loss_mask[0, it.prompt_len :]]
        for start in range(0, hidden.shape[0], batch_tokens):
            part = slice(start, start + batch_tokens)
            preds.append(head.accept_prob(hidden[part].float(), None if features is None else features[part].to(device)).cpu())
        labels.append(y.float())
        q.append(logq.float().exp())
    if not preds:
        empty = torch.zeros(0)
        return empty, empty, empty
    return torch.cat(preds), torch.cat(labels), torch.cat(q)
