"""What the HTTP services accept and answer: request/response models, the one error shape
(`{"error": {"type", "message", ...}}`), and the checks that turn a client's mistakes into 4xx
answers naming the field and the fix.

`ApiError`, `error_body` and `describe_errors` serve every app built with `tailorml.serve.kit`;
the request models and `split_inputs` are the model service's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from tailorml.serve.settings import ServeSettings

# What a well-formed body looks like, quoted by `describe_errors` when the body is missing.
PREDICT_EXAMPLE = '{"inputs": ["some text"]}'


class ApiError(Exception):
    """A refusal a client can act on: raised anywhere in a handler, answered as
    `{"error": {"type": kind, "message": message}}` with `status` (and `headers`)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, **extra}}


# Most problems listed in one answer; the rest are counted ("… and 39,990 more problems").
MAX_PROBLEMS = 10


def describe_errors(
    errors: Any,
    content_type: str = "",
    example: str = PREDICT_EXAMPLE,
    limit: int = MAX_PROBLEMS,
) -> list[str]:
    """pydantic's error list -> one readable line per problem (no internals, no stack): the first
    `limit` distinct ones, then one line counting the rest. Linear in the number of errors."""
    out: list[str] = []
    seen: set[str] = set()
    more = 0
    for e in errors:
        kind = e.get("type", "")
        raw = [str(p) for p in e.get("loc", ()) if p != "body"]
        branch = next((p for p in raw if p in ("str", "TextInput")), None)
        loc = [p for p in raw if p not in ("str", "TextInput")]
        where = _loc(loc)
        value = e.get("input")
        if branch == "str" and isinstance(value, dict):
            continue  # an object input: the TextInput branch's errors say what is wrong
        if branch == "TextInput" and kind in ("model_type", "model_attributes_type"):
            continue  # not an object: the str branch's error says it
        if kind == "json_invalid":
            ctx = e.get("ctx", {}).get("error", "")
            line = f"body is not valid JSON ({ctx})" if ctx else "body is not valid JSON"
        elif kind == "missing" and not loc:
            line = f"body is missing; send JSON like {example}"
        elif kind == "missing":
            line = f"{where}: required field missing"
        elif kind == "extra_forbidden":
            allowed = "`text`, `text_pair`" if branch == "TextInput" else "`inputs`"
            line = f"{where}: unknown field (allowed: {allowed})"
        elif kind == "too_short" and where == "inputs":
            line = "inputs: the list is empty; send at least one text"
        elif kind == "list_type":
            line = f"{where}: expected a list of texts, got {_json_type(value)}"
        elif branch == "str":
            got = _json_type(value)
            line = f"{where}: expected a string or a {{text, text_pair}} object, got {got}"
        elif kind == "string_type":
            line = f"{where}: expected a string, got {_json_type(value)}"
        elif kind in ("model_type", "model_attributes_type") and not loc:
            line = f"body: expected a JSON object like {example}"
            if "json" not in content_type:
                got = clip(content_type or "none", 60)
                line += f" sent as Content-Type: application/json (got {got!r})"
        else:
            line = f"{where or 'body'}: {clip(str(e.get('msg', 'invalid')), 200)}"
        if line in seen:
            continue
        seen.add(line)
        if len(out) < limit:
            out.append(line)
        else:
            more += 1
    if more:
        out.append(f"… and {more:,} more problem{'s' if more > 1 else ''}")
    return out


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _loc(parts: list[str]) -> str:
    s = ""
    for p in parts:
        p = clip(p, 40)  # field names come from the client
        s += f"[{p}]" if p.isdigit() else (f".{p}" if s else p)
    return s


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with a marker: strings a client chose (field names,
    headers) are quoted back in messages, but never at any length."""
    return text if len(text) <= limit else text[:limit] + f"…(+{len(text) - limit} chars)"


# ----------------------------------------------------------------------------- the model service


class TextInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr = Field(description="The text (the first text, for pair tasks).")
    text_pair: StrictStr | None = Field(None, description="The second text (pair tasks only).")


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": ["$AAPL beats estimates, shares jump", "Fed holds rates steady"]},
                {"inputs": [{"text": "How do I reset my card?", "text_pair": "Card PIN reset"}]},
            ]
        },
    )
    inputs: list[StrictStr | TextInput] = Field(
        min_length=1,
        description="Texts to predict: strings, or {text, text_pair} objects for pair tasks.",
    )


class HeadPrediction(BaseModel):
    label: str | None = Field(None, description="Best label (classification tasks).")
    score: float | None = Field(None, description="Probability of `label`.")
    scores: dict[str, float] | None = Field(None, description="Probability of every label.")
    labels: list[str] | None = Field(None, description="Labels above threshold (multilabel).")
    value: float | None = Field(None, description="Predicted value (regression).")


class Prediction(HeadPrediction):
    heads: dict[str, HeadPrediction] | None = Field(
        None, description="Multi-task models: one prediction per head, by head name."
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: dict[str, str] = Field(
        description="Name, variant and version of the model that answered."
    )


def check_count(n: int, max_inputs: int) -> None:
    if n > max_inputs:
        raise ApiError(
            413,
            "too_large",
            f"{n} inputs in one request; the limit is max_inputs={max_inputs} "
            "(`tailor serve --max-inputs`). Split the request.",
        )


def split_inputs(
    inputs: list[str | TextInput], card: dict[str, Any], settings: ServeSettings
) -> tuple[list[str], list[str] | None]:
    """Validate the request against the model and the limits; texts and (pair tasks) pairs."""
    check_count(len(inputs), settings.max_inputs)
    texts: list[str] = []
    pairs: list[str] = []
    for i, item in enumerate(inputs):
        text, pair = (item, None) if isinstance(item, str) else (item.text, item.text_pair)
        if card["pair"] and pair is None:
            raise ApiError(
                422,
                "invalid_request",
                f"inputs[{i}]: this model compares two texts; send "
                '{"text": ..., "text_pair": ...} objects',
            )
        if not card["pair"] and pair is not None:
            raise ApiError(
                422,
                "invalid_request",
                f"inputs[{i}]: this model takes one text; `text_pair` is not allowed",
            )
        size = len(text) + len(pair or "")
        if size > settings.max_chars:
            raise ApiError(
                413,
                "too_large",
                f"inputs[{i}] has {size} characters; the limit is max_chars={settings.max_chars} "
                "(`tailor serve --max-chars`)",
            )
        try:
            (text + (pair or "")).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                422, "invalid_request", f"inputs[{i}] is not valid Unicode (a lone surrogate?)"
            ) from None
        if not text.strip() or (pair is not None and not pair.strip()):
            raise ApiError(422, "invalid_request", f"inputs[{i}] is empty; send non-blank text")
        texts.append(text)
        if pair is not None:
            pairs.append(pair)
    return texts, (pairs if card["pair"] else None)
