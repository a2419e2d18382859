"""The generation service: a causal-LM folder (a generation run, its merged or compressed folder,
or `smollm2`) behind

- `POST /v1/generate` `{prompt | messages, max_new_tokens, temperature, top_p, top_k, stop,
  seed, stream}` -> `{output, tokens, prompt_tokens, finish_reason, model}`, or with
  `stream: true` Server-Sent Events: `{"text": ...}` per chunk, then one event with the
  finish (and `data: [DONE]`);
- `POST /v1/chat/completions`, the OpenAI chat API (plain and `stream: true`), so OpenAI client
  libraries work with `base_url="http://127.0.0.1:8000/v1"`;
- `GET /v1/models`, and the kit's `/healthz`, `/readyz`, `/metrics`.

Every request's sequence joins one `DecodeEngine` (continuous batching: it shares each decode
step with whatever else is running). Limits answer 413 naming the setting; past `timeout_s` a
plain request gets 504 and a stream ends with `finish_reason: "timeout"`; a client that hangs
up has its generation stopped at the next step. API key, error shape, probes, metrics and the
SIGTERM drain (running generations finish, then the process exits) come from the kit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tailorml.predictors.decoder import DecodeEngine, EngineClosed, Sampling, Sequence
from tailorml.serve import kit
from tailorml.serve.gate import Gate
from tailorml.serve.generation_requests import (
    BODY_HINT,
    GENERATE_EXAMPLE,
    ChatRequest,
    GenerateRequest,
    Message,
    body_doc,
    document_models,
    engine_sampling,
    openai_reason,
    parse_body,
    usage_fields,
)
from tailorml.serve.metrics import GenerationMetrics
from tailorml.serve.schemas import ApiError
from tailorml.serve.settings import ServeSettings

log = logging.getLogger("uvicorn.error")

# ----------------------------------------------------------------------------- the app


class GenState:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.metrics = GenerationMetrics()
        self.lifecycle = kit.Lifecycle()
        self.generator: Any = None
        self.engine: Any = None
        self.card: dict[str, Any] = {}


def create_generation_app(settings: ServeSettings, generator: Any = None) -> Gate:
    """The service for one causal-LM folder. `generator` (a loaded `Generator`) lets the server
    load it before starting, and tests share one."""
    state = GenState(settings)
    m = state.metrics
    life = state.lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gen = generator
        if gen is None:
            gen = await run_in_threadpool(load_generator, settings)
        state.generator = gen
        state.card = generation_card(gen, settings)
        engine = DecodeEngine(
            gen.model, gen.tokenizer, max_batch_size=settings.max_batch_size, on_step=m.on_step
        )
        engine.start()
        state.engine = engine
        warm = _submit(
            state, gen.render("Hello"), Sampling(max_new_tokens=2), asyncio.get_running_loop()
        )
        await _finish(warm[1])  # the first call allocates; not a client's
        kit.freeze_startup_objects()
        life.ready = True
        log.info(
            "serving %s (generation, %s) with %d thread(s); max_batch_size=%d",
            gen.folder, state.card["variant"], settings.worker_threads(), settings.max_batch_size,
        )  # fmt: skip
        try:
            yield
        finally:
            life.draining, life.ready = True, False
            await run_in_threadpool(engine.close, settings.timeout_s + 5)
            gate: Gate = app.state.gate
            log.info(
                "drained: %d request(s) accepted, %d answered, %d decode step(s)",
                gate.accepted, gate.answered, engine.steps,
            )  # fmt: skip

    app = FastAPI(
        title="tailorml generation service",
        description="Text generation from a tailorml causal-LM folder, with continuous batching; "
        "OpenAI-compatible chat completions at /v1/chat/completions.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = state
    secured = kit.auth_docs(settings.api_key)
    codes: dict[int | str, dict[str, Any]] = {
        401: {"description": "Missing or wrong API key."},
        413: {"description": "Prompt, max_new_tokens or body over its limit."},
        422: {"description": "Malformed JSON, wrong types, bad values."},
        429: {"description": "Queue full; retry after `Retry-After` seconds."},
        503: {"description": "Model not loaded yet, or shutting down."},
        504: {"description": "Not finished within the per-request timeout."},
    }

    @app.post(
        "/v1/generate",
        responses=codes,
        dependencies=secured,
        openapi_extra=body_doc("GenerateRequest"),
    )
    async def generate(request: Request) -> Response:
        """Generate an answer to a prompt or a chat; `stream: true` for Server-Sent Events."""
        body = await parse_body(request, GenerateRequest, settings)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(
                422, "invalid_request", "give exactly one of `prompt` (a string) or `messages`"
            )
        chat = body.messages or [Message(role="user", content=body.prompt or "")]
        sampling = engine_sampling(body, body.max_new_tokens, settings)
        seq, queue = _start(state, chat, sampling)
        if body.stream:
            return _sse(_generate_events(state, request, seq, queue))
        done = await _wait(state, request, seq, queue)
        return JSONResponse(
            {
                "output": done.output,
                "tokens": done.tokens,
                "prompt_tokens": done.prompt_tokens,
                "finish_reason": done.finish_reason,
                "model": {k: state.card[k] for k in ("name", "variant", "version")},
            }
        )

    @app.post(
        "/v1/chat/completions",
        responses=codes,
        dependencies=secured,
        openapi_extra=body_doc("ChatRequest"),
    )
    async def chat_completions(request: Request) -> Response:
        """OpenAI-compatible chat completions (n = 1; plain or `stream: true`)."""
        body = await parse_body(request, ChatRequest, settings)
        limit = body.max_completion_tokens or body.max_tokens
        sampling = engine_sampling(body, limit, settings)
        seq, queue = _start(state, body.messages, sampling)
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        name = state.card["name"]
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _chat_events(state, request, seq, queue, ident, created, name, usage)
            return _sse(events)
        done = await _wait(state, request, seq, queue)
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": done.output},
                        "finish_reason": openai_reason(done.finish_reason),
                        "logprobs": None,
                    }
                ],
                "usage": usage_fields(done),
            }
        )

    @app.get("/v1/models", dependencies=secured)
    async def models() -> dict[str, Any]:
        """The served model (OpenAI's list shape, plus tailorml's card and limits)."""
        if not state.card:
            raise ApiError(503, "not_ready", "model still loading", {"Retry-After": "1"})
        card = state.card
        return {
            "object": "list",
            "data": [{"id": card["name"], "object": "model", "owned_by": "tailorml", **card}],
            "models": [card],
        }

    document_models(app, GenerateRequest, ChatRequest)
    return kit.install(
        app,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_hint=BODY_HINT,
        protected=("/v1/", "/metrics"),
        readiness=life,
        metrics=m,
        body_example=GENERATE_EXAMPLE,
        ready_doc="Readiness: the model is loaded and the service is not shutting down.",
    )


def load_generator(settings: ServeSettings) -> Any:
    import torch

    from tailorml.predictors.generator import Generator

    torch.set_num_threads(settings.worker_threads())
    return Generator.load(settings.model)


def generation_card(gen: Any, settings: ServeSettings) -> dict[str, Any]:
    """Name, variant and version of the served causal LM, and its limits."""
    import hashlib

    folder = Path(gen.folder) if gen.folder is not None else Path("model")
    info: dict[str, Any] = {}
    if (folder / "task.json").is_file():
        with contextlib.suppress(ValueError, OSError):
            info = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    compressed = folder.parent.name == "compressed"
    run = folder.parent.parent if compressed else folder.parent
    if folder.name == "model" or compressed:
        name = run.name
    elif str(settings.model) == "smollm2":
        name = "smollm2"
    else:
        name = folder.name
    names = ("model.safetensors", "model_int8.pt")
    weights = next((folder / n for n in names if (folder / n).is_file()), None)
    version = str(info.get("version") or "")
    if not version and weights is not None:
        with weights.open("rb") as fh:
            version = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    return {
        "name": name,
        "task": "generation",
        "family": "causal-lm",
        "variant": str(info.get("variant") or (folder.name if compressed else "fp32")),
        "version": version or "unknown",
        "runtime": "torch",
        "limits": {
            k: getattr(settings, k)
            for k in (
                "max_new_tokens",
                "max_prompt_tokens",
                "max_chars",
                "max_body_bytes",
                "max_batch_size",
                "max_queue",
                "timeout_s",
            )
        },
    }


# ----------------------------------------------------------------------------- request handling


def _start(
    state: GenState, chat: list[Message], sampling: Sampling
) -> tuple[Any, asyncio.Queue[Any]]:
    """Check the prompt against the limits and queue its sequence."""
    life, settings = state.lifecycle, state.settings
    if not life.ready and not life.draining:
        raise ApiError(503, "not_ready", "model still loading", {"Retry-After": "1"})
    chars = sum(len(msg.content) for msg in chat)
    if chars > settings.max_chars:
        raise ApiError(
            413,
            "too_large",
            f"the prompt has {chars} characters; the limit is max_chars={settings.max_chars} "
            "(`tailor serve --max-chars`)",
        )
    try:
        "".join(msg.content for msg in chat).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            422, "invalid_request", "the prompt is not valid Unicode (a lone surrogate?)"
        ) from None
    if not any(msg.content.strip() for msg in chat):
        raise ApiError(422, "invalid_request", "the prompt is empty; send non-blank text")
    try:
        text = state.generator.render([msg.model_dump() for msg in chat])
    except Exception as exc:  # a template that refuses this order of roles, say
        raise ApiError(
            422, "invalid_request", f"messages: the chat template refused them ({exc})"
        ) from None
    engine = state.engine
    if engine.waiting >= settings.max_queue:
        m = state.metrics
        m.errors.labels("queue_full").inc()
        raise ApiError(
            429,
            "queue_full",
            f"queue full ({engine.waiting} requests waiting, max_queue={settings.max_queue}); "
            "retry shortly",
            {"Retry-After": "1"},
        )
    return _submit(state, text, sampling, asyncio.get_running_loop())


def _submit(
    state: GenState, text: str, sampling: Sampling, loop: Any
) -> tuple[Any, asyncio.Queue[Any]]:
    ids = state.generator.tokenizer(text, add_special_tokens=False)["input_ids"]
    limit = state.settings.max_prompt_tokens
    if len(ids) > limit:
        raise ApiError(
            413,
            "too_large",
            f"the templated prompt has {len(ids)} tokens; the limit is max_prompt_tokens={limit} "
            "(`tailor serve --max-prompt-tokens`)",
        )
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def on_event(delta: str, done: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (delta, done))

    seq = Sequence(list(ids), sampling, on_event)
    try:
        state.engine.submit(seq)
    except EngineClosed as exc:
        raise ApiError(503, "draining", str(exc), {"Retry-After": "1"}) from None
    state.metrics.queue_depth.set(state.engine.waiting)
    return seq, queue


async def _finish(queue: asyncio.Queue[Any]) -> Any:
    while True:
        _delta, done = await queue.get()
        if done is not None:
            return done


def _record(state: GenState, done: Any) -> None:
    if done.finish_reason == "error" and state.lifecycle.ready:
        # The decode loop died (its traceback is in the log): /readyz turns 503, so that a
        # supervisor or balancer replaces this process; every later request gets 503.
        log.error("the decode loop failed: %r", state.engine.failure)
        state.lifecycle.ready = False
    m = state.metrics
    m.finished.labels(done.finish_reason).inc()
    m.prompt_tokens.inc(done.prompt_tokens)
    if done.tokens:
        m.ttft.observe(done.ttft_s)
    m.queue_depth.set(state.engine.waiting)
    m.running.set(state.engine.running)  # 0 once the last one ended, not its last step's count


async def _wait(state: GenState, request: Request, seq: Any, queue: asyncio.Queue[Any]) -> Any:
    """The finished sequence; 504 past the deadline; stopped if the client hangs up."""
    watcher = asyncio.create_task(_watch_disconnect(request, seq))
    try:
        done = await asyncio.wait_for(_finish(queue), state.settings.timeout_s)
    except TimeoutError:
        seq.cancel()
        state.metrics.errors.labels("timeout").inc()
        raise ApiError(
            504,
            "timeout",
            f"not finished within timeout_s={state.settings.timeout_s:g} (`tailor serve "
            "--timeout`); ask for fewer tokens or stream the answer",
        ) from None
    finally:
        watcher.cancel()
    _record(state, done)
    if done.finish_reason == "error":
        raise ApiError(500, "internal", "the model failed; the server log has details")
    return done


async def _watch_disconnect(request: Request, seq: Any) -> None:
    """The body has been read: the next message on the connection is its end."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            seq.cancel()
            return


