"""What should a no-lag SpecDec++ head read? Dev ROC AUC of simple fits on a `train-head` data folder, and the
per-step cost of the features in the decoder.

    python benchmarks/head_inputs.py runs/qwen-head-features/data

The folder must hold labels made with ``--head-input producing`` or ``features`` (hidden states cached). Every fit
is a logistic regression by L-BFGS on standardised inputs with the head's weighted BCE (``--reject-weight``), except
the MLP (AdamW, dropout). Inputs: the draft's features (:data:`specadapt.heads.DRAFT_FEATURES`), the hidden state
that produced the token, and the sequence's acceptance history (the previous label, the mean of the last 8 / 32),
which a decoder knows from earlier rounds. Step cost: the fp32 softmax the engine takes per drafted token, the
features and the shipped head, on a vocabulary of ``--vocab``. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from specadapt.heads import DRAFT_FEATURES, distribution_features, load_head, resolve_head
from specadapt.heads.data import load_labels
from specadapt.heads.trainer import weighted_soft_bce
from specadapt.heads.report import roc_auc


def load_split(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    rows: dict[str, dict[str, list]] = {s: {"hidden": [], "features": [], "history": [], "labels": []} for s in ("train", "dev")}
    for path in sorted((folder / "labels").glob("*.safetensors")):
        item, meta = load_labels(path)
        hidden, features = item.head_inputs()
        if features is None or hidden is None:
            raise SystemExit(f"{path}: no cached no-lag inputs; make the data with --head-input producing or features.")
        y = item.labels[item.draft_mask].float()
        before = torch.cat([torch.zeros(1), y.cumsum(0)])
        i = torch.arange(len(y))

        def recent(k: int) -> torch.Tensor:  # mean label over the last k positions (the overall rate at the start)
            lo = (i - k).clamp_min(0)
            return torch.where(i > 0, (before[i] - before[lo]) / (i - lo).clamp_min(1), torch.full_like(y, 0.8))

        out = rows[meta["split"]]
        out["hidden"].append(hidden.float())
        out["features"].append(features)
        out["history"].append(torch.stack([torch.cat([torch.ones(1), y[:-1]]), recent(8), recent(32)], -1))
        out["labels"].append(y)
    return {s: {k: torch.cat(v) for k, v in d.items()} for s, d in rows.items()}


def weighted_bce(z: torch.Tensor, y: torch.Tensor, w: float) -> torch.Tensor:
    """The head's training loss on one logit per token (class 1 = accept)."""
    return weighted_soft_bce(torch.stack([torch.zeros_like(z), z], -1), y, w)


def logistic_auc(train: torch.Tensor, y: torch.Tensor, dev: torch.Tensor, y_dev: torch.Tensor, w: float, l2: float = 0.0) -> float:
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-3)
    x, x_dev = (train - mu) / sd, (dev - mu) / sd
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = weighted_bce(x @ weight + bias, y, w) + l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return roc_auc(x_dev @ weight + bias, y_dev)


def mlp_auc(train: torch.Tensor, y: torch.Tensor, dev: torch.Tensor, y_dev: torch.Tensor, w: float, epochs: int = 8) -> float:
    torch.manual_seed(0)
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-3)
    x, x_dev = (train - mu) / sd, (dev - mu) / sd
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(x.shape[1], 256), torch.nn.SiLU(),
                              torch.nn.Dropout(0.5), torch.nn.Linear(256, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(256):
            opt.zero_grad()
            weighted_bce(net(x[idx]).squeeze(-1), y[idx], w).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return roc_auc(net(x_dev).squeeze(-1), y_dev)


def step_cost_ms(vocab: int, repeats: int = 200) -> dict[str, float]:
    """Milliseconds per drafted token of the work the features head adds (batch 1, bf16 logits)."""
    logits = (torch.randn(1, vocab) * 3).to(torch.bfloat16)
    token = logits.argmax(-1)
    probs = logits.float().softmax(-1)
    features = distribution_features(probs, token)
    head = load_head(resolve_head(""))
    hidden = torch.zeros(1, head.hidden_size)
    work = {
        "fp32 softmax": lambda: logits.float().softmax(-1),
        "features": lambda: distribution_features(probs, token),
        "head": lambda: head.accept_prob(hidden, features),
    }
    timings = {}
    for name, fn in work.items():
        for _ in range(10):
            fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        timings[name] = (time.perf_counter() - t0) / repeats * 1e3
    return timings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="a train-head data folder (OUTPUT/data)")
    p.add_argument("--reject-weight", type=float, default=1.0)
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary size for the step cost (Qwen2.5: 151936)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "head_inputs.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_split(args.data)
    tr, dv, w = data["train"], data["dev"], args.reject_weight
    n_old = 2  # the features of format_version 2 heads: log q and the entropy

    def fit(inputs, l2=0.0):
        return logistic_auc(torch.cat([tr[k] for k in inputs], 1), tr["labels"],
                            torch.cat([dv[k] for k in inputs], 1), dv["labels"], w, l2)

    tr["old"], dv["old"] = tr["features"][:, :n_old], dv["features"][:, :n_old]
    rows = {
        f"features {', '.join(DRAFT_FEATURES[:n_old])}": fit(["old"]),
        f"features {', '.join(DRAFT_FEATURES)}": fit(["features"]),
        "features + history (previous label, last 8, last 32)": fit(["features", "history"]),
        **{f"hidden + features, L2 {l2:g}": fit(["hidden", "features"], l2) for l2 in (1e-1, 1e-2, 1e-3, 0.0)},
        "hidden + features, MLP 256, dropout 0.5": mlp_auc(torch.cat([tr["hidden"], tr["features"]], 1), tr["labels"],
                                                          torch.cat([dv["hidden"], dv["features"]], 1), dv["labels"], w),
        "draft confidence q(token) alone": roc_auc(dv["features"][:, 0], dv["labels"]),
    }
    cost = step_cost_ms(args.vocab)
    print(f"{len(tr['labels'])} train / {len(dv['labels'])} dev tokens, reject weight {w:g}\n")
    print("| inputs | dev ROC AUC |\n|---|---|")
    for name, auc in rows.items():
        print(f"| {name} | {auc:.3f} |")
    print(f"\nper drafted token (vocab {args.vocab}, {args.threads} threads): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in cost.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "train_tokens": len(tr["labels"]), "dev_tokens": len(dv["labels"]),
                                    "reject_weight": w, "dev_auc": rows, "step_cost_ms": cost}, indent=1) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
