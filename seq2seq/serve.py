"""`seq2seq serve`: an OpenAI-compatible HTTP server over a checkpoint, with continuous batching
(seq2seq/engine.py). An app written against the official `openai` client works unchanged with
`OPENAI_BASE_URL=http://127.0.0.1:8000/v1`. docs/serving.md has the details; ../shared/SERVING.md the wire format.

Routes: `GET /health` (no key), `GET /metrics` (Prometheus text), `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions`, and the extensions `POST /v1/classify` and `POST /v1/feedback`. With an API key
(`--api-key` or SEQ2SEQ_API_KEY) every /v1 route and /metrics need `Authorization: Bearer KEY`, compared in
constant time.

What is scored: the prompt is the encoder's input, so it has no log-probabilities; with `echo` its tokens carry
`null`. Generated tokens carry the log-probability the model gave them (before temperature and penalties).
"""


import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from seq2seq.engine import Engine, Event, PromptTooLong, QueueFull, Settings, TokenInfo
from seq2seq.prompting import ROLES, InferenceSpec, SourceIds, build_conversation_source
from seq2seq.tasks import AUTO_TONE, TONES

log = logging.getLogger("seq2seq.serve")

MAX_BODY_BYTES = 1 << 20
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_N = 8
MAX_TOP_LOGPROBS = 20
MAX_MESSAGES = 256
MAX_PROMPTS = 64
MAX_CLASSIFY_TEXTS = 256
RETRY_AFTER_SECONDS = 1
RECENT_COMPLETIONS = 1024  # answers that POST /v1/feedback can name by id
TONE_OF_CLASSIFIER = {"joke": "joke", "sarcasm": "sarcastic"}  # tone auto: a "true" here answers in this tone


