"""``train_head``: the whole SpecDec++ head-training pipeline, each stage cached and resumable.

Output folder layout
--------------------
::

    OUTPUT/
      data/            the data stages (see specadapt.heads.data): settings.json,
                       prompts.jsonl, prompts_summary.json, responses/part-<rank>.jsonl,
                       labels/<index>.safetensors
      trainer/         Hugging Face Trainer checkpoints (checkpoint-<step>/), settings.json
      head/            the final head: config.json + head.safetensors (specadapt.heads format)
      report.json      settings, data summary, training, dev metrics (AUC, calibration)
      report.md        the same for people, with the plots
      calibration.png  predicted vs observed acceptance on the dev split, by bucket
      loss.png         training and dev loss

Rerunning the same command resumes: finished stages are skipped, an interrupted one
continues where it stopped, training continues from its last checkpoint. A finished
head is never replaced unless ``overwrite`` is set; then training starts over, and the
data stages are reused if their settings did not change (otherwise they start over too).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SpecAdaptError
from ..io import OutputFolder, read_json, write_json_atomic
from ..sources import HUMANEVAL_EVAL_NOTE, check_source
from .config import TrainHeadConfig, model_ref
from .data import (
    compute_labels,
    label_path,
    load_labels,
    read_prompts,
    read_responses,
    responses_for,
    sample_responses,
    select_prompts,
    write_prompts,
)
from .format import CONFIG_FILE, AcceptanceHead, save_head

REPORT_FILES = ("report.json", "report.md", "calibration.png", "loss.png")


@dataclass
class TrainHeadResult:
    output: Path
    head_dir: Path
    report: dict[str, Any]


def _differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:5]) + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else "")


_NEWER_DATA_DEFAULTS = {"head_input": "consumed"}


OUTPUT_ENTRIES = ("data", "trainer", "head", *REPORT_FILES)


def prepare_output(out: Path, config: TrainHeadConfig, apply: bool = True) -> None:
    """Check the output folder against this run's settings; with ``apply``, clear what ``overwrite``
    replaces and write the fingerprints (the checks alone run on every process of a launch, so all
    of them fail alike instead of some waiting forever for the others).

    Only a folder whose manifest says train-head wrote it is reused, and only the entries that manifest
    names are ever deleted (:class:`specadapt.io.OutputFolder`); call it with ``apply=False`` before
    anything else can fail, then with ``apply=True``."""
    folder = OutputFolder(out, "train-head")
    legacy = _is_legacy_output(folder)
    if not legacy:
        folder.check(OUTPUT_ENTRIES)
    data_dir, trainer_dir, head_dir = out / "data", out / "trainer", out / "head"
    if (head_dir / CONFIG_FILE).exists() and not config.overwrite:
        raise SpecAdaptError(
            f"{head_dir} already holds a finished head. Pass --overwrite to train it again (the cached data is "
            "reused when its settings match), or choose another --out."
        )
    data_settings, train_settings = config.data_settings(), config.train_settings()
    old_data = _read_settings(data_dir / "settings.json")
    if old_data is not None:
        old_data = {**_NEWER_DATA_DEFAULTS, **old_data}  # data made before a setting existed had its default
    if old_data is not None and old_data != data_settings and not config.overwrite:
        raise SpecAdaptError(
            f"{data_dir} was made with other data settings ({_differences(old_data, data_settings)}). "
            "Use another --out, or pass --overwrite to delete that data and start over."
        )
    old_train = _read_settings(trainer_dir / "settings.json")
    fresh = config.overwrite or old_data != data_settings
    if not fresh and old_train is not None and old_train != train_settings:
        raise SpecAdaptError(
            f"{trainer_dir} holds checkpoints of a run with other training settings "
            f"({_differences(old_train, train_settings)}). Use the same settings to resume, or pass --overwrite to retrain."
        )
    if not apply:
        return
    if legacy:
        folder.adopt(OUTPUT_ENTRIES)
    folder.claim(files=OUTPUT_ENTRIES)
    if old_data is not None and old_data != data_settings:
        folder.remove("data")
    if fresh:
        # New data or an explicit restart: old checkpoints, head and report do not belong to this run.
        folder.remove("trainer", "head", *REPORT_FILES)
        folder.record(*OUTPUT_ENTRIES)
    data_dir.mkdir(parents=True, exist_ok=True)
    trainer_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data_dir / "settings.json", data_settings)
    write_json_atomic(trainer_dir / "settings.json", train_settings)


def _is_legacy_output(folder: OutputFolder) -> bool:
    """A train-head output written before manifests: recognised by data/settings.json holding train-head's
    data fingerprint (its keys) next to trainer/settings.json. Only train-head's entries are then claimed."""
    from .config import DATA_KEYS

    if folder.manifest_path.exists() or not (folder.path / "trainer" / "settings.json").is_file():
        return False
    try:
        stored = read_json(folder.path / "data" / "settings.json")
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and set(DATA_KEYS) - set(_NEWER_DATA_DEFAULTS) <= set(stored) <= set(DATA_KEYS)


