"""Which models to load and how: the options ``generate``, ``bench`` and ``serve`` share, each default and help
text written once (their settings dataclasses derive from :class:`ModelSettings`; the CLI reads the fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from . import zoo
from .draft_vocab import check_draft_vocab, draft_vocab_help
from .hardware import FLOAT32_COPIES_HELP
from .loading import parse_device, parse_dtype
from .quant import check_scheme, group_size_help, quant_help

if TYPE_CHECKING:
    from ..api import SpecDecoder


@dataclass
class ModelSettings:
    target: str = field(default=zoo.DEFAULT_TARGET, metadata={
        "help": "Target model: built-in name, folder, .gguf file or Hub id."})
    draft: str | None = field(default=zoo.DEFAULT_DRAFT, metadata={
        "help": "Draft model (same tokenizer as the target); unused by target-only methods."})
    dtype: str = field(default="bfloat16", metadata={"help": "bfloat16, float32 or float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N."})
    draft_quant: str = field(default=zoo.DEFAULT_DRAFT_QUANT, metadata={"help": quant_help("draft")})
    draft_group_size: int | None = field(default=None, metadata={"help": group_size_help("draft")})
    draft_vocab: int | str = field(default=zoo.DEFAULT_DRAFT_VOCAB, metadata={
        "help": draft_vocab_help(), "parse": check_draft_vocab})
    draft_vocab_ranking: str = field(default="frequency", metadata={
        "help": "Which ids --draft-vocab keeps: frequency (the ranking shipped for the tokenizer), lowest, or a "
                "ranking file."})
    # A quantized target is another model: results are lossless w.r.t. it, and reports say so.
    target_quant: str = field(default="none", metadata={"help": quant_help("target")})
    target_group_size: int | None = field(default=None, metadata={"help": group_size_help("target")})
    float32_copies: bool = field(default=True, metadata={
        "help": FLOAT32_COPIES_HELP, "flag": "--no-float32-copies", "negated": True})

    def __post_init__(self) -> None:
        """Refuse bad values before any model is loaded. The device is checked apart (:meth:`check_device`): a
        recorded run's settings may name a device of another machine, and still describe that run."""
        check_scheme(self.draft_quant, self.draft_group_size, "draft")
        check_scheme(self.target_quant, self.target_group_size, "target")
        self.draft_vocab = check_draft_vocab(self.draft_vocab)
        parse_dtype(self.dtype)

    def check_device(self) -> None:
        """Refuse a device this machine does not have, or that is not supported, before anything slow starts."""
        parse_device(self.device)

    def load(self, needs_draft: bool = True, copies: Literal["auto", True] = "auto") -> SpecDecoder:
        """The decoder these settings describe (the draft only if ``needs_draft``). ``copies``: what
        ``float32_copies`` on means, ``"auto"`` (for a pair on a CPU without native bf16, where memory allows) or
        ``True`` (for the target alone too: a server's batches are blocks of several rows as well)."""
        from ..api import SpecDecoder

        return SpecDecoder.from_pretrained(
            self.target, self.draft if needs_draft else None, dtype=self.dtype, device=self.device,
            draft_quant=self.draft_quant, draft_group_size=self.draft_group_size, draft_vocab=self.draft_vocab,
            draft_vocab_ranking=self.draft_vocab_ranking, target_quant=self.target_quant,
            target_group_size=self.target_group_size, float32_copies=copies if self.float32_copies else False)
