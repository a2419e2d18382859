"""A served model described and its outputs formatted: the card `/v1/models` answers, and the
prediction objects `/v1/predict` answers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tailorml.models.heads import MULTITASK


def model_card(folder: Path, info: dict[str, Any], runtime_name: str) -> dict[str, Any]:
    """Name, variant and version: what a client (or a load balancer's operator) needs to know."""
    if info.get("variant"):
        variant = str(info["variant"])
    elif folder.parent.name == "compressed":
        variant = folder.name
    else:
        variant = "torch-int8" if info.get("torch_dynamic_int8") else "fp32"
    names = (info.get("onnx_file", "model.onnx"), info.get("torch_int8_state"), "model.safetensors")
    weights = [folder / n for n in names if n and (folder / n).is_file()]
    if info.get("version"):
        version = str(info["version"])
    elif weights:
        with weights[0].open("rb") as fh:
            version = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    else:
        version = "unknown"
    run = folder.parent.parent if folder.parent.name == "compressed" else folder.parent
    return {
        "name": run.name
        if folder.name == "model" or folder.parent.name == "compressed"
        else folder.name,
        "variant": variant,
        "version": version,
        "runtime": runtime_name,
        "task": info["task"],
        "labels": info.get("labels"),
        "max_length": int(info.get("max_length", 128)),
        "pair": bool(info.get("text_pair_column")) or info["task"] == "pair-classification",
        # Column names of the training data: `tailor predict --url` reads files with them.
        "columns": {"text": info.get("text_column"), "text_pair": info.get("text_pair_column")},
        "heads": [
            {"name": h["name"], "task": h["task"], "labels": h.get("labels")}
            for h in info.get("heads") or []
        ]
        or None,
    }


def to_predictions(predictor: Any, logits: Any) -> list[dict[str, Any]]:
    """Logits (batch, num_labels) -> the API's prediction objects."""
    if predictor.task == "regression":
        return [{"value": float(v)} for v in logits.reshape(-1)]
    formatted = predictor.format(logits, top_k=logits.shape[1])
    if predictor.task == MULTITASK:
        return [
            {"heads": {name: _api_item(h) for name, h in p["heads"].items()}} for p in formatted
        ]
    return [_api_item(p) for p in formatted]


def _api_item(p: dict[str, Any]) -> dict[str, Any]:
    if "value" in p:
        return {"value": p["value"]}
    item: dict[str, Any] = {
        "label": p["label"],
        "score": p["score"],
        "scores": {t["label"]: t["score"] for t in p["top_k"]},
    }
    if "labels" in p:
        item["labels"] = p["labels"]
    return item
