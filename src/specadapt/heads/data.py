"""The data stages of head training: prompts -> responses -> teacher-forced labels, cached and resumable.

Layout under ``OUTPUT/data/``
------------------------------
``settings.json``
    The data-relevant settings (:data:`specadapt.heads.config.DATA_KEYS`). A rerun
    with other settings is refused (or, with ``overwrite``, starts over).
``prompts.jsonl``
    Stage 1, written at once: one object per sequence, ``index`` (0..n-1), ``id``,
    ``source``, ``split`` (``train``/``dev``), ``chat``, ``prompt`` (text),
    ``prompt_ids`` and, with ``responses="dataset"``, ``response_ids``.
``responses/part-<rank>.jsonl``
    Stage 2 (``responses="target"``): ``{"index", "response_ids", "finish_reason"}``
    appended as each response is sampled. Resuming skips the indices already
    there (a line cut off by a crash is dropped).
``labels/<index>.safetensors``
    Stage 3, one file per sequence, written atomically (a rerun skips existing
    files). For a sequence of ``P`` prompt and ``R`` response tokens:

    - ``input_ids`` int32 [P+R]: prompt + response (the target's tokens X_t);
    - ``draft_tokens`` int32 [R]: Y_t, sampled by the draft given X_<t;
    - ``logq`` / ``logp`` fp32 [R]: log q(Y_t) and log p(Y_t) after the same prefix;
    - ``labels`` fp32 [R]: y_t = min(1, p(Y_t) / q(Y_t)) (or 1[argmax p = Y_t] at label temperature 0);
    - ``draft_mask`` bool [R]: True where the training input holds Y_t, False where it holds X_t
      (probability ``mix_ratio``); the loss is taken on the True positions only;
    - ``hidden`` fp16/bf16 [n_true, d] (``hidden="cache"`` only): the draft's last hidden state at
      each True position, from one draft pass over the mixed sequence;
    - ``entropy`` fp32 [R] (``head_input="producing"`` only): the entropy of the distribution Y_t was
      drawn from.

    Metadata: ``prompt_len``, ``index``, ``split``.

Alignment (the one-step lag of :mod:`specadapt.policies.specdecpp`): at inference
the factor for draft token k is the head applied to the draft's hidden state at
the position where token k is the *input* (the state computed while consuming
it, which the engine hands to the policy one step later). So the head input for
the label y_t is the hidden state at the sequence position of Y_t in the mixed
sequence, i.e. ``hidden_states[-1][P + t - 1]`` for t = 1..R, never the state
that predicted Y_t.

With cached hidden states the token mixing is sampled once per sequence (seeded
by ``seed`` and the index), not afresh each epoch.

``head_input="producing"`` (no lag): the head input for y_t is the state that
produced Y_t, ``hidden_states[-1][P + t - 2]`` of the draft's pass over the
target's tokens (the pass that gave Y_t, so no second pass), plus log q(Y_t) and
the entropy. There is no mixing: every response position is a loss position
(``draft_mask`` all True), the input being the target's prefix X_<t, which is what
the draft has seen at step k once tokens 1..k-1 were accepted.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import SpecAdaptError
from ..io import read_jsonl_tolerant
from ..sources import PromptRecord, check_source, load_source
from ..text import encode_prompt, has_chat_template
from .config import TrainHeadConfig
from .format import draft_features

if TYPE_CHECKING:
    from accelerate import PartialState

LABEL_FORMAT_VERSION = 1


# ---------------------------------------------------------------- stage 1: prompts


def use_chat(record: PromptRecord, mode: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    has_template = has_chat_template(tokenizer)
    if mode == "never":
        return False
    if mode == "always":
        if not has_template:
            raise SpecAdaptError("chat='always' but the target's tokenizer has no chat template; use chat='auto' or 'never'.")
        return True
    return has_template if record.chat is None else (record.chat and has_template)


def select_prompts(config: TrainHeadConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[list[dict], dict]:
    """Choose ``num_prompts`` usable prompts round-robin over the sources, tokenise them, split train/dev."""
    for name in config.data:
        check_source(name)
    pools: list[list[PromptRecord]] = []
    for name in config.data:
        records = list(load_source(name, limit=config.num_prompts))
        random.Random(f"{config.seed}:{name}").shuffle(records)  # str seeds are stable across runs
        pools.append(records)
    need_response = config.responses == "dataset"
    if need_response and not any(r.response for pool in pools for r in pool):
        raise SpecAdaptError(
            f"responses='dataset' needs the data set's own responses, but {', '.join(config.data)} has none "
            "(add \"response\" fields to your JSONL, or use responses='target')."
        )
    eos = tokenizer.eos_token_id
    chosen: list[dict] = []
    skipped = {"too_long": 0, "no_response": 0}
    cursors = [0] * len(pools)
    while len(chosen) < config.num_prompts and any(c < len(p) for c, p in zip(cursors, pools)):
        for s, pool in enumerate(pools):
            if len(chosen) >= config.num_prompts:
                break
            while cursors[s] < len(pool):  # the next usable record of this source
                record = pool[cursors[s]]
                cursors[s] += 1
                if need_response and not (record.response and record.response.strip()):
                    skipped["no_response"] += 1
                    continue
                chat = use_chat(record, config.chat, tokenizer)
                prompt_ids = encode_prompt(tokenizer, record.prompt, chat)
                if not prompt_ids or len(prompt_ids) > config.max_prompt_tokens:
                    skipped["too_long"] += 1
                    continue
                row: dict[str, Any] = {"id": record.id, "source": record.source, "chat": chat, "prompt": record.prompt,
                                       "prompt_ids": prompt_ids, "response_ids": None, "response_truncated": False}
                if need_response:
                    ids = list(tokenizer(record.response, add_special_tokens=False)["input_ids"])
                    if not ids:
                        skipped["no_response"] += 1
                        continue
                    row["response_truncated"] = len(ids) > config.max_response_tokens
                    ids = ids[: config.max_response_tokens]
                    if chat and not row["response_truncated"] and eos is not None:
                        ids.append(int(eos))  # a finished chat answer ends with the end-of-turn token
                    row["response_ids"] = ids
                chosen.append(row)
                break
    if len(chosen) < 2:
        raise SpecAdaptError(
            f"only {len(chosen)} usable prompt(s) in {', '.join(config.data)} (skipped: {skipped['too_long']} longer than "
            f"max_prompt_tokens={config.max_prompt_tokens}, {skipped['no_response']} without a response); "
            "head training needs at least 2 (one train, one dev). Add prompts or raise --max-prompt-tokens."
        )
    order = list(range(len(chosen)))
    random.Random(f"{config.seed}:split").shuffle(order)
    n_dev = max(1, round(config.dev_fraction * len(chosen)))
    dev = set(order[:n_dev])
    for i, row in enumerate(chosen):
        row["index"] = i
        row["split"] = "dev" if i in dev else "train"
    summary = {
        "prompts": len(chosen),
        "requested": config.num_prompts,
        "train": len(chosen) - n_dev,
        "dev": n_dev,
        "by_source": {src: sum(r["source"] == src for r in chosen) for src in dict.fromkeys(r["source"] for r in chosen)},
        "skipped": skipped,
    }
    return chosen, summary


def write_prompts(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"index": row["index"], **{k: v for k, v in row.items() if k != "index"}}) + "\n")
    os.replace(tmp, path)


def read_prompts(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["index"])


# ---------------------------------------------------------------- stage 2: responses


def read_responses(directory: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for part in sorted(directory.glob("part-*.jsonl")) if directory.exists() else []:
        for row in read_jsonl_tolerant(part):
            out[int(row["index"])] = list(row["response_ids"])
    return out


def sample_responses(
    engine,
    prompts: Sequence[dict],
    directory: Path,
    config: TrainHeadConfig,
    state: PartialState,
    progress: bool = True,
) -> None:
    """Let the target sample a response for every prompt that has none yet (speculative decoding, lossless)."""
    from tqdm.auto import tqdm

    from ..engine import RequestConfig
    from ..methods import make_method

    directory.mkdir(parents=True, exist_ok=True)
    done = read_responses(directory)
    todo = [p for p in prompts if p["index"] not in done][state.process_index :: state.num_processes]
    part = directory / f"part-{state.process_index}.jsonl"
    read_jsonl_tolerant(part, repair=True)  # drop a line cut off by an earlier crash before appending
    if not todo:
        return
    method = make_method(config.response_method)
    bar = tqdm(total=len(todo), desc="target responses", unit="prompt", disable=not progress)
    with part.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), config.gen_batch_size):
            batch = todo[start : start + config.gen_batch_size]
            gen = RequestConfig(
                max_new_tokens=config.max_response_tokens,
                temperature=float(config.response_temperature),
                top_p=float(config.response_top_p),
                seed=config.seed * 100_003 + batch[0]["index"],  # reproducible for the same batch size
            )
            results = engine.generate([p["prompt_ids"] for p in batch], method, gen)
            for p, r in zip(batch, results):
                f.write(json.dumps({"index": p["index"], "response_ids": r.token_ids, "finish_reason": r.finish_reason}) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()


# ---------------------------------------------------------------- stage 3: teacher-forced labels


@dataclass
class SequenceLabels:
    input_ids: torch.Tensor  # [P+R] int
    prompt_len: int
    draft_tokens: torch.Tensor  # [R] int
    logq: torch.Tensor  # [R] fp32
    logp: torch.Tensor  # [R] fp32
    labels: torch.Tensor  # [R] fp32
    draft_mask: torch.Tensor  # [R] bool: the loss positions
    hidden: torch.Tensor | None  # [draft_mask.sum(), d] or None
    entropy: torch.Tensor | None = None  # [R] fp32, for "producing" heads

    def head_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The cached head input at the loss positions: hidden states, and draft features (None for "consumed")."""
        if self.entropy is None:
            return self.hidden, None
        return self.hidden, draft_features(self.logq, self.entropy)[self.draft_mask]

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[self.prompt_len :]

    def mixed_ids(self) -> torch.Tensor:
        """The training input: prompt, then Y_t where draft_mask else X_t."""
        response = torch.where(self.draft_mask, self.draft_tokens.to(self.input_ids.dtype), self.response_ids)
        return torch.cat([self.input_ids[: self.prompt_len], response])


