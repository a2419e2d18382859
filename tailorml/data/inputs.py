"""Inputs to predict: rows with `text` (and `text_pair`) from a file or stdin."""

from __future__ import annotations

import sys
from typing import Any

from tailorml.data.readers import iter_text_lines, read_table
from tailorml.errors import DataError


def read_inputs(source: str, text_column: str, pair_column: str | None) -> list[dict[str, Any]]:
    """Rows with `text` (and `text_pair`) from a csv/jsonl/parquet file or `-` (stdin)."""
    if source == "-":
        rows = list(iter_text_lines(sys.stdin))
        path_name = "stdin"
        lines = list(range(1, len(rows) + 1))
    else:
        table = read_table(source, key="--input")
        if text_column not in table.columns:
            table.require_columns({"text_column": text_column})
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
