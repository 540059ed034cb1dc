"""`specadapt serve`: the official openai client against a live uvicorn server on tiny fp32 models.

Every result must equal what ``engine.generate`` gives for that request alone (greedy: token-identical;
seeded sampling: identical), whatever else runs in the batch."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from specadapt import SpecDecoder
from specadapt.engine import RequestConfig
from specadapt.methods import make_method
from specadapt.serve import ServeSettings, create_app
from specadapt.serve.scheduler import WARMUP_DRAFT, Job

from conftest import perturbed_copy, save_tiny_checkpoint

WORDS = [f"w{i}" for i in range(62)]
METHOD = "fixed:3"
NAME = "tiny"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> SpecDecoder:
    root = tmp_path_factory.mktemp("serve")
    save_tiny_checkpoint(root / "target", 0, WORDS)
    loaded = SpecDecoder.from_pretrained(str(root / "target"), None, dtype="float32", device="cpu")
    loaded.tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}w0"
    # A draft that agrees often but not always, so the statistics are neither 0 nor 1.
    return SpecDecoder(loaded.target, loaded.tokenizer, perturbed_copy(loaded.target, 0.3), names=(NAME, "draft"))


@contextlib.contextmanager
def live_server(decoder: SpecDecoder, **settings):
    """The app on a free loopback port, served by uvicorn in a background thread."""
    # No load rule unless a test asks for one: the auto rule reacts to timings, and these tests compare the
    # drafting statistics with generate()'s (outputs are the same under any rule: tests/test_serve_load.py).
    app = create_app(decoder, ServeSettings(**{"model_name": NAME, "method": METHOD, "spec_load": "off", **settings}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    app.state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield app
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def slow_rounds(app, seconds: float = 0.02):
    """Make every round of the app's batch take a while, so a long request is reliably still running.
    Returns the function that undoes it."""
    batch = app.state.scheduler.batch
    step = batch.step

    def slow_step():
        time.sleep(seconds)
        return step()

    batch.step = slow_step
    return lambda: vars(batch).pop("step", None)


def client(app) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.state.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def server(decoder):
    with live_server(decoder, max_body_bytes=20_000) as app:
        yield app


def reference(decoder, prompt_ids, max_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=None, stop=(), logprobs=None):
    """What the engine gives this request alone, served as the server does (its first token with the prefill), and
    the text the API must return for it."""
    config = RequestConfig(max_tokens, temperature, top_k, top_p, seed, tuple(stop), logprobs=logprobs)
    batch = decoder.engine.batch(make_method(METHOD), early_first_token=True)
    request = batch.add(prompt_ids, config)
    while batch.active:
        batch.step()
    result = batch.result(request)
    text = decoder.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s in text]
    return result, text[: min(cuts)] if cuts else text


def assert_usage_matches(usage: dict, result) -> None:
    s = result.stats
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (s.prompt_tokens, len(result.token_ids))
    spec = usage["spec_decode"]
    assert spec["method"] == "fixed"
    assert (spec["num_draft_tokens"], spec["num_accepted_tokens"], spec["rounds"]) == (s.drafted, s.accepted, s.rounds)
    assert spec["num_drafts"] == s.position_reached[0] and spec["num_accepted_tokens_per_pos"] == s.position_accepted
    assert spec["acceptance_rate"] == pytest.approx(s.acceptance_rate)
    assert spec["mean_accepted_length"] == pytest.approx(s.mean_accepted_length)
    assert spec["per_position_acceptance"] == pytest.approx(s.per_position_acceptance)
    assert spec["load_capped_rounds"] == 0


def extra(usage) -> dict:
    return usage.model_dump()


def test_completions_and_chat_streamed_and_not_equal_generate_alone(server, decoder):
    api = client(server)
    prompt = "w1 w2 w3 w4"
    result, text = reference(decoder, decoder.encode(prompt), 14)
    assert 0 < result.stats.accepted < result.stats.drafted  # the statistics say something

    plain = api.completions.create(model=NAME, prompt=prompt, max_tokens=14, temperature=0)
    assert plain.choices[0].text == text and plain.choices[0].finish_reason == "length"
    assert_usage_matches(extra(plain.usage), result)
    assert plain.usage.model_extra["spec_decode"] == extra(plain.usage)["spec_decode"]  # as the README shows

    assert "token_ids" not in plain.choices[0].model_extra  # only on request
    pieces, usage, token_ids = [], None, None
    for chunk in api.completions.create(model=NAME, prompt=prompt, max_tokens=14, temperature=0, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"return_token_ids": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
            token_ids = chunk.choices[0].model_extra.get("token_ids", token_ids)
        if chunk.usage is not None:
            usage = extra(chunk.usage)
    assert "".join(pieces) == text and len([p for p in pieces if p]) > 1  # several pieces, joined exactly
    assert token_ids == result.token_ids
    assert_usage_matches(usage, result)

    messages = [{"role": "user", "content": "w5 w6 w7"}]
    result, text = reference(decoder, decoder.encode(messages), 10)
    chat = api.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == text and chat.choices[0].message.role == "assistant"
    assert_usage_matches(extra(chat.usage), result)

    pieces, usage, reasons = [], None, []
    for chunk in api.chat.completions.create(model=NAME, messages=messages, max_completion_tokens=10, temperature=0,
                                             stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
        if chunk.usage is not None:
            usage = extra(chunk.usage)
    assert "".join(pieces) == text and reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert_usage_matches(usage, result)

    # Without include_usage no chunk carries usage (as in OpenAI's API).
    chunks = list(api.completions.create(model=NAME, prompt=prompt, max_tokens=3, temperature=0, stream=True))
    assert all(c.usage is None for c in chunks)


def assert_same_tree(got, want) -> None:
    """Equal JSON-like values, floats within 1e-5 (the server's prefix cache copies K/V that alone were computed)."""
    if isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5)
    elif isinstance(want, (list, dict)):
        assert type(got) is type(want) and len(got) == len(want)
        pairs = zip(got, want) if isinstance(want, list) else ((got[k], v) for k, v in want.items())
        for a, b in pairs:
            assert_same_tree(a, b)
    else:
        assert got == want


