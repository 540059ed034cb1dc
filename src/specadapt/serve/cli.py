"""``specadapt serve``: load the pair once and serve it over HTTP. Defaults and help come from :class:`ServeSettings`.

Registered in ``specadapt/cli.py`` with ``app.command("serve")(serve_command)``; FastAPI and uvicorn
are imported only when the command runs.
"""

from __future__ import annotations

from dataclasses import fields

import typer

from .settings import ServeSettings

_D = ServeSettings()


def _opt(name: str, *flags: str) -> typer.models.OptionInfo:
    return typer.Option(getattr(_D, name), *flags, help=ServeSettings.help(name))


def serve_command(
    target: str = _opt("target"),
    draft: str = _opt("draft"),
    method: str = _opt("method"),
    dtype: str = _opt("dtype"),
    device: str = _opt("device"),
    host: str = _opt("host"),
    port: int = _opt("port"),
    model_name: str = _opt("model_name"),
    max_batch_size: int = _opt("max_batch_size"),
    max_queue: int = _opt("max_queue"),
    max_body_bytes: int = _opt("max_body_bytes"),
    spec_max_batch: int = _opt("spec_max_batch"),
    spec_load_k: int = _opt("spec_load_k"),
    retry_after_s: int = _opt("retry_after_s"),
    log_level: str = _opt("log_level"),
) -> None:
    """Serve the target/draft pair as an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /metrics)."""
    values = dict(locals())
    settings = ServeSettings(**{f.name: values[f.name] for f in fields(ServeSettings)})

    import prometheus_client
    import uvicorn
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from ..api import SpecDecoder
    from ..methods import make_method
    from .app import create_app

    chosen = make_method(settings.method)  # fail fast on a bad method string, before loading models
    err = Console(stderr=True)
    hf_logging.disable_progress_bar()
    draft_name = settings.draft if chosen.needs_draft else None
    with err.status(f"loading {settings.target}" + (f" + {draft_name}" if draft_name else "")):
        decoder = SpecDecoder.from_pretrained(settings.target, draft_name, dtype=settings.dtype, device=settings.device)
    prometheus_client.disable_created_metrics()  # no *_created series (as vLLM); this process is only the server
    app = create_app(decoder, settings, chosen)
    err.print(f"serving [bold]{settings.served_name}[/bold] ({chosen.spec or chosen.name}) on "
              f"http://{settings.host}:{settings.port}/v1", highlight=False)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
