"""The service kit (`tailorml.serve.kit`) against real servers on 127.0.0.1: on a bare app, and on
finwatch's HTTP app (API key, body limit, the one error shape, probes, metrics)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.replay import TOPICS, make_stream
from tailorml.apps.finwatch.scorer import LabelScorer
from tailorml.serve import kit
from tailorml.serve.schemas import ApiError

from .serve_helpers import free_port

KEY = "kit-key-4567"
START = 1767571200.0


class Served:
    """Any ASGI app under uvicorn in a thread on 127.0.0.1."""

    def __init__(self, asgi: Any):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(asgi, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def error(resp: httpx.Response, status: int, kind: str, *needles: str) -> str:
    """The response is the kit's error shape, with this status and type; returns the message."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body  # never FastAPI's {"detail": ...}
    assert body["error"]["type"] == kind, body
    msg = str(body["error"]["message"])
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert "Traceback" not in resp.text
    return msg


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


# ----------------------------------------------------------------------------- the kit, bare


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_kit_on_a_bare_app() -> None:
    from fastapi import FastAPI

    state = {"now": "loading"}
    app = FastAPI()

    @app.get("/v2/boom")
    def boom() -> dict[str, str]:
        raise RuntimeError("secret internals")

    @app.get("/v2/refuse")
    def refuse() -> dict[str, str]:
        raise ApiError(409, "conflict", "already there; pick another name")

    asgi = kit.install(
        app,
        api_key=KEY,
        max_body_bytes=2048,
        body_hint="(the `--limit` option); send less",
        protected=("/v2/",),  # /metrics left open on purpose
        readiness=lambda: state["now"],
        health=lambda: {"jobs": 3},
    )
    with Served(asgi) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        hdr = {"Authorization": f"Bearer {KEY}"}
        error(c.get("/v2/boom"), 401, "unauthorized", "missing API key")
        server_log = Records()
        logging.getLogger("uvicorn.error").addHandler(server_log)
        try:
            msg = error(c.get("/v2/boom", headers=hdr), 500, "internal", "ref ")
        finally:
            logging.getLogger("uvicorn.error").removeHandler(server_log)
        ref = msg.rsplit("ref ", 1)[1].rstrip(")")
        assert "secret internals" not in msg
        assert any(ref in line for line in server_log.lines), server_log.lines
        error(c.get("/v2/refuse", headers=hdr), 409, "conflict", "pick another name")
        error(c.post("/v2/refuse", headers=hdr), 405, "method_not_allowed")
        error(c.get("/elsewhere"), 404, "not_found")
        error(c.post("/v2/refuse", headers=hdr, content=b"x" * 4000), 413, "too_large",
              "max_body_bytes=2048 (the `--limit` option); send less")  # fmt: skip
        assert c.get("/healthz").json() == {"status": "ok", "jobs": 3}
        assert (c.get("/readyz").status_code, c.get("/readyz").json()) == (
            503,
            {"status": "loading"},
        )
        state["now"] = "ready"
        assert (c.get("/readyz").status_code, c.get("/readyz").json()) == (200, {"status": "ready"})
        app.state.lifecycle.draining = True  # what SIGTERM does
        assert c.get("/readyz").json() == {"status": "draining"}
        text = c.get("/metrics").text  # not under a protected prefix: open
        assert metric(text, 'tailorml_requests_total{path="/v2/boom",status="500"}') == 1
        assert metric(text, 'tailorml_requests_total{path="other",status="404"}') == 1
        assert metric(text, 'tailorml_errors_total{kind="internal"}') == 1
        assert metric(text, 'tailorml_errors_total{kind="conflict"}') == 1
        assert metric(text, 'tailorml_errors_total{kind="too_large"}') == 1
    assert asgi.accepted == asgi.answered >= 12


