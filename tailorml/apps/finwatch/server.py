"""HTTP: `POST /v1/events` (a batch: a JSON list, or {"events": [...]}) and the dashboard.

An HTTP 200 means the batch is committed; a client that gets no answer may resend the batch
(ingest is idempotent on id). The dashboard (GET /) reads the database only, so it can also run
as its own process next to the watcher (`tailor finwatch dashboard`).

Built with the service kit (`tailorml.serve.kit`), as `tailor serve` is: with an API key,
`/v1/*`, `/api/*` and `/metrics` need it (the page `GET /` stays public and sends the key it is
given in its URL fragment); bodies over `max_body_bytes` get 413; every error is
`{"error": {"type", "message"}}`; `/healthz` (with the event counts), `/readyz`, `/metrics`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.trends import time_range, window_counts
from tailorml.serve import kit
from tailorml.serve.gate import Gate
from tailorml.serve.schemas import ApiError

DASHBOARD = Path(__file__).with_name("dashboard.html")
MAX_BATCH = 10_000
PROTECTED = ("/v1/", "/api/", "/metrics")
EXAMPLE = '[{"id": "e1", "time": "2026-01-05T09:30:00Z", "text": "..."}] or {"events": [...]}'


def create_app(
    cfg: FinwatchConfig,
    engine: Engine,
    watcher: Watcher | None = None,
    *,
    api_key: str | None = None,
    lifecycle: kit.Lifecycle | None = None,
) -> Gate:
    """The ASGI app: the dashboard and its API, plus `POST /v1/events` when a watcher is given.
    `lifecycle` lets the owner of a server thread report draining on `/readyz`."""
    app = FastAPI(title="tailorml finwatch")

    if watcher is not None:

        @app.post("/v1/events")
        def post_events(request: Request, body: Any = Body(...)) -> dict[str, Any]:  # noqa: B008
            if isinstance(body, bytes | str):  # FastAPI parses JSON only when told it is JSON
                ctype = request.headers.get("content-type") or "none"
                raise ApiError(
                    422,
                    "invalid_request",
                    f"body: send JSON with Content-Type: application/json (got {ctype!r})",
                )
            items = body.get("events") if isinstance(body, dict) else body
            if not isinstance(items, list):
                raise ApiError(
                    422, "invalid_request", f"body: send a JSON list of events like {EXAMPLE}"
                )
            if len(items) > MAX_BATCH:
                raise ApiError(
                    413,
                    "too_large",
                    f"{len(items)} events in one request; at most {MAX_BATCH}: split the batch.",
                )
            res = watcher.ingest(items, "http")
            return {
                "accepted": res.accepted,
                "duplicates": res.duplicates,
                "rejected": res.rejected,
                "alerts": len(res.alerts),
            }

    @app.get("/api/trends")
    def trends(
        window: int = Query(0, description="Window seconds; 0 = the detection window."),
        hours: float = Query(24.0, gt=0),
    ) -> dict[str, Any]:
        w = window or cfg.detect_window
        with engine.connect() as conn:
            lo, hi = time_range(conn)
            if hi is None:
                return {"window_s": w, "rows": []}
            rows = window_counts(conn, w, hi - 3600 * hours, hi + 1)
        return {"window_s": w, "rows": rows}

    @app.get("/api/alerts")
    def alerts(limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        a = store.alerts
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(a).order_by(a.c.window_start.desc(), a.c.pk.desc()).limit(limit)
            ).all()
            out = []
            for r in rows:
                evs = store.alert_events(conn, r.event_ids)
                out.append(
                    {
                        "id": r.pk,
                        "topic": r.topic,
                        "window_s": r.window_s,
                        "window_start": datetime.fromtimestamp(r.window_start, UTC).isoformat(),
                        "figures": json.loads(r.figures),
                        "delivered": r.delivered_at is not None,
                        "events": [{"id": e.id, "time": e.ts, "text": e.text} for e in evs],
                    }
                )
        return {"alerts": out, "generated_at": time.time()}

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> str:
        return DASHBOARD.read_text(encoding="utf-8")

    return kit.install(
        app,
        api_key=api_key,
        max_body_bytes=cfg.max_body_bytes,
        body_hint="(finwatch config `max_body_bytes`); send fewer events per request",
        protected=PROTECTED,
        readiness=lifecycle or kit.Lifecycle(ready=True),
        health=lambda: store.counts(engine),
        body_example=EXAMPLE,
    )
