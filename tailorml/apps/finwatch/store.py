"""Storage through SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL.

Tables: `events` (one row per event id: idempotent ingest), `dead_letters`, `alerts` (unique per
topic x window, so re-running detection never stores an alert twice; delivery state for the
webhook outbox), `kv` (checkpoints: file offsets, closed windows, detector state) and
`schema_version`. Migrations are numbered functions applied in order inside a transaction;
`schema_version` records each one, so an old database upgrades on open.

Every write the pipeline makes for one micro-batch happens in ONE transaction (events + dead
letters + source checkpoint), which is what makes kill -9 + restart lose nothing and count
nothing twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tailorml.retry import Backoff, call_with_retry

log = logging.getLogger("tailorml.finwatch")
T = TypeVar("T")

meta = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    meta,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)
events = sa.Table(
    "events",
    meta,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),  # event time, Unix seconds
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("source", sa.String(200), nullable=False, default=""),
    sa.Column("topic", sa.String(100), nullable=False),
    sa.Column("sentiment", sa.String(10), nullable=False),  # negative | neutral | positive
    sa.Column("p_negative", sa.Float, nullable=False),
    sa.Column("ingested_at", sa.Float, nullable=False),
    sa.Index("ix_events_topic_ts", "topic", "ts"),
    sa.Index("ix_events_ts", "ts"),
)
dead_letters = sa.Table(
    "dead_letters",
    meta,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
)


def _alert_columns(v: int) -> list[Any]:
    cols: list[Any] = [
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(100), nullable=False),
        sa.Column("window_s", sa.Integer, nullable=False),
        sa.Column("window_start", sa.Float, nullable=False),
        sa.Column("figures", sa.Text, nullable=False),  # JSON: n, n_negative, share, baseline, z
        sa.Column("event_ids", sa.Text, nullable=False),  # JSON list: negative events behind it
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("topic", "window_s", "window_start", name="uq_alert_window"),
    ]
    if v >= 2:  # webhook delivery state (the outbox)
        cols += [
            sa.Column("delivered_at", sa.Float),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Column("next_attempt_at", sa.Float, nullable=False, default=0),
            sa.Column("last_error", sa.String(500)),
        ]
    return cols


alerts = sa.Table("alerts", meta, *_alert_columns(2))
kv = sa.Table(
    "kv",
    meta,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def _m1(conn: Connection) -> None:
    for t in (events, dead_letters, kv):
        t.create(conn)
    # v1 alerts had no delivery columns; v2 adds them (kept separate so the upgrade path is tested).
    sa.Table("alerts", sa.MetaData(), *_alert_columns(1)).create(conn)


def _m2(conn: Connection) -> None:
    for ddl in (
        "ALTER TABLE alerts ADD COLUMN delivered_at FLOAT",
        "ALTER TABLE alerts ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE alerts ADD COLUMN next_attempt_at FLOAT NOT NULL DEFAULT 0",
        "ALTER TABLE alerts ADD COLUMN last_error VARCHAR(500)",
    ):
        conn.execute(sa.text(ddl))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "events, dead letters, alerts, kv", _m1),
    (2, "webhook delivery state on alerts", _m2),
]
LATEST = MIGRATIONS[-1][0]


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL: readers (the dashboard) never block the writer (the watcher).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine, upto: int | None = None) -> int:
    """Apply pending migrations; returns the schema version now in the database.

    Safe when several watchers start at once on one database: each migration runs under a lock
    and re-checks the version inside its transaction."""
    upto = LATEST if upto is None else upto

    def create_version_table() -> None:
        with engine.begin() as conn:
            schema_version.create(conn, checkfirst=True)

    # Another process may create the table between the check and the create: try again (the
    # check then finds it); a steady 0.1 s, since the other process is done within milliseconds.
    call_with_retry(
        create_version_table,
        retry_on=(sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError),
        policy=Backoff(first_s=0.1, max_s=0.1),
        retries=9,
    )
    current = current_version(engine)
    for version, desc, fn in MIGRATIONS:
        if not current < version <= upto:
            continue
        with engine.begin() as conn:
            _migration_lock(conn)
            now = int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)
            if now < version:
                fn(conn)
                conn.execute(
                    schema_version.insert().values(
                        version=version, description=desc, applied_at=time.time()
                    )
                )
                log.info("migrated database to version %d (%s)", version, desc)
        current = version
    return current


def _migration_lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('finwatch-migrate'))"))
    else:  # SQLite: a write takes the database lock until this transaction ends
        conn.execute(schema_version.insert().values(version=-1, description="lock", applied_at=0))
        conn.execute(schema_version.delete().where(schema_version.c.version == -1))


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return 0
        v = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    return int(v or 0)


def _insert(conn: Connection, table: sa.Table) -> Any:
    """An INSERT that can do ON CONFLICT DO NOTHING on this dialect."""
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignore(
    conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: list[str]
) -> int:
    """Insert rows whose key is new; returns how many were inserted."""
    if not rows:
        return 0
    # Count with RETURNING: with executemany, psycopg reports rowcount -1 (SQLAlchemy batches
    # the rows into multi-VALUES statements), so rowcount cannot say how many were new.
    stmt = (
        _insert(conn, table).on_conflict_do_nothing(index_elements=key).returning(table.c[key[0]])
    )
    return len(conn.execute(stmt, list(rows)).all())


def upsert_kv(conn: Connection, key: str, value: Any) -> None:
    stmt = _insert(conn, kv).values(key=key, value=json.dumps(value))
    conn.execute(
        stmt.on_conflict_do_update(index_elements=["key"], set_={"value": stmt.excluded.value})
    )


def lock_for_update(conn: Connection, name: str) -> None:
    """Hold an exclusive lock named `name` until this transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:n))"), {"n": name})
    else:  # SQLite: a first write takes the database write lock now, not at the first real write
        upsert_kv(conn, f"lock:{name}", time.time())


