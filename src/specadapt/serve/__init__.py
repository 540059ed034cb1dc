"""``specadapt serve``: an OpenAI-compatible HTTP server running adaptive speculative decoding.

- :mod:`.settings`: :class:`ServeSettings`, every server option and its default (one source of truth);
- :mod:`.protocol`: the OpenAI request/response models and error shape;
- :mod:`.scheduler`: the worker thread that drives one :class:`~specadapt.engine.Batch`
  (continuous batching, cancellation, the load-adaptive draft rule);
- :mod:`.metrics`: Prometheus metrics (per-app registry);
- :mod:`.app`: the FastAPI app factory, :func:`~specadapt.serve.app.create_app`;
- :mod:`.cli`: the ``specadapt serve`` command.

>>> from specadapt import SpecDecoder
>>> from specadapt.serve import ServeSettings, create_app
>>> app = create_app(SpecDecoder.from_pretrained(), ServeSettings())   # then run it with uvicorn
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import ServeSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # FastAPI is imported only when an app is actually built (the CLI imports this package at startup).
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
