"""Predict with a model folder (torch or ONNX): one JSON object per input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tailorml import env
from tailorml.predictors import load_predictor
from tailorml.tasks.folder import read_model_info, resolve_model_dir


def predict_rows(
    run_dir: str | Path, rows: list[dict[str, Any]], top_k: int = 3, batch_size: int = 64
) -> Iterator[dict[str, Any]]:
    """`{"input", ("input_pair"), label, score, top_k, ...}` per row, in order."""
    env.setup()
    pred = load_predictor(run_dir)
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    logits = pred.predict_sorted([r["text"] for r in rows], chunk=batch_size, pairs=pairs)
    for row, out in zip(rows, pred.format(logits, top_k), strict=True):
        yield {"input": row["text"], **({"input_pair": row["text_pair"]} if pairs else {}), **out}


def default_columns(run_dir: str | Path) -> tuple[str, str | None]:
    """The text (and pair) column names the model was trained with."""
    info = read_model_info(resolve_model_dir(run_dir))
    return info.text_column, info.text_pair_column
