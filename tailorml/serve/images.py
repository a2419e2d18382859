"""The image model service: POST /v1/predict with images, GET /v1/models, and the kit's /healthz,
/readyz, /metrics (the same API key, limits, error shape and drain as the text service).

Two ways to send images, answered alike ({"predictions": [{label, score, scores}], "model"}):

    application/json       {"inputs": ["<base64 png/jpg>", ...]} (a `data:image/...;base64,`
                           prefix is accepted)
    multipart/form-data    one file part per image (e.g. `curl -F file=@a.png -F file=@b.png`)

Every image is decoded and resized to the model's input; one that is not valid base64 or not a
readable image is a 422 naming its index (`inputs[2]`). The body is bounded by max_body_bytes and
the count by max_inputs; an image larger than MAX_PIXELS is refused before it is decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.parser
import email.policy
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tailorml.serve import kit
from tailorml.serve.body import predict_token_budget, read_json
from tailorml.serve.cards import model_card
from tailorml.serve.metrics import Metrics
from tailorml.serve.schemas import ApiError, PredictResponse, check_count
from tailorml.serve.settings import ServeSettings

log = logging.getLogger("uvicorn.error")

EXAMPLE = '{"inputs": ["iVBORw0KGgo..."]}  (base64 images) or multipart/form-data files'
BODY_HINT = "(`tailor serve --max-body-bytes`); send fewer or smaller images per request"


def _b64(item: Any, i: int) -> bytes:
    if not isinstance(item, str):
        raise ApiError(422, "invalid_request", f"inputs[{i}] must be a base64 string")
    text = item.split(",", 1)[1] if item.startswith("data:") and "," in item else item
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_request", f"inputs[{i}] is not valid base64") from None


def image_files(raw: bytes, content_type: str, max_inputs: int) -> list[bytes]:
    """The encoded images of a request body (JSON base64 or multipart/form-data files)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        if not msg.is_multipart():
            raise ApiError(422, "invalid_request", "multipart body without parts (boundary?)")
        files = [p.get_payload(decode=True) or b"" for p in msg.iter_parts()]  # type: ignore[attr-defined]
        if not files:
            raise ApiError(422, "invalid_request", "multipart body holds no file parts")
        check_count(len(files), max_inputs)
        return [bytes(f) for f in files]
    obj = read_json(
        raw,
        content_type,
        max_tokens=predict_token_budget(max_inputs),
        too_many=f"one request holds at most max_inputs={max_inputs} images "
        "(`tailor serve --max-inputs`). Split the request.",
        example=EXAMPLE,
    )
    inputs = obj.get("inputs") if isinstance(obj, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(422, "invalid_request", f"send a non-empty `inputs` list, like {EXAMPLE}")
    extra = sorted(set(obj) - {"inputs"})
    if extra:
        raise ApiError(422, "invalid_request", f"unknown field(s) {extra}; send only `inputs`")
    check_count(len(inputs), max_inputs)
    return [_b64(item, i) for i, item in enumerate(inputs)]


def create_image_app(settings: ServeSettings, predictor: Any = None) -> Any:
    """The service for one image model folder; `predictor` lets tests share a loaded model."""
    m = Metrics()
    life = kit.Lifecycle()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from tailorml.predictors.images import load_image_predictor

        pred = predictor or await run_in_threadpool(
            load_image_predictor, settings.model, settings.worker_threads()
        )
        import numpy as np

        await run_in_threadpool(pred.predict, np.zeros((1, *pred.shape), dtype=np.uint8))
        state["pred"], state["lock"] = pred, asyncio.Lock()
        state["card"] = {**model_card(Path(pred.folder), pred.info, pred.runtime), "pair": False}
        state["card"]["image"] = pred.info.get("image")
        kit.freeze_startup_objects()
        life.ready = True
        log.info("serving image model %s (%s)", pred.folder, pred.runtime)
        try:
            yield
        finally:
            life.draining, life.ready = True, False

    app = FastAPI(
        title="tailorml image model service",
        description="Image classification from a tailorml model folder.",
        version="1",
        lifespan=lifespan,
    )
    secured = kit.auth_docs(settings.api_key)

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=secured)
    async def predict(request: Request) -> JSONResponse:
        """Classify every image; answers in input order."""
        raw = await request.body()
        files = image_files(raw, request.headers.get("content-type", ""), settings.max_inputs)
        if not life.ready:
            raise ApiError(503, "not_ready", "model still loading", {"Retry-After": "1"})
        pred = state["pred"]
        try:
            x = await run_in_threadpool(pred.decode, files)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None

        def run() -> list[dict[str, Any]]:
            return list(pred.api_outputs(pred.predict(x)))

        async with state["lock"]:  # one model call at a time; requests queue here
            try:
                answers = await asyncio.wait_for(run_in_threadpool(run), settings.timeout_s)
            except TimeoutError:
                raise ApiError(
                    504, "timeout", f"not answered within {settings.timeout_s:g}s"
                ) from None
        m.inputs.inc(len(files))
        card = state["card"]
        return JSONResponse(
            {"predictions": answers, "model": {k: card[k] for k in ("name", "variant", "version")}}
        )

    @app.get("/v1/models", dependencies=secured)
    async def models() -> dict[str, Any]:
        """The served model: task, labels, input image shape, variant, version, limits."""
        if not state.get("card"):
            raise ApiError(503, "not_ready", "model still loading", {"Retry-After": "1"})
        limits = {k: getattr(settings, k) for k in ("max_inputs", "max_body_bytes", "timeout_s")}
        return {"models": [{**state["card"], "limits": limits}]}

    return kit.install(
        app,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_hint=BODY_HINT,
        readiness=life,
        metrics=m,
        body_example=EXAMPLE,
        ready_doc="Readiness: the model is loaded and the service is not shutting down.",
    )
