"""The outermost layer of every service: API key, body-size limit, request metrics, last-resort 500.

Pure ASGI (not BaseHTTPMiddleware): it runs on every request, and must answer before the body is
parsed (a 401 must not depend on the body being valid JSON). It knows nothing of what the app
behind it does; `tailorml.serve.kit.install` builds it from an app's settings.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from tailorml.serve.metrics import Metrics
from tailorml.serve.schemas import error_body

log = logging.getLogger("uvicorn.error")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
# Set in a request's scope by tailorml.serve.wire when it answered the request itself.
WIRE_STATUS = "tailorml.wire_status"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Gate:
    """Wraps an ASGI app. Requests under a `protected` prefix need the API key (when one is set);
    bodies over `max_body_bytes` get a 413 whose message is `body_hint` after the limit; every
    request is counted in `metrics` (labelled by path when the path is in `known_paths`, else
    "other"), and in `accepted` / `answered` (a full response sent) for the drain log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        protected: Collection[str],
        known_paths: Collection[str],
        metrics: Metrics,
        body_hint: str,
    ):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.protected = tuple(protected)
        self.known_paths = frozenset(known_paths)
        self.metrics = metrics
        self.body_hint = body_hint
        self.accepted = 0
        self.answered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        label = path if path in self.known_paths else "other"
        t0 = time.perf_counter()
        self.accepted += 1
        status = {"code": 500, "started": False, "done": False, "too_large": False}

        async def send_wrapped(message: Message) -> None:
            if status["too_large"]:
                # The body went past the limit while FastAPI read it; FastAPI turns that into a
                # generic 400, which we replace with the 413 that names the limit.
                if message["type"] == "http.response.start" and not status["started"]:
                    status["too_large"] = False
                    await self._json(413, "too_large", self.body_message(), send_wrapped)
                    status["too_large"] = True
                return
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                # No browser may guess another type than the one sent (a JSON error echoing
                # client text must never be sniffed as HTML).
                message = {**message, "headers": [*message.get("headers", []), _NOSNIFF]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                status["done"] = True
            await send(message)

        try:
            refusal = self._check(scope, path)
            if refusal is not None:
                await refusal(scope, receive, send_wrapped)
                return
            await self.app(scope, self._limited(receive, status), send_wrapped)
        except BodyTooLarge:
            status["too_large"] = False
            if not status["started"]:
                await self._json(413, "too_large", self.body_message(), send_wrapped)
        except Exception:
            if not status["started"]:
                ref = uuid.uuid4().hex[:12]
                # %r: a path can hold a newline, which must not forge a log line.
                log.exception("internal error (ref %s) on %s %r", ref, scope.get("method"), path)
                self.metrics.errors.labels("internal").inc()
                await self._json(
                    500,
                    "internal",
                    f"internal error; the server log has details (ref {ref})",
                    send_wrapped,
                )
        finally:
            self.answered += 1 if status["done"] else 0
            # The connection guard may have answered for the app (408 on a body too slow).
            code = scope.get(WIRE_STATUS) or status["code"]
            self.metrics.requests.labels(label, str(code)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - t0)

    def _check(self, scope: Scope, path: str) -> JSONResponse | None:
        """A refusal decided from the headers alone, or None to let the request in."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.api_key
        if key and path.startswith(self.protected):
            given = headers.get("x-api-key")
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not given or not _same_secret(given, key):
                self.metrics.errors.labels("auth").inc()
                msg = (
                    "missing API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
                    if not given
                    else "wrong API key"
                )
                return JSONResponse(
                    error_body("unauthorized", msg), 401, headers={"WWW-Authenticate": "Bearer"}
                )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            self.metrics.errors.labels("too_large").inc()
            return JSONResponse(error_body("too_large", self.body_message()), 413)
        return None

    def count_refusal(self, status: int, kind: str) -> None:
        """A refusal made below the app, on the connection (tailorml.serve.wire): counted in
        `errors{kind}`, and in `requests{path="other", status}` when an answer was sent."""
        self.metrics.errors.labels(kind).inc()
        if status:
            self.metrics.requests.labels("other", str(status)).inc()

    def body_message(self) -> str:
        return f"request body larger than max_body_bytes={self.max_body_bytes} {self.body_hint}"

    def _limited(self, receive: Receive, status: dict[str, Any]) -> Receive:
        limit = self.max_body_bytes
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # chunked bodies carry no Content-Length to check up front
                    self.metrics.errors.labels("too_large").inc()
                    status["too_large"] = True
                    raise BodyTooLarge()
            return message

        return wrapped

    @staticmethod
    async def _json(status: int, kind: str, message: str, send: Send) -> None:
        resp = JSONResponse(error_body(kind, message), status)
        await resp({"type": "http"}, _no_receive, send)


def _same_secret(given: str, key: str) -> bool:
    """Compare in constant time, and compare digests of equal length: `hmac.compare_digest` on
    the raw strings returns early when the lengths differ, which tells a prober the key's
    length."""
    a = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    b = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(a, b)


class BodyTooLarge(Exception):
    """Raised from `receive` when a body passes max_body_bytes; the Gate answers the 413 (the
    kit's handler keeps it out of the internal-error log on the way)."""


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