def test_warn_if_open(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tailorml"):
        kit.warn_if_open("127.0.0.1", None, "do things")
        kit.warn_if_open("localhost", None, "do things")
        kit.warn_if_open("::1", None, "do things")
        kit.warn_if_open("0.0.0.0", "a-key", "do things")
        assert not caplog.records
        kit.warn_if_open("0.0.0.0", None, "do things")
    assert [r.getMessage() for r in caplog.records] == [
        "binding 0.0.0.0 without an API key: anyone who can reach this port can do things"
    ]


# ----------------------------------------------------------------------------- finwatch's app


@pytest.fixture()
def finwatch(tmp_path: Path) -> Iterator[tuple[Served, Watcher, kit.Lifecycle]]:
    from tailorml.apps.finwatch.server import create_app

    c = FinwatchConfig(
        db=f"sqlite:///{tmp_path / 'k.db'}", models={"scorer": "labels"}, max_body_bytes=64 * 1024
    )
    engine = store.make_engine(c.db)
    w = Watcher(c, engine, LabelScorer(c.models, TOPICS)).open()
    life = kit.Lifecycle(ready=True)
    with Served(create_app(c, engine, w, api_key=KEY, lifecycle=life)) as srv:
        yield srv, w, life
    engine.dispose()


def test_finwatch_http_needs_the_key(finwatch: tuple[Served, Watcher, kit.Lifecycle]) -> None:
    srv, w, _ = finwatch
    events = make_stream(1, [], rate_per_min=5, start=START, seed=1)[:20]
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for path in ("/api/trends", "/api/alerts", "/metrics"):
            error(c.get(path), 401, "unauthorized", "missing API key")
        error(c.post("/v1/events", json=events), 401, "unauthorized", "missing API key")
        wrong = c.post("/v1/events", json=events, headers={"X-API-Key": "nope"})
        error(wrong, 401, "unauthorized", "wrong API key")
        assert wrong.headers["www-authenticate"] == "Bearer"
        # Refused before the body is read: a broken body still gets the 401.
        error(c.post("/v1/events", content=b"{broken"), 401, "unauthorized")
        assert w.totals.accepted == 0
        ok = c.post("/v1/events", json=events, headers={"X-API-Key": KEY})
        assert ok.status_code == 200, ok.text
        assert ok.json()["accepted"] == len(events)
        bearer = {"Authorization": f"Bearer {KEY}"}
        assert c.get("/api/alerts", headers=bearer).json()["alerts"] == []
        assert c.get("/api/trends", headers=bearer).status_code == 200
        # The page and the probes stay open (a browser or a load balancer has no key).
        page = c.get("/")
        assert page.status_code == 200 and "X-API-Key" in page.text
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["events"] == len(events)
        assert c.get("/readyz").json() == {"status": "ready"}
        text = c.get("/metrics", headers=bearer).text
    assert metric(text, 'tailorml_requests_total{path="/v1/events",status="200"}') == 1
    assert metric(text, 'tailorml_requests_total{path="/v1/events",status="401"}') == 3
    assert metric(text, 'tailorml_errors_total{kind="auth"}') == 6


def test_finwatch_http_limits_and_error_shape(
    finwatch: tuple[Served, Watcher, kit.Lifecycle],
) -> None:
    srv, w, life = finwatch
    hdr = {"X-API-Key": KEY}
    big = [{"id": str(i), "time": START, "text": "x" * 100} for i in range(1000)]  # ~130 kB
    with httpx.Client(base_url=srv.url, timeout=10, headers=hdr) as c:
        msg = error(c.post("/v1/events", json=big), 413, "too_large", "max_body_bytes=65536")
        assert "finwatch config `max_body_bytes`" in msg

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            yield b"["
            for i in range(1000):
                yield b'{"id": "c%d", "time": 0, "text": "%s"},' % (i, b"y" * 100)
            yield b"{}]"

        error(c.post("/v1/events", content=chunks()), 413, "too_large", "max_body_bytes=65536")
        many = c.post("/v1/events", json={"events": [{}] * 10_001})
        error(many, 413, "too_large", "10001 events", "at most 10000")
        js = {"Content-Type": "application/json"}
        error(c.post("/v1/events", content=b'[{"id": 1,', headers=js), 422, "invalid_request",
              "not valid JSON")  # fmt: skip
        error(c.post("/v1/events", content=b"", headers=js), 422, "invalid_request",
              "body is missing", '{"events": [...]}')  # fmt: skip
        error(c.post("/v1/events", json={"nope": 1}), 422, "invalid_request", "JSON list")
        error(c.post("/v1/events", content=b"[]", headers={"Content-Type": "text/plain"}),
              422, "invalid_request", "application/json", "text/plain")  # fmt: skip
        error(c.get("/api/trends", params={"hours": -1}), 422, "invalid_request", "hours")
        error(c.get("/v1/events"), 405, "method_not_allowed")
        error(c.get("/v1/nothing"), 404, "not_found")
        assert w.totals.accepted == 0  # nothing refused was half-stored
        life.draining = True  # what stopping the watcher does
        not_ready = c.get("/readyz")
        assert (not_ready.status_code, not_ready.json()) == (503, {"status": "draining"})
        text = c.get("/metrics").text
    assert metric(text, 'tailorml_errors_total{kind="too_large"}') == 3
    # Every 422 is counted as validation, FastAPI's three and the app's own two (ApiError).
    assert metric(text, 'tailorml_errors_total{kind="validation"}') == 5
    assert metric(text, 'tailorml_requests_total{path="/v1/events",status="413"}') == 3
