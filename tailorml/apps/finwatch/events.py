"""Incoming events `{"id", "time", "text", "source"?, "labels"?}`, parsed or rejected with a reason.

`time` is ISO 8601 (`2026-11-28T21:00:00Z`; no zone means UTC) or Unix seconds. Everything is
stored as float Unix seconds. A bad event never stops the stream: `parse_event` returns a
`Rejected` with the reason, which the pipeline writes to the dead-letter table.

Nothing a line holds may raise out of here: JSON nested thousands deep, numbers with thousands
of digits, bytes that are not UTF-8, lone surrogate escapes (`"\\ud800"`) and NUL characters
(which neither the database drivers nor the tokenizers accept) are all reasons, not tracebacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_ID_CHARS = 200
MAX_TOPIC_CHARS = 100  # the `events.topic` column
MAX_RAW_CHARS = 2000  # of a rejected line kept in `dead_letters.raw`
# Integers longer than this are not converted (Python refuses past 4300 digits, and converting
# is quadratic below that); they reach validation as `HugeNumber` and are rejected there.
MAX_INT_DIGITS = 100
BOM = "\ufeff"


@dataclass
class Event:
    id: str
    time: float
    text: str
    source: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Rejected:
    reason: str
    raw: str
    source: str = ""
    id: str | None = None  # when the event got far enough to have a usable one


@dataclass(frozen=True)
class HugeNumber:
    """A JSON integer with more than MAX_INT_DIGITS digits, kept unconverted."""

    digits: int

    def __str__(self) -> str:
        return f"a number with {self.digits} digits"


def _parse_int(s: str) -> int | HugeNumber:
    return int(s) if len(s) <= MAX_INT_DIGITS else HugeNumber(len(s))


class TooDeep(ValueError):
    """JSON nested deeper than the parser's recursion allows."""


