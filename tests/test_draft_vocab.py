"""The frequency-ranked draft vocabulary (specadapt.models.draft_vocab): ranking, files, the subset head."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
import torch
from safetensors import safe_open

from specadapt.errors import SpecAdaptError
from specadapt.models.draft_vocab import (
    RANKING_FORMAT,
    SubsetHead,
    check_draft_vocab,
    default_corpus,
    head_ids,
    kept_ids,
    output_width,
    rank_tokens,
    read_ranking,
    restrict_vocabulary,
    write_ranking,
)


class WordTokenizer:
    """Word-level: word i of ``words`` is token i; 0 and 1 are special."""

    def __init__(self, words: list[str]) -> None:
        self.vocab = {w: i for i, w in enumerate(words)}
        self.all_special_ids = [0]
        self.added_tokens_decoder = {1: "<added>"}

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [[self.vocab[w] for w in t.split()] for t in texts]}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)


WORDS = ["<s>", "<added>", *[f"w{i}" for i in range(62)]]


def test_rank_tokens_orders_by_count_then_id():
    tok = WordTokenizer(WORDS)
    ranking = rank_tokens(tok, ["w5 w9 w5", "", "w9 w5 w3", "w7 w3"], batch=2)
    assert ranking.tolist() == [tok.vocab["w5"], tok.vocab["w3"], tok.vocab["w9"], tok.vocab["w7"]]  # 3, 2, 2, 1 times
    with pytest.raises(SpecAdaptError, match="no text to rank tokens on"):
        rank_tokens(tok, ["", ""])


def test_kept_ids_takes_the_ranking_head_plus_special_tokens():
    tok = WordTokenizer(WORDS)
    assert kept_ids(tok, 64, 3, [40, 7, 22, 9]).tolist() == [0, 1, 7, 22, 40]
    assert kept_ids(tok, 64, 5, [40, 7]).tolist() == [0, 1, 2, 7, 40]  # short ranking: the lowest other ids fill it to 5
    assert kept_ids(tok, 64, 4).tolist() == [0, 1, 2, 3]  # no ranking: the lowest ids
    with pytest.raises(SpecAdaptError, match=r"outside the model's vocabulary \[0, 64\).*rank_tokens"):
        kept_ids(tok, 64, 3, [70, 1])
    with pytest.raises(SpecAdaptError, match="must be >= 1"):
        kept_ids(tok, 64, 0)


def test_ranking_file_round_trip_and_mismatch(tmp_path):
    tok = WordTokenizer(WORDS)
    path = write_ranking(tmp_path / "r.safetensors", [9, 4, 33, 2], tok, "test", top=3)
    assert read_ranking(path, tok).tolist() == [9, 4, 33]
    with pytest.raises(SpecAdaptError, match="made for another tokenizer.*rank_tokens"):
        read_ranking(path, WordTokenizer(list(reversed(WORDS))))
    with pytest.raises(SpecAdaptError, match="does not exist"):
        read_ranking(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SpecAdaptError, match="could not read token ranking"):
        read_ranking(tmp_path / "junk.safetensors")


def test_ranked_subset_head_keeps_exact_logits_of_kept_ids(target):
    draft = copy.deepcopy(target)
    tok = WordTokenizer(WORDS)
    kept = restrict_vocabulary(draft, tok, 20, torch.arange(63, 10, -1))  # the 20 highest ids, not the lowest
    head = draft.get_output_embeddings()
    assert isinstance(head, SubsetHead) and kept == 22 and output_width(draft) == 64
    ids = torch.tensor([[3, 5, 8, 13]])
    with torch.no_grad():
        full, cut = target(ids).logits, draft(ids).logits
    assert head.ids.tolist() == [0, 1, *range(44, 64)]
    torch.testing.assert_close(cut[..., head.ids], full[..., head.ids])
    others = torch.ones(64, dtype=torch.bool)
    others[head.ids] = False
    assert bool(torch.isneginf(cut[..., others]).all())
    assert restrict_vocabulary(copy.deepcopy(target), tok, 64) == 64  # the whole vocabulary: unchanged


def test_shipped_ranking_file_is_a_ranking():
    resource = resources.files("specadapt").joinpath("data", "token_ranking", "qwen2.5.safetensors")
    with resources.as_file(resource) as path, safe_open(str(path), "pt") as f:
        meta, ids = f.metadata(), f.get_tensor("ids")
    assert meta["format"] == RANKING_FORMAT and int(meta["vocab"]) > 150000
    assert ids.dtype == torch.int32 and ids.numel() == 65536 and len(set(ids.tolist())) == 65536
    assert int(ids.min()) >= 0 and int(ids.max()) < int(meta["vocab"])


def test_default_corpus_reads_train_data_and_stdlib_source():
    texts = list(default_corpus(stdlib_bytes=1, sharegpt_records=2))
    assert texts[0].startswith("Natalia sold clips")  # GSM8K train, first question
    assert any("def " in t or "import " in t for t in texts[-1:])  # then Python source from the standard library


def test_draft_vocab_setting_is_full_or_a_count():
    assert [check_draft_vocab(v) for v in ("full", None, 500, "65536", " 12 ")] == ["full", "full", 500, 65536, 12]
    for bad in (0, -3, "0", "half", "auto", 1.5, True):
        with pytest.raises(SpecAdaptError, match=r"draft_vocab must be 'full' \(the whole vocabulary\) or a number of token ids >= 1"):
            check_draft_vocab(bad)


def test_head_ids_counts_a_subset_heads_kept_ids(target):
    draft = copy.deepcopy(target)
    assert head_ids(draft) == 64
    restrict_vocabulary(draft, WordTokenizer(WORDS), 20)
    assert head_ids(draft) == 20 and output_width(draft) == 64  # the 20 lowest ids, special ones among them; logits stay 64 wide
    restrict_vocabulary(draft := copy.deepcopy(target), WordTokenizer(WORDS), 20, torch.arange(63, 10, -1))
    assert head_ids(draft) == 22  # the 20 highest ids plus the two special ones
