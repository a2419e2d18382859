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
import logging
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.to_thread
import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.events import Rejected, TooDeep, loads, shown
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.trends import time_range, window_counts
from tailorml.serve import kit
from tailorml.serve.gate import Gate
from tailorml.serve.schemas import ApiError

DASHBOARD = Path(__file__).with_name("dashboard.html")
MAX_BATCH = 10_000
PROTECTED = ("/v1/", "/api/", "/metrics")
EXAMPLE = '[{"id": "e1", "time": "2026-01-05T09:30:00Z", "text": "..."}] or {"events": [...]}'
MAX_TREND_WINDOWS = 5000  # rows per topic one /api/trends answer may hold
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["id", "time", "text"],
    "properties": {
        "id": {"type": ["string", "integer"], "maxLength": 200},
        "time": {"type": ["string", "number"], "description": "ISO 8601 or Unix seconds"},
        "text": {"type": "string"},
        "source": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
EVENTS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"type": "array", "items": _EVENT_SCHEMA, "maxItems": MAX_BATCH},
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": {"events": {"type": "array", "items": _EVENT_SCHEMA}},
                    },
                ]
            }
        }
    },
}


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
        # Ingest waits for the watcher's lock: these requests queue on their own limiter, not
        # in the thread pool that /healthz and the dashboard's /api/* need to answer.
        slots: list[anyio.CapacityLimiter] = []

        def take(body: bytes) -> dict[str, Any]:
            assert watcher is not None
            items = parse_batch(body)
            res = watcher.ingest(items, "http")
            return {
                "accepted": res.accepted,
                "duplicates": res.duplicates,
                "rejected": res.rejected,
                "alerts": len(res.alerts),
                "rejections": [{**r, "reason": r["reason"][:300]} for r in res.rejections],
            }

        @app.post("/v1/events", openapi_extra={"requestBody": EVENTS_BODY})
        async def post_events(request: Request) -> dict[str, Any]:
            """Store a batch of events. 200 means the batch is committed: `accepted` new events,
            `duplicates` (ids already stored), `rejected` (dead-lettered), and `rejections`,
            one `{"index", "id", "reason"}` per rejected event (index = its position in the
            batch)."""
            ctype = request.headers.get("content-type")
            if not _is_json(ctype):
                raise ApiError(
                    422,
                    "invalid_request",
                    f"body: send JSON with Content-Type: application/json (got {ctype!r})",
                )
            try:
                body = await request.body()
            except Exception as exc:  # over the size limit (the gate answers 413), a disconnect
                raise HTTPException(400, "There was an error reading the body") from exc
            if not slots:
                slots.append(anyio.CapacityLimiter(4))
            return await anyio.to_thread.run_sync(take, body, limiter=slots[0])

    @app.get("/api/trends")
    def trends(
        window: int = Query(
            0, ge=0, description="Window seconds, one of the config's `windows`; 0 = detect_window."
        ),
        hours: float = Query(24.0, gt=0, description="Hours back from the newest event."),
    ) -> dict[str, Any]:
        w = window or cfg.detect_window
        if w not in cfg.windows:
            invalid_query("window", window, f"{window} is not one of the windows {cfg.windows}")
        if hours * 3600 / w > MAX_TREND_WINDOWS:
            invalid_query(
                "hours",
                hours,
                f"{hours:g} hours of {w} s windows is more than {MAX_TREND_WINDOWS} windows; "
                "ask for fewer hours or a longer window",
            )
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
        health=HealthCounts(engine, watcher),
        body_example=EXAMPLE,
    )


