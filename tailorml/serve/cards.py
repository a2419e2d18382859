"""A served model described and its outputs formatted: the card `/v1/models` answers, and the
prediction objects `/v1/predict` answers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tailorml.tasks.heads import named_heads, specs_from_info


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
    heads = specs_from_info(info)
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
        "pair": any(h.kind.pair for h in heads) or bool(info.get("text_pair_column")),
        # Column names of the training data: `tailor predict --url` reads files with them.
        "columns": {"text": info.get("text_column"), "text_pair": info.get("text_pair_column")},
        "heads": [{"name": h.name, "task": h.task, "labels": h.labels} for h in named_heads(heads)]
        or None,
    }


def to_predictions(predictor: Any, logits: Any) -> list[dict[str, Any]]:
    """Logits (batch, columns) -> the API's prediction objects (each head's task formats its
    columns; a multi-task model answers per head)."""
    return list(predictor.api_outputs(logits))