def _read_settings(path: Path) -> dict | None:
    """A stage's settings.json (None if absent); a clear error if it is unreadable."""
    if not path.exists():
        return None
    try:
        settings = read_json(path)
        if not isinstance(settings, dict):
            raise TypeError("not a JSON object")
        return settings
    except (OSError, ValueError, TypeError) as exc:
        raise SpecAdaptError(
            f"{path} is unreadable ({exc}); pass --overwrite to start this stage again, or choose another --out."
        ) from None


def _release() -> None:
    # Called after dropping the last reference to a model: give its memory back before training.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_head(config: TrainHeadConfig) -> TrainHeadResult:
    """Run (or resume) every stage and return where the head and the report are."""
    from accelerate import PartialState

    from ..models import loading

    out = Path(config.output).expanduser()
    data_dir, trainer_dir, head_dir = out / "data", out / "trainer", out / "head"
    labels_dir = data_dir / "labels"
    for name in config.data:
        check_source(name)
    state = PartialState()  # this process's share under accelerate launch / torchrun; rank 0 of 1 otherwise
    timings: dict[str, float] = {}
    prepare_output(out, config, apply=False)  # every check, nothing written yet

    # Tokenizers first: a mismatched pair is refused before anything heavy is loaded (or the folder changed).
    t0 = time.perf_counter()
    tokenizer = loading.load_tokenizer(config.target)
    loading.check_same_tokenizer(tokenizer, loading.load_tokenizer(config.draft), (config.target, config.draft))
    if state.is_main_process:
        prepare_output(out, config)
    state.wait_for_everyone()

    prompts_file = data_dir / "prompts.jsonl"
    if state.is_main_process and not prompts_file.exists():
        rows, summary = select_prompts(config, tokenizer)
        write_json_atomic(data_dir / "prompts_summary.json", summary)
        write_prompts(prompts_file, rows)
    state.wait_for_everyone()
    rows = read_prompts(prompts_file)
    summary = read_json(data_dir / "prompts_summary.json")
    timings["prompts_s"] = time.perf_counter() - t0

    # Models only if a data stage has work left (or the draft is needed to recompute hidden states).
    sampled = read_responses(data_dir / "responses") if config.responses == "target" else {}
    need_responses = config.responses == "target" and any(r["index"] not in sampled for r in rows)
    need_labels = need_responses or any(
        not label_path(labels_dir, row["index"]).exists() for row, _ in responses_for(rows, sampled)
    )
    target_model = draft_model = None
    if need_responses or need_labels or config.hidden == "recompute":
        # Under a multi-process launch each process takes its own GPU.
        device = state.device if state.num_processes > 1 and config.device == "auto" else config.device
        draft_model = loading.load_model(config.draft, config.dtype, device)
        if need_responses or need_labels:
            target_model = loading.load_model(config.target, config.dtype, draft_model.device)
    if need_responses:
        from ..engine import SpeculativeEngine

        t0 = time.perf_counter()
        engine = SpeculativeEngine(target_model, draft_model, tokenizer, loading.eos_token_ids(target_model, tokenizer))
        sample_responses(engine, rows, data_dir / "responses", config, state, config.progress)
        state.wait_for_everyone()
        sampled = read_responses(data_dir / "responses")
        timings["responses_s"] = time.perf_counter() - t0
    sequences = responses_for(rows, sampled)
    if need_labels:
        t0 = time.perf_counter()
        compute_labels(draft_model, target_model, sequences, labels_dir, config, state, config.progress)
        state.wait_for_everyone()
        timings["labels_s"] = time.perf_counter() - t0
    if target_model is not None:
        target_model = None
        _release()
    if config.hidden == "cache" and draft_model is not None:
        draft_model = None
        _release()

    # Training data.
    items = {"train": [], "dev": []}
    for row, _ in sequences:
        item, meta = load_labels(label_path(labels_dir, row["index"]))
        items[meta.get("split", row["split"])].append(item)
    if config.hidden == "cache":
        widths = {int(it.hidden.shape[-1]) for split in items.values() for it in split if it.hidden is not None}
        if len(widths) != 1:
            raise SpecAdaptError(
                f"the cached hidden states in {labels_dir} have sizes {sorted(widths) or 'none'}; "
                "they must all come from one draft. Rerun with --overwrite."
            )
        hidden_size = widths.pop()
    else:
        hidden_size = int(draft_model.config.get_text_config().hidden_size)
    if not any(int(it.draft_mask.sum()) for it in items["train"]):
        raise SpecAdaptError("no training positions: every response is empty or all-target after mixing; add prompts.")
    if not items["dev"]:
        raise SpecAdaptError("the dev split is empty; raise --dev-fraction or --num-prompts.")

    from .trainer import (
        CachedHiddenDataset,
        HeadTrainingModule,
        MixingCollator,
        SequenceDataset,
        build_trainer,
        collate_cached,
        last_checkpoint,
        predict,
    )

    torch.manual_seed(config.seed)  # head initialisation
    head = AcceptanceHead(hidden_size, config.num_blocks, config.shared_blocks, config.head_input)  # all DRAFT_FEATURES
    module = HeadTrainingModule(head, config.reject_weight, draft_model if config.hidden == "recompute" else None)
    if config.hidden == "cache":
        train_set, dev_set, collator = CachedHiddenDataset(items["train"]), CachedHiddenDataset(items["dev"]), collate_cached
    else:
        train_set, dev_set = SequenceDataset(items["train"]), SequenceDataset(items["dev"])
        collator = MixingCollator(config.mix_ratio)
    use_cpu = str(config.device) == "cpu" or not torch.cuda.is_available()
    trainer = build_trainer(module, train_set, dev_set, collator, trainer_dir, config, use_cpu, state.num_processes)
    t0 = time.perf_counter()
    resume = last_checkpoint(trainer_dir)
    trainer.train(resume_from_checkpoint=resume)
    timings["training_s"] = time.perf_counter() - t0
    state.wait_for_everyone()
    if not state.is_main_process:
        return TrainHeadResult(out, head_dir, {})

    # Dev metrics, plots, the head and the report (main process only).
    from .report import (
        dev_metrics,
        loss_curves,
        markdown_report,
        plot_calibration,
        plot_losses,
    )

    head = module.head.eval()
    pred, y, q = predict(head, items["dev"], draft_model, config.mix_ratio, config.seed)
    dev = dev_metrics(pred, y, q, config.reject_weight)
    curves = loss_curves(trainer.state.log_history)
    train_tokens = sum(int(it.draft_mask.sum()) for it in items["train"])
    train_label_sum = sum(float(it.labels[it.draft_mask].sum()) for it in items["train"])
    producing = config.head_input != "consumed"  # no lag: "producing" or "features"
    recipe = {
        "paper": "SpecDec++ (arXiv 2405.19715)" + (", with a no-lag head input (specadapt)" if producing else ""),
        "responses": config.responses,
        "response_sampling": (
            {"temperature": config.response_temperature, "top_p": config.response_top_p, "method": config.response_method}
            if config.responses == "target" else None
        ),
        "labels": "min(1, p/q) of a token the draft samples given the response prefix"
        if config.label_temperature > 0 else "1 if the target's argmax equals the draft's argmax token, else 0",
        "label_temperature": config.label_temperature,
        "head_input": config.head_input,
        "mix_ratio": None if producing else config.mix_ratio,
        "mixing": "none: the target's prefix, every response position labelled" if producing
        else "sampled once per sequence (cached hidden states)" if config.hidden == "cache" else "resampled every batch",
        "hidden": config.hidden,
        "loss": "weighted soft BCE" + ("" if producing else ", loss on draft-token positions only"),
        "reject_weight": config.reject_weight,
        "num_blocks": config.num_blocks,
        "shared_blocks": config.shared_blocks,
        "epochs": config.epochs,
        "max_steps": config.max_steps,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "lr": config.lr,
        "lr_schedule": "cosine",
        "warmup": config.warmup,
        "weight_decay": config.weight_decay,
        "dtype": config.dtype,
        "seed": config.seed,
        "max_prompt_tokens": config.max_prompt_tokens,
        "max_response_tokens": config.max_response_tokens,
    }
    data = {
        "sources": list(config.data),
        "prompts": summary,
        "train_sequences": len(items["train"]),
        "dev_sequences": len(items["dev"]),
        "train_tokens": train_tokens,
        "dev_tokens": dev["tokens"],
        "train_mean_label": train_label_sum / train_tokens if train_tokens else None,
    }
    eval_note = HUMANEVAL_EVAL_NOTE if "humaneval" in config.data else None
    extra = {
        "draft": model_ref(config.draft),
        "target": model_ref(config.target),
        "trained_with": "specadapt train-head",
        "recipe": recipe,
        "data": {k: v for k, v in data.items() if k != "prompts"} | {"by_source": summary["by_source"]},
        "dev_auc": dev["auc"],
        "dev_auc_draft_confidence": dev["auc_draft_confidence"],
        "dev_loss": dev["loss"],
        "dev_ece": dev["ece"],
        **({"eval_note": eval_note} if eval_note else {}),
        **config.extra,
    }
    save_head(head.to("cpu"), head_dir, extra=extra, overwrite=True)
    plots = {
        "calibration": plot_calibration(dev["calibration"], out / "calibration.png", config.reject_weight),
        "loss": plot_losses(curves, out / "loss.png"),
    }
    report = {
        "draft": config.draft,
        "target": config.target,
        "head": str(head_dir),
        "hidden_size": hidden_size,
        "recipe": recipe,
        "data": data,
        "training": {
            "steps": trainer.state.global_step,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_dev_loss": trainer.state.best_metric,
            "resumed_from": resume,
            "curves": curves,
        },
        "dev": dev,
        "timings": timings,
        "plots": plots,
        "eval_note": eval_note,
    }
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(markdown_report(report), encoding="utf-8")
    return TrainHeadResult(out, head_dir, report)
