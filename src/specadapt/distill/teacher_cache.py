"""Target distributions computed once per dataset and stored compactly.

The target's forward pass is the expensive part of distillation, and the
reference and draft runs of AdaSPEC (and any DistillSpec baseline on the same
data) need the same target distributions. So they are computed once and
stored per answer position as the target's top-k tokens (ids and fp16
log-probabilities) plus the log of the remaining mass
``r = 1 - sum_{x in S} p(x)``, in memory-mapped ``.npy`` files.

A cached position is a *coarse* distribution over k + 1 outcomes: the k tokens
of S and one bucket "any other token". The student's distribution is coarsened
the same way (its top-S probabilities and ``q_rest = 1 - sum_{x in S} q(x)``),
and every divergence is computed between the two coarse distributions.

The bound: coarse-graining never increases an f-divergence (data-processing
inequality), so for forward KL, reverse KL, JSD and TVD the cached value is a
lower bound of the exact one. For forward KL the gap is exactly

    KL(P||Q) - KL_c(P||Q) = r * KL(P~||Q~),  P~ = P|_{not S} / r,  Q~ = Q|_{not S} / q_rest,

so ``0 <= KL - KL_c <= r * log max_{x not in S} P~(x)/Q~(x)``, and since every
token outside the top-k has ``p(x) <= p_k`` (the k-th largest probability),
``KL - KL_c <= r * log(p_k * q_rest / (r * min_{x not in S} q(x)))``. The gap is
small when r is small (a peaked target: typical for instruction-tuned models)
and vanishes as the student's tail takes the target's shape. fp16 storage adds
a relative error of at most 2^-11 to each cached log-probability. Both are
tested on random logits (tests/test_distill.py).

Layout of a cache folder::

    meta.json        what it was built from (target fingerprint, data hash, k) and sizes
    offsets.npy      int64 [examples + 1]: example i owns positions offsets[i]:offsets[i+1]
    topk_ids.npy     uint16 (vocab <= 65536) or int32 [positions, k]
    topk_logp.npy    float16 [positions, k], descending
    rest_logp.npy    float32 [positions]: log r
    progress.json    batches written so far (building resumes from here)
    .complete        written last
    .specadapt-manifest.json  the files above: a rebuild deletes those and nothing else

Position j of example i is the target's distribution for answer token j, i.e.
the logits at sequence position ``prompt_len - 1 + j``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from transformers import PreTrainedModel

from ..errors import SpecAdaptError
from ..io import OutputFolder, write_json_atomic
from .data import TrainExample

CACHE_FORMAT = 1
# Log-probabilities below this are treated as this (exp(-80) ~ 2e-35: zero for every purpose here).
LOGP_FLOOR = -80.0
MARKER = ".complete"


# ---------------------------------------------------------------- coarse distributions


def topk_summary(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k ids [n, k] (descending), their log-probs [n, k] and log of the remaining mass [n], in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = logp.topk(min(k, logp.shape[-1]), dim=-1)
    # The rest mass in log space, exact even when it is tiny (1 - sum(top) would cancel).
    rest = logp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    return top.indices, top.values, rest.clamp_min(LOGP_FLOOR)


def coarse_teacher(topk_logp: torch.Tensor, rest_logp: torch.Tensor) -> torch.Tensor:
    """The cached target as log-probs over k + 1 outcomes [n, k + 1], renormalised (fp16 rounding)."""
    coarse = torch.cat([topk_logp.float(), rest_logp.float().unsqueeze(-1)], dim=-1)
    return torch.log_softmax(coarse.clamp_min(LOGP_FLOOR), dim=-1)


def coarse_student(student_logp: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """The student's full-vocabulary log-probs [n, V] coarsened onto the target's top-k set [n, k + 1]."""
    top = student_logp.gather(-1, topk_ids)
    rest = student_logp.scatter(-1, topk_ids, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([top, rest.clamp_min(LOGP_FLOOR)], dim=-1)


def fkl_gap_bound(teacher_logits: torch.Tensor, student_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Upper bound [n] on KL(P||Q) - KL_c(P||Q) for top-k coarsening: r * log max_{x not in S} P~(x)/Q~(x)."""
    lp = torch.log_softmax(teacher_logits.float(), -1)
    lq = torch.log_softmax(student_logits.float(), -1)
    ids, _, rest_p = topk_summary(teacher_logits, k)
    rest_q = lq.scatter(-1, ids, float("-inf")).logsumexp(-1)
    ratio = (lp - lq).scatter(-1, ids, float("-inf")).amax(-1)  # log max p(x)/q(x) over the tail
    return rest_p.exp() * (ratio - rest_p + rest_q).clamp_min(0.0)


