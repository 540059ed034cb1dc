"""The SpecDec++ acceptance-prediction head, and its on-disk format.

Model
-----
:class:`AcceptanceHead` reads the draft's last hidden state (after the final
norm) of size ``d``, and applies ``num_blocks`` residual blocks
``x <- x + SiLU(Linear_w->w(x))`` followed by ``Linear_w->2``. Class 1 means
"the target accepts this draft token"; :meth:`AcceptanceHead.accept_prob` is the
softmax probability of class 1. With ``shared_blocks=True`` (the official
SpecDec++ code) the blocks are ONE linear layer applied ``num_blocks`` times;
otherwise each block has its own weights. Parameters are fp32 unless cast.

Which state it reads (``input``):

- ``"consumed"`` (the paper): the state at the draft token's own position, computed
  while the draft consumes it, so the decoder applies it one step late; ``w = d``.
- ``"producing"``: the state that produced the token, plus ``f`` features of the
  distribution it was drawn from (:data:`DRAFT_FEATURES`: the token's log-probability,
  the distribution's entropy and the log of the mass left to other tokens,
  :func:`distribution_features`); ``w = d + f``. It judges token k as soon as it is
  drafted, with the draft's own confidence in it.
- ``"features"``: those features alone, ``w = f`` (no hidden state). On the Qwen pair
  the hidden state added nothing the features do not carry (BENCHMARKS.md), and a
  head this small cannot overfit.

Format (a head is a folder)
---------------------------
``config.json``
    A JSON object with the required keys

    - ``format``: ``"specadapt-acceptance-head"``
    - ``format_version``: integer, currently ``1`` (a newer version is refused)
    - ``hidden_size``: integer ``d`` >= 1, the draft's hidden size
    - ``num_blocks``: integer >= 0, the number of residual blocks ``L``
    - ``shared_blocks``: boolean
    - ``input`` (optional, default ``"consumed"``): ``"consumed"``, ``"producing"`` or
      ``"features"``
    - ``features`` (heads that read features): the names of the features read, a prefix
      of :data:`DRAFT_FEATURES`; default the first two (heads of ``format_version`` 2).
      Such heads are written with ``format_version`` 3, so older versions of specadapt
      refuse them instead of misreading them

    plus any free-form fields passed as ``extra`` to :func:`save_head`, e.g.
    ``draft`` / ``target`` (the models it was trained for), ``threshold`` (a
    recommended stopping threshold), training settings.
``head.safetensors``
    The weights, by the module's ``state_dict`` names: ``blocks.{i}.weight``
    ``[w, w]`` and ``blocks.{i}.bias`` ``[w]`` for ``i`` in ``0 .. n-1``, where
    ``n = 1`` if the blocks are shared (and ``num_blocks >= 1``), ``n = num_blocks``
    otherwise, and ``n = 0`` when ``num_blocks == 0``; ``out.weight`` ``[2, w]``
    and ``out.bias`` ``[2]`` (row 1 = accept). Any float dtype; cast at load.

:func:`save_head` writes a folder (refusing to overwrite an existing head
unless ``overwrite=True``); :func:`load_head` reads one back, and
:func:`read_head_config` validates just the config (cheap, no weights).

Built-in heads
--------------
Heads trained for built-in pairs ship in ``specadapt/data/heads/<draft name>/``
(:func:`builtin_heads`); :func:`resolve_head` turns ``""`` into the default
draft's head and a built-in name into its folder, so ``--method specdecpp``
works without ``--head`` on the default pair.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SpecAdaptError
from ..io import write_json_atomic

BUILTIN_HEADS_DIR = Path(__file__).resolve().parent.parent / "data" / "heads"

FORMAT_NAME = "specadapt-acceptance-head"
FORMAT_VERSION = 3  # the newest this version reads; "consumed" heads are still written as 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "head.safetensors"
_REQUIRED = ("hidden_size", "num_blocks", "shared_blocks")
_RESERVED = ("format", "format_version", "input", "features", *_REQUIRED)
HEAD_INPUTS = ("consumed", "producing", "features")
# What a "producing" or "features" head reads of the distribution a token was drawn from. log(1 - q) resolves
# the confident end, where log q saturates at 0 and most of the draft's tokens lie.
DRAFT_FEATURES = ("draft_logprob", "draft_entropy", "draft_log_rest")
_V2_FEATURES = DRAFT_FEATURES[:2]  # format_version 2 heads read these
_MIN_LOGPROB = -30.0  # a token the draft gave (almost) no, or all, mass: keep the features finite


def _is_feature_prefix(names: tuple[str, ...]) -> bool:
    """A head reads the first n >= 1 of :data:`DRAFT_FEATURES`, in order (older heads read fewer)."""
    return 0 < len(names) <= len(DRAFT_FEATURES) and names == DRAFT_FEATURES[: len(names)]


def draft_features(token_logprob: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """[...] log-probability q of the drafted token and [...] entropy of its distribution -> :data:`DRAFT_FEATURES`
    [..., 3] (fp32): log q, the entropy, log(1 - q)."""
    logq = token_logprob.float()
    log_rest = torch.log(-torch.expm1(logq.clamp(max=0.0)))
    return torch.stack([logq.clamp(min=_MIN_LOGPROB), entropy.float(), log_rest.clamp(min=_MIN_LOGPROB)], -1)


def distribution_features(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """:func:`draft_features` of the distributions ``probs`` [..., V] the ``tokens`` [...] were drawn from."""
    p = probs.float()
    token_p = p.gather(-1, tokens.long()[..., None]).squeeze(-1)
    return draft_features(token_p.clamp_min(1e-38).log(), torch.special.entr(p).sum(-1))


class AcceptanceHead(nn.Module):
    """Predicts from the draft's hidden state and/or :data:`DRAFT_FEATURES` whether the target accepts a draft token."""

    def __init__(
        self,
        hidden_size: int,
        num_blocks: int = 3,
        shared_blocks: bool = True,
        input: str = "consumed",
        features: tuple[str, ...] = DRAFT_FEATURES,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be an integer >= 1, got {hidden_size!r}")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an integer >= 0, got {num_blocks!r}")
        if input not in HEAD_INPUTS:
            raise ValueError(f"input must be one of {', '.join(HEAD_INPUTS)}, got {input!r}")
        self.hidden_size = hidden_size
        self.num_blocks = num_blocks
        self.shared_blocks = bool(shared_blocks)
        self.input = input
        self.features = tuple(features) if self.reads_features else ()
        if self.reads_features and not _is_feature_prefix(self.features):
            raise ValueError(f"features must be a non-empty prefix of {DRAFT_FEATURES}, got {features!r}")
        width = (hidden_size if input != "features" else 0) + len(self.features)
        n_linear = 0 if num_blocks == 0 else (1 if self.shared_blocks else num_blocks)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(n_linear))
        self.out = nn.Linear(width, 2)
        self.act = nn.SiLU()

    @property
    def reads_features(self) -> bool:
        """True for the no-lag inputs: the head judges token k from what produced it (see the module docstring)."""
        return self.input != "consumed"

    def forward(self, hidden: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden`` [..., d] (and ``features`` [..., 3] of :func:`distribution_features` for a head that reads
        features; ``hidden`` is ignored by a "features" head) -> logits [..., 2] (index 1 = accept)."""
        dtype = self.out.weight.dtype
        x = hidden.to(dtype)
        if self.reads_features:
            if features is None:
                raise ValueError(f"a {self.input!r} head needs the draft features of each token (distribution_features)")
            f = features[..., : len(self.features)].to(dtype)
            x = f if self.input == "features" else torch.cat([x, f], -1)
        for i in range(self.num_blocks):
            block = self.blocks[0] if self.shared_blocks else self.blocks[i]
            x = x + self.act(block(x))
        return self.out(x)

    def accept_prob(self, hidden: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted probability of acceptance [...] (fp32); arguments as for :meth:`forward`."""
        return self(hidden, features).float().softmax(-1)[..., 1]

    def _format_version(self) -> int:
        # The oldest version that reads this head correctly, so older specadapt still loads what it can.
        if not self.reads_features:
            return 1
        return 2 if self.input == "producing" and self.features == _V2_FEATURES else 3

    def config(self) -> dict[str, Any]:
        config = {
            "format": FORMAT_NAME,
            "format_version": self._format_version(),
            "hidden_size": self.hidden_size,
            "num_blocks": self.num_blocks,
            "shared_blocks": self.shared_blocks,
            "input": self.input,
        }
        if self.reads_features:
            config["features"] = list(self.features)
        return config


def save_head(head: AcceptanceHead, directory: str | os.PathLike, extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``head`` to the folder ``directory`` (created if needed) and return its path.

    ``extra`` holds free-form, JSON-serialisable fields stored in ``config.json``
    (e.g. ``{"draft": ..., "target": ..., "threshold": 0.7}``). An existing
    non-empty folder is refused unless ``overwrite=True``.
    """
    from safetensors.torch import save_file

    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise SpecAdaptError(f"cannot save the acceptance head to {path}: it exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SpecAdaptError(
            f"cannot save the acceptance head to {path}: the folder already exists and is not empty. "
            "Choose a new folder, or pass overwrite=True to replace the head in it."
        )
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise SpecAdaptError(f"extra head fields {clash} clash with the format's own keys {list(_RESERVED)}.")
    config = {**head.config(), **extra}
    try:
        json.dumps(config)  # fail before anything is written
    except (TypeError, ValueError) as exc:
        raise SpecAdaptError(f"extra head fields must be JSON-serialisable: {exc}") from None
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in head.state_dict().items()}
    # Write to temporary names, then rename, config last: a crash never leaves a half-written head behind.
    tmp_weights = path / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
    os.replace(tmp_weights, path / WEIGHTS_FILE)
    write_json_atomic(path / CONFIG_FILE, config)
    return path


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise SpecAdaptError(
            f"acceptance head folder not found: {path}. Pass the folder written by the SpecDec++ head trainer "
            f"(it holds {CONFIG_FILE} and {WEIGHTS_FILE}), or train a head for your draft first."
        )
    if not path.is_dir():
        raise SpecAdaptError(f"acceptance head {path} is not a folder; pass the folder holding {CONFIG_FILE} and {WEIGHTS_FILE}.")


def read_head_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a head folder's ``config.json`` (weights are not read)."""
    path = Path(directory)
    _check_folder(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise SpecAdaptError(f"acceptance head {path} has no {CONFIG_FILE}; it is not a head folder (or was not fully written).")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecAdaptError(f"acceptance head config {config_path} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise SpecAdaptError(f"acceptance head config {config_path} must be a JSON object, got {type(config).__name__}.")
    fmt = config.get("format", FORMAT_NAME)
    if fmt != FORMAT_NAME:
        raise SpecAdaptError(f"{config_path} is not an acceptance head config (format {fmt!r}, expected {FORMAT_NAME!r}).")
    version = config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SpecAdaptError(f"acceptance head config {config_path}: format_version must be a positive integer, got {version!r}.")
    if version > FORMAT_VERSION:
        raise SpecAdaptError(
            f"acceptance head {path} uses format version {version}, newer than this specadapt supports "
            f"({FORMAT_VERSION}); upgrade specadapt."
        )
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise SpecAdaptError(f"acceptance head config {config_path} is missing {', '.join(missing)} (required: {', '.join(_REQUIRED)}).")
    hidden, blocks, shared = config["hidden_size"], config["num_blocks"], config["shared_blocks"]
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise SpecAdaptError(f"acceptance head config {config_path}: hidden_size must be an integer >= 1, got {hidden!r}.")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 0:
        raise SpecAdaptError(f"acceptance head config {config_path}: num_blocks must be an integer >= 0, got {blocks!r}.")
    if not isinstance(shared, bool):
        raise SpecAdaptError(f"acceptance head config {config_path}: shared_blocks must be true or false, got {shared!r}.")
    config.setdefault("input", "consumed")  # heads written before the field existed
    if config["input"] not in HEAD_INPUTS:
        raise SpecAdaptError(
            f"acceptance head config {config_path}: input must be one of {', '.join(HEAD_INPUTS)}, got {config['input']!r}."
        )
    if config["input"] != "consumed":
        features = config.setdefault("features", list(_V2_FEATURES))  # format_version 2 heads name none
        if not isinstance(features, list) or not _is_feature_prefix(tuple(features)):
            raise SpecAdaptError(
                f"acceptance head config {config_path}: features must be a non-empty prefix of {list(DRAFT_FEATURES)}, "
                f"got {features!r}."
            )
    return config


def load_head(
    directory: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> AcceptanceHead:
    """Load a head folder; parameters are cast to ``dtype`` (default fp32) on ``device`` (default CPU)."""
    from safetensors.torch import load_file

    path = Path(directory)
    config = read_head_config(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SpecAdaptError(f"acceptance head {path} has no {WEIGHTS_FILE} (the weights); it was not fully written.")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for truncated / garbled files
        raise SpecAdaptError(f"acceptance head weights {weights_path} are corrupt or unreadable ({exc}).") from None
    head = AcceptanceHead(
        config["hidden_size"], config["num_blocks"], config["shared_blocks"], config["input"], tuple(config.get("features", ()))
    )
    expected = {name: tuple(t.shape) for name, t in head.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    problems = [f"missing {n}" for n in expected if n not in got]
    problems += [f"unexpected {n}" for n in got if n not in expected]
    problems += [f"{n} has shape {list(got[n])}, expected {list(s)}" for n, s in expected.items() if n in got and got[n] != s]
    if problems:
        raise SpecAdaptError(
            f"acceptance head weights {weights_path} do not match its config (hidden_size={config['hidden_size']}, "
            f"num_blocks={config['num_blocks']}, shared_blocks={config['shared_blocks']}, input={config['input']}): "
            f"{'; '.join(problems[:6])}"
            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
            + "."
        )
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise SpecAdaptError(f"acceptance head weights {weights_path}: {name} is {t.dtype}, expected a float tensor.")
        if not bool(torch.isfinite(t).all()):
            raise SpecAdaptError(f"acceptance head weights {weights_path}: {name} holds NaN or infinite values (corrupt weights).")
    head.load_state_dict({n: t.float() for n, t in tensors.items()})
    head.to(device=device, dtype=dtype)
    return head.eval()


def builtin_heads() -> dict[str, Path]:
    """Shipped heads by name (the draft model each was trained for)."""
    if not BUILTIN_HEADS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUILTIN_HEADS_DIR.iterdir()) if (p / CONFIG_FILE).is_file()}


def resolve_head(head: str | os.PathLike) -> Path | None:
    """A head folder from a path or a built-in head name; ``""`` is the default draft's built-in head (None if absent).

    An existing path wins over a built-in name of the same spelling."""
    from ..models.zoo import DEFAULT_DRAFT

    shipped = builtin_heads()
    if not str(head):
        return shipped.get(DEFAULT_DRAFT)
    path = Path(head).expanduser()
    if not path.exists() and str(head) in shipped:
        return shipped[str(head)]
    return path


__all__ = [
    "AcceptanceHead",
    "BUILTIN_HEADS_DIR",
    "builtin_heads",
    "resolve_head",
    "CONFIG_FILE",
    "DRAFT_FEATURES",
    "HEAD_INPUTS",
    "distribution_features",
    "draft_features",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "load_head",
    "read_head_config",
    "save_head",
]