async def _events(
    state: GenState, seq: Any, queue: asyncio.Queue[Any]
) -> AsyncIterator[tuple[str, Any]]:
    """(delta, None) per chunk, then ("", Done); a deadline ends it with finish "timeout"."""
    deadline = time.monotonic() + state.settings.timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                delta, done = await asyncio.wait_for(queue.get(), max(left, 0.001))
            except TimeoutError:
                seq.cancel()
                state.metrics.errors.labels("timeout").inc()
                yield "", None
                return
            if done is not None:
                _record(state, done)
                yield delta, done
                return
            yield delta, None
    finally:
        seq.cancel()  # the client went away (or we are done): stop at the next step


async def _generate_events(
    state: GenState, request: Request, seq: Any, queue: asyncio.Queue[Any]
) -> AsyncIterator[str]:
    text = ""
    async for delta, done in _events(state, seq, queue):
        if done is None and not delta:  # the deadline passed
            yield _data({"finish_reason": "timeout", "output": text, "tokens": len(seq.ids)})
            break
        if delta:
            text += delta
            yield _data({"text": delta})
        if done is not None:
            yield _data(
                {
                    "finish_reason": done.finish_reason,
                    "output": done.output,
                    "tokens": done.tokens,
                    "prompt_tokens": done.prompt_tokens,
                }
            )
    yield "data: [DONE]\n\n"


async def _chat_events(
    state: GenState,
    request: Request,
    seq: Any,
    queue: asyncio.Queue[Any],
    ident: str,
    created: int,
    name: str,
    usage: bool,
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], reason: str | None) -> str:
        return _data(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
        )

    yield chunk({"role": "assistant", "content": ""}, None)
    async for delta, done in _events(state, seq, queue):
        if done is None and not delta:
            yield chunk({}, "length")  # OpenAI has no "timeout"; the answer was cut short
            break
        if delta:
            yield chunk({"content": delta}, None)
        if done is not None:
            yield chunk({}, openai_reason(done.finish_reason))
            if usage:
                yield _data(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": name,
                        "choices": [],
                        "usage": usage_fields(done),
                    }
                )
    yield "data: [DONE]\n\n"


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
