"""The RecBole split writer (tailorml.apps.recommend.export): the atomic files it writes, split
the way RecBole 1.2.1 splits them (a stable sort by time, then per user in order of appearance:
the last event = test, the one before = valid, the rest train; `Dataset.build` with order TO and
split LS valid_and_test, replayed here), give exactly the protocol's train / valid / test. No
RecBole needed; the benchmark checks the same against RecBole itself."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tailorml.apps.recommend.config import DataConfig
from tailorml.apps.recommend.data import load
from tailorml.apps.recommend.evaluate import split_leave_one_out
from tailorml.apps.recommend.export import protocol_targets, read_inter, write_atomic
from tailorml.errors import DataError


def make(tmp: Path, short_user: bool = False) -> DataConfig:
    """Epoch-second times a few seconds apart (float32, as RecBole holds them, rounds them to
    128 s), equal times (ties go by file order), users interleaved in the file, items never
    interacted with, ids that are not numbers."""
    rng = random.Random(1)
    items = [f"m{i:02d}" for i in range(30)]
    with (tmp / "items.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "title"])
        w.writerows([[i, f"film {i}"] for i in items])
    rows = []
    for u in range(12):
        for _ in range(rng.randint(3, 9)):
            rows.append(
                [f"user-{u}", rng.choice(items[:25]), 1_700_000_000 + rng.choice([1, 2, 2, 3, 40])]
            )
    if short_user:
        rows += [["loner", "m01", 5], ["loner", "m02", 6]]
    rng.shuffle(rows)
    with (tmp / "events.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "item", "time"])
        w.writerows(rows)
    return DataConfig(
        interactions=tmp / "events.csv", items=tmp / "items.csv", user_column="user",
        item_column="item", time_column="time", text_columns=["title"],
    )  # fmt: skip


def recbole_leave_one_out(
    inter: Path,
) -> tuple[list[tuple[str, str]], dict[str, str], dict[str, str]]:
    """RecBole 1.2.1's TO + LS(valid_and_test) on an atomic file: stable sort by timestamp,
    group by user (order of first appearance), per group: min(2, n - 1) events left out."""
    rows = read_inter(inter)
    time = np.asarray([r[2] for r in rows]).astype(np.float32)  # RecBole: torch.FloatTensor
    order = np.argsort(time, kind="stable").tolist()
    groups: dict[str, list[int]] = defaultdict(list)
    for n in order:
        groups[rows[n][0]].append(n)
    train: list[tuple[str, str]] = []
    valid: dict[str, str] = {}
    test: dict[str, str] = {}
    for user, idx in groups.items():
        leave = min(2, len(idx) - 1)
        train += [(rows[n][0], rows[n][1]) for n in idx[: len(idx) - leave]]
        if leave == 2:
            valid[user] = rows[idx[-2]][1]
        if leave >= 1:
            test[user] = rows[idx[-1]][1]
    return train, valid, test


def test_atomic_files_give_the_protocol_split(tmp_path: Path) -> None:
    items, events = load(make(tmp_path))
    split = split_leave_one_out(events, len(items))
    info = write_atomic(split, items, tmp_path / "atomic", "toy")
    assert info["events"] == len(events) and info["items"] == 30
    assert info["short_users_dropped"] == 0

    train, valid, test = recbole_leave_one_out(tmp_path / "atomic/toy/toy.inter")
    assert valid == protocol_targets(split, items, "valid")
    assert test == protocol_targets(split, items, "test")
    e = split.events
    ours_train = sorted(
        (e.user_ids[u], items.ids[i])
        for u, i in zip(e.user[split.train], e.item[split.train], strict=True)
    )
    assert sorted(train) == ours_train
    # The ties in the file were real, and float32 would have made more of them (the times as
    # written by a plain export would not split like this).
    assert len(set(zip(e.user.tolist(), e.time.tolist(), strict=True))) < len(e)
    f32 = e.time.astype(np.float32)
    assert len(set(zip(e.user.tolist(), f32.tolist(), strict=True))) < len(
        set(zip(e.user.tolist(), e.time, strict=True))
    )
    # The split does not hang on the rows' order (RecBole's float32 times would, with raw times).
    inter = tmp_path / "atomic/toy/toy.inter"
    head, *rows = inter.read_text().splitlines()
    random.Random(2).shuffle(rows)
    inter.write_text("\n".join([head, *rows]) + "\n")
    assert recbole_leave_one_out(inter)[1:] == (valid, test)
    # Every item is listed for RecBole, in the items file's order (the tie order of ranking).
    lines = (tmp_path / "atomic/toy/toy.item").read_text().split()
    assert lines[0] == "item_id:token" and lines[1:] == items.ids


def test_users_with_fewer_than_three_events(tmp_path: Path) -> None:
    items, events = load(make(tmp_path, short_user=True))
    split = split_leave_one_out(events, len(items))
    with pytest.raises(DataError, match="fewer than 3 events"):
        write_atomic(split, items, tmp_path / "atomic", "toy")
    info = write_atomic(split, items, tmp_path / "atomic", "toy", drop_short=True)
    assert info["short_users_dropped"] == 1
    _, valid, test = recbole_leave_one_out(tmp_path / "atomic/toy/toy.inter")
    assert "loner" not in test
    assert test == protocol_targets(split, items, "test")
    assert valid == protocol_targets(split, items, "valid")
    assert np.isin("loner", split.events.user_ids)


def test_ids_recbole_cannot_read_are_refused(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    text = (tmp_path / "events.csv").read_text().replace("user-3,", '"user 3",')
    (tmp_path / "events.csv").write_text(text)
    items, events = load(cfg)
    with pytest.raises(DataError, match="RecBole token"):
        write_atomic(split_leave_one_out(events, len(items)), items, tmp_path / "a", "toy")
