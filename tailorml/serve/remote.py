"""`tailor predict --url`: the same JSONL as local prediction, computed by a running service."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from tailorml.client import Client, to_local_format
from tailorml.serve.settings import ENV_API_KEY


def predict_remote(
    url: str, api_key: str | None, source: str, top_k: int, text_column: str | None
) -> Iterator[dict[str, Any]]:
    from tailorml.data.inputs import read_inputs

    with Client(url, api_key=api_key or os.environ.get(ENV_API_KEY)) as client:
        card = client.model()
        cols = card.get("columns") or {}
        pair_column = (cols.get("text_pair") or "text_pair") if card.get("pair") else None
        rows = read_inputs(source, text_column or cols.get("text") or "text", pair_column)
        texts = [r["text"] for r in rows]
        pairs = [r["text_pair"] for r in rows] if pair_column else None
        for row, pred in zip(rows, client.iter_predict(texts, pairs), strict=True):
            extra = {"input_pair": row["text_pair"]} if pair_column else {}
            yield {"input": row["text"], **extra, **to_local_format(pred, top_k)}