class HealthCounts:
    """The counts /healthz shows, without counting the tables on every probe.

    Counting a table reads all of it (about 200 ms at 900,000 events and 90,000 dead letters on
    SQLite, and growing, with every dead letter a hostile client causes too), and a liveness
    probe must answer at once. So the database is counted on the first probe, then again at
    most every `refresh_s` in a background thread while probes come; in between, what this
    process's watcher commits is added to the last count. Exact while the watcher is idle; while
    it ingests, a count that overlapped a commit is taken again (see `_count`)."""

    def __init__(self, engine: Engine, watcher: Watcher | None, refresh_s: float = 5.0):
        self.engine, self.watcher, self.refresh_s = engine, watcher, refresh_s
        self.lock = threading.Lock()
        self.base: dict[str, int] | None = None  # the last count of the database
        self.mark = (0, 0, 0)  # the watcher's totals when it was taken
        self.at = 0.0
        self.refreshing = False
        self.tries = 8  # about 0.3 s of waiting for a commit to finish

    def _totals(self) -> tuple[tuple[int, int, int], bool]:
        if self.watcher is None:
            return (0, 0, 0), False
        return self.watcher.tally()

    def _count(self, background: bool = False) -> None:
        """Count the database and note the watcher's totals at that moment. A commit under way
        has rows a count may or may not see while the totals do not hold them yet, so a count
        is taken as exact only when no commit was under way before or after it and the totals
        did not move; else it is tried again, and after `tries` the figures are kept anyway
        (off by at most the batches committed during the count, until the next one)."""
        try:
            for attempt in range(self.tries):
                mark, busy = self._totals()
                base = store.counts(self.engine)
                after, busy_after = self._totals()
                if (mark == after and not busy and not busy_after) or attempt == self.tries - 1:
                    break
                time.sleep(0.01 * (attempt + 1))
            with self.lock:
                self.base, self.mark, self.at = base, mark, time.monotonic()
        except Exception as exc:
            if not background:
                raise
            # The database unreachable: the watcher retries on its own; /healthz answers for
            # the process (liveness) with the last count, and says why here.
            logging.getLogger("tailorml.finwatch").warning(
                "/healthz: cannot count the database (%s); showing the last count",
                str(exc).splitlines()[0][:200],
            )
        finally:
            self.refreshing = False

    def __call__(self) -> dict[str, int]:
        with self.lock:
            first = self.base is None
            start = not first and not self.refreshing
            start = start and time.monotonic() - self.at > self.refresh_s
            if start:
                self.refreshing = True
        if first:
            self._count()  # a database that cannot be counted fails this probe, as before
        elif start:
            threading.Thread(
                target=self._count, args=(True,), daemon=True, name="finwatch-health"
            ).start()
        with self.lock:
            assert self.base is not None
            base, mark = dict(self.base), self.mark
        now, _ = self._totals()
        for k, key in enumerate(("events", "dead_letters", "alerts")):
            base[key] += now[k] - mark[k]
        return base


def _is_json(ctype: str | None) -> bool:
    """As FastAPI decides for a JSON body: none given, application/json or application/*+json."""
    if not ctype:
        return True
    main, _, sub = ctype.split(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def invalid_query(name: str, value: Any, why: str) -> NoReturn:
    """A bad query parameter, answered like the ones FastAPI checks (422, counted the same)."""
    raise RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": why, "input": value}]
    )


def _invalid_body(kind: str, **detail: Any) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body",), "input": None, **detail}])


