"""Metrics and plots for a trained head: ROC AUC, calibration by bucket, loss curves.

Labels are soft (y = min(1, p/q) is the probability that the target accepts the
token), so each position counts as an accepted example with weight y and a
rejected one with weight 1 - y. The AUC is then the probability that a random
accepted example scores higher than a random rejected one (ties count half),
which is the expected AUC over the accept/reject coin flips. Hard 0/1 labels
give the ordinary ROC AUC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Weighted ROC AUC by ranks (ties count half); None when all weight is on one class."""
    s = scores.double().flatten()
    pos = labels.double().flatten().clamp(0, 1)
    neg = 1.0 - pos
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    if s.numel() == 0 or total_pos <= 0 or total_neg <= 0:
        return None
    # Group equal scores; for each group: its positive weight x (negative weight strictly below + half its own).
    values, group = torch.unique(s, sorted=True, return_inverse=True)
    pos_g = torch.zeros(len(values), dtype=torch.float64).scatter_add_(0, group, pos)
    neg_g = torch.zeros(len(values), dtype=torch.float64).scatter_add_(0, group, neg)
    neg_below = torch.cumsum(neg_g, 0) - neg_g
    return float((pos_g * (neg_below + 0.5 * neg_g)).sum() / (total_pos * total_neg))


