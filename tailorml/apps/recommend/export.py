"""The protocol's split as RecBole atomic files, for the side-by-side with RecBole
(`benchmarks/recommend_vs_recbole.py`).

RecBole's own split is "order by time (TO), then leave-one-out per user (LS: valid_and_test)".
To make it give exactly our targets, every event's timestamp is rewritten to its position in
our protocol order (events sorted by user, time, file order): the times are then unique and
increase along each user's history, so RecBole's sort cannot reorder anything, its last event
per user is our test target and the one before our valid target, whatever the order of the
rows. Raw times are fragile: RecBole holds float fields as float32 (epoch seconds of today are
then rounded to 128 s), and ties, new ones included, keep the rows' order, which need not be
the time order (MovieLens' ratings.csv is sorted by user and movie). Positions are exact in
float32 below 2**24 events.

One difference cannot be forced: RecBole splits a user with 2 events into 1 train + 1 test
(ours: train only). `write_atomic` refuses such data unless `drop_short` removes those users
from the files (they then train no RecBole model; say so next to any figure).

Files: `<dir>/<name>/<name>.inter` (user_id:token, item_id:token, timestamp:float) and
`<name>.item` (item_id:token, every item in the items file's order, so RecBole ranks the same
item set; ties in our protocol go to the earlier item in this order).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.recommend.data import Items
from tailorml.apps.recommend.evaluate import Split
from tailorml.errors import DataError
from tailorml.files import atomic_write_text


def _token(value: str) -> str:
    if not value or any(c in value for c in "\t\n\r "):
        raise DataError(
            f"id {value!r} cannot be a RecBole token (empty, or holds a tab, space or newline)."
        )
    return value


def short_users(split: Split) -> np.ndarray:
    """Users with 1 or 2 events: RecBole would split them differently from the protocol."""
    counts = np.bincount(split.events.user, minlength=split.n_users)
    return np.flatnonzero((counts > 0) & (counts < 3))


def write_atomic(
    split: Split, items: Items, out_dir: Path | str, name: str, drop_short: bool = False
) -> dict[str, Any]:
    """Write `<out_dir>/<name>/<name>.inter` and `.item`; returns counts for the record."""
    short = short_users(split)
    if len(short) and not drop_short:
        raise DataError(
            f"{len(short)} user(s) have fewer than 3 events (e.g. "
            f"{split.events.user_ids[int(short[0])]!r}): RecBole would give them a test target, "
            "the protocol does not. Pass drop_short=True (--drop-short) to leave them out of "
            "the RecBole files."
        )
    e = split.events
    if len(e) >= 2**24:
        raise DataError(
            f"{len(e)} events: RecBole's float32 timestamps cannot hold positions past 2**24."
        )
    keep = ~np.isin(e.user, short)
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    users = [_token(u) for u in e.user_ids]
    item_ids = [_token(i) for i in items.ids]
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    # The event's position in protocol order is its time: unique, increasing per user.
    rows += [
        f"{users[u]}\t{item_ids[i]}\t{n}"
        for n, (u, i) in enumerate(zip(e.user, e.item, strict=True))
        if keep[n]
    ]
    atomic_write_text(folder / f"{name}.inter", "\n".join(rows) + "\n")
    atomic_write_text(folder / f"{name}.item", "item_id:token\n" + "\n".join(item_ids) + "\n")
    return {
        "inter": str(folder / f"{name}.inter"),
        "item": str(folder / f"{name}.item"),
        "events": int(keep.sum()),
        "users": int(len(np.unique(e.user[keep]))),
        "items": len(item_ids),
        "short_users_dropped": int(len(short)),
    }


def protocol_targets(split: Split, items: Items, which: str) -> dict[str, str]:
    """{user id: target item id} of the valid or test targets (what RecBole must evaluate)."""
    users, targets, _, _ = split.targets(which)
    return {
        split.events.user_ids[int(u)]: items.ids[int(t)]
        for u, t in zip(users, targets, strict=True)
    }


def read_inter(path: Path | str) -> list[tuple[str, str, float]]:
    """The (user, item, time) rows of an atomic .inter file (for checks)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        return [(u, i, float(t)) for u, i, t in reader]
