"""The HTTP app: POST /v1/predict, GET /v1/models, /healthz, /readyz, /metrics, OpenAPI at /docs.

The app holds no state between requests beyond the loaded model and its counters, so replicas are
interchangeable behind any load balancer. Everything a client can get wrong answers a 4xx with a
message that names the field or limit; anything else is a 500 with an id (the traceback goes to the
server log, never to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tailorml.serve.batcher import MicroBatcher, QueueFull
from tailorml.serve.metrics import Metrics
from tailorml.serve.settings import ServeSettings
from tailorml.tasks.heads import named_heads, specs_from_info

log = logging.getLogger("uvicorn.error")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PROTECTED = ("/v1/", "/metrics")
KNOWN_PATHS = {"/v1/predict", "/v1/models", "/healthz", "/readyz", "/metrics"}


# ----------------------------------------------------------------------------- request/response


class TextInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr = Field(description="The text (the first text, for pair tasks).")
    text_pair: StrictStr | None = Field(None, description="The second text (pair tasks only).")


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": ["$AAPL beats estimates, shares jump", "Fed holds rates steady"]},
                {"inputs": [{"text": "How do I reset my card?", "text_pair": "Card PIN reset"}]},
            ]
        },
    )
    inputs: list[StrictStr | TextInput] = Field(
        min_length=1,
        description="Texts to predict: strings, or {text, text_pair} objects for pair tasks.",
    )


class HeadPrediction(BaseModel):
    label: str | None = Field(None, description="Best label (classification tasks).")
    score: float | None = Field(None, description="Probability of `label`.")
    scores: dict[str, float] | None = Field(None, description="Probability of every label.")
    labels: list[str] | None = Field(None, description="Labels above threshold (multilabel).")
    value: float | None = Field(None, description="Predicted value (regression).")


class Prediction(HeadPrediction):
    heads: dict[str, HeadPrediction] | None = Field(
        None, description="Multi-task models: one prediction per head, by head name."
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: dict[str, str] = Field(
        description="Name, variant and version of the model that answered."
    )


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, **extra}}


# ----------------------------------------------------------------------------- model info


def model_card(folder: Path, info: dict[str, Any], runtime_name: str) -> dict[str, Any]:
    """Name, variant and version: what a client (or a load balancer's operator) needs to know."""
    if info.get("variant"):
        variant = str(info["variant"])
    elif folder.parent.name == "compressed":
        variant = folder.name
    else:
        variant = "torch-int8" if info.get("torch_dynamic_int8") else "fp32"
    names = (info.get("onnx_file", "model.onnx"), info.get("torch_int8_state"), "model.safetensors")
    weights = [folder / n for n in names if n and (folder / n).is_file()]
    if info.get("version"):
        version = str(info["version"])
    elif weights:
        with weights[0].open("rb") as fh:
            version = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    else:
        version = "unknown"
    run = folder.parent.parent if folder.parent.name == "compressed" else folder.parent
    return {
        "name": run.name
        if folder.name == "model" or folder.parent.name == "compressed"
        else folder.name,
        "variant": variant,
        "version": version,
        "runtime": runtime_name,
        "task": info["task"],
        "labels": info.get("labels"),
        "max_length": int(info.get("max_length", 128)),
        "pair": any(h.kind.pair for h in specs_from_info(info))
        or bool(info.get("text_pair_column")),
        # Column names of the training data: `tailor predict --url` reads files with them.
        "columns": {"text": info.get("text_column"), "text_pair": info.get("text_pair_column")},
        "heads": [
            {"name": h.name, "task": h.task, "labels": h.labels}
            for h in named_heads(specs_from_info(info))
        ]
        or None,
    }


def to_predictions(predictor: Any, logits: Any) -> list[dict[str, Any]]:
    """Logits (batch, columns) -> the API's prediction objects (each task formats its head)."""
    return list(predictor.api_outputs(logits))


# ----------------------------------------------------------------------------- the gate (ASGI)


class Gate:
    """Outermost layer: auth, body-size limit, request metrics, drain accounting, last-resort 500.

    Pure ASGI (not BaseHTTPMiddleware): it runs on every request, and must answer before the body
    is parsed (a 401 must not depend on the body being valid JSON).
    """

    def __init__(self, app: Any, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st = self.state
        path = scope["path"]
        label = path if path in KNOWN_PATHS else "other"
        t0 = time.perf_counter()
        st.accepted += 1
        status = {"code": 500, "started": False, "done": False, "too_large": False}

        async def send_wrapped(message: Message) -> None:
            if status["too_large"]:
                # The body went past the limit while FastAPI read it; FastAPI turns that into a
                # generic 400, which we replace with the 413 that names the limit.
                if message["type"] == "http.response.start" and not status["started"]:
                    status["too_large"] = False
                    await self._json(413, "too_large", self._body_message(), send_wrapped)
                    status["too_large"] = True
                return
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                status["done"] = True
            await send(message)

        try:
            refusal = self._check(scope, path)
            if refusal is not None:
                await refusal(scope, receive, send_wrapped)
                return
            await self.app(scope, self._limited(receive, status), send_wrapped)
        except _BodyTooLarge:
            status["too_large"] = False
            if not status["started"]:
                await self._json(413, "too_large", self._body_message(), send_wrapped)
        except Exception:
            if not status["started"]:
                ref = uuid.uuid4().hex[:12]
                log.exception("internal error (ref %s) on %s %s", ref, scope.get("method"), path)
                st.metrics.errors.labels("internal").inc()
                await self._json(
                    500,
                    "internal",
                    f"internal error; the server log has details (ref {ref})",
                    send_wrapped,
                )
        finally:
            st.answered += 1 if status["done"] else 0
            st.metrics.requests.labels(label, str(status["code"])).inc()
            st.metrics.latency.labels(label).observe(time.perf_counter() - t0)

    def _check(self, scope: Scope, path: str) -> Any:
        st = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = st.settings.api_key
        if key and path.startswith(PROTECTED):
            given = headers.get("x-api-key")
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not given or not hmac.compare_digest(given.encode(), key.encode()):
                st.metrics.errors.labels("auth").inc()
                msg = (
                    "missing API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
                    if not given
                    else "wrong API key"
                )
                return JSONResponse(
                    error_body("unauthorized", msg), 401, headers={"WWW-Authenticate": "Bearer"}
                )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > st.settings.max_body_bytes:
            st.metrics.errors.labels("too_large").inc()
            return JSONResponse(error_body("too_large", self._body_message()), 413)
        return None

    def _body_message(self) -> str:
        n = self.state.settings.max_body_bytes
        return (
            f"request body larger than max_body_bytes={n} (`tailor serve` setting); "
            "send fewer or shorter inputs per request"
        )

    def _limited(self, receive: Receive, status: dict[str, Any]) -> Receive:
        limit = self.state.settings.max_body_bytes
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # chunked bodies carry no Content-Length to check up front
                    self.state.metrics.errors.labels("too_large").inc()
                    status["too_large"] = True
                    raise _BodyTooLarge()
            return message

        return wrapped

    @staticmethod
    async def _json(status: int, kind: str, message: str, send: Send) -> None:
        resp = JSONResponse(error_body(kind, message), status)
        await resp({"type": "http"}, _no_receive, send)


class _BodyTooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# ----------------------------------------------------------------------------- state and app


class ServiceState:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.metrics = Metrics()
        self.predictor: Any = None
        self.batcher: MicroBatcher | None = None
        self.card: dict[str, Any] = {}
        self.ready = False
        self.draining = False
        self.accepted = 0
        self.answered = 0


def _hook_signals(state: ServiceState) -> None:
    """Mark the service draining (readyz -> 503) the moment SIGTERM/SIGINT arrives.

    uvicorn installs its own handlers before the app starts; we chain in front of them, so uvicorn
    still stops accepting, waits for in-flight requests and then runs the lifespan shutdown.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)

        def handler(signum: int, frame: Any, prev: Any = prev) -> None:
            state.draining = True
            if callable(prev):
                prev(signum, frame)

        signal.signal(sig, handler)


def create_app(settings: ServeSettings, predictor: Any = None) -> FastAPI:
    """The service for one model folder. `predictor` lets tests share an already loaded model."""
    state = ServiceState(settings)
    m = state.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from tailorml.predictors import load_predictor

        pred = predictor
        if pred is None:
            pred = await run_in_threadpool(
                load_predictor, settings.model, settings.worker_threads()
            )
        state.predictor = pred
        state.card = model_card(Path(pred.folder), pred.info, pred.runtime)
        pairs = ["warm-up"] if state.card["pair"] else None
        await run_in_threadpool(
            pred.predict, ["warm-up"], pairs
        )  # first call allocates; not a client's

        def lengths(texts: list[str], pairs: list[str] | None) -> list[int]:
            return list(pred.lengths(texts, pairs))

        def on_batch(n: int, seconds: float) -> None:
            m.batch_size.observe(n)
            m.batch_seconds.observe(seconds)

        state.batcher = MicroBatcher(
            lambda t, p: to_predictions(pred, pred.predict(t, p)),
            lengths,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            on_batch=on_batch,
            on_queue=m.queue_depth.set,
        )
        state.batcher.start()
        _hook_signals(state)
        state.ready = True
        log.info(
            "serving %s (%s, %s, version %s) with %d thread(s); max_batch_size=%d max_wait_ms=%g",
            pred.folder, state.card["variant"], pred.runtime, state.card["version"],
            settings.worker_threads(), settings.max_batch_size, settings.max_wait_ms,
        )  # fmt: skip
        try:
            yield
        finally:
            state.draining, state.ready = True, False
            await state.batcher.close(timeout=settings.timeout_s + 5)
            # Every request a client got through to us has had its full response sent.
            log.info(
                "drained: %d request(s) accepted, %d answered, %d model batch(es)",
                state.accepted, state.answered, state.batcher.batches,
            )  # fmt: skip

    app = FastAPI(
        title="tailorml model service",
        description="Predictions from a tailorml model folder, with dynamic micro-batching.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = state
    bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`")
    header = APIKeyHeader(name="X-API-Key", auto_error=False)
    # The gate checks keys; these only document the two schemes on the OpenAPI page.
    secured = [Depends(bearer), Depends(header)] if settings.api_key else []

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        m.errors.labels("validation").inc()
        problems = describe_errors(exc.errors(), request.headers.get("content-type", ""))
        return JSONResponse(
            error_body("invalid_request", "; ".join(problems), problems=problems), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette sends this, then re-raises to the Gate (quiet once a response started).
        ref = uuid.uuid4().hex[:12]
        log.error("internal error (ref %s) on %s", ref, request.url.path, exc_info=exc)
        m.errors.labels("internal").inc()
        msg = f"internal error; the server log has details (ref {ref})"
        return JSONResponse(error_body("internal", msg), 500)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        m.errors.labels(exc.kind).inc()
        return JSONResponse(error_body(exc.kind, exc.message), exc.status, headers=exc.headers)

    codes: dict[int | str, dict[str, Any]] = {
        401: {"description": "Missing or wrong API key."},
        413: {"description": "Too many inputs, an input too long, or a body too large."},
        422: {"description": "Malformed JSON, wrong types, empty list."},
        429: {"description": "Queue full; retry after `Retry-After` seconds."},
        503: {"description": "Model not loaded yet."},
        504: {"description": "Not answered within the per-request timeout."},
    }

    @app.post("/v1/predict", response_model=PredictResponse, responses=codes, dependencies=secured)
    async def predict(body: PredictRequest) -> Response:
        """Predict every input; answers in input order."""
        if not state.ready and not state.draining:
            raise ApiError(503, "not_ready", "model still loading", {"Retry-After": "1"})
        texts, pairs = split_inputs(body.inputs, state.card, settings)
        assert state.batcher is not None
        try:
            futures = state.batcher.submit(texts, pairs)
        except QueueFull as exc:
            raise ApiError(
                429, "queue_full", f"{exc}; retry shortly", {"Retry-After": "1"}
            ) from None
        gathered = asyncio.gather(*futures)
        try:
            results = await asyncio.wait_for(gathered, settings.timeout_s)
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"not answered within timeout_s={settings.timeout_s:g} (`tailor serve --timeout`)",
            ) from None
        m.inputs.inc(len(texts))
        card = state.card
        return JSONResponse(
            {
                "predictions": results,
                "model": {k: card[k] for k in ("name", "variant", "version")},
            }
        )

    @app.get("/v1/models", dependencies=secured)
    async def models() -> dict[str, Any]:
        """The served model: task, labels, variant, version, max length, and the request limits."""
        if not state.card:
            raise ApiError(503, "not_ready", "model still loading", {"Retry-After": "1"})
        limits = {
            k: getattr(settings, k)
            for k in ("max_inputs", "max_chars", "max_body_bytes", "max_batch_size", "timeout_s")
        }
        return {"models": [{**state.card, "limits": limits}]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Loading or draining."}})
    async def readyz() -> Response:
        """Readiness: the model is loaded and the service is not shutting down."""
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready"})
        why = "draining" if state.draining else "loading"
        return JSONResponse({"status": why}, 503)

    @app.get("/metrics", dependencies=secured)
    async def metrics() -> Response:
        """Prometheus metrics (text format)."""
        body, ctype = m.render()
        return Response(body, media_type=ctype)

    return Gate(app, state)  # type: ignore[return-value]


def split_inputs(
    inputs: list[str | TextInput], card: dict[str, Any], settings: ServeSettings
) -> tuple[list[str], list[str] | None]:
    """Validate the request against the model and the limits; texts and (pair tasks) pairs."""
    n = len(inputs)
    if n > settings.max_inputs:
        raise ApiError(
            413,
            "too_large",
            f"{n} inputs in one request; the limit is max_inputs={settings.max_inputs} "
            "(`tailor serve --max-inputs`). Split the request.",
        )
    texts: list[str] = []
    pairs: list[str] = []
    for i, item in enumerate(inputs):
        text, pair = (item, None) if isinstance(item, str) else (item.text, item.text_pair)
        if card["pair"] and pair is None:
            raise ApiError(
                422,
                "invalid_request",
                f"inputs[{i}]: this model compares two texts; send "
                '{"text": ..., "text_pair": ...} objects',
            )
        if not card["pair"] and pair is not None:
            raise ApiError(
                422,
                "invalid_request",
                f"inputs[{i}]: this model takes one text; `text_pair` is not allowed",
            )
        size = len(text) + len(pair or "")
        if size > settings.max_chars:
            raise ApiError(
                413,
                "too_large",
                f"inputs[{i}] has {size} characters; the limit is max_chars={settings.max_chars} "
                "(`tailor serve --max-chars`)",
            )
        try:
            (text + (pair or "")).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                422, "invalid_request", f"inputs[{i}] is not valid Unicode (a lone surrogate?)"
            ) from None
        if not text.strip() or (pair is not None and not pair.strip()):
            raise ApiError(422, "invalid_request", f"inputs[{i}] is empty; send non-blank text")
        texts.append(text)
        if pair is not None:
            pairs.append(pair)
    return texts, (pairs if card["pair"] else None)


def describe_errors(errors: Any, content_type: str = "") -> list[str]:
    """pydantic's error list -> one readable line per problem (no internals, no stack)."""
    out: list[str] = []
    for e in errors:
        kind = e.get("type", "")
        raw = [str(p) for p in e.get("loc", ()) if p != "body"]
        branch = next((p for p in raw if p in ("str", "TextInput")), None)
        loc = [p for p in raw if p not in ("str", "TextInput")]
        where = _loc(loc)
        value = e.get("input")
        if branch == "str" and isinstance(value, dict):
            continue  # an object input: the TextInput branch's errors say what is wrong
        if branch == "TextInput" and kind in ("model_type", "model_attributes_type"):
            continue  # not an object: the str branch's error says it
        if kind == "json_invalid":
            ctx = e.get("ctx", {}).get("error", "")
            line = f"body is not valid JSON ({ctx})" if ctx else "body is not valid JSON"
        elif kind == "missing" and not loc:
            line = 'body is missing; send JSON like {"inputs": ["some text"]}'
        elif kind == "missing":
            line = f"{where}: required field missing"
        elif kind == "extra_forbidden":
            allowed = "`text`, `text_pair`" if branch == "TextInput" else "`inputs`"
            line = f"{where}: unknown field (allowed: {allowed})"
        elif kind == "too_short" and where == "inputs":
            line = "inputs: the list is empty; send at least one text"
        elif kind == "list_type":
            line = f"{where}: expected a list of texts, got {_json_type(value)}"
        elif branch == "str":
            got = _json_type(value)
            line = f"{where}: expected a string or a {{text, text_pair}} object, got {got}"
        elif kind == "string_type":
            line = f"{where}: expected a string, got {_json_type(value)}"
        elif kind in ("model_type", "model_attributes_type") and not loc:
            line = 'body: expected a JSON object like {"inputs": ["some text"]}'
            if "json" not in content_type:
                line += f" sent as Content-Type: application/json (got {content_type or 'none'!r})"
        else:
            line = f"{where or 'body'}: {e.get('msg', 'invalid')}"
        if line not in out:
            out.append(line)
    return out


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _loc(parts: list[str]) -> str:
    s = ""
    for p in parts:
        s += f"[{p}]" if p.isdigit() else (f".{p}" if s else p)
    return s


def app_from_env() -> Any:
    """Factory for worker processes: settings come from TAILORML_SERVE_SETTINGS."""
    from tailorml import env

    env.setup()
    return create_app(ServeSettings.from_env())