def loads(raw: str | bytes) -> Any:
    """JSON text -> Python, without the failure modes a hostile line has.

    Bytes are decoded as UTF-8 with `surrogateescape`, so a stray byte inside a string survives
    as a lone surrogate and is reported by `bad_text` with the field it is in, rather than
    failing the whole line; a byte order mark at the start is dropped. Raises ValueError (with
    a message for people) for anything that is not JSON; `TooDeep` for nesting past what the
    parser's recursion allows (RecursionError)."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    if text.startswith(BOM):
        text = text[1:]
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise TooDeep("nested too deeply (an event is a flat JSON object)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None


def bad_text(s: str) -> str | None:
    """Why `s` cannot be stored or scored, or None: a NUL character, or a lone surrogate (an
    escape like \\ud800 without its pair, or a byte that was not UTF-8)."""
    if "\x00" in s:
        return f"holds a NUL character (\\u0000) at position {s.index(chr(0))}"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"is not valid Unicode at position {exc.start} ({s[exc.start]!r}: a byte that is "
            "not UTF-8, or a lone surrogate escape)"
        )
    return None


def storable(s: str) -> str:
    """`s` with NUL and lone surrogates written as escapes: fit for any text column (used for
    what we keep about a rejected event, never to repair an accepted one)."""
    s = s.replace("\x00", "\\x00")
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(raw: Any) -> str:
    """What a dead letter keeps of a raw line or object: storable, at most MAX_RAW_CHARS."""
    try:
        if isinstance(raw, bytes):
            text = raw[: MAX_RAW_CHARS * 4].decode("utf-8", "backslashreplace")
        elif isinstance(raw, str):
            text = raw[: MAX_RAW_CHARS * 2]
        elif isinstance(raw, dict):  # long strings cut first: a 7 MB text is not dumped whole
            text = json.dumps({k: _cut(v) for k, v in raw.items()}, default=repr)
        else:
            text = json.dumps(raw, default=repr)
    except (ValueError, RecursionError, TypeError) as exc:  # too deep, a huge int, ...
        text = f"<{type(raw).__name__} that cannot be shown: {type(exc).__name__}>"
    return storable(text)[:MAX_RAW_CHARS]


def _cut(v: Any) -> Any:
    return v[:MAX_RAW_CHARS] + "..." if isinstance(v, str) and len(v) > MAX_RAW_CHARS else v


def parse_time(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("time is a boolean")
    if isinstance(value, HugeNumber):
        raise ValueError(f"time is {value}")
    if isinstance(value, int | float):
        t = float(value)
    elif isinstance(value, str):
        s = value.strip()
        if len(s) > 64:
            raise ValueError(f"time is a string of {len(s)} characters, not a time")
        try:
            t = float(s)
        except ValueError:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            t = dt.timestamp()
    else:
        raise ValueError(f"time has type {type(value).__name__}")
    if not math.isfinite(t) or t < 0 or t > 32503680000:  # year 3000
        raise ValueError(f"time {storable(str(value))[:80]!r} is out of range")
    return t


def _string_field(obj: dict[str, Any], name: str) -> str | None:
    """Why obj[name], when it is a string, cannot be used (see `bad_text`), or None."""
    v = obj.get(name)
    if isinstance(v, str):
        why = bad_text(v)
        if why:
            return f"{name} {why}"
    return None


def parse_event(raw: str | bytes | dict[str, Any], source: str, max_chars: int) -> Event | Rejected:
    """One event from a JSON line (or an already-decoded object). Never raises: whatever is
    wrong with `raw` comes back as a `Rejected` with the reason."""
    try:
        return _parse_event(raw, source, max_chars)
    except Exception as exc:  # a case the checks below missed: still the event's problem
        return Rejected(f"cannot be parsed: {type(exc).__name__}: {exc}", shown(raw), source)


def _parse_event(
    raw: str | bytes | dict[str, Any], source: str, max_chars: int
) -> Event | Rejected:
    def reject(reason: str, eid: str | None = None) -> Rejected:
        return Rejected(reason, shown(raw), source, eid)

    if isinstance(raw, str | bytes):
        if len(raw) > 4 * max_chars + 10_000:
            return reject(f"oversized: {len(raw)} bytes")
        try:
            obj = loads(raw)
        except ValueError as exc:
            return reject(f"bad JSON: {exc}")
    else:
        obj = raw
    if not isinstance(obj, dict):
        return reject(f"not a JSON object but {type(obj).__name__}")
    eid = obj.get("id")
    if isinstance(eid, HugeNumber):
        return reject(f"id is {eid} (at most {MAX_ID_CHARS} characters)")
    if isinstance(eid, int) and not isinstance(eid, bool):
        eid = str(eid)
    if not isinstance(eid, str) or not eid.strip():
        if eid is None:
            return reject("missing id")
        return reject(f"missing id ({'blank' if isinstance(eid, str) else type(eid).__name__})")
    if len(eid) > MAX_ID_CHARS:
        return reject(f"id longer than {MAX_ID_CHARS} chars")
    why = bad_text(eid)
    if why:
        return reject(f"id {why}")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        return reject("missing text", eid)
    if len(text) > max_chars:
        return reject(f"oversized: text has {len(text)} chars (max {max_chars})", eid)
    if "time" not in obj:
        return reject("missing time", eid)
    try:
        t = parse_time(obj["time"])
    except (ValueError, TypeError, OverflowError) as exc:
        return reject(f"unparseable time: {exc}", eid)
    src = obj.get("source")
    if src is not None and (isinstance(src, bool) or not isinstance(src, str | int | float)):
        return reject(f"source must be a string, not {type(src).__name__}", eid)
    labels = obj.get("labels") if isinstance(obj.get("labels"), dict) else {}
    # Only string labels are kept; the labels scorer says which ones it misses.
    kept = {
        str(k): v for k, v in (labels or {}).items() if isinstance(k, str) and isinstance(v, str)
    }
    for name in ("text", "source"):
        why = _string_field(obj, name)
        if why:
            return reject(why, eid)
    for k, v in kept.items():
        why = bad_text(k) or bad_text(v)
        if why:
            return reject(f"labels.{storable(k)[:40]} {why}", eid)
    return Event(
        id=eid,
        time=t,
        text=text,
        source=str(src) if src is not None else source,
        labels=kept,
    )
