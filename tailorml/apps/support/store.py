"""Conversations and tickets: SQLAlchemy Core on SQLite (WAL, the default: RUN/support.db) or
PostgreSQL by URL, as finwatch's store (its engine set-up and retry on a database restart).

Tables (prefixed `support_`, so one database can hold finwatch's tables too):
  sessions  one row per conversation: id (the client's session_id), turns so far, times
  turns     every message and its reply: text, answer, intent, confidence, sources (JSON),
            handoff, path; `corrected_intent` once a person says what the intent was
  tickets   one per hand-off of a session (a session has at most one open ticket; a later
            hand-off of the same session joins it): status open | resolved, the turn that
            opened it, the corrected intent and a note
  schema_version

Each turn is written in ONE transaction (the session's counter, the turn, the ticket), and the
service answers only after it is committed: a reply the customer saw is always logged, and a
failed write is an error answer, not a lost turn. The session's counter is incremented by an
UPDATE first, which locks its row (PostgreSQL) or the database (SQLite) until the commit, so
concurrent messages of one session get distinct, gapless turn numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tailorml.apps.finwatch.store import make_engine, with_retry
from tailorml.errors import ConfigError

meta = sa.MetaData()
version_table = sa.Table(
    "support_schema_version",
    meta,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)
sessions = sa.Table(
    "support_sessions",
    meta,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("turns", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
turns = sa.Table(
    "support_turns",
    meta,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(128), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),  # 1, 2, ... within the session
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("intent", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("sources", sa.Text, nullable=False),  # JSON list of {doc_id, title, score}
    sa.Column("handoff", sa.Boolean, nullable=False),
    sa.Column("path", sa.String(20), nullable=False),
    sa.Column("ticket_id", sa.Integer),
    sa.Column("corrected_intent", sa.String(200)),
    sa.UniqueConstraint("session_id", "n", name="uq_support_turn"),
)
tickets = sa.Table(
    "support_tickets",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(128), nullable=False, index=True),
    sa.Column("turn_n", sa.Integer, nullable=False),  # the turn that handed off
    sa.Column("status", sa.String(20), nullable=False),  # open | resolved
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("resolved_at", sa.Float),
    sa.Column("intent", sa.String(200)),  # what a person said the intent was
    sa.Column("note", sa.Text),
)
VERSION = 1


def default_url(run: str | Path) -> str:
    return f"sqlite:///{Path(run) / 'support.db'}"


class Store:
    """The support run's conversations. `Store(url)` creates the tables if needed."""

    def __init__(self, url: str):
        self.url = url
        try:
            self.engine: Engine = make_engine(url)
            with_retry(self._create, "creating the support tables", max_wait_s=30)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(
                f"--db {url!r}: not a database URL ({exc}). Give sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST:PORT/DB."
            ) from None

    def _create(self) -> None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # two services starting on one database
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('support-schema'))"))
            meta.create_all(conn, checkfirst=True)
            if conn.execute(sa.select(sa.func.max(version_table.c.version))).scalar() is None:
                conn.execute(version_table.insert().values(version=VERSION, applied_at=time.time()))

    def close(self) -> None:
        self.engine.dispose()

    # ---- writes ---------------------------------------------------------------------------

    def log_turn(self, session_id: str, message: str, reply: dict[str, Any]) -> dict[str, Any]:
        """Store one turn (and open or join the session's ticket on a hand-off) in one
        transaction; returns {turn, ticket_id} (ticket_id None when not handed off)."""
        return with_retry(
            lambda: self._log_turn(session_id, message, reply), "logging a turn", max_wait_s=30
        )

    def _log_turn(self, session_id: str, message: str, reply: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        with self.engine.begin() as conn:
            n = self._next_turn(conn, session_id, now)
            ticket_id = None
            if reply["handoff"]:
                ticket_id = conn.execute(
                    sa.select(tickets.c.id).where(
                        (tickets.c.session_id == session_id) & (tickets.c.status == "open")
                    )
                ).scalar()
                if ticket_id is None:
                    ticket_id = conn.execute(
                        tickets.insert()
                        .values(session_id=session_id, turn_n=n, status="open", opened_at=now)
                        .returning(tickets.c.id)
                    ).scalar_one()
            conn.execute(
                turns.insert().values(
                    session_id=session_id,
                    n=n,
                    at=now,
                    message=message,
                    answer=str(reply["answer"]),
                    intent=str(reply["intent"]),
                    confidence=float(reply["confidence"]),
                    sources=json.dumps(reply.get("sources", []), ensure_ascii=False),
                    handoff=bool(reply["handoff"]),
                    path=str(reply.get("path", "")),
                    ticket_id=ticket_id,
                )
            )
        return {"turn": n, "ticket_id": ticket_id}

    def _next_turn(self, conn: Connection, session_id: str, now: float) -> int:
        bump = (
            sessions.update()
            .where(sessions.c.id == session_id)
            .values(turns=sessions.c.turns + 1, updated_at=now)
            .returning(sessions.c.turns)
        )
        n = conn.execute(bump).scalar()
        if n is None:  # a new session (a concurrent first message: the insert conflicts)
            from tailorml.apps.finwatch.store import insert_ignore

            row = {"id": session_id, "turns": 0, "created_at": now, "updated_at": now}
            insert_ignore(conn, sessions, [row], ["id"])
            n = conn.execute(bump).scalar_one()
        return int(n)

    def resolve(self, ticket_id: int, intent: str | None, note: str | None = None) -> bool:
        """Close a ticket; `intent`, what the customer actually wanted (an intent of the model,
        a new one, or the out-of-scope label), labels the turn that handed off, so `export`
        makes it training data. False when there is no such open ticket."""

        def run() -> bool:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(tickets.c.session_id, tickets.c.turn_n, tickets.c.status).where(
                        tickets.c.id == ticket_id
                    )
                ).first()
                if row is None or row.status != "open":
                    return False
                conn.execute(
                    tickets.update()
                    .where(tickets.c.id == ticket_id)
                    .values(status="resolved", resolved_at=time.time(), intent=intent, note=note)
                )
                if intent:
                    conn.execute(
                        turns.update()
                        .where((turns.c.session_id == row.session_id) & (turns.c.n == row.turn_n))
                        .values(corrected_intent=intent)
                    )
                return True

        return with_retry(run, "resolving a ticket", max_wait_s=30)

    # ---- reads ----------------------------------------------------------------------------

    def history(self, session_id: str, last: int = 6) -> list[dict[str, str]]:
        """The session's last turns, oldest first: {message, answer}."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(turns.c.message, turns.c.answer)
                .where(turns.c.session_id == session_id)
                .order_by(turns.c.n.desc())
                .limit(last)
            ).all()
        return [{"message": r.message, "answer": r.answer} for r in reversed(rows)]

    def conversation(self, session_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(turns).where(turns.c.session_id == session_id).order_by(turns.c.n)
            ).all()
        return [_turn(r) for r in rows]

    def list_tickets(self, status: str | None = "open", limit: int = 100) -> list[dict[str, Any]]:
        """Tickets (newest first), each with its conversation."""
        stmt = sa.select(tickets).order_by(tickets.c.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(tickets.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            {
                "id": r.id,
                "session_id": r.session_id,
                "status": r.status,
                "turn": r.turn_n,
                "opened_at": r.opened_at,
                "resolved_at": r.resolved_at,
                "intent": r.intent,
                "note": r.note,
                "conversation": self.conversation(r.session_id),
            }
            for r in rows
        ]

    def corrected(self) -> list[dict[str, str]]:
        """Every turn a person labelled: {text, label}, in the order they were logged."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(turns.c.message, turns.c.corrected_intent)
                .where(turns.c.corrected_intent.is_not(None))
                .order_by(turns.c.pk)
            ).all()
        return [{"text": r.message, "label": r.corrected_intent} for r in rows]

    def count_turns(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(turns)).scalar() or 0)


def _turn(r: Any) -> dict[str, Any]:
    return {
        "turn": r.n,
        "at": r.at,
        "message": r.message,
        "answer": r.answer,
        "intent": r.intent,
        "confidence": r.confidence,
        "sources": json.loads(r.sources),
        "handoff": r.handoff,
        "path": r.path,
        "ticket_id": r.ticket_id,
        "corrected_intent": r.corrected_intent,
    }