def test_logprobs_are_the_targets_in_openais_shapes_streamed_or_not(server, decoder):
    api, tok = client(server), decoder.tokenizer
    prompt = "w3 w9 w4 w11"
    full, _ = reference(decoder, decoder.encode(prompt), 30)
    stop = tok.decode(full.token_ids[6:8])  # held back while streaming, then cut: its tokens still get logprobs
    result, text = reference(decoder, decoder.encode(prompt), 30, stop=[stop], logprobs=3)
    n = len(result.token_ids)
    assert result.finish_reason == "stop" and len(result.logprobs) == n
    legacy = {"tokens": [tok.decode([e.token_id]) for e in result.logprobs],
              "token_logprobs": [e.logprob for e in result.logprobs],
              "top_logprobs": [{tok.decode([i]): lp for i, lp in e.top} for e in result.logprobs],
              "text_offset": [len(tok.decode(result.token_ids[:i], skip_special_tokens=True)) for i in range(n)]}
    plain = api.completions.create(model=NAME, prompt=prompt, max_tokens=30, temperature=0, stop=[stop], logprobs=3)
    assert plain.choices[0].text == text
    assert_same_tree(plain.choices[0].logprobs.model_dump(), legacy)
    joined: dict = {key: [] for key in legacy}
    pieces = []
    for chunk in api.completions.create(model=NAME, prompt=prompt, max_tokens=30, temperature=0, stop=[stop],
                                        logprobs=3, stream=True):
        pieces.append(chunk.choices[0].text)
        if chunk.choices[0].logprobs is not None:
            for key, values in chunk.choices[0].logprobs.model_dump().items():
                joined[key] += values
    assert "".join(pieces) == text
    assert_same_tree(joined, plain.choices[0].logprobs.model_dump())

    messages = [{"role": "user", "content": "w5 w6 w7"}]
    result, text = reference(decoder, decoder.encode(messages), 10, logprobs=2)
    piece = lambda i, lp: {"token": tok.decode([i]), "logprob": lp, "bytes": list(tok.decode([i]).encode())}
    content = [{**piece(e.token_id, e.logprob), "top_logprobs": [piece(i, lp) for i, lp in e.top]} for e in result.logprobs]
    assert [c["top_logprobs"][0]["token"] for c in content] == [c["token"] for c in content]  # greedy: the top one
    chat = api.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=2)
    assert chat.choices[0].message.content == text
    assert_same_tree(chat.choices[0].logprobs.model_dump()["content"], content)
    streamed = [c for chunk in api.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0,
                                                             logprobs=True, top_logprobs=2, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for c in chunk.choices[0].logprobs.model_dump()["content"]]
    assert_same_tree(streamed, chat.choices[0].logprobs.model_dump()["content"])
    assert api.chat.completions.create(model=NAME, messages=messages, max_tokens=3).choices[0].logprobs is None