def parse_batch(body: bytes) -> list[Any]:
    """The events of a `POST /v1/events` body (a list, or {"events": [...]}), or the 422 / 413
    that says what is wrong with the body as a whole.

    What is wrong with one event is not the batch's problem: items that are not objects come
    back as `Rejected`, and a body too deeply nested to parse whole (one event nested thousands
    deep) is cut into its events (`split_batch`), each then parsed alone, so that only the
    deep ones are rejected."""
    if not body.strip():
        raise _invalid_body("missing", msg="Field required")
    whole = True  # parsed as one document (else cut into the events' texts)
    try:
        doc = loads(body)
    except TooDeep:
        text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
        pieces = split_batch(text)
        if pieces is None:
            raise ApiError(
                422,
                "invalid_request",
                "body: nested too deeply to read whole, and not a list of events like "
                f"{EXAMPLE} that can be cut into its events (at most {MAX_SPLIT_TOKENS} JSON "
                "tokens)",
            ) from None
        items: list[Any] = [
            piece if depth <= MAX_EVENT_DEPTH else _too_deep(piece) for piece, depth in pieces
        ]
        whole = False
    except ValueError as exc:
        err = _invalid_body("json_invalid", msg="JSON decode error", ctx={"error": str(exc)})
        raise err from None
    else:
        if isinstance(doc, dict) and isinstance(doc.get("events"), list):
            doc = doc["events"]
        if not isinstance(doc, list):
            raise ApiError(
                422, "invalid_request", f"body: send a JSON list of events like {EXAMPLE}"
            )
        items = doc
    if len(items) > MAX_BATCH:
        raise ApiError(
            413,
            "too_large",
            f"{len(items)} events in one request; at most {MAX_BATCH}: split the batch.",
        )
    if whole:  # an item that is not an object is rejected as such (a piece is parsed later)
        items = [i if isinstance(i, dict) else _not_an_object(i) for i in items]
    return items


def _too_deep(piece: str) -> Rejected:
    why = f"bad JSON: nested too deeply (more than {MAX_EVENT_DEPTH} levels; an event is flat)"
    return Rejected(why, shown(piece), "http")


def _not_an_object(item: Any) -> Rejected:
    return Rejected(f"not a JSON object but {type(item).__name__}", shown(item), "http")


# A JSON string (to its closing quote, or to the end if it has none), a run of opening or of
# closing brackets (whitespace between them included: one token however deep), `,` or `:`.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)|[\[{][\[{\s]*|[\]}][\]}\s]*|[,:]', re.S)
MAX_EVENT_DEPTH = 64  # an event is a flat object; deeper pieces are refused without parsing
MAX_SPLIT_TOKENS = 400_000  # ~0.5 s of scanning; about 20 tokens per ordinary event


def split_batch(text: str) -> list[tuple[str, int]] | None:
    """The JSON texts of the events in a batch body, each with how deeply it nests, found by
    scanning strings and runs of brackets (linear, no recursion), for a body too deeply nested
    to parse whole. The body is a list of events or an object with an `events` list; None if it
    is neither, or if it has more than MAX_SPLIT_TOKENS tokens to scan."""
    depth = 0
    arr: int | None = None  # depth inside the events array, once found
    key = last = None  # at depth 1 of an object: the key being read, the last string seen
    start = deepest = 0
    pieces: list[tuple[str, int]] = []
    for n_tokens, m in enumerate(_TOKEN.finditer(text)):
        if n_tokens > MAX_SPLIT_TOKENS:
            return None
        tok = m.group()
        c = tok[0]
        if c in "[{":
            opened = tok.count("[") + tok.count("{")
            if arr is None and c == "[" and (depth == 0 or (depth == 1 and key == '"events"')):
                arr, start, deepest = depth + 1, m.start() + 1, 0
            elif arr is None and depth == 0 and c != "{":
                return None
            depth += opened
            if arr is not None:
                deepest = max(deepest, depth - arr)
        elif c in "]}":
            closed = tok.count("]") + tok.count("}")
            if arr is not None and depth - closed < arr:  # the events array ends in this run
                k = depth - arr + 1  # the k-th closing bracket of the run ends it
                end = m.start() + [i for i, ch in enumerate(tok) if ch in "]}"][k - 1]
                piece = text[start:end].strip()
                return [*pieces, (piece, deepest)] if piece else pieces
            depth -= closed
            if depth < 0:
                return None
        elif arr is None:
            if depth == 0:
                return None
            if depth == 1:
                if c == '"':
                    last = tok
                elif c == ":":
                    key = last
                elif c == ",":
                    key = None
        elif c == "," and depth == arr:
            pieces.append((text[start : m.start()].strip(), deepest))
            start, deepest = m.end(), 0
    return None
