"""Webhook delivery of stored alerts (an outbox): POST, retry with exponential backoff.

Alerts are rows first and messages second, so a receiver that is down for a while gets every
alert once it is back; a watcher restart resumes the outbox. Delivery is at-least-once: each POST
carries `Idempotency-Key: finwatch-alert-<pk>` for receivers that must drop repeats.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import WebhookConfig
from tailorml.retry import Backoff

log = logging.getLogger("tailorml.finwatch")


def alert_payload(conn: Any, row: Any) -> dict[str, Any]:
    evs = store.alert_events(conn, row.event_ids)
    iso = datetime.fromtimestamp(row.window_start, UTC).isoformat()
    end = datetime.fromtimestamp(row.window_start + row.window_s, UTC).isoformat()
    return {
        "alert_id": row.pk,
        "kind": "negative_surge",
        "topic": row.topic,
        "window": {"seconds": row.window_s, "start": iso, "end": end},
        "figures": json.loads(row.figures),
        "events": [{"id": e.id, "time": e.ts, "text": e.text} for e in evs],
    }


def deliver_pending(engine: Engine, cfg: WebhookConfig, client: httpx.Client | None = None) -> int:
    """Try every due, undelivered alert once; returns how many were delivered."""
    if not cfg.url:
        return 0
    a = store.alerts
    now = time.time()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(a)
            .where(
                a.c.delivered_at.is_(None),
                a.c.next_attempt_at <= now,
                a.c.attempts < cfg.max_attempts,
            )
            .order_by(a.c.pk)
        ).all()
        payloads = [(r, alert_payload(conn, r)) for r in rows]
    # The outbox does not sleep: each failure stores when to try next, so a restarted watcher
    # keeps the backoff, and one slow receiver does not hold up the other alerts.
    backoff = Backoff(first_s=cfg.backoff_s, max_s=cfg.backoff_max_s)
    own = client is None
    client = client or httpx.Client(timeout=cfg.timeout_s)
    delivered = 0
    try:
        for r, body in payloads:
            err = None
            try:
                resp = client.post(
                    cfg.url, json=body, headers={"Idempotency-Key": f"finwatch-alert-{r.pk}"}
                )
                if resp.status_code >= 300:
                    err = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                err = f"{type(exc).__name__}: {exc}"
            with engine.begin() as conn:
                if err is None:
                    conn.execute(
                        a.update()
                        .where(a.c.pk == r.pk)
                        .values(delivered_at=time.time(), attempts=r.attempts + 1, last_error=None)
                    )
                    delivered += 1
                else:
                    delay = backoff.delay(r.attempts)
                    conn.execute(
                        a.update()
                        .where(a.c.pk == r.pk)
                        .values(
                            attempts=r.attempts + 1,
                            next_attempt_at=time.time() + delay,
                            last_error=err[:500],
                        )
                    )
                    log.warning(
                        "webhook delivery of alert %d failed (%s); retry in %.1fs", r.pk, err, delay
                    )
    finally:
        if own:
            client.close()
    return delivered


class Notifier(threading.Thread):
    """Background outbox loop: delivers due alerts every `interval_s`."""

    def __init__(self, engine: Engine, cfg: WebhookConfig, interval_s: float = 0.5):
        super().__init__(daemon=True, name="finwatch-webhook")
        self.engine, self.cfg, self.interval_s = engine, cfg, interval_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=self.cfg.timeout_s) as client:
            while not self.stop_event.is_set():
                try:
                    deliver_pending(self.engine, self.cfg, client)
                except sa.exc.DBAPIError as exc:
                    log.warning("webhook outbox: database unavailable (%s)", exc.__class__.__name__)
                self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
