"""Incoming events `{"id", "time", "text", "source"?, "labels"?}`, parsed or rejected with a reason.

`time` is ISO 8601 (`2026-11-28T21:00:00Z`; no zone means UTC) or Unix seconds. Everything is
stored as float Unix seconds. A bad event never stops the stream: `parse_event` returns a
`Rejected` with the reason, which the pipeline writes to the dead-letter table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_ID_CHARS = 200


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


def parse_time(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("time is a boolean")
    if isinstance(value, int | float):
        t = float(value)
    elif isinstance(value, str):
        s = value.strip()
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
        raise ValueError(f"time {value!r} is out of range")
    return t


def parse_event(raw: str | bytes | dict[str, Any], source: str, max_chars: int) -> Event | Rejected:
    """One event from a JSON line (or an already-decoded object)."""
    text_raw = (
        raw
        if isinstance(raw, str)
        else (
            raw.decode("utf-8", "replace")
            if isinstance(raw, bytes)
            else json.dumps(raw, default=str)
        )
    )
    if isinstance(raw, str | bytes):
        if len(raw) > 4 * max_chars + 10_000:
            return Rejected(f"oversized: {len(raw)} bytes", text_raw[:2000], source)
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return Rejected(f"bad JSON: {exc}", text_raw[:2000], source)
    else:
        obj = raw
    if not isinstance(obj, dict):
        return Rejected(f"not a JSON object but {type(obj).__name__}", text_raw[:2000], source)
    eid = obj.get("id")
    if isinstance(eid, int) and not isinstance(eid, bool):
        eid = str(eid)
    if not isinstance(eid, str) or not eid.strip():
        return Rejected("missing id", text_raw[:2000], source)
    if len(eid) > MAX_ID_CHARS:
        return Rejected(f"id longer than {MAX_ID_CHARS} chars", text_raw[:2000], source)
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        return Rejected("missing text", text_raw[:2000], source)
    if len(text) > max_chars:
        return Rejected(
            f"oversized: text has {len(text)} chars (max {max_chars})", text_raw[:2000], source
        )
    if "time" not in obj:
        return Rejected("missing time", text_raw[:2000], source)
    try:
        t = parse_time(obj["time"])
    except (ValueError, TypeError, OverflowError) as exc:
        return Rejected(f"unparseable time: {exc}", text_raw[:2000], source)
    src = obj.get("source")
    labels = obj.get("labels") if isinstance(obj.get("labels"), dict) else {}
    return Event(
        id=eid,
        time=t,
        text=text,
        source=str(src) if src is not None else source,
        labels={str(k): str(v) for k, v in (labels or {}).items()},
    )
