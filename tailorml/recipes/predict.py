"""Predict with a fine-tuned model: JSONL out, one object per input."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tailorml import runtime  # noqa: F401
from tailorml.data.batching import encode
from tailorml.data.examples import Examples
from tailorml.data.readers import iter_text_lines, read_table
from tailorml.errors import DataError
from tailorml.evaluate.inference import ordered, predict_logits
from tailorml.evaluate.metrics import sigmoid, softmax
from tailorml.models.base import load_model_folder
from tailorml.recipes.evaluate import model_dir


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


def format_predictions(
    task: str, logits: np.ndarray, labels: list[str] | None, top_k: int, threshold: float = 0.5
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if task == "regression":
        return [{"value": float(v)} for v in logits.reshape(-1)]
    names = labels or [str(i) for i in range(logits.shape[1])]
    probs = sigmoid(logits) if task == "multilabel" else softmax(logits)
    k = min(top_k, len(names))
    for p in probs:
        order = np.argsort(-p)[:k]
        top = [{"label": names[i], "score": float(p[i])} for i in order]
        item: dict[str, Any] = {"label": top[0]["label"], "score": top[0]["score"], "top_k": top}
        if task == "multilabel":
            item["labels"] = [names[i] for i in np.flatnonzero(p >= threshold)]
        out.append(item)
    return out


def format_for(info: dict[str, Any], logits: np.ndarray, top_k: int) -> list[dict[str, Any]]:
    """Labelled predictions for a model folder's logits. A multi-task model gives one
    prediction per head: `{"heads": {name: {label, score, top_k, ...}}}`."""
    from tailorml.models.heads import MULTITASK, head_specs

    if info.get("task") != MULTITASK:
        return format_predictions(
            info["task"], logits, info.get("labels"), top_k, info.get("multilabel_threshold", 0.5)
        )
    per_head = {
        h.name: format_predictions(
            h.task, logits[:, h.columns], h.labels, top_k, h.multilabel_threshold
        )
        for h in head_specs(info)
    }
    return [{"heads": {n: preds[i] for n, preds in per_head.items()}} for i in range(len(logits))]


def predict_rows(
    run_dir: str | Path, rows: list[dict[str, Any]], top_k: int = 3, batch_size: int = 64
) -> Iterator[dict[str, Any]]:
    model, tokenizer, info = load_model_folder(model_dir(run_dir))
    yield from predict_with(model, tokenizer, info, rows, top_k, batch_size)


def predict_with(
    model: Any,
    tokenizer: Any,
    info: dict[str, Any],
    rows: Iterable[dict[str, Any]],
    top_k: int = 3,
    batch_size: int = 64,
) -> Iterator[dict[str, Any]]:
    rows = list(rows)
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    ex = Examples([r["text"] for r in rows], pairs, [None] * len(rows), "input", [])
    enc = encode(tokenizer, ex, int(info.get("max_length", 128)))
    logits, idx = predict_logits(model, enc, batch_size, tokenizer.pad_token_id or 0)
    full = ordered(logits, idx, len(enc))
    preds = format_for(info, full, top_k)
    for row, pred in zip(rows, preds, strict=True):
        yield {"input": row["text"], **({"input_pair": row["text_pair"]} if pairs else {}), **pred}


def default_columns(run_dir: str | Path) -> tuple[str, str | None]:
    from tailorml.models.base import read_task_json

    info = read_task_json(model_dir(run_dir))
    return info.get("text_column") or "text", info.get("text_pair_column")


__all__ = [
    "Path",
    "default_columns",
    "format_for",
    "format_predictions",
    "predict_rows",
    "read_inputs",
]