class APIError(Exception):
    """An error the client gets as an OpenAI error object with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------------------
# Reading request bodies: every bad field is a 400 that names it


def field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = None,
          check: Callable[[Any], bool] | None = None, expected: str = "") -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise APIError(400, f"{name}: expected {expected or kinds}, got {value!r}", name)
    if not isinstance(value, kinds) or (check is not None and not check(value)):
        raise APIError(400, f"{name}: expected {expected}, got {json.dumps(value)[:80]}", name)
    return value


def number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    return float(field(body, name, (int, float), default, lambda v: low <= v <= high,
                       f"a number in [{low:g}, {high:g}]"))


def read_settings(body: dict[str, Any], engine: Engine, chat: bool) -> tuple[Settings, int]:
    """The decoding settings and n of a request body."""
    max_tokens = field(body, "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens",
                       int, 16 if not chat else min(256, engine.max_new_tokens),
                       lambda v: 1 <= v <= engine.max_new_tokens, f"an integer in [1, {engine.max_new_tokens}]")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "stop: expected a non-empty string or a list of them", "stop")
    stop = stop or []
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters",
                       "stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise APIError(400, f"{name}: not supported (use repetition_penalty)", name)
    if chat:
        logprobs = None
        if field(body, "logprobs", bool, False, expected="true or false"):
            logprobs = field(body, "top_logprobs", int, 0, lambda v: 0 <= v <= MAX_TOP_LOGPROBS,
                             f"an integer in [0, {MAX_TOP_LOGPROBS}]")
        elif body.get("top_logprobs") is not None:
            raise APIError(400, "top_logprobs: needs logprobs: true", "top_logprobs")
    else:
        logprobs = field(body, "logprobs", int, None, lambda v: 0 <= v <= 5, "an integer in [0, 5]")
    settings = Settings(
        max_tokens=max_tokens,
        temperature=number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=field(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]"),
        top_k=field(body, "top_k", int, 0, lambda v: v >= 0, "an integer >= 0"),
        repetition_penalty=number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        stop=tuple(stop),
        seed=field(body, "seed", int, None, lambda v: -2**63 <= v < 2**63, "an integer in [-2^63, 2^63)"),
        logprobs=logprobs,
    )
    n = field(body, "n", int, 1, lambda v: 1 <= v <= MAX_N, f"an integer in [1, {MAX_N}]")
    return settings, n


def read_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages: expected a non-empty list of {role, content}", "messages")
    if len(messages) > MAX_MESSAGES:
        raise APIError(400, f"messages: at most {MAX_MESSAGES}", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where}: expected an object with role and content", where)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise APIError(400, f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        if isinstance(content, list):  # content parts: only text
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str) or not content.strip():
            raise APIError(400, f"{where}.content: expected non-empty text", f"{where}.content")
        out.append({"role": role, "content": content})
    if all(m["role"] == "system" for m in out):
        raise APIError(400, "messages: needs a user message", "messages")
    if out[-1]["role"] == "system":
        raise APIError(400, "messages: the last message must be the user's (or an assistant's to continue), not "
                            "a system message", "messages")
    return out


# ---------------------------------------------------------------------------------------------------------
# The server's state and the model's side


@dataclass
class Server:
    engine: Engine
    tokenizer: Any
    spec: InferenceSpec
    model_id: str
    api_key: str | None = None
    created: int = 0
    feedback_path: Path | None = None  # where POST /v1/feedback appends (--feedback)
    checkpoint_sha256: str = ""
    recent: OrderedDict = None  # type: ignore[assignment]  # completion id -> (prompt, answers, tone)

    def __post_init__(self) -> None:
        self.recent = OrderedDict()

    def remember(self, completion_id: str, prompt: Any, answers: list[str], tone: str | None) -> None:
        """Keep the last RECENT_COMPLETIONS answers, so that feedback can name them by id."""
        self.recent[completion_id] = (prompt, answers, tone)
        while len(self.recent) > RECENT_COMPLETIONS:
            self.recent.popitem(last=False)

    def check_key(self, authorization: str | None) -> None:
        if self.api_key is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key",
                           kind="authentication_error")

    def check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model", self.model_id)
        if model != self.model_id:
            raise APIError(404, f"model {model!r} not found (this server has {self.model_id!r})", "model",
                           "model_not_found")

    def tone(self, body: dict[str, Any]) -> str | None:
        """The tone token to answer under: None when the checkpoint has no tones."""
        tone = body.get("tone")
        if tone is not None and tone not in (*TONES, AUTO_TONE):
            raise APIError(400, f"tone: expected one of {', '.join((*TONES, AUTO_TONE))}, got {tone!r}", "tone")
        if not self.spec.tones:
            if tone not in (None, "plain"):
                raise APIError(400, f"tone: this checkpoint has no tone training (tone {tone!r})", "tone")
            return None
        return tone or "plain"

    def auto_tone(self, text: str) -> str:
        from seq2seq.classify import classify_all

        classifiers = {name: c for name, c in self.spec.classifiers.items() if name in TONE_OF_CLASSIFIER}
        if not classifiers:
            return "plain"
        spec = InferenceSpec(self.spec.task, self.spec.tones, classifiers, self.spec.fine_tuned)
        probabilities = classify_all(self.engine.model, self.tokenizer, [text], spec)[0]
        true = {name: labels["true"] for name, labels in probabilities.items()}
        best = max(true, key=true.get)
        return TONE_OF_CLASSIFIER[best] if true[best] > 0.5 else "plain"

    def conversation_source(self, messages: list[dict[str, str]], tone: str | None) -> SourceIds:
        """The encoder input of a conversation (oldest turns dropped to fit); a 413 when its last turn alone does
        not fit."""
        build = lambda kept, max_len: build_conversation_source(  # noqa: E731
            self.tokenizer, kept, task=self.spec.task, tone=tone, max_len=max_len)
        limit = self.engine.max_source_len
        last_turn = [m for m in messages if m["role"] == "system"] + [messages[-1]]
        alone = len(build(last_turn, 10**9).ids)
        if alone > limit:
            raise APIError(413, f"messages: the last message alone is {alone} tokens; the model reads at most "
                                f"{limit}", "messages", "context_length_exceeded")
        return build(messages, limit)

    def token_text(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and bytes, as the logprobs objects report them."""
        piece = self.tokenizer.id_to_piece(token_id)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            byte = int(piece[3:5], 16)
            return bytes([byte]).decode("utf-8", errors="replace"), [byte]
        text = self.tokenizer.decode([token_id])
        return text, list(text.encode("utf-8"))