def test_streaming_with_a_stop_string_sends_exactly_the_text_before_it(server, decoder):
    ids = decoder.encode("w20 w21 w22 w23")
    full, _ = reference(decoder, ids, 30)
    stop = decoder.tokenizer.decode(full.token_ids[4:6])  # two words: the stop string spans two tokens
    result, text = reference(decoder, ids, 30, stop=[stop])
    assert result.finish_reason == "stop" and stop not in text and result.text.startswith(text)
    chunks = list(client(server).completions.create(model=NAME, prompt="w20 w21 w22 w23", max_tokens=30, temperature=0,
                                                    stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text and chunks[-1].choices[0].finish_reason == "stop"


def test_text_assembler_holds_back_partial_stop_strings_and_characters():
    from specadapt.serve.text import TextAssembler

    class Pieces:  # token i decodes to PIECES[i]; "\ufffd" stands for half of a multi-byte character
        PIECES = ["ab", "c", "\ufffd", "é", "S", "TO", "P", "x"]

        def decode(self, ids, skip_special_tokens=False):
            text = "".join(self.PIECES[i] for i in ids)
            return text.replace("\ufffdé", "é")

    text = TextAssembler(Pieces(), stop=["STOP"])
    assert [text.add([i]) for i in range(7)] == ["ab", "c", "", "é", "", "", ""]
    assert text.finish() == "" and text.final_text() == "abcé"
    text = TextAssembler(Pieces(), stop=["STOP"])
    assert text.add([4, 5]) == "" and text.add([7]) == "STOx" and text.finish() == ""


# (prompt, max_tokens, sampling, stop): lengths, sampling settings and stop strings all differ.
CLIENTS = [
    ("w1 w2 w3", 24, {}, None),
    ("w9", 7, {"temperature": 0.9, "seed": 3}, None),
    ("w4 w5 w6 w7 w8 w9 w10", 18, {"temperature": 1.2, "top_k": 5, "seed": 4}, None),
    ("w11 w12", 12, {"temperature": 0.7, "top_p": 0.8, "seed": 5}, None),
    ("w20 w21 w22 w23", 30, {}, "stop-from-reference"),
    ("w30", 16, {"temperature": 1.0, "seed": 6}, None),
    ("w40 w41 w42 w43 w44", 9, {}, None),
    ("w50 w51", 20, {"temperature": 0.8, "top_k": 10, "top_p": 0.9, "seed": 7}, None),
]


def test_eight_concurrent_clients_each_get_what_they_get_alone(server, decoder):
    expected, stops = [], []
    for prompt, n, sampling, stop in CLIENTS:
        ids = decoder.encode(prompt)
        # Two words the greedy output really produces, so the request ends on a stop string spanning two tokens.
        stops.append([decoder.tokenizer.decode(reference(decoder, ids, n)[0].token_ids[4:6])] if stop else None)
        expected.append(reference(decoder, ids, n, stop=stops[-1] or (), **sampling))
    scheduler = server.state.scheduler
    joins_before, outcomes = len(scheduler.joins), [None] * len(CLIENTS)
    undo = slow_rounds(server, 0.005)  # rounds of at least 5 ms, so that staggered arrivals overlap on any machine

    def run(i: int) -> None:
        prompt, n, sampling, _ = CLIENTS[i]
        time.sleep(0.01 * i)  # arrive while the others run, at different rounds
        top_k = {"top_k": sampling.pop("top_k")} if "top_k" in sampling else None
        outcomes[i] = client(server).completions.create(
            model=NAME, prompt=prompt, max_tokens=n, stop=stops[i], extra_body={"return_token_ids": True, **(top_k or {})},
            **{"temperature": 0, **sampling})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(CLIENTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    undo()
    for (result, text), response, stop in zip(expected, outcomes, stops):
        assert response.choices[0].model_extra["token_ids"] == result.token_ids  # token-identical
        assert response.choices[0].text == text
        assert response.choices[0].finish_reason == ("stop" if stop or result.finish_reason != "length" else "length")
        if stop:  # the stop string was generated, but is not returned
            assert stop[0] in result.text and stop[0] not in text and result.text.startswith(text)
        assert_usage_matches(extra(response.usage), result)
    assert len({r.id for r in outcomes}) == len(CLIENTS)  # nothing lost, nothing duplicated
    joins = list(scheduler.joins)[joins_before:]
    assert len(joins) == len(CLIENTS)
    assert len({round_no for round_no, _ in joins}) > 1 and max(running for _, running in joins) > 0  # joined a running batch


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_disconnect_mid_stream_cancels_and_frees_the_row(decoder):
    with live_server(decoder) as app:
        slow_rounds(app)
        scheduler, url = app.state.scheduler, app.state.url
        result, text = reference(decoder, decoder.encode("w5 w6"), 120)
        other: dict = {}
        stayer = threading.Thread(target=lambda: other.update(httpx.post(url + "/v1/completions", timeout=60, json={
            "model": NAME, "prompt": "w5 w6", "max_tokens": 120, "temperature": 0}).json()))
        body = {"model": NAME, "prompt": "w1 w2", "max_tokens": 500, "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", url + "/v1/completions", json=body) as response:
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                stayer.start()
                wait_until(lambda: len(scheduler.batch.requests) == 2)
                assert scheduler.running == 2 and len(scheduler.batch.requests) == 2
            # The stream is closed here: the server cancels that request and the batch shrinks to the other one.
            wait_until(lambda: scheduler.running < 2 and len(scheduler.batch.requests) < 2)
            assert stayer.is_alive() and scheduler.running == 1 and len(scheduler.batch.requests) == 1
            stayer.join(60)
            assert other["choices"][0]["text"] == text  # undisturbed
            assert_usage_matches(other["usage"], result)
            wait_until(lambda: not (scheduler.running or scheduler.batch.active))
            assert scheduler.running == 0 and scheduler.batch.active == 0
            # A non-streaming request whose client gives up is cancelled as well.
            with pytest.raises(httpx.ReadTimeout):
                http.post(url + "/v1/completions", json={**body, "stream": False}, timeout=0.3)
            wait_until(lambda: not (scheduler.running or scheduler.batch.active))
            assert scheduler.running == 0 and scheduler.batch.active == 0
            metrics = scrape(http, url)
        assert metrics[("specadapt:request_success_total", ("cancelled",))] == 2
        assert metrics[("specadapt:request_success_total", ("length",))] == 1
        assert metrics[("specadapt:generation_tokens_total", ())] < 120 + 2 * 500


def test_full_queue_answers_503_with_retry_after(decoder):
    with live_server(decoder, method="autoregressive", max_batch_size=1, max_queue=1, retry_after_s=3) as app:
        slow_rounds(app)
        scheduler, url = app.state.scheduler, app.state.url
        long = {"model": NAME, "prompt": "w1 w2", "max_tokens": 500, "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http, http.stream("POST", url + "/v1/completions", json=long) as running:
            lines = running.iter_lines()  # kept: closing this generator would close the connection
            next(line for line in lines if line.startswith("data:"))
            waiting = threading.Thread(target=lambda: httpx.post(url + "/v1/completions", timeout=30, json={
                "model": NAME, "prompt": "w3", "max_tokens": 2, "temperature": 0}))
            waiting.start()
            wait_until(lambda: scheduler.waiting == 1)
            refused = http.post(url + "/v1/completions", json={"model": NAME, "prompt": "w4", "max_tokens": 2})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
            assert refused.json()["error"] == {
                "message": "the server is at capacity (1 running, 1 waiting); retry later.",
                "type": "server_error", "param": None, "code": "server_busy"}
        waiting.join(30)  # the long request was cancelled when its stream closed; the waiting one ran
        assert scheduler.running == 0 and scheduler.waiting == 0
        with httpx.Client() as http:
            metrics = scrape(http, url)
        assert metrics[("specadapt:request_rejected_total", ("queue_full",))] == 1
        assert metrics[("specadapt:request_success_total", ("length",))] == 1


PROMPT_600 = " ".join(["w3"] * 600)
BAD = [
    ({"model": "gpt-4", "prompt": "w1"}, 404, "model", "The model 'gpt-4' does not exist; this server serves 'tiny' (GET /v1/models)."),
    ({"prompt": "   "}, 400, "prompt", "the prompt is empty; give some text to continue."),
    ({"prompt": []}, 400, "prompt", "the prompt is empty; give some text to continue."),
    ({"prompt": [1, 2, 999]}, 400, "prompt", "token id 999 in the prompt is outside the vocabulary (0..63)."),
    ({"prompt": ["w1", "w2"]}, 400, "prompt", "got 2 prompts; this server takes one prompt per request."),
    ({"prompt": "w1", "max_tokens": 0}, 400, "max_tokens", "max_tokens must be at least 1, got 0."),
    ({"prompt": "w1 w2", "max_tokens": 600}, 400, "max_tokens",
     "max_tokens is 600, but the model's context window of 512 tokens leaves only 510 after the 2-token prompt; "
     "lower max_tokens or shorten the prompt."),
    ({"prompt": PROMPT_600}, 400, "prompt",
     "the prompt is 600 tokens, which fills the model's context window of 512 tokens; shorten it."),
    ({"prompt": "w1", "temperature": -1}, 400, "temperature", "temperature must be >= 0 (0 = greedy), got -1.0."),
    ({"prompt": "w1", "top_p": 1.5}, 400, "top_p", "top_p must be in (0, 1] (1 disables it), got 1.5."),
    ({"prompt": "w1", "top_k": -3}, 400, "top_k", "top_k must be an integer >= 0 (0 disables it), got -3."),
    ({"prompt": "w1", "seed": -1}, 400, "seed",
     "seed must be an integer in [0, 9223372036853727231] (or None for a random one), got -1."),
    ({"prompt": "w1", "temperature": 1e-9}, 400, "temperature", "temperature 1e-09 is too small: logits divided by it overflow."),
    ({"prompt": "w1", "stop": ["w2", ""]}, 400, "stop", "stop strings must be non-empty text."),
    ({"prompt": "w1", "n": 2}, 400, "n",
     "n=2: this server returns one choice per request (only n=1 is supported); send separate requests instead."),
    ({"prompt": "w1", "echo": True}, 400, "echo", "echo is not supported by this server; leave it out."),
    ({"prompt": "w1", "logprobs": 21}, 400, "logprobs", "logprobs must be between 0 and 20, got 21."),
    ({"prompt": "w1", "max_tokens": "lots"}, 400, "max_tokens",
     "max_tokens: Input should be a valid integer, unable to parse string as an integer."),
    ({"max_tokens": 3}, 400, "prompt", "prompt: Field required."),
    (b'{"prompt": "w1", ', 400, None, "malformed JSON body"),
    (b"[1, 2]", 400, None, "the request body must be a JSON object."),
    (b'{"prompt": "' + b"w1 " * 8000 + b'"}', 413, None, "the request body is 24014 bytes; this server accepts at most 20000 bytes (--max-body-bytes)."),
]
BAD_CHAT = [
    ({"messages": []}, 400, "messages", "messages is empty; give at least one message."),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages", "the chat messages are empty; give some text to continue."),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages",
     "messages[0]: only text content is supported."),
    ({"messages": [{"role": "user", "content": "w1"}], "max_completion_tokens": 0}, 400, "max_tokens",
     "max_tokens must be at least 1, got 0."),
    ({"messages": [{"role": "user", "content": "w1"}], "top_logprobs": 2}, 400, "top_logprobs",
     "top_logprobs needs logprobs: true."),
    ({"messages": [{"role": "user", "content": "w1"}], "logprobs": True, "top_logprobs": -1}, 400, "top_logprobs",
     "top_logprobs must be between 0 and 20, got -1."),
]


def test_bad_requests_get_openai_errors_and_do_not_disturb_others(server, decoder):
    url = server.state.url
    result, text = reference(decoder, decoder.encode("w7 w8"), 60)
    good: dict = {}
    runner = threading.Thread(target=lambda: good.update(httpx.post(url + "/v1/completions", timeout=60, json={
        "model": NAME, "prompt": "w7 w8", "max_tokens": 60, "temperature": 0}).json()))
    runner.start()
    with httpx.Client(timeout=30) as http:
        for path, cases in (("/v1/completions", BAD), ("/v1/chat/completions", BAD_CHAT)):
            for body, status, param, message in cases:
                if isinstance(body, bytes):
                    response = http.post(url + path, content=body, headers={"content-type": "application/json"})
                else:
                    response = http.post(url + path, json=body)
                assert response.status_code == status, (body, response.text)
                error = response.json()["error"]
                assert error["message"].startswith(message), error
                assert error["param"] == param and error["type"] == "invalid_request_error"
        chunked = http.post(url + "/v1/completions", content=iter([b'{"prompt": "', b"w1 " * 8000, b'"}']))
        assert chunked.status_code == 413 and "over 20000 bytes" in chunked.json()["error"]["message"]
        assert http.get(url + "/v1/nothing").json()["error"]["message"] == "Not Found"
    runner.join(60)
    assert good["choices"][0]["text"] == text
    assert_usage_matches(good["usage"], result)


def test_chat_without_a_chat_template_is_refused(decoder):
    import copy

    from fastapi.testclient import TestClient

    plain = copy.copy(decoder)
    plain.tokenizer = copy.deepcopy(decoder.tokenizer)
    plain.tokenizer.chat_template = None
    # Validation happens before the worker is involved, so the app need not be started (no lifespan).
    response = TestClient(create_app(plain, ServeSettings(model_name=NAME, method=METHOD))).post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "w1"}]})
    assert response.status_code == 400 and response.json()["error"] == {
        "message": "model 'tiny' has no chat template; send plain text to /v1/completions instead.",
        "type": "invalid_request_error", "param": "messages", "code": "no_chat_template"}


