"""What happens on a connection before a request reaches the app: header size, slow clients,
the number of open connections.

uvicorn's HTTP parsers leave these open (measured with raw sockets, uvicorn 0.54): httptools
(llhttp) accepts headers of any size (a 10 MB header is read into memory), h11 caps them only at
`h11_max_incomplete_event_size` and answers with plain text; neither times out a client that
connects and sends nothing or half a request (uvicorn's keep-alive timer only runs *between*
requests); `limit_concurrency` answers 503 in plain text, and only once a request's headers are
complete. So both parser classes get the same guard here, selected through uvicorn's `http=`
option:

- headers larger than `max_header_bytes` -> 431 (the bytes are counted before the parser sees
  them, so nothing larger is ever buffered);
- a request whose headers are not complete `header_timeout_s` after the connection opened (or
  after its first byte, on a kept-alive connection) -> 408, or a silent close if nothing was sent;
- a body not complete `body_timeout_s` after its headers -> 408 (the app's pending read returns
  a disconnect, so it stops waiting too);
- more than `max_connections` open connections -> 503 with `Retry-After`, answered at once and
  closed, so a flood of idle sockets cannot grow memory;
- a malformed request -> 400;

each in the kit's one error shape and counted in the serving app's metrics
(`tailorml_errors_total{kind}`: `too_large`, `slow_client`, `overloaded`, `bad_request`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tailorml.serve.gate import WIRE_STATUS, Gate
from tailorml.serve.schemas import error_body
from tailorml.serve.settings import ServeSettings

log = logging.getLogger("uvicorn.error")
LINGER_S = 2.0  # how long a refused connection may keep sending before it is closed


@dataclass(frozen=True)
class WireLimits:
    """Connection-level limits; the defaults are what `tailor serve` uses."""

    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 256
    hint: str = "`tailor serve` settings"  # where an operator changes them, quoted in messages


def limits_of(settings: ServeSettings) -> WireLimits:
    """The connection limits a `tailor serve` process was asked for."""
    return WireLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        max_connections=settings.max_connections,
    )


def uvicorn_config(
    app: Any, *, limits: WireLimits | None = None, parser: str = "auto", **options: Any
) -> Any:
    """A `uvicorn.Config` for `app` (an ASGI app or an import string) whose connections are
    guarded by `limits`. `parser`: "auto" (httptools when installed, else h11), "httptools" or
    "h11". `options` go to uvicorn (host, port, workers, log_level, ...)."""
    import uvicorn

    limits = limits or WireLimits()
    if parser == "auto":
        try:
            import httptools  # noqa: F401

            parser = "httptools"
        except ImportError:  # pragma: no cover - httptools is in requirements.txt
            parser = "h11"
    config = uvicorn.Config(
        app,
        http=f"{__name__}:{_CLASSES[parser]}",
        ws="none",  # no service has a WebSocket route: an upgrade request is a plain request
        timeout_keep_alive=limits.keepalive_timeout_s,  # type: ignore[arg-type]  # float works
        # h11's own cap is a backstop above ours (ours answers 431 in the error shape first).
        h11_max_incomplete_event_size=limits.max_header_bytes + 1024,
        **options,
    )
    # Travels with the config to worker processes (uvicorn pickles it); read by the protocol.
    config.tailorml_wire = asdict(limits)  # type: ignore[attr-defined]
    return config


def _response(status: int, kind: str, message: str, extra: tuple[str, ...] = ()) -> bytes:
    body = json.dumps(error_body(kind, message)).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_last_warning: dict[str, float] = {}


class _QuietRepeats(logging.Filter):
    """uvicorn logs a warning for every malformed request and every upgrade request it cannot
    serve; a client sending thousands would fill the log. Let one of each through every 10 s."""

    NOISY = (
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "No supported WebSocket",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        noisy = next((n for n in self.NOISY if msg.startswith(n)), None)
        if noisy is None:
            return True
        now = time.monotonic()
        if now - _last_warning.get(noisy, -1e9) < 10:
            return False
        _last_warning[noisy] = now
        return True


def _quiet_uvicorn() -> None:
    if not any(isinstance(f, _QuietRepeats) for f in log.filters):
        log.addFilter(_QuietRepeats())


def _warn(kind: str, message: str) -> None:
    """Log a refusal, at most once every 10 s per kind (a flood must not flood the log too)."""
    now = time.monotonic()
    if now - _last_warning.get(kind, -1e9) >= 10:
        _last_warning[kind] = now
        log.warning("%s (further ones are counted in tailorml_errors_total, not logged)", message)


class _Guard(asyncio.Protocol):
    """Mixed in front of a uvicorn HTTP protocol class (the attributes below are the base's).

    Tracks one request at a time through two phases: "head" (bytes counted against
    `max_header_bytes`, a deadline of `header_timeout_s`) and "body" (a deadline of
    `body_timeout_s`). The phase is read from the base's state after each chunk it parses: a new
    `cycle` object means a request's headers are complete, `_body_pending()` False that its body
    has been read to the end by the parser (also when the app answered before reading it, as a
    401 or a 413 does: uvicorn then reads and drops the rest, keeping the connection).
    A header that arrives in the same read as the end of the previous body is counted from the
    next read on, so it can pass the cap by at most one read (256 KiB)."""

    config: Any
    cycle: Any
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    limit_concurrency: int | None

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None):
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        self.limits = WireLimits(**getattr(config, "tailorml_wire", {}))
        _quiet_uvicorn()
        self.limit_concurrency = None  # connections are bounded here, answered in our shape
        self._in_head = True
        self._head_bytes = 0
        self._seen_cycle: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._ending = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        lim = self.limits
        if len(self.connections) >= lim.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._arm(lim.header_timeout_s, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._ending or self.transport.is_closing():
            return
        while data:
            if not self._in_head:
                super().data_received(data)
                if not self._ending and not self.transport.is_closing():
                    self._follow()
                return
            if self._timer is None:  # the first byte of a request on a kept-alive connection
                self._arm(self.limits.header_timeout_s, self._head_timed_out)
            room = self.limits.max_header_bytes - self._head_bytes
            if room <= 0:
                self._answer(
                    431,
                    "too_large",
                    f"request headers larger than max_header_bytes={self.limits.max_header_bytes} "
                    f"({self.limits.hint}); send smaller headers",
                )
                return
            chunk, data = data[:room], data[room:]
            self._head_bytes += len(chunk)
            super().data_received(chunk)
            if self._ending or self.transport.is_closing():
                return
            self._follow()

    def eof_received(self) -> None:
        if self._ending:
            self.transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ uvicorn's hook

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # the base's; may parse buffered bytes
        if not self._ending and not self.transport.is_closing():
            self._follow()

    def send_400_response(self, msg: str) -> None:
        """The parser refused the bytes (bad request line, bad header, bad chunk size, ...)."""
        self._answer(400, "bad_request", "malformed HTTP request; send HTTP/1.1")

    # ------------------------------------------------------------------ the phases

    def _follow(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen_cycle:  # headers complete
            self._seen_cycle = cycle
            self._in_head = False
            self._arm(self.limits.body_timeout_s, self._body_timed_out)
        if not self._in_head and not self._body_pending():  # next bytes: the next request
            self._disarm()
            self._in_head, self._head_bytes = True, 0

    def _body_pending(self) -> bool:
        raise NotImplementedError

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._ending or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # connected and never spoke: nothing to answer, just close
            self._count(0, "slow_client")
            self.transport.close()
            return
        self._answer(
            408,
            "slow_client",
            "request headers not received within "
            f"header_timeout_s={self.limits.header_timeout_s:g} ({self.limits.hint})",
        )

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self._ending or self.transport.is_closing() or cycle is None:
            return
        if cycle.response_started:  # answered already (say, a 401 before the body was read)
            self.transport.close()
            return
        cycle.scope[WIRE_STATUS] = 408  # the Gate counts the request under its path, as 408
        self._answer(
            408,
            "slow_client",
            f"request body not received within body_timeout_s={self.limits.body_timeout_s:g} "
            f"({self.limits.hint})",
            count_request=False,
        )

    # ------------------------------------------------------------------ helpers

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        """Over `max_connections`: answer 503 at once, without reading the request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        n = self.limits.max_connections
        msg = f"too many open connections (max_connections={n}, {self.limits.hint}); retry shortly"
        self._write_and_close(_response(503, "overloaded", msg, ("retry-after: 1",)))
        self._count(503, "overloaded")
        _warn("overloaded", f"refused a connection: {n} already open (max_connections)")

    def _answer(self, status: int, kind: str, message: str, count_request: bool = True) -> None:
        self._write_and_close(_response(status, kind, message))
        self._count(status if count_request else 0, kind)
        _warn(kind, f"answered {status}: {message}")

    def _write_and_close(self, response: bytes) -> None:
        """Send `response`, then end the connection without losing it: closing a socket that
        still has unread bytes (the rest of a huge header, say) resets the connection, and the
        client may never read the answer. So: stop writing (FIN after the answer), drop what the
        client still sends, and close when it closes or LINGER_S later."""
        self._disarm()
        self._ending = True
        t = self.transport
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            # The request in progress is over: the app's pending read returns a disconnect and
            # its answer is dropped (it must not be written after ours, or after the FIN).
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # half an answer is out: nothing sane can follow it
                t.close()
                return
        t.write(response)
        if t.can_write_eof():
            t.write_eof()
            self._timer = self.loop.call_later(LINGER_S, t.close)
        else:  # pragma: no cover - TLS transports cannot half-close
            t.close()

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _count(self, status: int, kind: str) -> None:
        app = getattr(self.config, "loaded_app", None)
        for _ in range(8):  # through uvicorn's own wrappers (proxy headers, message logger)
            if app is None or isinstance(app, Gate):
                break
            app = getattr(app, "app", None)
        if isinstance(app, Gate):
            app.count_refusal(status, kind)


class GuardedH11(_Guard, H11Protocol):
    """uvicorn's pure-Python parser, guarded."""

    def _body_pending(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpTools(_Guard, HttpToolsProtocol):
        """uvicorn's C parser (httptools/llhttp), guarded. The parser's own callbacks say where a
        message's body starts and ends (the base ignores the end once it has answered)."""

        _parsing_body = False

        def on_headers_complete(self) -> None:
            self._parsing_body = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._parsing_body = False
            super().on_message_complete()

        def _body_pending(self) -> bool:
            return self._parsing_body

except ImportError:  # pragma: no cover - httptools is in requirements.txt
    pass

_CLASSES = {"httptools": "GuardedHttpTools", "h11": "GuardedH11"}
