"""Evaluate a fine-tuned run (or model folder) on a labeled file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tailorml import runtime  # noqa: F401
from tailorml.config.schema import DataConfig
from tailorml.data.batching import encode
from tailorml.data.examples import build_examples
from tailorml.data.readers import read_table
from tailorml.errors import ConfigError
from tailorml.evaluate.inference import ordered, predict_logits
from tailorml.evaluate.metrics import compute_metrics
from tailorml.models.base import load_model_folder
from tailorml.models.heads import MULTITASK, head_specs


def model_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if (path / "model" / "task.json").is_file():
        return path / "model"
    if (path / "task.json").is_file():
        return path
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist. Give a run folder (with model/) or a model folder."
        )
    raise ConfigError(
        f"{path} is not a finished tailorml run: no model/task.json. "
        "Run `tailor finetune CONFIG` first, or point at RUN_DIR/model."
    )


def data_config_for(info: dict[str, Any], **overrides: Any) -> DataConfig:
    fields: dict[str, Any] = {
        "text_column": info.get("text_column") or "text",
        "text_pair_column": info.get("text_pair_column"),
        "label_column": info.get("label_column") or "label",
        "label_separator": info.get("label_separator") or ";",
        "max_length": info.get("max_length") or 128,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    # Integer labels in a data file map to the saved names by position.
    labels = info.get("labels")
    if labels and all(not str(x).lstrip("-").isdigit() for x in labels):
        fields["label_names"] = labels
    return DataConfig.model_validate(fields)


def evaluate_file(
    run_dir: str | Path,
    data: str | Path,
    batch_size: int = 128,
    on_bad_rows: str = "error",
    text_column: str | None = None,
    label_column: str | None = None,
    head: str | None = None,
) -> dict[str, Any]:
    folder = model_dir(run_dir)
    model, tokenizer, info = load_model_folder(folder)
    columns = slice(None)
    if info.get("task") == MULTITASK:
        heads = {h["name"]: h for h in info["heads"]}
        if head not in heads:
            raise ConfigError(
                f"{folder} is a multi-task model with heads {sorted(heads)}: pass --head NAME "
                f"to say whose labels {data} holds."
            )
        columns = next(h.columns for h in head_specs(info) if h.name == head)
        info = heads[head]
    elif head is not None:
        raise ConfigError(f"--head {head}: {folder} is a single-task model; leave out --head.")
    d = data_config_for(
        info, text_column=text_column, label_column=label_column, on_bad_rows=on_bad_rows
    )
    task = info["task"]
    table = read_table(data, key="--data")
    ex = build_examples(table, d, task, info.get("labels"), role="evaluation data")
    enc = encode(tokenizer, ex, d.max_length)
    pad_id = tokenizer.pad_token_id or 0
    logits, rows = predict_logits(model, enc, batch_size, pad_id)
    full = ordered(logits, rows, len(enc))[:, columns]
    metrics = compute_metrics(task, full, ex.labels, info.get("labels"))
    metrics["source"] = str(data)
    metrics["skipped_rows"] = len(ex.bad)
    metrics["truncated"] = enc.n_truncated
    return metrics


def save_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