def soft_labels(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """y = min(1, p / q), computed in log space (q > 0 for a token the draft sampled)."""
    return torch.exp(torch.clamp(logp - logq, max=0.0))


def last_hidden(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """The model's last hidden state (after the final norm) at every position of ``ids`` [1, n] -> [n, d].

    The same tensor the engine's runner hands to the SpecDec++ policy (``hidden_states[-1]``)."""
    out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][0]


@torch.inference_mode()
def teacher_forced_labels(
    draft: PreTrainedModel,
    target: PreTrainedModel,
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    *,
    temperature: float = 1.0,
    mix_ratio: float = 0.15,
    generator: torch.Generator | None = None,
    want_hidden: bool = True,
    hidden_dtype: torch.dtype | None = None,
    head_input: str = "consumed",
) -> SequenceLabels:
    """Labels for one sequence: teacher-forced passes of draft and target over prompt + response.

    At each response position t the draft samples Y_t from softmax(q_logits / T) given the
    target's prefix X_<t (argmax at T = 0); y_t = min(1, p(Y_t) / q(Y_t)) with p, q at the same
    temperature (at T = 0: 1 if the target's argmax is Y_t, else 0). Then the mixing mask is
    drawn, and, if ``want_hidden``, one more draft pass over the mixed sequence gives the head
    inputs at the draft-token positions (see the module docstring for the alignment).
    With ``head_input="producing"`` there is no mixing and no second pass: the head inputs are
    the states of the first pass, and the entropy of each q is kept.
    """
    P, R = len(prompt_ids), len(response_ids)
    if P < 1 or R < 1:
        raise ValueError("need at least one prompt and one response token")
    producing = head_input != "consumed"  # "producing" or "features": the same data
    device = draft.device
    seq = torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long, device=device)
    context = seq[None, : P + R - 1]  # logits at positions P-1 .. P+R-2 predict response tokens 1..R
    q_out = draft(input_ids=context, logits_to_keep=R, output_hidden_states=producing and want_hidden)
    q_logits = q_out.logits[0].float()
    p_logits = target(input_ids=context.to(target.device), logits_to_keep=R).logits[0].float().to(device)
    if q_logits.shape[-1] != p_logits.shape[-1]:
        raise SpecAdaptError(
            f"the draft has {q_logits.shape[-1]} output logits but the target has {p_logits.shape[-1]}: "
            "they must share one vocabulary; pick a draft of the target's family."
        )
    # The distribution Y_t is drawn from: softmax(logits / T), the raw softmax at T = 0 (as the decoder's DraftStep.probs).
    logq_all = torch.log_softmax(q_logits / (temperature if temperature > 0 else 1.0), -1)
    if temperature > 0:
        logp_all = torch.log_softmax(p_logits / temperature, -1)
        draft_tokens = torch.multinomial(logq_all.exp(), 1, generator=generator).squeeze(-1)
        logp = logp_all.gather(-1, draft_tokens[:, None]).squeeze(-1)
        logq = logq_all.gather(-1, draft_tokens[:, None]).squeeze(-1)
        labels = soft_labels(logp, logq)
    else:
        draft_tokens = q_logits.argmax(-1)
        logq = logq_all.gather(-1, draft_tokens[:, None]).squeeze(-1)
        logp = torch.log_softmax(p_logits, -1).gather(-1, draft_tokens[:, None]).squeeze(-1)
        labels = (p_logits.argmax(-1) == draft_tokens).float()
    if producing:
        draft_mask = torch.ones(R, dtype=torch.bool, device=device)
    else:
        draft_mask = torch.rand(R, generator=generator, device=device) >= mix_ratio
    result = SequenceLabels(
        seq.cpu().to(torch.int32),
        P,
        draft_tokens.cpu().to(torch.int32),
        logq.cpu(),
        logp.cpu(),
        labels.cpu(),
        draft_mask.cpu(),
        None,
        torch.special.entr(logq_all.exp()).sum(-1).cpu() if producing else None,
    )
    if want_hidden and producing:
        hidden = q_out.hidden_states[-1][0, P - 1 : P + R - 1]  # the state that produced Y_t, t = 1..R
        result.hidden = _stored(hidden, hidden_dtype)
    elif want_hidden:
        mixed = result.mixed_ids().to(device=device, dtype=torch.long)[None]
        hidden = last_hidden(draft, mixed)[P : P + R]  # position of Y_t (after consuming it) for t = 1..R
        result.hidden = _stored(hidden[draft_mask.to(hidden.device)], hidden_dtype)
    return result


