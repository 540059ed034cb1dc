"""The OpenAI wire format: request models (pydantic), response builders and the error shape.

Fields the OpenAI API defines but this server cannot honour (penalties, echo, tools, ...) are
refused with a 400 naming the field rather than silently ignored; unknown extra fields are ignored
(clients send vendor extensions freely).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..engine import GenerationResult
from ..logprobs import TokenLogprob
from ..stats import RequestStats


class APIError(Exception):
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None  # None: the served model
    max_tokens: int | None = None
    temperature: float | None = None  # None: 1.0, OpenAI's default
    top_p: float | None = None
    top_k: int | None = None  # an extension (vLLM has it too); 0 or -1 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = 1  # None (some clients send null): 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool | None = None  # an extension (as vLLM's): the generated ids in choices[0].token_ids


# OpenAI fields this server does not implement, and the values that mean "not used".
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "echo": (None, False),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None  # the legacy API's: the chosen token's and this many alternatives' logprobs


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = None  # alternatives per token, with logprobs: true


FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def spec_decode_usage(stats: RequestStats, method: str, load_capped_rounds: int) -> dict:
    """One request's speculative statistics (vLLM's spec-decode counters, per request)."""
    return {
        "method": method,
        "num_drafts": stats.position_reached[0] if stats.position_reached else 0,  # rounds that drafted >= 1 token
        "num_draft_tokens": stats.drafted,
        "num_accepted_tokens": stats.accepted,
        "num_accepted_tokens_per_pos": list(stats.position_accepted),
        "acceptance_rate": stats.acceptance_rate,
        "mean_accepted_length": stats.mean_accepted_length,
        "per_position_acceptance": stats.per_position_acceptance,
        "rounds": stats.rounds,
        "load_capped_rounds": load_capped_rounds,  # rounds whose drafting the load rule capped
    }


def usage(result: GenerationResult, load_capped_rounds: int) -> dict:
    s = result.stats
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.generated_tokens,
        "total_tokens": s.prompt_tokens + s.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_prompt_tokens},  # OpenAI's field: the prefix cache's part
        "spec_decode": spec_decode_usage(s, result.settings.get("method", ""), load_capped_rounds),
    }


class LogprobsFormat:
    """Generated tokens' logprobs in OpenAI's shapes: chat's ``{"content": [{"token", "logprob", "bytes",
    "top_logprobs"}]}``, completions' ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``. A token's text
    is its own decoding (a piece of a multi-byte character decodes to U+FFFD); ``text_offset`` counts characters of
    the completion's text before it. Called once per response, or once per streamed chunk in order: the chunks'
    lists join to the whole response's."""

    def __init__(self, tokenizer, chat: bool, top: int) -> None:
        self.tokenizer, self.chat, self.top = tokenizer, chat, top
        self.ids: list[int] = []  # tokens formatted so far (for text offsets)

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def __call__(self, entries: list[TokenLogprob]) -> dict:
        if self.chat:
            def one(token_id: int, logprob: float) -> dict:
                piece = self._piece(token_id)
                return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

            content = [{**one(e.token_id, e.logprob), "top_logprobs": [one(i, lp) for i, lp in e.top]} for e in entries]
            self.ids += [e.token_id for e in entries]
            return {"content": content, "refusal": None}
        offsets = []
        for e in entries:
            offsets.append(len(self.tokenizer.decode(self.ids, skip_special_tokens=True)))
            self.ids.append(e.token_id)
        return {"tokens": [self._piece(e.token_id) for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._piece(i): lp for i, lp in e.top} for e in entries] if self.top else None,
                "text_offset": offsets}


class ResponseIds:
    """The id, creation time and model every response and chunk of one request carries."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def response(self, text: str, finish_reason: str | None, usage: dict, token_ids: list[int] | None = None,
                 logprobs: dict | None = None) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        if token_ids is not None:
            choice["token_ids"] = token_ids
        obj: Literal["chat.completion", "text_completion"] = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice],
                "usage": usage}

    def chunk(self, text: str | None = None, finish_reason: str | None = None, role: bool = False,
              usage: dict | None = None, no_choices: bool = False, token_ids: list[int] | None = None,
              logprobs: dict | None = None) -> dict:
        if no_choices:
            choices: list[dict] = []
        elif self.chat:
            delta: dict = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choices = [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
        else:
            choices = [{"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}]
        if token_ids is not None and choices:
            choices[0]["token_ids"] = token_ids
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                "usage": usage}
