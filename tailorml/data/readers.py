"""Readers for csv, jsonl and parquet files that keep the source line of every row.

Undecodable bytes are not fatal here: csv and jsonl are decoded with ``surrogateescape`` so that a
bad byte becomes a lone surrogate, which the example builder reports with file and line.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorml.errors import DataError

SUPPORTED = (".csv", ".jsonl", ".json", ".parquet", ".tsv")


@dataclass
class BadRow:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Table:
    path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]  # source line of each row (1-based, header = line 1 for csv)
    bad: list[BadRow] = field(default_factory=list)  # rows that could not even be parsed

    def __len__(self) -> int:
        return len(self.rows)

    def require_columns(self, wanted: dict[str, str | None]) -> None:
        """Raise a DataError naming every missing column and the closest existing ones.

        `wanted` maps the config key (e.g. `data.text_column`) to the column it names.
        """
        problems = []
        for key, col in wanted.items():
            if col is None or col in self.columns:
                continue
            close = difflib.get_close_matches(col, self.columns, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            problems.append(
                f"{self.path}: column {col!r} (from `{key}`) not found; the file has columns "
                f"{self.columns}.{hint} Set `{key}` to one of them."
            )
        if problems:
            raise DataError(problems)


def has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _read_csv(path: Path, limit: int | None, delimiter: str) -> Table:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    text = raw.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path} is empty. Give a file with a header row and data rows.") from None
    header = [h.strip() for h in header]
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: list[BadRow] = []
    line = reader.line_num + 1
    try:
        for record in reader:
            start, line = line, reader.line_num + 1
            if not record or all(not c.strip() for c in record):
                continue
            if len(record) != len(header):
                bad.append(
                    BadRow(str(path), start, f"{len(record)} fields, header has {len(header)}")
                )
                continue
            rows.append(dict(zip(header, record, strict=True)))
            lines.append(start)
            if limit and len(rows) >= limit:
                break
    except csv.Error as exc:
        raise DataError(f"{path}:{line}: cannot parse csv ({exc}). Fix the quoting there.") from None
    return Table(path, header, rows, lines, bad)


def _read_jsonl(path: Path, limit: int | None) -> Table:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: list[BadRow] = []
    columns: dict[str, None] = {}
    with path.open("rb") as fh:
        for i, raw_line in enumerate(fh, start=1):
            if not raw_line.strip():
                continue
            text = raw_line.decode("utf-8", errors="surrogateescape")
            if has_surrogates(text):
                bad.append(BadRow(str(path), i, "undecodable bytes (not UTF-8)"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                bad.append(BadRow(str(path), i, f"malformed JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                bad.append(BadRow(str(path), i, "a JSON line must be an object"))
                continue
            for k in obj:
                columns.setdefault(k, None)
            rows.append(obj)
            lines.append(i)
            if limit and len(rows) >= limit:
                break
    return Table(path, list(columns), rows, lines, bad)


def _read_parquet(path: Path, limit: int | None) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({exc}).") from None
    if limit:
        table = table.slice(0, limit)
    rows = table.to_pylist()
    return Table(path, list(table.column_names), rows, list(range(1, len(rows) + 1)))


def read_table(path: str | Path, limit: int | None = None, key: str = "data.train") -> Table:
    """Read a data file. `key` is the config key that named it, used in error messages."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"`{key}`: file not found: {path}. Check the path (relative to the cwd).")
    if path.is_dir():
        raise DataError(f"`{key}`: {path} is a folder; give a .csv, .jsonl or .parquet file.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = _read_csv(path, limit, ",")
    elif suffix == ".tsv":
        table = _read_csv(path, limit, "\t")
    elif suffix in (".jsonl", ".json"):
        table = _read_jsonl(path, limit)
    elif suffix == ".parquet":
        table = _read_parquet(path, limit)
    else:
        raise DataError(
            f"`{key}`: {path} has an unsupported extension {suffix!r}. "
            f"Use one of {', '.join(SUPPORTED)}."
        )
    if not table.rows and not table.bad:
        raise DataError(f"`{key}`: {path} has no data rows. Give a file with at least one example.")
    return table


def iter_text_lines(stream: io.TextIOBase | Any) -> Iterator[dict[str, Any]]:
    """Rows from a stream: JSON objects per line, or plain text lines (as {"text": line})."""
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
                if isinstance(obj, dict):
                    yield obj
                    continue
            except json.JSONDecodeError:
                pass
        yield {"text": line}