def _stored(hidden: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Hidden states as stored on disk: 16-bit (the model's own 16-bit dtype, else fp16), on the CPU."""
    dtype = dtype or (hidden.dtype if hidden.dtype in (torch.bfloat16, torch.float16) else torch.float16)
    return hidden.to(dtype).cpu().contiguous()


def label_path(directory: Path, index: int) -> Path:
    return directory / f"{index:06d}.safetensors"


def save_labels(path: Path, item: SequenceLabels, index: int, split: str) -> None:
    from safetensors.torch import save_file

    tensors = {
        "input_ids": item.input_ids.to(torch.int32).contiguous(),
        "draft_tokens": item.draft_tokens.to(torch.int32).contiguous(),
        "logq": item.logq.float().contiguous(),
        "logp": item.logp.float().contiguous(),
        "labels": item.labels.float().contiguous(),
        "draft_mask": item.draft_mask.to(torch.bool).contiguous(),
    }
    if item.hidden is not None:
        tensors["hidden"] = item.hidden.contiguous()
    if item.entropy is not None:
        tensors["entropy"] = item.entropy.float().contiguous()
    meta = {"format_version": str(LABEL_FORMAT_VERSION), "prompt_len": str(item.prompt_len), "index": str(index), "split": split}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # a file either exists complete or not at all: that is the resume marker


def load_labels(path: Path) -> tuple[SequenceLabels, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types)
        raise SpecAdaptError(f"cached label file {path} is unreadable ({exc}); delete it and rerun to recompute it.") from None
    item = SequenceLabels(
        t["input_ids"].long(),
        int(meta["prompt_len"]),
        t["draft_tokens"].long(),
        t["logq"],
        t["logp"],
        t["labels"],
        t["draft_mask"].bool(),
        t.get("hidden"),
        t.get("entropy"),
    )
    return item, meta


def compute_labels(
    draft: PreTrainedModel,
    target: PreTrainedModel,
    sequences: Sequence[tuple[dict, list[int]]],
    directory: Path,
    config: TrainHeadConfig,
    state: PartialState,
    progress: bool = True,
    on_done: Callable[[int], None] | None = None,
) -> None:
    """Stage 3 for every (prompt row, response ids) whose label file is missing; this process takes its share."""
    from tqdm.auto import tqdm

    directory.mkdir(parents=True, exist_ok=True)
    todo = [s for s in sequences if not label_path(directory, s[0]["index"]).exists()][state.process_index :: state.num_processes]
    for row, response in tqdm(todo, desc="teacher-forced labels", unit="seq", disable=not progress or not todo):
        index = row["index"]
        # One generator per sequence: results do not depend on order, interruption or process count.
        generator = torch.Generator(device=draft.device).manual_seed(config.seed * 100_003 + index)
        item = teacher_forced_labels(
            draft,
            target,
            row["prompt_ids"],
            response,
            temperature=float(config.label_temperature),
            mix_ratio=float(config.mix_ratio),
            generator=generator,
            want_hidden=config.hidden == "cache",
            head_input=config.head_input,
        )
        save_labels(label_path(directory, index), item, index, row["split"])
        if on_done is not None:
            on_done(index)


def responses_for(prompts: Iterable[dict], sampled: dict[int, list[int]]) -> list[tuple[dict, list[int]]]:
    """Pair each prompt row with its response: the data set's own, or the target's sample."""
    out = []
    for row in prompts:
        response = row["response_ids"] if row.get("response_ids") is not None else sampled.get(row["index"])
        if response is None:
            raise SpecAdaptError(f"no response for prompt {row['index']} ({row['id']}); rerun train-head to finish the responses stage.")
        if response:
            out.append((row, list(response)))
    return out
