"""The model service: POST /v1/predict, GET /v1/models, and the kit's /healthz, /readyz, /metrics;
OpenAPI at /docs.

The app holds no state between requests beyond the loaded model and its counters, so replicas are
interchangeable behind any load balancer. Everything a client can get wrong answers a 4xx with a
message that names the field or limit; anything else is a 500 with an id (the traceback goes to the
server log, never to the client). The shared parts (errors, auth, limits, probes, metrics, drain)
come from `tailorml.serve.kit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tailorml.serve import kit
from tailorml.serve.batcher import MicroBatcher, QueueFull
from tailorml.serve.body import parse_predict
from tailorml.serve.cards import model_card, to_predictions
from tailorml.serve.gate import Gate
from tailorml.serve.metrics import Metrics
from tailorml.serve.schemas import ApiError, PredictRequest, PredictResponse, split_inputs
from tailorml.serve.settings import ServeSettings

log = logging.getLogger("uvicorn.error")

BODY_HINT = "(`tailor serve` setting); send fewer or shorter inputs per request"


class ServiceState:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.metrics = Metrics()
        self.lifecycle = kit.Lifecycle()
        self.predictor: Any = None
        self.batcher: MicroBatcher | None = None
        self.card: dict[str, Any] = {}


def create_app(settings: ServeSettings, predictor: Any = None) -> Gate:
    """The service for one model folder. `predictor` lets tests share an already loaded model.
    A causal-LM folder gets the generation service (tailorml/serve/generation.py)."""
    from tailorml.predictors.generator import is_causal_lm

    if is_causal_lm(settings.model):
        from tailorml.serve.generation import create_generation_app

        return create_generation_app(settings, generator=predictor)
    from tailorml.predictors.images import is_image_folder

    if is_image_folder(settings.model):  # images in, the same answers (serve/images.py)
        from tailorml.serve.images import create_image_app

        return create_image_app(settings, predictor=predictor)
    state = ServiceState(settings)
    m = state.metrics
    life = state.lifecycle

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
        kit.freeze_startup_objects()  # full GCs must not walk torch's objects on every request
        life.ready = True
        log.info(
            "serving %s (%s, %s, version %s) with %d thread(s); max_batch_size=%d max_wait_ms=%g",
            pred.folder, state.card["variant"], pred.runtime, state.card["version"],
            settings.worker_threads(), settings.max_batch_size, settings.max_wait_ms,
        )  # fmt: skip
        try:
            yield
        finally:
            life.draining, life.ready = True, False
            await state.batcher.close(timeout=settings.timeout_s + 5)
            # Every request a client got through to us has had its full response sent.
            gate: Gate = app.state.gate  # the kit's, counting every request
            log.info(
                "drained: %d request(s) accepted, %d answered, %d model batch(es)",
                gate.accepted, gate.answered, state.batcher.batches,
            )  # fmt: skip

    app = FastAPI(
        title="tailorml model service",
        description="Predictions from a tailorml model folder, with dynamic micro-batching.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = state
    secured = kit.auth_docs(settings.api_key)

    codes: dict[int | str, dict[str, Any]] = {
        401: {"description": "Missing or wrong API key."},
        413: {"description": "Too many inputs, an input too long, or a body too large."},
        422: {"description": "Malformed JSON, wrong types, empty list."},
        429: {"description": "Queue full; retry after `Retry-After` seconds."},
        503: {"description": "Model not loaded yet."},
        504: {"description": "Not answered within the per-request timeout."},
    }

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=codes,
        dependencies=secured,
        openapi_extra=_REQUEST_DOC,
    )
    async def predict(request: Request) -> Response:
        """Predict every input; answers in input order."""
        # The body is read and checked here rather than by FastAPI, so that its limits come
        # before its validation and its cost stays bounded (tailorml.serve.body).
        raw = await request.body()
        body = parse_predict(raw, request.headers.get("content-type", ""), settings.max_inputs)
        if not life.ready and not life.draining:
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

    _document_request(app)
    return kit.install(
        app,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_hint=BODY_HINT,
        protected=("/v1/", "/metrics"),
        readiness=life,
        metrics=m,
        ready_doc="Readiness: the model is loaded and the service is not shutting down.",
    )


# /v1/predict reads its own body, so its schema is given to the OpenAPI page by hand.
_REQUEST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
        },
    }
}


def _document_request(app: FastAPI) -> None:
    """Add PredictRequest (and the models it refers to) to the OpenAPI components."""
    schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    models = {"PredictRequest": schema, **schema.pop("$defs", {})}
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(models)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> Any:
    """Factory for worker processes: settings come from TAILORML_SERVE_SETTINGS."""
    from tailorml import env

    env.setup()
    return create_app(ServeSettings.from_env())
