"""Inputs to predict: rows with `text` (and `text_pair`) from a file or stdin.

Accepted: a csv/tsv/jsonl/parquet table with a column named like the model's training text column
(or `text`, or `--text-column`); a .txt file (or stdin) with one text per line, where a line that
is a JSON object is read as a row."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

from tailorml.data.readers import iter_text_lines, read_table
from tailorml.errors import DataError

PLAIN = (".txt", ".text", "")  # one text per line


def _plain_lines(source: str) -> tuple[list[dict[str, Any]], str]:
    if source == "-":
        return list(iter_text_lines(sys.stdin)), "stdin"
    path = Path(source)
    if not path.is_file():
        raise DataError(f"--input {source}: file not found. Check the path.")
    raw = path.read_bytes().decode("utf-8", errors="replace")
    return list(iter_text_lines(io.StringIO(raw))), source


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
