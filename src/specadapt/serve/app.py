"""The FastAPI app: OpenAI-compatible endpoints in front of the :class:`~.scheduler.Scheduler`.

Handlers run on the event loop; they validate and tokenise a request, hand it to the worker thread and
wait for its events on an ``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``. Every bad request
is answered with an OpenAI-style error before it reaches the worker, so it cannot disturb others.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import SpecDecoder
from ..engine import RequestConfig, SpeculativeEngine
from ..errors import SpecAdaptError
from ..logprobs import MAX_TOP_LOGPROBS
from ..methods import Method, make_method
from ..text import has_chat_template
from .metrics import CONTENT_TYPE_LATEST, ServeMetrics
from .protocol import (
    FINISH_REASONS, UNSUPPORTED, APIError, ChatCompletionRequest, CompletionRequest, LogprobsFormat, ResponseIds,
    SamplingRequest, usage,
)
from .scheduler import Job, JobResult, QueueFull, Scheduler
from .settings import ServeSettings
from .text import TextAssembler

log = logging.getLogger("specadapt.serve")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (chat defaults to the rest of the context)
WARMUP_PROMPT = "Count from one to twenty in words, separated by commas."


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (declared or chunked), before parsing."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, send, f"the request body is {int(declared)} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, send, f"the request body is over {self.max_bytes} bytes")
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the real channel, so disconnects are still seen

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, send: Any, what: str) -> None:
        error = APIError(413, f"{what}; this server accepts at most {self.max_bytes} bytes (--max-body-bytes).",
                         code="request_too_large")
        await JSONResponse(error.body(), 413)(scope, None, send)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), error.status, headers=error.headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"malformed JSON body{': ' + str(detail) if detail else ''}; send one JSON object.",
                        code="invalid_json")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if not loc:
        return APIError(400, "the request body must be a JSON object.", code="invalid_body")
    param = loc[0]
    return APIError(400, f"{'.'.join(loc)}: {first.get('msg', 'invalid value')}.", param=param, code="invalid_value")


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def create_app(decoder: SpecDecoder, settings: ServeSettings | None = None, method: Method | str | None = None) -> FastAPI:
    """An app serving ``decoder`` with ``method`` (default: ``settings.method``, with ``settings.head``). The worker
    thread starts and stops with the app (its lifespan); ``app.state`` holds ``scheduler``, ``metrics`` and
    ``settings``."""
    settings = settings or ServeSettings()
    method = make_method(method) if method is not None else settings.make_method()
    if method.needs_draft and decoder.draft is None:
        raise SpecAdaptError(f"method {method.name!r} needs a draft model; load one or use 'autoregressive'.")
    name = settings.served_name
    metrics = ServeMetrics(name, prefix_cache=settings.prefix_cache_tokens > 0)
    # The server's own engine over the decoder's models: its prefix cache holds this server's prompts only.
    engine = SpeculativeEngine(decoder.target, decoder.draft, decoder.tokenizer, decoder.engine.eos_token_ids,
                               prefix_cache_tokens=settings.prefix_cache_tokens)
    scheduler = Scheduler(engine, method, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
                          load_rule=settings.load_rule(), metrics=metrics, early_first_token=settings.early_first_token)
    context = decoder.context_window
    vocab = decoder.target.get_input_embeddings().num_embeddings
    # Handlers tokenise on the event loop while the worker decodes (stop strings, results) on its thread. A Rust
    # tokenizer raises "Already borrowed" when one thread changes its settings (as encoding does) while another
    # uses it, so the handlers get their own copy.
    decoder = copy.copy(decoder)
    with contextlib.suppress(Exception):
        decoder.tokenizer = copy.deepcopy(decoder.tokenizer)
    tokenizer = decoder.tokenizer
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        if settings.warmup_tokens:  # before the server listens: clients never wait behind it
            try:
                prompt = decoder.encode(WARMUP_PROMPT, chat=has_chat_template(tokenizer))
            except Exception as exc:  # noqa: BLE001  (an odd tokenizer or template: serve without the warm-up)
                log.warning("no warm-up: its prompt could not be encoded (%s).", exc)
                prompt = []
            tokens = settings.warmup_tokens if context is None else min(settings.warmup_tokens, context - len(prompt))
            if prompt and tokens > 0:
                await asyncio.to_thread(scheduler.warm_up, prompt, tokens)
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="specadapt", version="0.1.0", lifespan=lifespan)
    app.state.scheduler, app.state.metrics, app.state.settings = scheduler, metrics, settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        metrics.request_rejected.labels(name, "queue_full" if exc.code == "server_busy" else str(exc.status)).inc()
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.request_rejected.labels(name, "400").inc()
        return _error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    # --- validation shared by both endpoints ------------------------------------------------------

    def check_common(body: SamplingRequest) -> None:
        if body.model is not None and body.model != name:
            raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{name}' (GET /v1/models).",
                           param="model", code="model_not_found")
        if body.n not in (None, 1):
            raise APIError(400, f"n={body.n}: this server returns one choice per request (only n=1 is supported); "
                                "send separate requests instead.", param="n", code="unsupported_parameter")
        extra = body.model_extra or {}
        for field, unused in UNSUPPORTED.items():
            if field in extra and extra[field] not in unused:
                raise APIError(400, f"{field} is not supported by this server; leave it out.", param=field,
                               code="unsupported_parameter")

    def check_prompt_ids(ids: list[int], param: str) -> list[int]:
        if not ids:
            raise APIError(400, f"the {param} is empty; give some text to continue.", param=param, code="empty_prompt")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} in the {param} is outside the vocabulary (0..{vocab - 1}).",
                           param=param, code="invalid_value")
        if context is not None and len(ids) >= context:
            raise APIError(400, f"the {param} is {len(ids)} tokens, which fills the model's context window of {context} "
                                f"tokens; shorten it.", param=param, code="context_length_exceeded")
        return ids

    def requested_logprobs(body: SamplingRequest) -> int | None:
        """How many alternatives per token the request wants logprobs for (None: no logprobs)."""
        if isinstance(body, ChatCompletionRequest):
            if body.top_logprobs is not None and not body.logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs", code="invalid_value")
            param, value = "top_logprobs", (body.top_logprobs or 0) if body.logprobs else None
        else:
            param, value = "logprobs", body.logprobs
        if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
            raise APIError(400, f"{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {value}.", param=param,
                           code="invalid_value")
        return value

    def request_config(body: SamplingRequest, prompt_len: int, max_tokens: int | None, default_max: int | None) -> RequestConfig:
        room = context - prompt_len if context is not None else None
        if max_tokens is None:
            max_tokens = default_max if default_max is not None else room
            if max_tokens is None:
                raise APIError(400, "max_tokens is required: the model's context window is unknown.", param="max_tokens")
            max_tokens = min(max_tokens, room) if room is not None else max_tokens
        elif max_tokens < 1:
            raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens", code="invalid_value")
        elif room is not None and max_tokens > room:
            raise APIError(400, f"max_tokens is {max_tokens}, but the model's context window of {context} tokens leaves "
                                f"only {room} after the {prompt_len}-token prompt; lower max_tokens or shorten the prompt.",
                           param="max_tokens", code="context_length_exceeded")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        top_k = 0 if body.top_k in (None, -1) else body.top_k  # -1: "off", as in vLLM
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        try:
            return RequestConfig(max_tokens, temperature, top_k, top_p, body.seed, tuple(stop),
                                 logprobs=requested_logprobs(body))
        except SpecAdaptError as exc:
            message = str(exc)
            param = next((p for p in ("temperature", "top_k", "top_p", "stop", "seed") if message.startswith(p)), None)
            raise APIError(400, message, param=param, code="invalid_value") from None

    def encode_completion_prompt(prompt: Any) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"got {len(prompt)} prompts; this server takes one prompt per request.",
                               param="prompt", code="unsupported_parameter")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise APIError(400, "the prompt is empty; give some text to continue.", param="prompt", code="empty_prompt")
            return check_prompt_ids(decoder.encode(prompt), "prompt")
        return check_prompt_ids(list(prompt), "prompt")

    def encode_messages(body: ChatCompletionRequest) -> list[int]:
        messages = []
        for i, m in enumerate(body.messages):
            if isinstance(m.content, list):
                if any(part.type != "text" for part in m.content):
                    raise APIError(400, f"messages[{i}]: only text content is supported.", param="messages",
                                   code="unsupported_parameter")
                content = "".join(part.text or "" for part in m.content)
            else:
                content = m.content or ""
            messages.append({"role": m.role, "content": content})
        if not messages:
            raise APIError(400, "messages is empty; give at least one message.", param="messages", code="empty_prompt")
        if not has_chat_template(tokenizer):
            raise APIError(400, f"model '{name}' has no chat template; send plain text to /v1/completions instead.",
                           param="messages", code="no_chat_template")
        try:
            ids = decoder.encode(messages)
        except SpecAdaptError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_value") from None
        return check_prompt_ids(ids, "messages")

    # --- running a request ------------------------------------------------------------------------

    def submit(prompt: list[int], config: RequestConfig) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(kind: str, payload: Any) -> None:  # worker thread
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        job = Job(prompt, config, on_event, seed=config.seed)
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            raise APIError(503, str(exc), code="server_busy", type="server_error",
                           headers={"Retry-After": str(settings.retry_after_s)}) from None
        return job, events

    def worker_error(payload: tuple[int, str]) -> APIError:
        status, message = payload
        return APIError(status, message, type="server_error" if status >= 500 else "invalid_request_error")

    async def wait_for_result(request: Request, job: Job, events: asyncio.Queue) -> JobResult | None:
        """The request's result, or None when the client went away first (then the request is cancelled)."""

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    scheduler.cancel(job)
                    return None
                kind, payload = getter.result()
                if kind == "done":
                    return payload
                if kind == "error":
                    raise worker_error(payload)
        finally:
            watcher.cancel()

    async def run(request: Request, body: SamplingRequest, prompt: list[int], config: RequestConfig, chat: bool) -> Response:
        job, events = submit(prompt, config)
        ids = ResponseIds(chat, name)
        text = TextAssembler(tokenizer, config.stop_strings)
        # Logprobs cover every generated token, as token_ids do (the last ones may hold a stop string the text cuts).
        logprobs = None if config.logprobs is None else LogprobsFormat(tokenizer, chat, config.logprobs)
        if not body.stream:
            outcome = await wait_for_result(request, job, events)
            if outcome is None:
                return Response(status_code=499)  # nobody is listening any more
            text.ids = list(outcome.result.token_ids)
            reason = FINISH_REASONS.get(outcome.result.finish_reason, outcome.result.finish_reason)
            token_ids = list(outcome.result.token_ids) if body.return_token_ids else None
            return JSONResponse(ids.response(text.final_text(), reason, usage(outcome.result, outcome.load_capped_rounds),
                                             token_ids, logprobs and logprobs(outcome.result.logprobs)))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream() -> AsyncIterator[str]:
            finished = False
            scored: list = []  # logprobs of tokens whose text is not sent yet
            try:
                if chat:
                    yield _sse(ids.chunk(role=True))
                while True:
                    kind, payload = await events.get()
                    if kind == "tokens":
                        new, entries = payload
                        delta = text.add(new)
                        scored += entries or []
                        if delta:
                            yield _sse(ids.chunk(delta, logprobs=logprobs and logprobs(scored)))
                            scored = []
                    elif kind == "done":
                        finished = True
                        delta = text.finish()
                        if delta or scored:
                            yield _sse(ids.chunk(delta, logprobs=logprobs and logprobs(scored)))
                        reason = FINISH_REASONS.get(payload.result.finish_reason, payload.result.finish_reason)
                        # With return_token_ids, the finishing chunk carries all generated ids (text is sent in pieces).
                        token_ids = list(payload.result.token_ids) if body.return_token_ids else None
                        yield _sse(ids.chunk(finish_reason=reason, token_ids=token_ids))
                        if include_usage:
                            yield _sse(ids.chunk(usage=usage(payload.result, payload.load_capped_rounds), no_choices=True))
                        break
                    else:
                        finished = True
                        yield _sse(worker_error(payload).body())
                        break
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client disconnected (the response task was cancelled)
                    scheduler.cancel(job)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- endpoints ---------------------------------------------------------------------------------

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_common(body)
        prompt = encode_completion_prompt(body.prompt)
        config = request_config(body, len(prompt), body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
        return await run(request, body, prompt, config, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        check_common(body)
        prompt = encode_messages(body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        config = request_config(body, len(prompt), max_tokens, None)
        return await run(request, body, prompt, config, chat=True)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": name, "object": "model", "created": started, "owned_by": "specadapt", "max_model_len": context,
                "method": method.spec or method.name, **decoder.engine.target_quant}  # outputs are that target's
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> Response:
        if not scheduler.alive:
            return JSONResponse({"status": "error", "message": "the decoding worker is not running."}, 503)
        return JSONResponse({"status": "ok", "running": scheduler.running, "waiting": scheduler.waiting})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
