"""`tailor support serve RUN`: the assistant over HTTP, built on the service kit as `tailor serve`
is (the same API key, body limit, 4xx error shape, /healthz, /readyz, /metrics and drain).

    POST /v1/chat {session_id, message}   -> {session_id, turn, answer, intent, confidence,
                                              sources, handoff, ticket_id, path}
    GET  /v1/sessions/{session_id}        -> the conversation, every turn
    GET  /v1/tickets?status=open          -> hand-offs, each with its conversation
    POST /v1/tickets/{id}/resolve {intent, note}  -> closes a ticket; `intent` labels the turn
                                              that handed off (training data: `support export`)
    GET  /                                -> the chat page (chat.html: plain HTML + JS)

A reply is sent only once its turn is committed (store.py), so a customer never sees an answer
that was not logged; when the database cannot be written, the answer is a 503 and nothing was
said. With an API key, /v1/* and /metrics need it; the page sends the key it is given in its URL
fragment (`/#key=KEY`), which the browser never sends to the server.
"""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tailorml.apps.support.store import Store
from tailorml.serve import kit
from tailorml.serve.gate import Gate
from tailorml.serve.schemas import ApiError

PAGE = Path(__file__).with_name("chat.html")
MAX_CHARS = 4000  # one message
EXAMPLE = '{"session_id": "abc123", "message": "my card has not arrived"}'
_SESSION = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str | None = Field(
        None,
        description="The conversation (1-128 letters, digits, `_.:-`); absent: a new one, "
        "returned in the reply.",
        examples=["abc123"],
    )
    message: str = Field(
        description="The customer's message.", max_length=MAX_CHARS, examples=["my card is late"]
    )

    @field_validator("session_id")
    @classmethod
    def _session(cls, v: str | None) -> str | None:
        if v is not None and not _SESSION.match(v):
            raise ValueError("1-128 characters among letters, digits and _ . : -")
        return v

    @field_validator("message")
    @classmethod
    def _message(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the message is empty; send the customer's text")
        return v


class ChatReply(BaseModel):
    session_id: str
    turn: int = Field(description="1 for the session's first message, then 2, 3...")
    answer: str
    intent: str
    confidence: float
    sources: list[dict[str, Any]] = Field(description="{doc_id, title, score} per article used.")
    handoff: bool
    ticket_id: int | None = Field(description="The session's open ticket, on a hand-off.")
    path: str = Field(description="template | retrieval | handoff")


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")
    intent: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="What the customer wanted: an intent (or the out-of-scope label); the turn "
        "that handed off is exported with it as a training row.",
    )
    note: str | None = Field(None, max_length=4000)


def create_app(
    bot: Any,
    store: Store,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 64 * 1024,
    history_turns: int = 6,
    lifecycle: kit.Lifecycle | None = None,
) -> Gate:
    app = FastAPI(title="tailorml support assistant")
    known = set(bot.intent_model.labels or [])
    one_model = threading.Lock()  # one message through the model at a time (2 cores)
    slots: list[anyio.CapacityLimiter] = []
    auth = kit.auth_docs(api_key)

    def chat_turn(req: ChatRequest) -> dict[str, Any]:
        sid = req.session_id or uuid.uuid4().hex
        history = store.history(sid, history_turns) if bot.writer is not None else []
        with one_model:
            reply = bot.answer_many([req.message], history=[history])[0]
        try:
            logged = store.log_turn(sid, req.message, reply)
        except Exception as exc:
            kit.log.error("could not log a turn of session %s", sid, exc_info=exc)
            raise ApiError(
                503,
                "unavailable",
                "the conversation could not be saved, so no answer was given; send the message "
                "again",
                headers={"Retry-After": "5"},
            ) from None
        return {"session_id": sid, **reply, **logged}

    @app.post("/v1/chat", response_model=ChatReply, dependencies=auth)
    async def chat(req: ChatRequest) -> dict[str, Any]:
        """Answer one message of a conversation and log it (with a ticket on a hand-off)."""
        if not slots:
            slots.append(anyio.CapacityLimiter(4))
        return await anyio.to_thread.run_sync(chat_turn, req, limiter=slots[0])

    @app.get("/v1/sessions/{session_id}", dependencies=auth)
    def session(session_id: str) -> dict[str, Any]:
        """Every turn of a conversation, oldest first."""
        turns = store.conversation(session_id)
        if not turns:
            raise ApiError(404, "not_found", f"no session {session_id!r}")
        return {"session_id": session_id, "turns": turns}

    @app.get("/v1/tickets", dependencies=auth)
    def list_tickets(
        status: str = Query("open", pattern="^(open|resolved|all)$"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Hand-offs, newest first, each with its conversation."""
        return {"tickets": store.list_tickets(None if status == "all" else status, limit)}

    @app.post("/v1/tickets/{ticket_id}/resolve", dependencies=auth)
    def resolve(ticket_id: int, body: Resolve) -> dict[str, Any]:
        """Close an open ticket, saying what the customer wanted."""
        if not store.resolve(ticket_id, body.intent, body.note):
            raise ApiError(404, "not_found", f"no open ticket {ticket_id}")
        return {
            "id": ticket_id,
            "status": "resolved",
            "intent": body.intent,
            # a new intent is fine (export it, retrain): said so the caller can spot a typo
            "known_intent": body.intent in known if body.intent else None,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    return kit.install(
        app,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        body_hint="(`tailor support serve --max-body-bytes`); send a shorter message",
        readiness=lifecycle or kit.Lifecycle(ready=True),
        body_example=EXAMPLE,
    )
