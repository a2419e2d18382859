"""What the generation service accepts: the request models of `/v1/generate` and the OpenAI
chat completions, their bounded-cost parsing, the checks that turn sampling settings into the
engine's `Sampling` (413/422 naming the limit or field), the OpenAI answer fields, and the
OpenAPI documentation of bodies the routes read themselves."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from tailorml.predictors.decoder import Sampling as EngineSampling
from tailorml.serve.body import read_json
from tailorml.serve.schemas import ApiError
from tailorml.serve.settings import ServeSettings

BODY_HINT = "(`tailor serve` setting); send a shorter prompt or fewer messages"
GENERATE_EXAMPLE = '{"prompt": "How do I reset my PIN?", "max_new_tokens": 64}'
MAX_STOPS = 4
MAX_STOP_CHARS = 64


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may add `name` and the like
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class Sampling(BaseModel):
    """Fields shared by both request shapes (their OpenAI names where they have one)."""

    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = no top-k cut.")
    stop: StrictStr | list[StrictStr] | None = Field(
        None, description=f"Up to {MAX_STOPS} strings; the output ends before the first one."
    )
    seed: int | None = Field(None, description="Makes sampling repeatable.")
    stream: bool = Field(False, description="Server-Sent Events, one per chunk of text.")


class GenerateRequest(Sampling):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "How do I reset my PIN?", "max_new_tokens": 64},
                {
                    "messages": [{"role": "user", "content": "My card has not arrived."}],
                    "stream": True,
                },
            ]
        },
    )
    prompt: StrictStr | None = Field(None, description="One user turn (or give `messages`).")
    messages: list[Message] | None = Field(None, description="A chat: {role, content} turns.")
    max_new_tokens: int | None = Field(None, ge=1)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(Sampling):
    # OpenAI's request has many optional fields (user, logprobs, ...); unknown ones are ignored
    # as OpenAI-compatible servers do, so existing clients work unchanged.
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="Only 1 choice per request.")
    stream_options: StreamOptions | None = None


async def parse_body(request: Request, model: type[BaseModel], settings: ServeSettings) -> Any:
    """The request's JSON read at bounded cost (tailorml.serve.body), then validated."""
    raw = await request.body()
    obj = read_json(
        raw,
        request.headers.get("content-type", ""),
        max_tokens=8 * settings.max_inputs + 64,
        too_many=f"a request holds at most max_inputs={settings.max_inputs} messages "
        "(`tailor serve --max-inputs`); send fewer.",
        example=GENERATE_EXAMPLE,
    )
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if isinstance(messages, list) and len(messages) > settings.max_inputs:
        raise ApiError(
            413,
            "too_large",
            f"{len(messages)} messages in one request; the limit is "
            f"max_inputs={settings.max_inputs} (`tailor serve --max-inputs`)",
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def engine_sampling(body: Sampling, max_new: int | None, settings: ServeSettings) -> EngineSampling:
    """The engine's `Sampling` for a request, or a 413/422 naming the limit or field."""

    cap = settings.max_new_tokens
    if max_new is not None and max_new > cap:
        raise ApiError(
            413,
            "too_large",
            f"max_new_tokens={max_new} is over the limit max_new_tokens={cap} "
            "(`tailor serve --max-new-tokens`); ask for fewer",
        )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS or not s for s in stops):
        raise ApiError(
            422,
            "invalid_request",
            f"stop: at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters",
        )
    return EngineSampling(
        max_new_tokens=max_new or min(128, cap),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=tuple(stops),
    )


def openai_reason(reason: str) -> str:
    return {"eos": "stop", "stop": "stop", "length": "length"}.get(reason, "stop")


def usage_fields(done: Any) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.tokens,
        "total_tokens": done.prompt_tokens + done.tokens,
    }


def body_doc(name: str) -> dict[str, Any]:
    """These routes read their own body (limits before validation): /docs gets its schema by
    reference (added to the components by `document_models`)."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add the request models (and those they refer to) to the OpenAPI components."""
    found: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(found)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
