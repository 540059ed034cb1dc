"""How good is a draft for speculative decoding with a given target? (``specadapt eval-draft``)

Two measurements on held-out prompts:

1. Teacher-forced, along the target's own text. The target generates a
   response for every prompt (target-only decoding through the engine, which
   also gives the baseline speed); then one forward pass of the target and of
   each draft over prompt + response gives, at every response position, the
   target's distribution p and the draft's q, after the same logits processing
   the engine applies (temperature, top-k, top-p). Reported per draft:

   - ``expected_acceptance``: mean of sum_x min(p(x), q(x)), the probability
     that speculative sampling accepts the draft's token there; at temperature
     0 (one-hot p and q) it is the greedy argmax agreement;
   - ``acceptance_t1``: the same at temperature 1 without top-k/top-p (the
     usual "alpha"), ``argmax_agreement``, ``kl_target_draft`` = mean KL(p||q)
     at temperature 1 (what distillation minimises), and ``draft_entropy`` /
     ``target_entropy``: the mean entropy (nats, temperature 1) of q and of p
     (entropy-based stopping rules such as AdaEDL's read the draft's);
   - ``predicted`` per K: at temperature 0 a replay of the engine's greedy
     rounds along the target's text (exact while the draft's proposals after a
     rejection do not end in EOS); at temperature > 0 the expected tokens per
     target call, averaged over start positions: sum_{j=0..K} prod_{i<j} alpha_{t+i}.

2. Real speculative decoding through :class:`~specadapt.engine.SpeculativeEngine`
   with ``fixed:K``, batch size 1, one prompt after another: acceptance rate,
   mean accepted length (tokens per target call), tokens/s and the speedup over
   the target-only run, and (greedy) how many outputs equal the target's.

Outputs in ``out/``: ``eval.json`` (everything), ``eval.md`` (a small report),
``target_responses.json`` (the target's responses and timing, reused by later
runs with the same target, prompts and settings). An earlier ``eval.json``/``eval.md`` is replaced only
with ``overwrite``; a folder eval-draft did not write (no manifest, :class:`specadapt.io.OutputFolder`)
is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..engine import RequestConfig, SpeculativeEngine
from ..errors import SpecAdaptError
from ..io import OutputFolder, read_json, write_json_atomic
from ..methods import make_method
from ..sampling import process_logits
from .data import EvalPrompt
from .teacher_cache import model_fingerprint

RESPONSES_FILE = "target_responses.json"
REPORT_FILES = ("eval.json", "eval.md")
OUTPUT_FILES = (*REPORT_FILES, RESPONSES_FILE)  # what eval-draft writes in --out: all it ever replaces


@dataclass
class EvalSettings(RequestConfig):
    """The generation settings (greedy by default, 128 tokens), the draft lengths to run and whether to run them."""

    seed: int = field(default=0, metadata={"help": "Sampling seed (prompt i uses seed + i)."})
    ks: tuple[int, ...] = field(default=(4,), metadata={
        "help": "Draft length K of the fixed:K runs (repeatable).", "flag": "--k", "repeat": True})
    speculative: bool = field(default=True, metadata={  # costs target time
        "help": "Teacher-forced measurements only (no speculative runs).", "flag": "--no-speculative", "negated": True})
    warmup: bool = True

    def __post_init__(self) -> None:
        self.ks = tuple(int(k) for k in self.ks)
        if not self.ks or any(k < 1 for k in self.ks):
            raise SpecAdaptError(f"--k must be one or more draft lengths >= 1, got {list(self.ks)}.")
        super().__post_init__()

    def generation(self, max_new_tokens: int | None = None, seed_offset: int = 0) -> RequestConfig:
        return RequestConfig(max_new_tokens or self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed + seed_offset)


# ---------------------------------------------------------------- teacher-forced acceptance


def simulate_greedy_rounds(
    response: Sequence[int], draft_argmax: Sequence[int], k: int, max_new_tokens: int, eos_ids: Sequence[int] = ()
) -> tuple[int, int, int]:
    """(drafted, accepted, rounds) of greedy ``fixed:k`` decoding along the target's greedy ``response``.

    ``draft_argmax[t]`` is the draft's greedy token after the prompt + ``response[:t]``. Mirrors the engine
    and :class:`~specadapt.stats.RequestStats`; after a rejection the draft is assumed to draft up to k."""
    eos = set(eos_ids)
    n_total = len(response)
    t = drafted = accepted = rounds = 0
    while t < n_total:
        cap = max(0, min(k, max_new_tokens - t - 1))
        n, matched, proposed = 0, True, 0
        for j in range(cap):
            proposed += 1
            if not matched:
                continue
            tok = draft_argmax[t + j]
            if tok == response[t + j]:
                n += 1
                if tok in eos:
                    break  # the draft stops after proposing EOS
            else:
                matched = False
                if tok in eos:
                    break
        emitted = n if n and response[t + n - 1] in eos else n + 1
        emitted = min(emitted, max_new_tokens - t, n_total - t)
        drafted += proposed
        accepted += min(n, emitted - 1)
        rounds += 1
        t += emitted
    return drafted, accepted, rounds


@torch.no_grad()
def _response_logits(model: PreTrainedModel, prompt: Sequence[int], response: Sequence[int]) -> torch.Tensor:
    """fp32 logits [len(response), V] predicting each response token (teacher forcing)."""
    ids = torch.tensor([list(prompt) + list(response)], device=model.device)
    logits = model(input_ids=ids, logits_to_keep=len(response) + 1, use_cache=False).logits[0, :-1]
    return logits.float()


def teacher_forced(
    target: PreTrainedModel,
    drafts: dict[str, PreTrainedModel],
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    settings: EvalSettings,
    eos_ids: Sequence[int] = (),
) -> dict[str, dict]:
    """Per draft: expected acceptance, alpha at T=1, argmax agreement, KL, the entropies of q and p, and predicted
    tokens per round."""
    params = settings.sampling
    acc = {name: {"positions": 0, "expected": 0.0, "alpha1": 0.0, "agree": 0.0, "kl": 0.0, "h_draft": 0.0, "h_target": 0.0, "pred": {k: [0.0, 0, 0, 0] for k in settings.ks}} for name in drafts}
    for prompt, response in sequences:
        if not response:
            continue
        tl = _response_logits(target, prompt, response)
        p = process_logits(tl, params)
        lp1 = torch.log_softmax(tl, -1)
        p1 = lp1.exp()
        h_target = float(-(p1 * lp1).sum())  # the same for every draft
        for name, draft in drafts.items():
            dl = _response_logits(draft, prompt, response).to(tl.device)
            q = process_logits(dl, params)
            lq1 = torch.log_softmax(dl, -1)
            q1 = lq1.exp()
            alpha = torch.minimum(p, q).sum(-1)
            a = acc[name]
            a["positions"] += len(response)
            a["expected"] += float(alpha.sum())
            a["alpha1"] += float(torch.minimum(p1, q1).sum())
            a["agree"] += float((tl.argmax(-1) == dl.argmax(-1)).float().sum())
            a["kl"] += float((p1 * (lp1 - lq1)).sum())
            a["h_draft"] += float(-(q1 * lq1).sum())
            a["h_target"] += h_target
            for k in settings.ks:
                if params.greedy:
                    d, ac, r = simulate_greedy_rounds(response, dl.argmax(-1).tolist(), k, settings.max_new_tokens, eos_ids)
                    a["pred"][k][1] += d
                    a["pred"][k][2] += ac
                    a["pred"][k][3] += r
                else:
                    a["pred"][k][0] += float(_expected_tokens_per_round(alpha, k).sum())
    out = {}
    for name, a in acc.items():
        n = max(a["positions"], 1)
        predicted = {}
        for k, (tokens, d, ac, r) in a["pred"].items():
            if params.greedy:
                predicted[str(k)] = {"acceptance_rate": ac / d if d else None, "mean_accepted_length": 1 + ac / r if r else None}
            else:
                predicted[str(k)] = {"mean_accepted_length": tokens / n}
        out[name] = {
            "positions": a["positions"],
            "expected_acceptance": a["expected"] / n,
            "acceptance_t1": a["alpha1"] / n,
            "argmax_agreement": a["agree"] / n,
            "kl_target_draft": a["kl"] / n,
            "draft_entropy": a["h_draft"] / n,
            "target_entropy": a["h_target"] / n,
            "predicted": predicted,
        }
    return out


def _expected_tokens_per_round(alpha: torch.Tensor, k: int) -> torch.Tensor:
    """[n]: 1 + sum_{j=1..K} prod_{i<j} alpha[t+i] for every start t (drafts cut at the sequence end)."""
    n = alpha.numel()
    total = torch.ones(n, dtype=torch.float64)
    run = torch.ones(n, dtype=torch.float64)
    a = alpha.double().cpu()
    for j in range(k):
        shifted = torch.zeros(n, dtype=torch.float64)
        if j < n:
            shifted[: n - j] = a[j:]
        run = run * shifted
        # a draft token j+1 exists only if position t+j+1 is still inside the response
        valid = torch.arange(n) + j + 1 < n
        total += torch.where(valid, run, torch.zeros_like(run))
    return total


# ---------------------------------------------------------------- real speculative decoding


def _run(engine: SpeculativeEngine, prompts: Sequence[EvalPrompt], method: str, settings: EvalSettings) -> dict:
    chosen = make_method(method)
    if settings.warmup:
        engine.generate([list(prompts[0].input_ids)], chosen, settings.generation(min(8, settings.max_new_tokens)))
    outputs, totals = [], {"generated": 0, "drafted": 0, "accepted": 0, "rounds": 0, "time_s": 0.0, "finish": {}}
    for i, prompt in enumerate(prompts):
        res = engine.generate([list(prompt.input_ids)], chosen, settings.generation(seed_offset=i))[0]
        s = res.stats
        outputs.append({"id": prompt.id, "token_ids": res.token_ids, "finish_reason": res.finish_reason, "time_s": s.total_time_s})
        totals["generated"] += s.generated_tokens
        totals["drafted"] += s.drafted
        totals["accepted"] += s.accepted
        totals["rounds"] += s.rounds
        totals["time_s"] += s.total_time_s
        totals["finish"][res.finish_reason] = totals["finish"].get(res.finish_reason, 0) + 1
    return {"outputs": outputs, **totals}


def _summary(run: dict, baseline_tps: float | None, reference: list[list[int]] | None) -> dict:
    tps = run["generated"] / run["time_s"] if run["time_s"] > 0 else None
    summary = {
        "acceptance_rate": run["accepted"] / run["drafted"] if run["drafted"] else None,
        "mean_accepted_length": 1 + run["accepted"] / run["rounds"] if run["rounds"] else None,
        "generated_tokens": run["generated"],
        "rounds": run["rounds"],
        "drafted": run["drafted"],
        "accepted": run["accepted"],
        "time_s": run["time_s"],
        "tokens_per_second": tps,
        "speedup": tps / baseline_tps if tps and baseline_tps else None,
    }
    if reference is not None:
        same = sum(o["token_ids"] == r for o, r in zip(run["outputs"], reference))
        summary["output_match_rate"] = same / len(reference)
    return summary


# ---------------------------------------------------------------- the whole evaluation


def _responses_key(target: PreTrainedModel, prompts: Sequence[EvalPrompt], settings: EvalSettings) -> dict:
    h = hashlib.sha256(json.dumps([list(p.input_ids) for p in prompts]).encode()).hexdigest()[:32]
    return {
        "target": model_fingerprint(target),
        "dtype": str(next(target.parameters()).dtype),
        "device": target.device.type,
        "prompts": h,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_k": settings.top_k,
        "top_p": settings.top_p,
        "seed": settings.seed,
    }


def responses_file(source: str | Path) -> Path:
    """The target-responses file ``--target-responses`` names: the file, or an earlier evaluation's folder."""
    path = Path(source).expanduser()
    path = path / RESPONSES_FILE if path.is_dir() else path
    if not path.is_file():
        raise SpecAdaptError(f"--target-responses {source}: no {RESPONSES_FILE} there; give an earlier eval-draft "
                             f"--out folder or its {RESPONSES_FILE}.")
    return path