def get_kv(conn: Connection, key: str, default: Any = None) -> Any:
    v = conn.execute(sa.select(kv.c.value).where(kv.c.key == key)).scalar()
    return default if v is None else json.loads(v)


def existing_ids(conn: Connection, ids: Iterable[str]) -> set[str]:
    ids = list(ids)
    out: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        out.update(conn.execute(sa.select(events.c.id).where(events.c.id.in_(chunk))).scalars())
    return out


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or (
        isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)
    )


# Connection errors while a database restarts: 0.2 s doubling to 5 s (with_retry's max_wait_s
# bounds the total, 10 minutes by default: a PostgreSQL restart or failover takes seconds to a
# minute; beyond that a person should look, so the error is raised instead of hidden).
DB_BACKOFF = Backoff(first_s=0.2, max_s=5.0)


def with_retry(
    fn: Callable[[], T],
    what: str,
    max_wait_s: float = 600.0,
    policy: Backoff = DB_BACKOFF,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `fn` (one whole transaction), retrying with backoff while the database is unavailable.

    Only connection-level errors are retried; a constraint or programming error is raised at once.
    """

    def note(exc: BaseException, delay: float) -> None:
        log.warning(
            "database unavailable during %s (%s); retrying in %.1fs",
            what,
            str(exc).splitlines()[0][:200],
            delay,
        )
        if on_retry:
            on_retry(exc)

    return call_with_retry(
        fn,
        retry_on=is_transient,
        policy=policy,
        give_up_after_s=max_wait_s,
        on_retry=note,
    )


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "events": int(
                conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() or 0
            ),
            "dead_letters": int(
                conn.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar() or 0
            ),
            "alerts": int(
                conn.execute(sa.select(sa.func.count()).select_from(alerts)).scalar() or 0
            ),
        }


def alert_events(conn: Any, event_ids_json: str) -> list[Any]:
    """The events behind an alert (its `event_ids` column), oldest first."""
    import json

    ids = json.loads(event_ids_json)
    if not ids:
        return []
    stmt = sa.select(events.c.id, events.c.ts, events.c.text).where(events.c.id.in_(ids))
    return list(conn.execute(stmt.order_by(events.c.ts)).all())