# ---------------------------------------------------------------- identity


def model_fingerprint(model: PreTrainedModel) -> str:
    """A cheap hash of a model's shape and a sample of every weight tensor (not the whole model)."""
    h = hashlib.sha256()
    c = model.config
    h.update(json.dumps([c.model_type, c.vocab_size, getattr(c, "hidden_size", None), getattr(c, "num_hidden_layers", None)]).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().flatten()[:1024].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def cache_key(target: PreTrainedModel, data_hash: str, top_k: int) -> dict:
    return {
        "format": CACHE_FORMAT,
        "target": model_fingerprint(target),
        "target_dtype": str(next(target.parameters()).dtype).replace("torch.", ""),
        "data": data_hash,
        "top_k": int(top_k),
    }


# ---------------------------------------------------------------- the cache


class TeacherCache:
    """A finished cache folder, memory-mapped; ``rows(i)`` gives example i's cached positions as tensors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / MARKER).exists():
            raise SpecAdaptError(f"teacher cache {self.path} is incomplete; rerun specadapt distill to finish building it.")
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.offsets = np.load(self.path / "offsets.npy")
        self.ids = np.load(self.path / "topk_ids.npy", mmap_mode="r")
        self.logp = np.load(self.path / "topk_logp.npy", mmap_mode="r")
        self.rest = np.load(self.path / "rest_logp.npy", mmap_mode="r")

    @property
    def top_k(self) -> int:
        return int(self.meta["key"]["top_k"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return (
            torch.from_numpy(self.ids[a:b].astype(np.int64)),
            torch.from_numpy(self.logp[a:b].astype(np.float32)),
            torch.from_numpy(self.rest[a:b].astype(np.float32)),
        )

    @classmethod
    def open_if_valid(cls, path: str | Path, key: dict) -> TeacherCache | None:
        """The finished cache at ``path`` if it was built for ``key``; None if there is none; an error if it differs."""
        path = Path(path)
        if not (path / MARKER).exists():
            return None
        cache = cls(path)
        if cache.meta.get("key") != key:
            raise SpecAdaptError(
                f"the teacher cache in {path} was built for a different target, data or top-k "
                f"({_differences(cache.meta.get('key', {}), key)}); delete it, pass another --teacher-cache folder, "
                "or rerun with --overwrite."
            )
        return cache


# What a build writes: the only files it ever deletes (see specadapt.io.OutputFolder).
CACHE_FILES = ("meta.json", "offsets.npy", "topk_ids.npy", "topk_logp.npy", "rest_logp.npy", "progress.json", MARKER)


def cache_folder(path: str | Path) -> OutputFolder:
    """The cache's folder; a cache built before caches kept a manifest (nothing but cache files, and a
    progress.json or meta.json holding a cache key) gets one naming the cache files."""
    folder = OutputFolder(path, "distill (teacher cache)", option="--teacher-cache")
    if folder.path.is_dir() and not folder.manifest_path.exists():
        names = {p.name for p in folder.path.iterdir()}
        if names and names <= set(CACHE_FILES) and any(_holds_cache_key(folder.path / n) for n in ("progress.json", "meta.json")):
            folder.adopt(CACHE_FILES)
    return folder


def _holds_cache_key(path: Path) -> bool:
    try:
        key = json.loads(path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(key, dict) and key.get("format") == CACHE_FORMAT and "top_k" in key


def remove_cache(path: str | Path) -> None:
    """Delete a cache this module built (its files only); refuse a folder whose manifest does not prove it."""
    folder = cache_folder(path)
    folder.check(CACHE_FILES)  # refuses a folder (e.g. a cache built before caches kept a manifest) it cannot prove
    folder.remove(*CACHE_FILES)


def _differences(old: dict, new: dict) -> str:
    return ", ".join(f"{k}: {old.get(k)} vs {new.get(k)}" for k in new if old.get(k) != new.get(k)) or "unknown"


def _batches(examples: Sequence[TrainExample], batch_tokens: int) -> list[list[int]]:
    """Example indices grouped by similar length (little padding), at most ``batch_tokens`` padded tokens each."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    batches: list[list[int]] = []
    for i in order:
        width = len(examples[batches[-1][0]].input_ids) if batches else 0  # longest first: the first sets the width
        if batches and width * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def build_cache(
    path: str | Path,
    target: PreTrainedModel,
    examples: Sequence[TrainExample],
    key: dict,
    *,
    batch_tokens: int = 2048,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
) -> TeacherCache | None:
    """Compute and store the target's top-k distributions for every answer position; resumes an interrupted build.
    ``stop``: asked after each batch; when it holds, what is written is kept for a resume and None is returned."""
    path = Path(path)
    k = int(key["top_k"])
    vocab = int(target.get_output_embeddings().weight.shape[0])
    if not 1 <= k <= vocab:
        raise SpecAdaptError(f"--cache-top-k must be between 1 and the vocabulary size {vocab}, got {k}.")
    counts = np.array([0] + [e.num_answer_tokens for e in examples], dtype=np.int64)
    offsets = np.cumsum(counts)
    total = int(offsets[-1])
    batches = _batches(examples, batch_tokens)
    progress_file = path / "progress.json"
    folder = cache_folder(path)
    folder.check(CACHE_FILES)  # a folder this cache did not write is refused before anything changes
    done = 0
    if progress_file.exists():
        try:
            state = json.loads(progress_file.read_text())
            resumable = state.get("key") == key and state.get("batch_tokens") == batch_tokens
        except (OSError, ValueError, AttributeError):
            resumable = False  # a progress file cut short: build again
        if resumable:
            done = int(state["batches_done"])
        else:
            folder.remove(*CACHE_FILES, forget=False)  # another build's files; nothing else in the folder
    folder.claim(key=key, files=CACHE_FILES)
    mode = "r+" if done else "w+"
    id_dtype = np.uint16 if vocab <= 65536 else np.int32
    ids = open_memmap(path / "topk_ids.npy", mode=mode, dtype=id_dtype, shape=(total, k))
    logp = open_memmap(path / "topk_logp.npy", mode=mode, dtype=np.float16, shape=(total, k))
    rest = open_memmap(path / "rest_logp.npy", mode=mode, dtype=np.float32, shape=(total,))
    np.save(path / "offsets.npy", offsets)
    was_training = target.training
    target.eval()
    device = target.device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), initial=done, desc="target logits → cache", unit="batch")
    stopping = False
    for b in range(done, len(batches)):
        rows = [examples[i] for i in batches[b]]
        width = max(len(e.input_ids) for e in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, e in enumerate(rows):
            input_ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[r, : len(e.input_ids)] = 1
        # Only positions that predict answer tokens need the output head.
        keep = width - min(e.prompt_len for e in rows) + 1
        logits = target(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep, use_cache=False
        ).logits
        start = width - keep
        for r, (i, e) in enumerate(zip(batches[b], rows)):
            a = e.prompt_len - 1 - start
            top_ids, top_logp, rest_logp = topk_summary(logits[r, a : a + e.num_answer_tokens], k)
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            ids[lo:hi] = top_ids.cpu().numpy().astype(id_dtype)
            logp[lo:hi] = top_logp.cpu().numpy().astype(np.float16)
            rest[lo:hi] = rest_logp.cpu().numpy()
        del logits
        stopping = stop is not None and b + 1 < len(batches) and stop()
        if (b + 1) % 16 == 0 or b + 1 == len(batches) or stopping:
            for arr in (ids, logp, rest):
                arr.flush()
            write_json_atomic(progress_file, {"key": key, "batch_tokens": batch_tokens, "batches_done": b + 1}, indent=None)
        if bar is not None:
            bar.update(1)
        if stopping:
            break
    if bar is not None:
        bar.close()
    for arr in (ids, logp, rest):
        arr.flush()
    del ids, logp, rest
    target.train(was_training)
    if stopping:
        return None  # progress.json says how far it got
    nbytes = sum((path / f).stat().st_size for f in ("topk_ids.npy", "topk_logp.npy", "rest_logp.npy", "offsets.npy"))
    meta = {"key": key, "examples": len(examples), "positions": total, "bytes": nbytes}
    write_json_atomic(path / "meta.json", meta)
    (path / MARKER).write_text("")
    return TeacherCache(path)
