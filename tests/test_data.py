from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tailorml.config.schema import DataConfig
from tailorml.data.batching import plan_batches
from tailorml.data.examples import build_examples, infer_labels, stratified_split
from tailorml.data.readers import read_table
from tailorml.errors import DataError
from tailorml.tasks import get_task

from .conftest import make_rows, write_csv, write_jsonl


def test_readers_agree_on_csv_jsonl_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_rows(20)
    a = read_table(write_csv(tmp_path / "a.csv", rows))
    b = read_table(write_jsonl(tmp_path / "a.jsonl", rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    c = read_table(tmp_path / "a.parquet")
    assert a.rows == b.rows == c.rows
    assert a.lines[:2] == [2, 3] and b.lines[:2] == [1, 2]


def test_bad_rows_are_reported_with_file_and_line(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_bytes(
        b"text,label\n"
        b"good news,pos\n"
        b",neg\n"  # line 3: empty text
        b"no label here,\n"  # line 4: missing label
        b"bad \xff\xfe bytes,pos\n"  # line 5: not UTF-8
        b"fine,neg\n"
    )
    cfg = DataConfig(train=train)
    table = read_table(train)
    labels = infer_labels(table, cfg, get_task("classification"))
    with pytest.raises(DataError) as err:
        build_examples(table, cfg, get_task("classification"), labels, "train")
    msg = str(err.value)
    assert f"{train}:3: empty text" in msg
    assert f"{train}:4: missing label" in msg
    assert f"{train}:5: undecodable bytes" in msg
    assert "on_bad_rows: skip" in msg
    skip = DataConfig(train=train, on_bad_rows="skip")
    ex = build_examples(read_table(train), skip, get_task("classification"), labels, "train")
    assert ex.texts == ["good news", "fine"] and len(ex.bad) == 3


def test_unseen_eval_label(tmp_path: Path) -> None:
    ev = write_csv(
        tmp_path / "eval.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": "maybe"}]
    )
    cfg = DataConfig(train=ev)
    with pytest.raises(DataError, match=r"eval.csv:3: label 'maybe' in eval was not seen in train"):
        build_examples(read_table(ev), cfg, get_task("classification"), ["neg", "pos"], "eval")


def test_nan_label_in_regression(tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "r.jsonl", [{"text": "a", "label": 1.5}, {"text": "b", "label": float("nan")}]
    )
    # json.dumps writes NaN, which Python's json reads back as float('nan')
    with pytest.raises(DataError, match=r"r.jsonl:2: missing label \(NaN\)"):
        build_examples(read_table(f), DataConfig(train=f), get_task("regression"), None, "train")


def test_wrong_columns_suggest_close_matches(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "t.csv", [{"Text": "x", "labels": "a"}])
    with pytest.raises(DataError) as err:
        build_examples(
            read_table(f), DataConfig(train=f), get_task("classification"), ["a"], "train"
        )
    msg = str(err.value)
    assert "column 'text' (from `data.text_column`) not found" in msg and "'Text'" in msg
    assert "column 'label' (from `data.label_column`)" in msg and "'labels'" in msg


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no data rows"):
        read_table(tmp_path / "header.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported extension"):
        read_table(tmp_path / "x.txt")


def test_integer_labels_take_names_and_numeric_order(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 11} for i in range(33)]
    f = write_csv(tmp_path / "n.csv", rows)
    assert infer_labels(read_table(f), DataConfig(train=f), get_task("classification")) == [
        str(i) for i in range(11)
    ]
    g = write_csv(tmp_path / "s.csv", [{"text": "a", "label": 2}, {"text": "b", "label": 0}])
    cfg = DataConfig(train=g, label_names=["Bearish", "Bullish", "Neutral"])
    labels = infer_labels(read_table(g), cfg, get_task("classification"))
    assert labels == ["Bearish", "Bullish", "Neutral"]
    ex = build_examples(read_table(g), cfg, get_task("classification"), labels, "train")
    assert ex.labels == [2, 0]


def test_multilabel_separator_and_lists(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "m.csv", [{"text": "a", "label": "x;y"}, {"text": "b", "label": "y"}])
    cfg = DataConfig(train=f)
    labels = infer_labels(read_table(f), cfg, get_task("multilabel"))
    assert labels == ["x", "y"]
    ex = build_examples(read_table(f), cfg, get_task("multilabel"), labels, "train")
    assert ex.labels == [[0, 1], [1]]
    j = write_jsonl(tmp_path / "m.jsonl", [{"text": "a", "label": ["y", "x"]}])
    ex = build_examples(read_table(j), DataConfig(train=j), get_task("multilabel"), labels, "train")
    assert ex.labels == [[0, 1]]


def test_stratified_split_keeps_class_shares(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "t.csv", make_rows(300))
    cfg = DataConfig(train=f)
    labels = infer_labels(read_table(f), cfg, get_task("classification"))
    ex = build_examples(read_table(f), cfg, get_task("classification"), labels, "train")
    keep, hold = stratified_split(ex, 0.2, 0, True, "eval")
    assert len(hold) == 60 and len(keep) == 240
    assert sorted(np.bincount(hold.labels).tolist()) == [20, 20, 20]
    assert not set(keep.lines) & set(hold.lines)


def test_length_buckets_cut_padding_and_cover_every_example() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=2000)
    bucketed = plan_batches(lengths, 32, seed=1, epoch=0, bucket=True)
    plain = plan_batches(lengths, 32, seed=1, epoch=0, bucket=False)
    for plan in (bucketed, plain):
        assert sorted(np.concatenate(plan).tolist()) == list(range(2000))

    def padded(plan: list[np.ndarray]) -> int:
        return int(sum(len(b) * lengths[b].max() for b in plan))

    assert padded(bucketed) < 0.7 * padded(plain)
    again = plan_batches(lengths, 32, seed=1, epoch=0, bucket=True)
    assert all((a == b).all() for a, b in zip(bucketed, again, strict=True))
    other = plan_batches(lengths, 32, seed=1, epoch=1, bucket=True)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(bucketed, other, strict=False))
