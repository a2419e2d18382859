"""The service kit: what every tailorml HTTP app shares, installed by one call.

    app = FastAPI(...)              # the app's own routes first (they keep their OpenAPI order)
    asgi = install(app, api_key=..., max_body_bytes=..., body_hint="(`tool --option`); fix")
    uvicorn.run(asgi, ...)          # serve what `install` returned, not `app`

`install` adds the one error shape (`{"error": {"type", "message", ...}}` for 401, 404, 405, 413,
422, 500 and every `ApiError`), `/healthz` (liveness, plus whatever `health()` adds), `/readyz`
(200 ready, 503 loading or draining), Prometheus `/metrics`, the SIGTERM hook that turns `/readyz`
to draining the moment the signal arrives, and wraps the app in the `Gate` (API key on the
protected prefixes, body-size limit, request metrics, last-resort 500).
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from tailorml.serve.gate import BodyTooLarge, Gate, log
from tailorml.serve.metrics import Metrics
from tailorml.serve.schemas import PREDICT_EXAMPLE, ApiError, clip, describe_errors, error_body

KIT_PATHS = ("/healthz", "/readyz", "/metrics")


class Lifecycle:
    """Where a service is: loading (not `ready`), ready, or draining (shutting down).

    The app sets `ready` once it can answer; the kit sets `draining` on SIGTERM/SIGINT and when the
    server shuts down."""

    def __init__(self, ready: bool = False):
        self.ready = ready
        self.draining = False

    def status(self) -> str:
        if self.draining:
            return "draining"
        return "ready" if self.ready else "loading"


def hook_signals(lifecycle: Lifecycle) -> None:
    """Mark the service draining (readyz -> 503) the moment SIGTERM/SIGINT arrives.

    uvicorn installs its own handlers before the app starts; we chain in front of them, so uvicorn
    still stops accepting, waits for in-flight requests and then runs the lifespan shutdown.
    Signals reach only the main thread: a server run in another thread (finwatch's `--http`) is
    stopped by its owner, who sets `lifecycle.draining` itself."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)

        def handler(signum: int, frame: Any, prev: Any = prev) -> None:
            lifecycle.draining = True
            if callable(prev):
                prev(signum, frame)

        signal.signal(sig, handler)


def freeze_startup_objects() -> None:
    """Call once a service has loaded its model and warmed up. A process with torch and
    transformers imported holds ~400k long-lived objects, and every full garbage collection
    walks them all: ~0.85 s here, during which the event loop (and /healthz) stands still.
    Moving them to the permanent generation (`gc.freeze`) makes later collections walk only
    what requests allocate."""
    gc.collect()
    gc.freeze()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(host: str, api_key: str | None, exposes: str) -> None:
    """Say so when a service is bound beyond this machine with no key: anyone who reaches the
    port can then do what `exposes` says."""
    if not is_loopback(host) and not api_key:
        logging.getLogger("tailorml").warning(
            "binding %s without an API key: anyone who can reach this port can %s", host, exposes
        )


def auth_docs(api_key: str | None) -> list[Any]:
    """Route dependencies that only document the two key schemes on the OpenAPI page (the Gate
    does the checking, before the body is read)."""
    if not api_key:
        return []
    bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`")
    header = APIKeyHeader(name="X-API-Key", auto_error=False)
    return [Depends(bearer), Depends(header)]


def install(
    app: FastAPI,
    *,
    api_key: str | None,
    max_body_bytes: int,
    body_hint: str,
    protected: Collection[str] = ("/v1/", "/metrics"),
    readiness: Lifecycle | Callable[[], str] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    metrics: Metrics | None = None,
    body_example: str = PREDICT_EXAMPLE,
    ready_doc: str = "Readiness: the service can answer and is not shutting down.",
) -> Gate:
    """Add the kit to `app` (call it after the app's own routes) and return the ASGI app to serve.

    `readiness`: a `Lifecycle` the app updates, or a callable answering "ready", "loading" (or any
    other word, answered with 503); None = ready as soon as the server runs. `health`: extra fields
    for `/healthz`. `body_hint`: what follows "request body larger than max_body_bytes=N " in the
    413 message (where the limit is set, and what to do). `body_example`: a well-formed body,
    quoted when a body is missing. The app's `state` gets `metrics`, `lifecycle` and `gate`."""
    m = metrics or Metrics()
    lifecycle = readiness if isinstance(readiness, Lifecycle) else Lifecycle(ready=True)
    check = readiness if callable(readiness) else None

    _install_errors(app, m, body_example)

    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        extra = await run_in_threadpool(health) if health else {}  # may read a database
        return {"status": "ok", **extra}

    async def readyz() -> Response:
        now = "draining" if lifecycle.draining else check() if check else lifecycle.status()
        return JSONResponse({"status": now}, 200 if now == "ready" else 503)

    async def prometheus() -> Response:
        """Prometheus metrics (text format)."""
        body, ctype = m.render()
        return Response(body, media_type=ctype)

    metrics_protected = any("/metrics".startswith(p) for p in protected)
    app.add_api_route(
        "/healthz", healthz, response_model=dict[str, Any] if health else dict[str, str]
    )
    app.add_api_route(
        "/readyz",
        readyz,
        description=ready_doc,
        responses={503: {"description": "Loading or draining."}},
    )
    app.add_api_route(
        "/metrics",
        prometheus,
        name="metrics",
        dependencies=auth_docs(api_key) if metrics_protected else [],
    )
    _drain_on_shutdown(app, lifecycle)
    gate = Gate(
        app,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        protected=protected,
        known_paths={r.path for r in app.routes if isinstance(r, APIRoute)},
        metrics=m,
        body_hint=body_hint,
    )
    app.state.metrics, app.state.lifecycle, app.state.gate = m, lifecycle, gate
    return gate


def _install_errors(app: FastAPI, m: Metrics, body_example: str) -> None:
    """One error shape for everything a request can run into."""

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        m.errors.labels("validation").inc()
        ctype = request.headers.get("content-type", "")
        problems = describe_errors(exc.errors(), ctype, body_example)
        return JSONResponse(
            error_body("invalid_request", "; ".join(problems), problems=problems), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unreadable = _unreadable_body(exc)
        if unreadable:  # FastAPI could not parse the body: the same 422 as any bad body
            m.errors.labels("validation").inc()
            return JSONResponse(error_body("invalid_request", unreadable), 422)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        # A handler that reads its own body meets the Gate's limit here; the Gate replaces this
        # answer with its 413 naming the limit (and has counted it).
        return JSONResponse(error_body("too_large", "request body too large"), 413)

    @app.exception_handler(ClientDisconnect)
    async def on_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client left (or was cut off by body_timeout_s) while its body was read: nobody
        # will read this answer; 499 is what nginx logs for it. Not an error of ours.
        return JSONResponse(error_body("client_disconnected", "client closed the request"), 499)

    @app.exception_handler(Exception)
    async def on_internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette sends this, then re-raises to the Gate (quiet once a response started).
        ref = uuid.uuid4().hex[:12]
        log.error("internal error (ref %s) on %r", ref, request.url.path, exc_info=exc)
        m.errors.labels("internal").inc()
        msg = f"internal error; the server log has details (ref {ref})"
        return JSONResponse(error_body("internal", msg), 500)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        # Every 422 is a validation error in the metrics, whoever raised it.
        m.errors.labels("validation" if exc.status == 422 else exc.kind).inc()
        return JSONResponse(error_body(exc.kind, exc.message), exc.status, headers=exc.headers)


def _unreadable_body(exc: StarletteHTTPException) -> str | None:
    """What was wrong with a body FastAPI failed to parse as JSON (it answers a bare 400 "There
    was an error parsing the body", the cause chained), or None for any other HTTP error."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return "body is not valid UTF-8 (or UTF-16/32 JSON); send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "body is nested too deeply; send flatter JSON"
    if isinstance(cause, ValueError):  # e.g. an integer of more than 4300 digits
        return f"body is not valid JSON for this service ({clip(str(cause), 120)})"
    return None


def _drain_on_shutdown(app: FastAPI, lifecycle: Lifecycle) -> None:
    """Around the app's own lifespan: hook the signals once it has started, and report draining
    before its shutdown code runs."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            hook_signals(lifecycle)
            try:
                yield state
            finally:
                lifecycle.draining = True

    app.router.lifespan_context = lifespan
