"""``specadapt serve``: load the pair once and serve it over HTTP. Its options are :class:`ServeSettings`' fields
(defaults and help written once, there; :func:`~specadapt.cli_options.with_settings` builds the options).

Registered in ``specadapt/cli.py`` with ``app.command("serve")(serve_command)``; FastAPI and uvicorn
are imported only when the command runs.
"""

from __future__ import annotations

from ..cli_options import with_settings
from .settings import ServeSettings


@with_settings(ServeSettings)
def serve_command(*, settings: dict) -> None:
    """Serve the target/draft pair as an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /metrics)."""
    settings = ServeSettings(**settings)

    import prometheus_client
    import uvicorn
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from ..models.hardware import compile_fused_products
    from .app import create_app

    chosen = settings.make_method()  # fail fast on a bad method string, before loading models
    settings.check_device()
    err = Console(stderr=True)
    hf_logging.disable_progress_bar()
    draft_name = settings.draft if chosen.needs_draft else None
    with err.status(f"loading {settings.target}" + (f" + {draft_name}" if draft_name else "")):
        decoder = settings.load(chosen.needs_draft, copies=True)  # True: batches are blocks too
    with err.status("compiling bf16 kernels for this CPU"):
        compile_fused_products(decoder.target, decoder.draft)  # before any request, not during the first ones
    prometheus_client.disable_created_metrics()  # no *_created series (as vLLM); this process is only the server
    app = create_app(decoder, settings, chosen)
    quantized = f", {settings.target_quant} target" if settings.target_quant != "none" else ""
    err.print(f"serving [bold]{settings.served_name}[/bold] ({chosen.spec or chosen.name}{quantized}) on "
              f"http://{settings.host}:{settings.port}/v1", highlight=False)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
