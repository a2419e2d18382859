"""Read a JSON request body at a cost bounded by the service's limits, before any validation.

A 4 MiB body can hold two million tiny JSON values (`[0,0,0,...]`) or be nested a million levels
deep. Parsing the first builds two million Python objects (about half a second on a busy 2-core
machine, with the event loop blocked: the parser holds the GIL), and the second raises a
RecursionError. So, before parsing, `read_json` checks in C-speed passes that the body is UTF-8,
and that it holds no more JSON tokens than the largest valid request can (`max_tokens`, derived
from the service's own limits) and nests no deeper than `max_depth`; only then does it parse.
Every refusal is an `ApiError` in the kit's one error shape: 413 for a body too big in structure
(it names the limit to change), 422 for a body that is not UTF-8 JSON.

Measured on 4 MiB bodies here (2 busy cores): the token/depth check takes under 1 ms when the
body is mostly tokens (it stops at the budget) and up to ~50 ms when it is mostly long runs of
whitespace or digits between commas hidden in strings (the regex walks them byte by byte);
parsing what passes takes at most ~45 ms (a string of four million escaped backslashes).
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tailorml.serve.schemas import PREDICT_EXAMPLE, ApiError, PredictRequest, check_count, clip

# What counts as a token: every string, every opening bracket, every `,` and `:`. A request that
# holds N things needs at least N tokens, so a budget on tokens is a budget on parse work.
_STRUCTURAL = re.compile(r'[\[\]{},:"]')
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]  # C, skips a whole string
MAX_DEPTH = 32


def is_json(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters ignored (what FastAPI
    itself accepts as JSON)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def read_json(
    raw: bytes,
    content_type: str,
    *,
    max_tokens: int,
    too_many: str,
    example: str,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The parsed body, or an `ApiError` saying what is wrong with it and how to fix it.

    `too_many`: the sentence after "the body holds more than N JSON tokens;" that names the
    limit behind `max_tokens` and what to do. `example`: a well-formed body, quoted when the body
    is missing or not JSON."""
    if not raw.strip():
        raise ApiError(422, "invalid_request", f"body is missing; send JSON like {example}")
    if not is_json(content_type):
        got = clip(content_type or "none", 60)
        raise ApiError(
            422,
            "invalid_request",
            f"body: send JSON like {example} with Content-Type: application/json (got {got!r})",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise ApiError(
            422,
            "invalid_request",
            f"body is not valid UTF-8 (byte 0x{bad} at offset {exc.start}); send JSON encoded "
            "as UTF-8",
        ) from None
    _check_shape(text, max_tokens, max_depth, too_many)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise ApiError(422, "invalid_request", msg) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        msg = f"body is not valid JSON for this service ({clip(str(exc), 120)})"
        raise ApiError(422, "invalid_request", msg) from None


def _check_shape(text: str, max_tokens: int, max_depth: int, too_many: str) -> None:
    # Fast path, one C pass per character: if the body holds few structural characters at all
    # (strings included), it cannot hold too many tokens nor nest too deep.
    opening = text.count("[") + text.count("{")
    if opening <= max_depth and opening + text.count(",") + text.count(":") <= max_tokens:
        return
    # Otherwise walk the tokens outside strings (strings are skipped by the C string scanner);
    # the walk stops at the budget, so its cost is bounded whatever the body holds.
    depth = tokens = pos = 0
    search = _STRUCTURAL.search
    while (m := search(text, pos)) is not None:
        tokens += 1
        if tokens > max_tokens:
            raise ApiError(
                413, "too_large", f"the body holds more than {max_tokens} JSON tokens; {too_many}"
            )
        c = m.group()
        if c == '"':
            try:
                pos = _scanstring(text, m.end(), True)[1]
            except json.JSONDecodeError:
                return  # a broken string: the parser reports it with its position
            continue
        if c in "[{":
            depth += 1
            if depth > max_depth:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"body is nested more than {max_depth} levels deep; this service takes "
                    "flat JSON",
                )
        elif c in "]}":
            depth -= 1
        pos = m.end()


# ----------------------------------------------------------------------------- the model service


def predict_token_budget(max_inputs: int) -> int:
    """The most JSON tokens a valid predict body can hold: `{"inputs": [` is 4 tokens, and each
    input at most 9 (`{`, `"text"`, `:`, a string, `,`, `"text_pair"`, `:`, a string, and the
    `,` before the next input); the rest is slack."""
    return 10 * max_inputs + 16


def parse_predict(raw: bytes, content_type: str, max_inputs: int) -> PredictRequest:
    """A `/v1/predict` body, checked cheapest first: size in tokens, then the number of inputs,
    then the types (pydantic, on at most `max_inputs` inputs)."""
    obj = read_json(
        raw,
        content_type,
        max_tokens=predict_token_budget(max_inputs),
        too_many=f"one request holds at most max_inputs={max_inputs} inputs, each a string or a "
        "{text, text_pair} object (`tailor serve --max-inputs`). Split the request.",
        example=PREDICT_EXAMPLE,
    )
    if isinstance(obj, dict) and isinstance(obj.get("inputs"), list):
        check_count(len(obj["inputs"]), max_inputs)
    try:
        return PredictRequest.model_validate(obj)
    except ValidationError as exc:
        # The kit's handler turns these into the one 422 (its lines are built by describe_errors).
        raise RequestValidationError(exc.errors(include_url=False)) from None
