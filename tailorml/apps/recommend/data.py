"""Reading a recommender's data: events (user, item, time[, rating]) and items (id, text fields),
every bad row reported with file:line as fine-tuning does (`data.on_bad_rows`).

Events are kept in the order the protocol needs: per user, by time, ties by file order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.recommend.config import DataConfig
from tailorml.data.readers import BadRow, Table, has_surrogates, is_missing, read_table
from tailorml.errors import DataError


@dataclass
class Items:
    ids: list[str]
    texts: list[str]
    titles: list[str]
    genres: list[list[str]]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {i: n for n, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Events:
    """Events sorted by user, then time, then file order (`user`, `item`: indices)."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    time: np.ndarray  # float64, seconds
    user_ids: list[str]
    bad: list[BadRow] = field(default_factory=list)
    dropped_by_rating: int = 0

    def __len__(self) -> int:
        return len(self.user)


def _text(value: Any) -> str:
    return "" if is_missing(value) else str(value).strip()


def parse_time(value: Any) -> float | None:
    """Seconds: a number (epoch) or an ISO-8601 date/time; None if neither."""
    if is_missing(value):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.timestamp()
    s = str(value).strip()
    try:
        f = float(s)
        return f if math.isfinite(f) else None
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _stop_on_bad(bad: list[BadRow], src: str, d: DataConfig) -> None:
    if bad and d.on_bad_rows == "error":
        shown = "\n".join(f"  {b}" for b in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} bad row(s) in {src}:\n{shown}{more}\n"
            "Fix them, or set `data.on_bad_rows: skip` to drop and count them."
        )


def item_text(row: dict[str, Any], columns: list[str]) -> str:
    """The item's text: its text columns joined (`|` lists read as comma lists)."""
    parts = [_text(row.get(c)).replace("|", ", ") for c in columns]
    return ". ".join(p for p in parts if p)


def read_items(d: DataConfig, path: Path | None = None, key: str = "data.items") -> Items:
    table = read_table(path or d.items, key=key)
    title_col = d.title_column or d.text_columns[0]
    wanted: dict[str, str | None] = {"data.item_column": d.item_column}
    wanted |= {f"data.text_columns[{n}]": c for n, c in enumerate(d.text_columns)}
    wanted |= {"data.title_column": title_col, "data.genre_column": d.genre_column}
    table.require_columns(wanted)
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    genres: list[list[str]] = []
    seen: dict[str, int] = {}
    bad = list(table.bad)
    src = str(table.path)
    for row, line in zip(table.rows, table.lines, strict=True):
        iid = _text(row.get(d.item_column))
        text = item_text(row, d.text_columns)
        reason = None
        if not iid:
            reason = f"missing item id (`{d.item_column}`)"
        elif iid in seen:
            reason = f"item {iid!r} listed twice (first on line {seen[iid]})"
        elif not text:
            reason = f"item {iid!r} has no text in {d.text_columns}"
        elif has_surrogates(text) or has_surrogates(iid):
            reason = "undecodable bytes (not UTF-8)"
        if reason:
            bad.append(BadRow(src, line, reason))
            continue
        seen[iid] = line
        ids.append(iid)
        texts.append(text)
        titles.append(_text(row.get(title_col)) or iid)
        g = _text(row.get(d.genre_column)) if d.genre_column else ""
        genres.append([x.strip() for x in g.split("|") if x.strip()])
    _stop_on_bad(bad, src, d)
    if not ids:
        raise DataError(f"`{key}`: {src} has no usable items. Check `data.item_column`.")
    return Items(ids, texts, titles, genres)


def add_tags(items: Items, d: DataConfig) -> int:
    """Append up to `max_tags` distinct tags to each item's text; returns the tagged items."""
    if d.tags is None or d.max_tags == 0:
        return 0
    table = read_table(d.tags, key="data.tags")
    table.require_columns({"data.item_column": d.item_column, "data.tag_column": d.tag_column})
    tags: dict[int, list[str]] = defaultdict(list)
    bad = list(table.bad)
    for row, line in zip(table.rows, table.lines, strict=True):
        iid, tag = _text(row.get(d.item_column)), _text(row.get(d.tag_column))
        n = items.index.get(iid)
        if n is None or not tag:
            bad.append(BadRow(str(table.path), line, f"unknown item {iid!r}" if tag else "no tag"))
            continue
        low = [t.lower() for t in tags[n]]
        if tag.lower() not in low and len(tags[n]) < d.max_tags:
            tags[n].append(tag)
    _stop_on_bad(bad, str(table.path), d)
    for n, ts in tags.items():
        items.texts[n] += ". Tags: " + ", ".join(ts)
    return len(tags)


def read_events(d: DataConfig, items: Items) -> Events:
    table: Table = read_table(d.interactions, key="data.interactions")
    table.require_columns(
        {
            "data.user_column": d.user_column,
            "data.item_column": d.item_column,
            "data.time_column": d.time_column,
            "data.rating_column": d.rating_column,
        }
    )
    src = str(table.path)
    bad = list(table.bad)
    users: dict[str, int] = {}
    u_list: list[int] = []
    i_list: list[int] = []
    t_list: list[float] = []
    dropped = 0
    for row, line in zip(table.rows, table.lines, strict=True):
        uid = _text(row.get(d.user_column))
        iid = _text(row.get(d.item_column))
        t = parse_time(row.get(d.time_column))
        reason = None
        if not uid:
            reason = f"missing user (`{d.user_column}`)"
        elif not iid:
            reason = f"missing item (`{d.item_column}`)"
        elif iid not in items.index:
            reason = f"unknown item {iid!r} (not in {d.items})"
        elif t is None:
            reason = f"unparsable time {row.get(d.time_column)!r} (`{d.time_column}`)"
        rating = None
        if reason is None and d.rating_column:
            try:
                rating = float(row.get(d.rating_column))  # type: ignore[arg-type]
                if not math.isfinite(rating):
                    raise ValueError
            except (TypeError, ValueError):
                reason = f"unparsable rating {row.get(d.rating_column)!r} (`{d.rating_column}`)"
        if reason:
            bad.append(BadRow(src, line, reason))
            continue
        if d.limit_users and uid not in users and len(users) >= d.limit_users:
            continue
        if d.min_rating is not None and rating is not None and rating < d.min_rating:
            dropped += 1
            continue
        u_list.append(users.setdefault(uid, len(users)))
        i_list.append(items.index[iid])
        t_list.append(t)  # type: ignore[arg-type]
    _stop_on_bad(bad, src, d)
    if not u_list:
        raise DataError(f"`data.interactions`: {src} has no usable events (after min_rating).")
    user = np.asarray(u_list, dtype=np.int64)
    time = np.asarray(t_list, dtype=np.float64)
    # Stable sort: ties in (user, time) keep the file order.
    order = np.lexsort((np.arange(len(user)), time, user))
    return Events(
        user[order],
        np.asarray(i_list, dtype=np.int64)[order],
        time[order],
        list(users),
        bad,
        dropped,
    )


def load(d: DataConfig) -> tuple[Items, Events]:
    items = read_items(d)
    add_tags(items, d)
    return items, read_events(d, items)
