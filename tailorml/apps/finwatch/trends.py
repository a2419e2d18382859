"""Per-topic trends by time window, computed in the database from the stored events.

Computing from `events` (rather than keeping running counters) means a trend can never count an
event twice: ingest is idempotent on id, and the GROUP BY sees each row once.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tailorml.apps.finwatch.store import events


def _bucket(conn: Connection, window_s: int) -> Any:
    # Window start = floor(ts / w) * w. SQLite's CAST truncates (ts >= 0); PostgreSQL's rounds.
    if conn.dialect.name == "postgresql":
        return sa.func.floor(events.c.ts / window_s) * window_s
    return sa.cast(events.c.ts / window_s, sa.Integer) * window_s


def window_counts(
    conn: Connection,
    window_s: int,
    start: float,
    end: float,
    topic: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (topic, window) with events in [start, end): counts by sentiment and figures.

    Besides the counts of the hard labels, each row has the model's expected negative count
    (`expected_negative`, the sum of p_negative) and the sum of p_negative (1 - p_negative)
    (`var_negative`, the Poisson-binomial variance of the true negative count given the scores):
    what the detector judges on. With replayed labels (p in {0, 1}) they are the count and 0."""
    bucket = _bucket(conn, window_s).label("window_start")
    p = events.c.p_negative
    q = (
        sa.select(
            events.c.topic,
            bucket,
            events.c.sentiment,
            sa.func.count().label("n"),
            sa.func.sum(p),
            sa.func.sum(p * (1 - p)),
        )
        .where(events.c.ts >= start, events.c.ts < end)
        .group_by(events.c.topic, bucket, events.c.sentiment)
    )
    if topic is not None:
        q = q.where(events.c.topic == topic)
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    for t, ws, sent, n, sp, spq in conn.execute(q):
        r = rows.setdefault(
            (t, float(ws)),
            {
                "topic": t,
                "window_s": window_s,
                "window_start": float(ws),
                "negative": 0,
                "neutral": 0,
                "positive": 0,
                "expected_negative": 0.0,
                "var_negative": 0.0,
            },
        )
        r[sent] = r.get(sent, 0) + int(n)
        r["expected_negative"] += float(sp or 0.0)
        r["var_negative"] += float(spq or 0.0)
    out = []
    for key in sorted(rows, key=lambda k: (k[1], k[0])):
        r = rows[key]
        vol = r["negative"] + r["neutral"] + r["positive"]
        r["volume"] = vol
        r["negative_share"] = r["negative"] / vol if vol else 0.0
        r["net_sentiment"] = (r["positive"] - r["negative"]) / vol if vol else 0.0
        out.append(r)
    return out


def time_range(conn: Connection) -> tuple[float | None, float | None]:
    lo, hi = conn.execute(sa.select(sa.func.min(events.c.ts), sa.func.max(events.c.ts))).one()
    return (None if lo is None else float(lo), None if hi is None else float(hi))


def topics(conn: Connection) -> list[str]:
    return sorted(conn.execute(sa.select(events.c.topic).distinct()).scalars())