def _saved_responses(path: Path) -> dict | None:
    """What a target_responses.json holds; None if it is not one (unreadable, cut short by a crash, another shape)."""
    try:
        saved = read_json(path)
    except ValueError:
        return None
    is_one = isinstance(saved, dict) and isinstance(saved.get("run"), dict) and "outputs" in saved["run"]
    return saved if is_one else None


def target_responses(
    engine: SpeculativeEngine, prompts: Sequence[EvalPrompt], settings: EvalSettings, out: Path | None,
    log: Callable[[str], None], source: Path | None = None,
) -> dict:
    """The target-only run (responses + baseline timing), from ``out/target_responses.json`` when it matches, or
    from ``source`` (another evaluation's file), which must match; either way it is (re)written to ``out``."""
    key = _responses_key(engine.target, prompts, settings)
    path = out / RESPONSES_FILE if out is not None else None
    if source is not None:
        cached = _saved_responses(source)
        if cached is None:
            raise SpecAdaptError(f"--target-responses {source} is not a {RESPONSES_FILE} that eval-draft wrote.")
        differ = sorted(k for k in key if cached.get("key", {}).get(k) != key[k])
        if differ:
            raise SpecAdaptError(
                f"--target-responses {source} holds the target's responses for other {', '.join(differ)}; give the "
                "folder of an evaluation with the same target, --data, --num-prompts and generation settings, or "
                "drop --target-responses to decode them again."
            )
        log(f"reusing the target's responses from {source}")
        if path is not None and path.resolve() != source.resolve():
            write_json_atomic(path, cached, indent=None)
        return {**cached["run"], "from_cache": True}
    if path is not None and path.exists():
        cached = _saved_responses(path)  # None (e.g. cut short by a crash before writes were atomic): decode again
        if cached is not None and cached.get("key") == key:
            log(f"reusing the target's responses from {path}")
            return {**cached["run"], "from_cache": True}
    log(f"target-only decoding of {len(prompts)} prompts")
    run = _run(engine, prompts, "autoregressive", settings)
    run["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if path is not None:
        write_json_atomic(path, {"key": key, "run": run}, indent=None)
    return {**run, "from_cache": False}


def evaluate_drafts(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    drafts: dict[str, PreTrainedModel],
    prompts: Sequence[EvalPrompt],
    settings: EvalSettings | None = None,
    *,
    eos_ids: Sequence[int] = (),
    out: str | Path | None = None,
    meta: dict | None = None,
    overwrite: bool = False,
    responses_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate every draft against ``target`` on ``prompts``; writes eval.json / eval.md when ``out`` is given
    (an earlier evaluation there is replaced only with ``overwrite``). ``responses_from``: an earlier evaluation's
    folder or target_responses.json whose target-only run (same target, prompts and settings) is reused."""
    settings = settings or EvalSettings()
    if not prompts:
        raise SpecAdaptError("no evaluation prompts; give a data set with at least one prompt.")
    if not drafts:
        raise SpecAdaptError("no draft to evaluate; give at least one --draft.")
    out_dir = Path(out).expanduser() if out is not None else None
    source = responses_file(responses_from) if responses_from is not None else None
    if out_dir is not None:
        folder = check_output(out_dir, overwrite)
        folder.claim(files=OUTPUT_FILES)
    target.eval()
    base_engine = SpeculativeEngine(target, None, tokenizer, eos_ids)
    base = target_responses(base_engine, prompts, settings, out_dir, log, source)
    baseline_tps = base["generated"] / base["time_s"] if base["time_s"] > 0 else None
    sequences = [(p.input_ids, o["token_ids"]) for p, o in zip(prompts, base["outputs"])]
    log(f"teacher-forced acceptance of {len(drafts)} draft(s) along {sum(len(r) for _, r in sequences)} target tokens")
    forced = teacher_forced(target, drafts, sequences, settings, eos_ids)
    reference = [o["token_ids"] for o in base["outputs"]] if settings.sampling.greedy else None
    results: dict[str, dict] = {}
    for name, draft in drafts.items():
        draft.eval()
        entry = {"teacher_forced": forced[name], "speculative": {}}
        if settings.speculative:
            engine = SpeculativeEngine(target, draft, tokenizer, eos_ids)
            for k in settings.ks:
                log(f"speculative decoding with {name}, fixed:{k}")
                entry["speculative"][str(k)] = _summary(_run(engine, prompts, f"fixed:{k}", settings), baseline_tps, reference)
        results[name] = entry
    report = {
        **(meta or {}),
        "prompts": len(prompts),
        "settings": {**asdict(settings), "ks": list(settings.ks)},
        "target_only": {
            "generated_tokens": base["generated"],
            "time_s": base["time_s"],
            "tokens_per_second": baseline_tps,
            "finish": base["finish"],
            "from_cache": base["from_cache"],
            "measured_at": base.get("measured_at"),
        },
        "drafts": results,
    }
    if out_dir is not None:
        write_json_atomic(out_dir / "eval.json", report)
        (out_dir / "eval.md").write_text(render_report(report))
    return report


def check_output(out: Path, overwrite: bool) -> OutputFolder:
    """The --out folder, checked without writing: new, empty, or eval-draft's own; an earlier evaluation
    there is replaced only with ``overwrite`` (the target's responses are a cache, reused or replaced)."""
    folder = OutputFolder(out, "eval-draft")
    folder.check(OUTPUT_FILES)
    earlier = [name for name in REPORT_FILES if (folder.path / name).exists()]
    if earlier and not overwrite:
        raise SpecAdaptError(
            f"--out {folder.path} already holds an evaluation ({', '.join(earlier)}); pass --overwrite to replace "
            "it, or choose another --out."
        )
    return folder


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def render_report(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Draft evaluation",
        "",
        f"Target `{report.get('target', 'target')}`, data `{report.get('data', '?')}`, {report['prompts']} prompts, "
        f"max {s['max_new_tokens']} new tokens, temperature {s['temperature']}"
        + (f", top-k {s['top_k']}" if s["top_k"] else "")
        + (f", top-p {s['top_p']}" if s["top_p"] < 1 else "")
        + ".",
        f"Target-only: {report['target_only']['generated_tokens']} tokens, "
        f"{_fmt(report['target_only']['tokens_per_second'], '.1f')} tokens/s"
        + (" (from an earlier run)" if report["target_only"]["from_cache"] else "")
        + ".",
        "",
        "## Along the target's text (teacher forcing)",
        "",
        "| draft | expected acceptance | alpha (T=1) | argmax agreement | KL(target‖draft) | draft entropy | "
        + " | ".join(f"predicted length K={k}" for k in s["ks"])
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(s["ks"]),
    ]
    for name, entry in report["drafts"].items():
        f = entry["teacher_forced"]
        pred = " | ".join(_fmt(f["predicted"][str(k)]["mean_accepted_length"], ".2f") for k in s["ks"])
        lines.append(
            f"| `{name}` | {_fmt(f['expected_acceptance'])} | {_fmt(f['acceptance_t1'])} | "
            f"{_fmt(f['argmax_agreement'])} | {_fmt(f['kl_target_draft'])} | {_fmt(f.get('draft_entropy'))} | {pred} |"
        )
    if any(entry["speculative"] for entry in report["drafts"].values()):
        lines += [
            "",
            "## Speculative decoding (fixed K, batch size 1)",
            "",
            "| draft | K | acceptance rate | mean accepted length | tokens/s | speedup | output = target's |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, entry in report["drafts"].items():
            for k, r in entry["speculative"].items():
                lines.append(
                    f"| `{name}` | {k} | {_fmt(r['acceptance_rate'])} | {_fmt(r['mean_accepted_length'], '.2f')} | "
                    f"{_fmt(r['tokens_per_second'], '.1f')} | {_fmt(r['speedup'], '.2f')}× | "
                    f"{_fmt(r.get('output_match_rate'), '.2f')} |"
                )
    lines += [
        "",
        (
            "Expected acceptance: mean over response positions of Σ min(p, q) after the run's logits processing "
            "(greedy: argmax agreement). Predicted length: tokens per target call, from a replay of greedy rounds "
            "(temperature 0) or the expectation from per-position acceptance (temperature > 0)."
        ),
        "",
    ]
    return "\n".join(lines)


def run_eval_draft(
    target: str,
    drafts: Sequence[str],
    data: str,
    out: str | Path,
    settings: EvalSettings | None = None,
    *,
    num_prompts: int | None = 50,
    dtype: str = "bfloat16",
    device: str = "auto",
    overwrite: bool = False,
    responses_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """``specadapt eval-draft``: load the target and the drafts (folders, names or ``shallow:N``), evaluate, write.
    ``responses_from``: reuse an earlier evaluation's target-only run (its folder or target_responses.json)."""
    from ..models import loading
    from .data import load_eval_prompts
    from .shallow import parse_draft_init, shallow_copy

    settings = settings or EvalSettings()
    check_output(Path(out).expanduser(), overwrite)  # before any model is loaded
    if responses_from is not None:
        responses_file(responses_from)
    loading.parse_dtype(dtype)
    loading.parse_device(device)
    if not drafts:
        raise SpecAdaptError("give at least one --draft to evaluate.")
    if len(set(drafts)) != len(drafts):
        raise SpecAdaptError("the same --draft is given twice; list each draft once.")
    tokenizer = loading.load_tokenizer(target)
    for d in drafts:
        if parse_draft_init(d) is None:
            loading.check_same_tokenizer(tokenizer, loading.load_tokenizer(d), (target, d))
    prompts = load_eval_prompts(tokenizer, data, num_prompts)
    log(f"loading target {target}")
    target_model = loading.load_model(target, dtype, device)
    vocab = target_model.get_output_embeddings().weight.shape[0]
    models: dict[str, PreTrainedModel] = {}
    for d in drafts:
        layers = parse_draft_init(d)
        if layers is not None:
            model = shallow_copy(target_model, layers, loading.parse_dtype(dtype)).to(target_model.device)
        else:
            model = loading.load_model(d, dtype, target_model.device)
        width = model.get_output_embeddings().weight.shape[0]
        if width != vocab:
            raise SpecAdaptError(
                f"draft {d!r} has {width} output logits but target {target!r} has {vocab}; "
                "a draft must share the target's vocabulary."
            )
        models[d] = model.eval()
    eos_ids = loading.eos_token_ids(target_model, tokenizer)
    meta = {"target": target, "data": data, "dtype": dtype, "device": str(target_model.device)}
    return evaluate_drafts(target_model, tokenizer, models, prompts, settings, eos_ids=eos_ids, out=out, meta=meta,
                           overwrite=overwrite, responses_from=responses_from, log=log)