class Metrics:
    """Prometheus metrics of one server (its own registry, so that tests can run several in one process)."""

    def __init__(self, engine: Engine):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("seq2seq_requests", "Requests by route and HTTP status", ["route", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("seq2seq_prompt_tokens", "Encoder input tokens", registry=self.registry)
        self.completion_tokens = Counter("seq2seq_completion_tokens", "Generated tokens", registry=self.registry)
        Gauge("seq2seq_queue_depth", "Requests waiting for a slot", registry=self.registry).set_function(
            engine.waiting.qsize)
        Gauge("seq2seq_running_requests", "Requests in the running batch", registry=self.registry).set_function(
            lambda: engine.running)
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.ttft = Histogram("seq2seq_time_to_first_token_seconds", "From arrival to the first token",
                              buckets=buckets, registry=self.registry)
        self.itl = Histogram("seq2seq_inter_token_latency_seconds", "Between consecutive streamed tokens",
                             buckets=buckets, registry=self.registry)


# ---------------------------------------------------------------------------------------------------------
# Running requests through the engine from the event loop


class Generation:
    """The engine requests of one API request (n choices per prompt), their events merged into one queue."""

    def __init__(self, server: Server, metrics: Metrics, sources: list[SourceIds], settings: Settings, n: int):
        self.server, self.metrics = server, metrics
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.requests = []
        self.started = time.monotonic()
        self.last_token_at: dict[int, float] = {}
        self.sources = sources
        if len(sources) * n > server.engine.max_queue:
            raise APIError(400, f"n: {len(sources)} prompt(s) x n = {len(sources) * n} answers, more than this "
                                f"server queues at once ({server.engine.max_queue})", "n")
        try:
            for p, source in enumerate(sources):
                for j in range(n):
                    index = p * n + j
                    choice = Settings(**{**settings.__dict__, "seed": None if settings.seed is None
                                         else settings.seed + j})
                    self.requests.append(server.engine.submit(source.ids, choice, self.sink(index)))
        except QueueFull as error:
            self.cancel()
            raise APIError(503, f"server busy: {error}; retry later", code="server_busy",
                           kind="server_error") from None
        except PromptTooLong as error:
            self.cancel()
            raise APIError(413, str(error), "prompt", "context_length_exceeded") from None
        except ValueError as error:
            self.cancel()
            raise APIError(400, str(error), str(error).split(":")[0]) from None
        metrics.prompt_tokens.inc(sum(len(s.ids) for s in sources) * n)

    def sink(self, index: int) -> Callable[[Event], None]:
        def put(event: Event) -> None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))
        return put

    def observe(self, index: int, event: Event) -> None:
        now = time.monotonic()
        if event.tokens:
            if index not in self.last_token_at:
                self.metrics.ttft.observe(now - self.started)
            else:
                self.metrics.itl.observe(now - self.last_token_at[index])
            self.last_token_at[index] = now
        if event.finish_reason is not None:
            self.metrics.completion_tokens.inc(event.completion_tokens)

    async def stream(self) -> AsyncIterator[tuple[int, Event]]:
        """Events of every choice until each has finished; raises APIError(500) for an engine failure."""
        remaining = len(self.requests)
        while remaining:
            index, event = await self.events.get()
            if event.error is not None:
                self.cancel()
                raise APIError(500, f"generation failed: {event.error}", kind="server_error")
            self.observe(index, event)
            if event.finish_reason is not None:
                remaining -= 1
            yield index, event

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()