def calibration_table(pred: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> list[dict[str, Any]]:
    """Per bucket of predicted P(accept) (equal width): count, mean prediction, observed acceptance (mean y)."""
    pred, labels = pred.double().flatten(), labels.double().flatten()
    which = torch.clamp((pred * bins).long(), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        rows.append(
            {
                "bucket": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                "count": n,
                "mean_predicted": float(pred[sel].mean()) if n else None,
                "observed_acceptance": float(labels[sel].mean()) if n else None,
            }
        )
    return rows


def expected_calibration_error(table: Sequence[dict[str, Any]]) -> float | None:
    total = sum(r["count"] for r in table)
    if not total:
        return None
    return sum(r["count"] * abs(r["mean_predicted"] - r["observed_acceptance"]) for r in table if r["count"]) / total


def dev_metrics(pred: torch.Tensor, labels: torch.Tensor, draft_q: torch.Tensor, reject_weight: float) -> dict[str, Any]:
    from .trainer import weighted_soft_bce

    table = calibration_table(pred, labels)
    eps = 1e-7
    p = pred.double().clamp(eps, 1 - eps)
    logits = torch.stack([torch.log1p(-p), torch.log(p)], -1)  # log-probs are valid logits for the loss
    return {
        "tokens": int(pred.numel()),
        "mean_label": float(labels.double().mean()) if labels.numel() else None,
        "mean_predicted": float(pred.double().mean()) if pred.numel() else None,
        "loss": float(weighted_soft_bce(logits, labels, reject_weight)) if pred.numel() else None,
        "auc": roc_auc(pred, labels),
        # The draft's own confidence q(token) is the signal of the 'confidence' method: the head should beat it.
        "auc_draft_confidence": roc_auc(draft_q, labels),
        "ece": expected_calibration_error(table),
        "calibration": table,
    }


# ---------------------------------------------------------------- plots (matplotlib, no display needed)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def weighted_optimum_observed(pred: float, reject_weight: float) -> float:
    """The acceptance rate y at which the weighted loss is minimised by predicting ``pred``.

    The minimiser of the weighted soft BCE is s = y / (y + w (1 - y)), below y for w > 1: a head
    trained with w = 6 is deliberately pessimistic. Inverting: y = w s / (1 - s + w s)."""
    return reject_weight * pred / (1 - pred + reject_weight * pred)


def plot_calibration(table: Sequence[dict[str, Any]], path: Path, reject_weight: float = 6.0, title: str = "") -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    used = [r for r in table if r["count"]]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    grid = [i / 100 for i in range(101)]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="predicted = observed")
    ax.plot(grid, [weighted_optimum_observed(x, reject_weight) for x in grid], color="grey", linestyle=":",
            linewidth=1, label=f"optimum of the loss (reject weight {reject_weight:g})")
    ax.plot([r["mean_predicted"] for r in used], [r["observed_acceptance"] for r in used], marker="o", label="head")
    ax.set_ylabel("observed acceptance (mean label)")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or "calibration on the dev split")
    centers = [(i + 0.5) / len(table) for i in range(len(table))]
    hist.bar(centers, [r["count"] for r in table], width=1 / len(table), edgecolor="white")
    hist.set_xlabel("predicted P(accept)")
    hist.set_ylabel("tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def loss_curves(log_history: Sequence[dict[str, Any]]) -> dict[str, list[list[float]]]:
    train = [[e["step"], e["loss"]] for e in log_history if "loss" in e and "step" in e]
    dev = [[e["step"], e["eval_loss"]] for e in log_history if "eval_loss" in e and "step" in e]
    return {"train": train, "dev": dev}


def plot_losses(curves: dict[str, list[list[float]]], path: Path) -> bool:
    plt = _pyplot()
    if plt is None or not (curves["train"] or curves["dev"]):
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    if curves["train"]:
        ax.plot(*zip(*curves["train"]), label="train (logged steps)")
    if curves["dev"]:
        ax.plot(*zip(*curves["dev"]), marker="o", label="dev")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("weighted soft BCE")
    ax.legend()
    ax.set_title("head training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- report.md


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else str(x)
    return str(x)


def markdown_report(report: dict[str, Any]) -> str:
    dev = report["dev"]
    data = report["data"]
    lines = [
        "# SpecDec++ acceptance head: training report",
        "",
        f"- draft: `{report['draft']}`, target: `{report['target']}`",
        (
            f"- head: `{report['head']}` ({report['recipe']['num_blocks']} blocks, "
            f"{'shared' if report['recipe']['shared_blocks'] else 'independent'}, hidden {report['hidden_size']}, "
            f"input: {report['recipe'].get('head_input', 'consumed')})"
        ),
        (
            f"- data: {data['prompts']['train']} train / {data['prompts']['dev']} dev sequences from "
            f"{', '.join(f'{k} ({v})' for k, v in data['prompts']['by_source'].items())}; "
            f"responses: {report['recipe']['responses']}"
        ),
        f"- loss tokens: {data['train_tokens']} train, {data['dev_tokens']} dev; mean label (train) {_fmt(data['train_mean_label'])}",
        f"- training: {report['training']['steps']} steps, best checkpoint `{report['training']['best_checkpoint']}`",
        "",
        "## Dev split",
        "",
        "| metric | value |",
        "|---|---|",
        f"| weighted soft BCE | {_fmt(dev['loss'])} |",
        f"| ROC AUC (head) | {_fmt(dev['auc'])} |",
        f"| ROC AUC (draft confidence q(token), for comparison) | {_fmt(dev['auc_draft_confidence'])} |",
        f"| expected calibration error | {_fmt(dev['ece'])} |",
        f"| mean label / mean prediction | {_fmt(dev['mean_label'])} / {_fmt(dev['mean_predicted'])} |",
        "",
        "| predicted P(accept) | tokens | mean predicted | observed acceptance |",
        "|---|---|---|---|",
    ]
    for r in dev["calibration"]:
        lines.append(f"| {r['bucket']} | {r['count']} | {_fmt(r['mean_predicted'])} | {_fmt(r['observed_acceptance'])} |")
    lines += [""]
    weight = report["recipe"]["reject_weight"]
    lines += [
        (
            f"The loss weighs rejections {weight:g}x, so a well-trained head predicts "
            "y / (y + w (1 - y)) rather than the acceptance y itself: it is pessimistic on purpose (the dotted "
            "curve in the plot), and the stopping threshold absorbs this. Judge it by the AUC and by `tune-head`."
        ) if weight != 1 else (
            "The loss weighs both classes alike, so a well-trained head is calibrated: predicted P(accept) should "
            "match the observed acceptance in every bucket. Judge it by that, the AUC and `tune-head`."
        ),
        "",
    ]
    if report.get("plots", {}).get("calibration"):
        lines += ["![calibration](calibration.png)", ""]
    if report.get("plots", {}).get("loss"):
        lines += ["![loss](loss.png)", ""]
    if report.get("eval_note"):
        lines += [f"**Note:** {report['eval_note']}", ""]
    lines += [
        (
            "Next: pick the stopping threshold by measured speed with `specadapt tune-head "
            f"{report['head']}`, then decode with `--method specdecpp --head {report['head']}`."
        ),
        "",
    ]
    return "\n".join(lines)
