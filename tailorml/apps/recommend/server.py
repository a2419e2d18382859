"""The recommender's HTTP app on the service kit (same API key, limits, error shape, probes,
metrics and drain as `tailor serve`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tailorml.apps.recommend.service import MAX_HISTORY, MAX_K, Recommender
from tailorml.errors import TailorError
from tailorml.serve import kit
from tailorml.serve.gate import Gate
from tailorml.serve.schemas import ApiError

EXAMPLE = '{"history": ["1", "50"], "k": 10}'


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[str] = Field(
        max_length=MAX_HISTORY, description="Item ids the user interacted with, oldest first."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return.")


def create_app(
    rec: Recommender,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 1024 * 1024,
    lifecycle: kit.Lifecycle | None = None,
) -> Gate:
    app = FastAPI(title="tailorml recommend")
    auth = kit.auth_docs(api_key)

    def answer(seq: Any, when: float | None, k: int) -> dict[str, Any]:
        rec.refresh()
        return {"items": rec.recommend(seq, when, k)}

    @app.get("/v1/recommend", dependencies=auth)
    async def by_user(
        user_id: str = Query(description="A user of the run's data.", max_length=200),
        k: int = Query(10, ge=1, le=MAX_K),
    ) -> dict[str, Any]:
        """Recommendations for a known user, from their whole history."""
        found = rec.user_history(user_id)
        if found is None:
            raise ApiError(
                404,
                "unknown_user",
                f"user_id {user_id!r} is not in the run's data; POST /v1/recommend with the "
                "user's history instead",
            )
        return await run_in_threadpool(answer, found[0], found[1], k)

    @app.post("/v1/recommend", dependencies=auth)
    async def by_history(body: HistoryRequest) -> dict[str, Any]:
        """Recommendations for any history (a user the model has not seen)."""
        try:
            await run_in_threadpool(rec.refresh)
            seq = rec.item_indices(body.history)
        except TailorError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        return await run_in_threadpool(answer, seq, None, body.k)

    return kit.install(
        app,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        body_hint="(`tailor recommend serve --max-body-bytes`); send a shorter history",
        readiness=lifecycle or kit.Lifecycle(ready=True),
        health=lambda: {"items": len(rec.ids), "users": len(rec.user_index)},
        body_example=EXAMPLE,
    )