@dataclass
class Choice:
    text: str = ""
    tokens: list[TokenInfo] = dataclass_field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


async def collect(generation: Generation, request) -> list[Choice]:
    """Every choice's whole answer; the engine requests are cancelled if the client goes away first."""
    choices = [Choice() for _ in generation.requests]

    async def gather() -> None:
        async for index, event in generation.stream():
            choices[index].text += event.text
            choices[index].tokens += event.tokens
            if event.finish_reason is not None:
                choices[index].finish_reason = event.finish_reason
                choices[index].completion_tokens = event.completion_tokens

    task = asyncio.ensure_future(gather())
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if not done and await request.is_disconnected():
                task.cancel()
                generation.cancel()
                raise asyncio.CancelledError
        task.result()
    finally:
        if not task.done():
            task.cancel()
            generation.cancel()
    return choices


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------------------------------------------
# The application


def create_app(server: Server):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics = Metrics(server.engine)
    app = FastAPI(title="seq2seq", docs_url=None, redoc_url=None, openapi_url=None)

    def route_of(request: Request) -> str:
        path = request.url.path
        known = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify",
                 "/v1/feedback")
        return path if path in known else "other"

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.monotonic()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = JSONResponse(error_body("internal server error", "server_error"), status_code=500)
        metrics.requests.labels(route_of(request), str(response.status_code)).inc()
        log.info("%s %s %s %d %.1fms", request.client.host if request.client else "-", request.method,
                 request.url.path, response.status_code, 1000 * (time.monotonic() - started))
        return response

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(error.detail), kind), status_code=error.status_code)

    async def read_body(request: Request) -> dict[str, Any]:
        server.check_key(request.headers.get("authorization"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise APIError(413, f"request body: over {MAX_BODY_BYTES} bytes", code="body_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise APIError(413, f"request body: over {MAX_BODY_BYTES} bytes", code="body_too_large")
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise APIError(400, "request body: not UTF-8") from None
        except json.JSONDecodeError as error:
            raise APIError(400, f"request body: malformed JSON ({error.msg} at character {error.pos})") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body: expected a JSON object")
        server.check_model(body)
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.model_id, "running": server.engine.running,
                "waiting": server.engine.waiting.qsize()}

    @app.get("/metrics")
    async def prometheus(request: Request):
        server.check_key(request.headers.get("authorization"))
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": server.created,
                                            "owned_by": "seq2seq"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        messages = read_messages(body)
        settings, n = read_settings(body, server.engine, chat=True)
        stream = field(body, "stream", bool, False, expected="true or false")
        options = field(body, "stream_options", dict, {}, expected="an object")
        include_usage = bool(options.get("include_usage")) and stream
        tone = server.tone(body)
        if tone == AUTO_TONE:
            last_user = [m["content"] for m in messages if m["role"] == "user"] or [messages[-1]["content"]]
            tone = await asyncio.get_running_loop().run_in_executor(None, server.auto_tone, last_user[-1])
        source = server.conversation_source(messages, tone)
        generation = Generation(server, metrics, [source], settings, n)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if stream:
            return StreamingResponse(chat_stream(server, generation, completion_id, created, n, include_usage,
                                                 lambda answers: server.remember(completion_id, messages, answers,
                                                                                 tone)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        choices = await collect(generation, request)
        server.remember(completion_id, messages, [c.text for c in choices], tone)
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": server.model_id,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "logprobs": chat_logprobs(server, c.tokens) if settings.logprobs is not None else None,
                         "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
            "usage": usage(len(source.ids) * n, sum(c.completion_tokens for c in choices)),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        settings, n = read_settings(body, server.engine, chat=False)
        echo = field(body, "echo", bool, False, expected="true or false")
        stream = field(body, "stream", bool, False, expected="true or false")
        options = field(body, "stream_options", dict, {}, expected="an object")
        tone = server.tone(body)
        if tone == AUTO_TONE:
            raise APIError(400, "tone: auto is for chat completions", "tone")
        prompts = read_prompts(body, server)
        sources = [prompt_source(server, prompt, tone) for prompt in prompts]
        generation = Generation(server, metrics, sources, settings, n)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if stream:
            return StreamingResponse(completion_stream(server, generation, completion_id, created, n, prompts, echo,
                                                       bool(options.get("include_usage"))),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        choices = await collect(generation, request)
        out = []
        for i, c in enumerate(choices):
            prompt = prompts[i // n]
            text = (prompt_text(server, prompt) if echo else "") + c.text
            logprobs = None
            if settings.logprobs is not None:
                logprobs = legacy_logprobs(server, c.tokens, prompt if echo else None)
            out.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason})
        return {"id": completion_id, "object": "text_completion", "created": created, "model": server.model_id,
                "choices": out, "usage": usage(sum(len(s.ids) for s in sources) * n,
                                               sum(c.completion_tokens for c in choices))}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        """An extension: a thumb on an answer, by completion id ({"id", "index", "label"}) or given whole
        ({"prompt", "response", "label"}), or a pair ({"prompt", "chosen", "rejected"}); appended to --feedback."""
        from seq2seq.preference import append_feedback, feedback_record

        body = await read_body(request)
        if server.feedback_path is None:
            raise APIError(400, "this server keeps no feedback (start it with --feedback FILE)")
        tone = body.get("tone")
        if "id" in body:
            if body["id"] not in server.recent:
                raise APIError(404, f"id: no recent completion {body['id']!r} (the last {RECENT_COMPLETIONS} are "
                                    f"kept)", "id", "completion_not_found", "not_found_error")
            prompt, answers, tone = server.recent[body["id"]]
            index = field(body, "index", int, 0, lambda v: 0 <= v < len(answers), f"an index below {len(answers)}")
            label = field(body, "label", bool, None, expected="true or false")
            if label is None:
                raise APIError(400, "label: expected true or false", "label")
            record = {"prompt": prompt, "response": answers[index], "label": label}
        else:
            record = {key: body.get(key) for key in ("prompt", "response", "label", "chosen", "rejected")
                      if key in body}
        try:
            record = feedback_record(record.get("prompt"), server.checkpoint_sha256, response=record.get("response"),
                                     label=record.get("label"), chosen=record.get("chosen"),
                                     rejected=record.get("rejected"), tone=tone if tone in TONES else None)
        except ValueError as error:
            message = str(error).removeprefix("feedback: ")
            raise APIError(400, message, message.split(":")[0].split(" ")[0]) from None
        append_feedback(server.feedback_path, record)
        return {"object": "feedback", "status": "recorded"}

    @app.post("/v1/classify")
    async def classify_route(request: Request):
        from seq2seq.classify import classify_all

        body = await read_body(request)
        texts = body.get("input", body.get("texts"))
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise APIError(400, "input: expected a non-empty string or a list of them", "input")
        if len(texts) > MAX_CLASSIFY_TEXTS:
            raise APIError(400, f"input: at most {MAX_CLASSIFY_TEXTS} texts", "input")
        if not server.spec.classifiers:
            raise APIError(400, "this checkpoint has no classifiers (it is not fine-tuned)", "model")
        results = await asyncio.get_running_loop().run_in_executor(
            None, lambda: classify_all(server.engine.model, server.tokenizer, texts, server.spec))
        return {"object": "list", "model": server.model_id,
                "data": [{"index": i, "text": t, **r} for i, (t, r) in enumerate(zip(texts, results, strict=True))]}

    return app


def read_prompts(body: dict[str, Any], server: Server) -> list[str | list[int]]:
    """`prompt` as a list of texts or token-id lists (a string, a list of strings, ids, or a list of id lists)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        prompts = prompt
    else:
        raise APIError(400, "prompt: expected a string, a list of strings, token ids, or a list of token-id lists",
                       "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"prompt: at most {MAX_PROMPTS} prompts", "prompt")
    vocab = server.tokenizer.vocab_size
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if not p:
                raise APIError(400, f"prompt[{i}]: empty", "prompt")
        elif not p or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in p):
            raise APIError(400, f"prompt[{i}]: token ids must be integers in [0, {vocab})", "prompt")
    return prompts


def prompt_source(server: Server, prompt: str | list[int], tone: str | None) -> SourceIds:
    """The encoder input of a completions prompt: the checkpoint's task marker and tone, the text (or the given
    token ids), </s>. A prompt over the model's source length is a 413, not cut."""
    tokenizer = server.tokenizer
    head = [tokenizer.task_id(server.spec.task)] if server.spec.task in tokenizer.tasks else []
    if tone is not None:
        head.append(tokenizer.tone_id(tone))
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    source = [*head, *ids, tokenizer.eos_id]
    if len(source) > server.engine.max_source_len:
        raise APIError(413, f"prompt: {len(source)} tokens, but the model reads at most "
                            f"{server.engine.max_source_len}", "prompt", "context_length_exceeded")
    return SourceIds(source)


def prompt_text(server: Server, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else server.tokenizer.decode(prompt)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(server: Server, tokens: list[TokenInfo]) -> dict[str, Any]:
    content = []
    for info in tokens:
        text, raw = server.token_text(info.token_id)
        top = []
        for token_id, logprob in info.top:
            top_text, top_raw = server.token_text(token_id)
            top.append({"token": top_text, "logprob": logprob, "bytes": top_raw})
        content.append({"token": text, "logprob": info.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def legacy_logprobs(server: Server, tokens: list[TokenInfo], echoed: str | list[int] | None,
                    offset: int = 0) -> dict[str, Any]:
    """The completions shape. Echoed prompt tokens come first with null log-probabilities: the prompt is the
    encoder's input, which the model does not score."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    position = offset
    if echoed is not None:
        ids = server.tokenizer.encode(echoed) if isinstance(echoed, str) else list(echoed)
        for token_id in ids:
            text, _ = server.token_text(token_id)
            out["tokens"].append(text)
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            out["text_offset"].append(position)
            position += len(text)
    for info in tokens:
        text, _ = server.token_text(info.token_id)
        out["tokens"].append(text)
        out["token_logprobs"].append(info.logprob)
        out["top_logprobs"].append({server.token_text(t)[0]: lp for t, lp in info.top})
        out["text_offset"].append(position)
        position += len(text)
    return out


async def chat_stream(server: Server, generation: Generation, completion_id: str, created: int, n: int,
                      include_usage: bool, done: Callable[[list[str]], None]) -> AsyncIterator[str]:
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": server.model_id}
    extra = {"usage": None} if include_usage else {}
    logprobs_on = generation.requests[0].settings.logprobs is not None if generation.requests else False
    completion_tokens = 0
    answers = [""] * n
    try:
        for i in range(n):
            yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}], **extra})
        async for index, event in generation.stream():
            answers[index] += event.text
            logprobs = chat_logprobs(server, event.tokens) if logprobs_on and event.tokens else None
            if event.text or logprobs:
                yield sse({**base, "choices": [{"index": index, "delta": {"content": event.text},
                                                "logprobs": logprobs, "finish_reason": None}], **extra})
            if event.finish_reason is not None:
                completion_tokens += event.completion_tokens
                yield sse({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                "finish_reason": event.finish_reason}], **extra})
        done(answers)
        if include_usage:
            prompt_tokens = sum(len(s.ids) for s in generation.sources) * n
            yield sse({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    except APIError as error:
        yield sse(error.body())
    finally:
        generation.cancel()  # a client that went away: its slots are freed at the next step
    yield sse("[DONE]")


async def completion_stream(server: Server, generation: Generation, completion_id: str, created: int, n: int,
                            prompts: list, echo: bool, include_usage: bool) -> AsyncIterator[str]:
    base = {"id": completion_id, "object": "text_completion", "created": created, "model": server.model_id}
    extra = {"usage": None} if include_usage else {}
    logprobs_on = generation.requests[0].settings.logprobs is not None if generation.requests else False
    completion_tokens = 0
    try:
        if echo:
            for i in range(len(prompts) * n):
                yield sse({**base, "choices": [{"index": i, "text": prompt_text(server, prompts[i // n]),
                                                "logprobs": None, "finish_reason": None}], **extra})
        async for index, event in generation.stream():
            if event.text or event.finish_reason is not None:
                logprobs = legacy_logprobs(server, event.tokens, None) if logprobs_on else None
                if event.finish_reason is not None:
                    completion_tokens += event.completion_tokens
                yield sse({**base, "choices": [{"index": index, "text": event.text, "logprobs": logprobs,
                                                "finish_reason": event.finish_reason}], **extra})
        if include_usage:
            prompt_tokens = sum(len(s.ids) for s in generation.sources) * n
            yield sse({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    except APIError as error:
        yield sse(error.body())
    finally:
        generation.cancel()
    yield sse("[DONE]")


# ---------------------------------------------------------------------------------------------------------
# seq2seq serve


def model_name(directory: str) -> str:
    """The id clients send as `model`: the checkpoint directory's name (its parent's when it is `final`)."""
    path = Path(directory).resolve()
    return path.parent.name if path.name == "final" else path.name


def build_server(model_dir: str, device: str = "auto", api_key: str | None = None, max_batch: int = 16,
                 max_queue: int = 64, name: str | None = None, max_new_tokens: int | None = None,
                 feedback: str | None = None) -> Server:
    from seq2seq.checkpoint import load_pretrained
    from seq2seq.device import resolve_device

    model, tokenizer = load_pretrained(model_dir, resolve_device(device))
    engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, max_new_tokens=max_new_tokens)
    from seq2seq.checkpoint import WEIGHTS_FILE
    from seq2seq.files import sha256_file

    return Server(engine.start(), tokenizer, InferenceSpec.load(model_dir), name or model_name(model_dir),
                  api_key or None, int(time.time()), Path(feedback) if feedback else None,
                  sha256_file(Path(model_dir) / WEIGHTS_FILE))


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ValueError("seq2seq serve needs the serve extra: pip install -e '.[serve]'") from None
    if args.max_batch < 1 or args.max_queue < 1:
        raise ValueError("--max-batch and --max-queue must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server = build_server(args.model, args.device, args.api_key or os.environ.get("SEQ2SEQ_API_KEY"),
                          args.max_batch, args.max_queue, args.model_name, feedback=args.feedback)
    if args.host not in ("127.0.0.1", "localhost", "::1") and server.api_key is None:
        print(f"warning: serving on {args.host} without an API key: anyone who reaches it can use it",
              file=sys.stderr)
    print(f"serving {args.model} as model {server.model_id!r} on http://{args.host}:{args.port}/v1",
          file=sys.stderr)
    uvicorn.run(create_app(server), host=args.host, port=args.port, access_log=False, log_level="warning")
    server.engine.stop()
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="an OpenAI-compatible HTTP server with continuous batching",
        description="Serve a checkpoint over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models; "
                    "/v1/classify as an extension; /health, /metrics). Point an app at it with "
                    "OPENAI_BASE_URL=http://127.0.0.1:8000/v1. See docs/serving.md.")
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require this key (also from SEQ2SEQ_API_KEY)")
    parser.add_argument("--model-name", help="the model id clients send (default: the checkpoint's name)")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting at most; then 503")
    parser.add_argument("--feedback", metavar="FILE", help="append POST /v1/feedback records here (JSONL)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.set_defaults(run=run)
