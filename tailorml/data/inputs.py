"""Inputs to predict: rows with `text` (and `text_pair`) from a file or stdin.

Accepted: a csv/tsv/jsonl/parquet table with a column named like the model's training text column
(or `text`, or `--text-column`); a .txt file (or stdin) with one text per line, where a line that
is a JSON object is read as a row."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from tailorml.data.readers import has_surrogates, iter_text_lines, read_table
from tailorml.errors import DataError

PLAIN = (".txt", ".text", "")  # one text per line


def _plain_lines(source: str) -> tuple[list[dict[str, Any]], str]:
    if source == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        name = "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "not found"
            raise DataError(f"--input {source}: {what}. Give a file (or - for stdin).")
        raw, name = path.read_bytes(), source
    # Undecodable bytes become lone surrogates, reported below with their line.
    text = raw.decode("utf-8", errors="surrogateescape") if isinstance(raw, bytes) else raw
    return list(iter_text_lines(io.StringIO(text.removeprefix("\ufeff")))), name


def read_inputs(source: str, text_column: str, pair_column: str | None) -> list[dict[str, Any]]:
    """Rows with `text` (and `text_pair`) from a csv/jsonl/parquet file or `-` (stdin)."""
    if source == "-" or Path(source).suffix.lower() in PLAIN:
        rows, path_name = _plain_lines(source)
        lines = list(range(1, len(rows) + 1))
    else:
        table = read_table(source, key="--input")
        if text_column not in table.columns and "text" not in table.columns:
            shown = ", ".join(repr(c) for c in table.columns[:5])
            raise DataError(
                f"--input {source}: no column {text_column!r} (the model's text column) in the "
                f"header row ({shown}). Name the text column in a header row, pass "
                f"--text-column NAME, or give a .txt file with one text per line."
            )
        rows, lines, path_name = table.rows, table.lines, source
    out = []
    for row, line in zip(rows, lines, strict=True):
        text = row.get(text_column, row.get("text"))
        if text is None or not str(text).strip():
            raise DataError(f"{path_name}:{line}: empty text. Remove the row or fill it in.")
        if has_surrogates(str(text)):
            raise DataError(
                f"{path_name}:{line}: bytes that are not UTF-8. Save the file as UTF-8 (e.g. "
                "`iconv -f latin1 -t utf-8`)."
            )
        item = {"text": str(text)}
        if pair_column:
            pair = row.get(pair_column, row.get("text_pair"))
            if pair is None:
                raise DataError(f"{path_name}:{line}: missing {pair_column!r} (pair task).")
            item["text_pair"] = str(pair)
        out.append(item)
    if not out:
        raise DataError(f"{path_name}: no inputs to predict.")
    return out