def scrape(http: httpx.Client, url: str) -> dict:
    """/metrics as {(sample name, label values other than model_name): value}."""
    text = http.get(url + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(v for k, v in sorted(sample.labels.items()) if k != "model_name")
            out[(sample.name, labels)] = sample.value
    return out


def test_metrics_are_the_sums_of_the_per_request_statistics(decoder):
    with live_server(decoder) as app:
        api, usages, reasons = client(app), [], []
        for i, (prompt, n, sampling, _) in enumerate(CLIENTS[:5]):
            top_k = {"top_k": sampling["top_k"]} if "top_k" in sampling else None
            sampling = {k: v for k, v in sampling.items() if k != "top_k"}
            response = api.completions.create(model=NAME, prompt=prompt, max_tokens=n, extra_body=top_k,
                                              **{"temperature": 0, **sampling})
            usages.append(extra(response.usage))
            reasons.append(response.choices[0].finish_reason)
        with httpx.Client() as http:
            metrics = scrape(http, app.state.url)
    spec = [u["spec_decode"] for u in usages]
    assert metrics[("specadapt:spec_decode_num_drafts_total", ())] == sum(s["num_drafts"] for s in spec)
    assert metrics[("specadapt:spec_decode_num_draft_tokens_total", ())] == sum(s["num_draft_tokens"] for s in spec)
    assert metrics[("specadapt:spec_decode_num_accepted_tokens_total", ())] == sum(s["num_accepted_tokens"] for s in spec)
    for position in range(3):
        assert metrics[("specadapt:spec_decode_num_accepted_tokens_per_pos_total", (str(position),))] == sum(
            s["num_accepted_tokens_per_pos"][position] for s in spec)
    assert metrics[("specadapt:generation_tokens_total", ())] == sum(u["completion_tokens"] for u in usages)
    assert metrics[("specadapt:prompt_tokens_total", ())] == sum(u["prompt_tokens"] for u in usages)
    assert reasons.count("length") >= 3  # most run to their limit (a sampled one may end at EOS)
    successes = {labels: v for (name, labels), v in metrics.items() if name == "specadapt:request_success_total"}
    assert sum(successes.values()) == 5 and successes.get(("length",), 0) == reasons.count("length")
    for histogram in ("time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds"):
        assert metrics[(f"specadapt:{histogram}_count", ())] == 5
    assert metrics[("specadapt:num_requests_running", ())] == 0 and metrics[("specadapt:num_requests_waiting", ())] == 0


@pytest.mark.parametrize("load_k", [0, 1])
def test_load_rule_caps_drafting_above_spec_max_batch(decoder, load_k):
    with live_server(decoder, spec_load="static", spec_max_batch=1, spec_load_k=load_k) as app:
        slow_rounds(app, 0.01)  # so that the three requests surely overlap
        prompts = ["w1 w2 w3", "w9", "w30 w31"]
        expected = [reference(decoder, decoder.encode(p), 20) for p in prompts]
        outcomes = [None] * 3

        def run(i):
            outcomes[i] = client(app).completions.create(model=NAME, prompt=prompts[i], max_tokens=20, temperature=0)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        alone = client(app).completions.create(model=NAME, prompt=prompts[0], max_tokens=20, temperature=0)
        with httpx.Client() as http:
            metrics = scrape(http, app.state.url)
    spec = [extra(o.usage)["spec_decode"] for o in outcomes]
    assert [o.choices[0].text for o in outcomes] == [text for _, text in expected]  # still lossless
    assert sum(s["load_capped_rounds"] for s in spec) > 0
    # Capped rounds draft at most load_k tokens per request (none when 0).
    assert all(s["num_draft_tokens"] <= 3 * (s["rounds"] - s["load_capped_rounds"]) + load_k * s["load_capped_rounds"]
               for s in spec)
    assert max(app.state.scheduler.batch_sizes) > 1
    assert extra(alone.usage)["spec_decode"]["load_capped_rounds"] == 0  # alone, the rule does not apply
    assert_usage_matches(extra(alone.usage), expected[0][0])
    assert metrics[("specadapt:spec_decode_load_capped_rounds_total", ())] == sum(s["load_capped_rounds"] for s in spec)


def test_a_failing_round_fails_only_the_request_that_joined_it(decoder):
    with live_server(decoder) as app:
        slow_rounds(app)
        scheduler = app.state.scheduler
        result, text = reference(decoder, decoder.encode("w1 w2"), 60)
        assert len(result.token_ids) == 60
        good: dict = {}
        start = scheduler.rounds  # the warm-up's rounds came before
        runner = threading.Thread(target=lambda: good.update(httpx.post(app.state.url + "/v1/completions", timeout=60, json={
            "model": NAME, "prompt": "w1 w2", "max_tokens": 60, "temperature": 0}).json()))
        runner.start()
        wait_until(lambda: scheduler.rounds >= start + 2)
        events, done = [], threading.Event()

        def on_event(kind, payload):
            events.append((kind, payload))
            done.set()

        # A token id outside the embedding table (the handlers refuse it; here it goes straight to the worker).
        scheduler.submit(Job([1, 10_000], RequestConfig(4), on_event))
        assert done.wait(30)
        kind, (status, message) = events[-1]
        assert kind == "error" and status == 500 and message.startswith("decoding failed on the server (IndexError")
        runner.join(60)
        assert good["choices"][0]["text"] == text  # it went on in a fresh batch, token for token
        assert scheduler.running == 0 and len(good["usage"]["spec_decode"]["num_accepted_tokens_per_pos"]) == 3
        assert_usage_matches(good["usage"], result)  # its statistics carried over, and drafting went on the same
        # Nobody joined the next failing round: it cannot be pinned on anyone, so the round's requests fail.
        scheduler.submit(Job([1, 2], RequestConfig(4), on_event))
        scheduler.batch.step = lambda: 1 / 0
        done.clear()
        assert done.wait(30)
        assert events[-1][0] == "error" and "ZeroDivisionError" in events[-1][1][1]
        response = client(app).completions.create(model=NAME, prompt="w2 w3", max_tokens=8, temperature=0)
        assert response.choices[0].text == reference(decoder, decoder.encode("w2 w3"), 8)[1]
        assert httpx.get(app.state.url + "/health").json() == {"status": "ok", "running": 0, "waiting": 0}


def test_the_warm_up_measures_the_load_rule_before_traffic_and_is_not_counted(decoder):
    with live_server(decoder, spec_load="auto", warmup_tokens=12) as app:
        scheduler, rule = app.state.scheduler, app.state.scheduler.load_rule
        records, sizes = list(scheduler.records), list(scheduler.batch_sizes)  # the warm-up's: nobody has sent anything
        response = client(app).completions.create(model=NAME, prompt="w1 w2", max_tokens=5, temperature=0)
        with httpx.Client() as http:
            metrics = scrape(http, app.state.url)
    assert sum(r.K for r in records) > 0 and max(r.K for r in records) <= WARMUP_DRAFT
    assert set(sizes) == {1, 2}  # the second warm-up request joined the first
    # A draft step alone and in a batch of two, and the draft's pass over the joining prompt, measured:
    assert set(rule.draft_step) == {1, 2} and rule.fill_per_token is not None
    spec = extra(response.usage)["spec_decode"]  # /metrics counts the one client request only
    assert metrics[("specadapt:generation_tokens_total", ())] == response.usage.completion_tokens == 5
    assert metrics[("specadapt:spec_decode_num_draft_tokens_total", ())] == spec["num_draft_tokens"]
    assert metrics[("specadapt:e2e_request_latency_seconds_count", ())] == 1
    with live_server(decoder, warmup_tokens=0) as app:
        assert app.state.scheduler.rounds == 0


def test_a_prompt_starting_as_an_earlier_one_did_is_fed_from_where_they_part(decoder):
    """The server's prefix cache (on by default): the second request's shared system turn is copied, not fed, for
    both models, and both answers are what each gets alone."""
    system = {"role": "system", "content": " ".join(WORDS[10:30])}
    asks = [[system, {"role": "user", "content": "w1 w2"}], [system, {"role": "user", "content": "w3 w4 w5"}]]
    ids = [decoder.encode(m) for m in asks]
    shared = next(i for i, (a, b) in enumerate(zip(*ids)) if a != b)
    copied = shared // 8 * 8
    with live_server(decoder, warmup_tokens=0) as app:
        api = client(app)
        for messages, prompt, cached in zip(asks, ids, [0, copied]):
            _, text = reference(decoder, prompt, 8)
            answer = api.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
            assert answer.choices[0].message.content == text
            assert answer.usage.prompt_tokens_details.cached_tokens == cached  # OpenAI's field for it
        stores = app.state.scheduler.engine.prefixes
        assert stores["target"].reused_tokens == stores["draft"].reused_tokens == copied > 0
        metrics = {s.name: s.value for f in text_string_to_metric_families(httpx.get(app.state.url + "/metrics").text)
                   for s in f.samples}
        assert metrics["specadapt:prefix_cache_hits_total"] == copied
        assert metrics["specadapt:prefix_cache_queries_total"] == sum(map(len, ids))


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [NAME]
    assert models.data[0].model_dump()["max_model_len"] == 512
    assert httpx.get(server.state.url + "/health").json()["status"] == "ok"


def test_cli_defaults_come_from_the_settings():
    from typer.testing import CliRunner

    from specadapt.api import DEFAULT_METHOD
    from specadapt.cli import app
    from specadapt.models import zoo

    settings = ServeSettings()
    assert (settings.target, settings.draft, settings.method) == (zoo.DEFAULT_TARGET, zoo.DEFAULT_DRAFT, DEFAULT_METHOD)
    assert settings.served_name == zoo.DEFAULT_TARGET
    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    for option in ("--spec-load", "--spec-auto-margin", "--spec-auto-probe-every", "--spec-max-batch", "--max-batch-size", "--max-queue", "--max-body-bytes", "--model-name"):
        assert option in out
    from specadapt.errors import SpecAdaptError

    with pytest.raises(SpecAdaptError, match="max_batch_size must be >= 1, got 0."):
        ServeSettings(max_batch_size=0)
    assert settings.early_first_token and "--fused-first-round" in out  # the first token comes with the prefill


def test_generate_and_bench_hand_the_same_model_options_to_the_loader(decoder, monkeypatch):
    """generate, bench and serve share one ModelSettings; float32 copies on means "auto" (pairs, where memory allows)
    for generate and bench, True for a server (its batches are blocks of several rows too: the test above)."""
    from typer.testing import CliRunner

    from specadapt.api import SpecDecoder as Decoder
    from specadapt.bench.runner import BenchSettings, _load_decoder
    from specadapt.cli import app
    from specadapt.errors import SpecAdaptError

    loaded = []
    monkeypatch.setattr(Decoder, "from_pretrained", classmethod(lambda cls, *a, **k: loaded.append((a, k)) or decoder))
    options = {"target": "t", "draft": "d", "dtype": "float32", "device": "cpu", "draft_quant": "int8",
               "draft_vocab": "1000", "draft_vocab_ranking": "lowest"}
    flags = [x for key, value in options.items() for x in ("--" + key.replace("_", "-"), value)]
    result = CliRunner().invoke(app, ["generate", "w1 w2", "--method", "fixed:2", "--max-new-tokens", "2", *flags,
                                      "--no-float32-copies"])
    assert result.exit_code == 0, result.output
    _load_decoder(BenchSettings(**options, methods=["fixed:2"]), log=lambda _: None)
    expected = {"dtype": "float32", "device": "cpu", "draft_quant": "int8", "draft_group_size": None, "draft_vocab": 1000,
                "draft_vocab_ranking": "lowest", "target_quant": "none", "target_group_size": None}
    assert loaded == [(("t", "d"), {**expected, "float32_copies": False}), (("t", "d"), {**expected, "float32_copies": "auto"})]
    with pytest.raises(SpecAdaptError, match=r"^unknown dtype 'float64'; use one of: bfloat16, float32, float16\.$"):
        ServeSettings(dtype="float64")  # refused with the settings, before any model is loaded
    assert BenchSettings(device="cuda:7").device == "cuda:7"  # a recorded run may name another machine's device
    with pytest.raises(SpecAdaptError, match=r"^unknown device 'meta'; use auto, cpu, cuda or cuda:N\.$"):
        ServeSettings(device="meta").check_device()


def test_serve_command_loads_the_pair_and_runs_the_app(decoder, monkeypatch):
    import prometheus_client
    import uvicorn
    from typer.testing import CliRunner

    from specadapt.api import SpecDecoder as Decoder
    from specadapt.cli import app
    from specadapt.models import zoo

    loaded, ran = [], {}
    monkeypatch.setattr(Decoder, "from_pretrained", classmethod(lambda cls, *a, **k: loaded.append((a, k)) or decoder))
    monkeypatch.setattr(uvicorn, "run", lambda served, **k: ran.update(app=served, **k))
    try:
        result = CliRunner().invoke(app, ["serve", "--target", "t", "--draft", "d", "--method", "fixed:2", "--port", "9001",
                                          "--max-batch-size", "3", "--spec-max-batch", "2", "--dtype", "float32"])
    finally:
        prometheus_client.enable_created_metrics()  # the command turns them off for its process
    assert result.exit_code == 0, result.output
    assert loaded == [(("t", "d"), {"dtype": "float32", "device": "auto", "draft_quant": zoo.DEFAULT_DRAFT_QUANT,
                                    "draft_group_size": None, "draft_vocab": zoo.DEFAULT_DRAFT_VOCAB,
                                    "draft_vocab_ranking": "frequency", "target_quant": "none",
                                    "target_group_size": None, "float32_copies": True})]
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 9001)
    state = ran["app"].state
    assert (state.settings.max_batch_size, state.settings.spec_max_batch, state.settings.served_name) == (3, 2, "t")
    assert state.scheduler.method.spec == "fixed:k=2" and state.scheduler.max_batch_size == 3
    try:  # --head, as generate's: the served specdecpp reads the given head
        result = CliRunner().invoke(app, ["serve", "--method", "specdecpp:threshold=0.5", "--head", zoo.DEFAULT_DRAFT])
    finally:
        prometheus_client.enable_created_metrics()
    assert result.exit_code == 0, result.output
    assert ran["app"].state.scheduler.method.spec == f"specdecpp:head={zoo.DEFAULT_DRAFT},threshold=0.5"  # the shipped head, by name
