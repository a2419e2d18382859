"""Evaluate a model folder on a labeled file: any folder `tailor finetune` or `tailor compress`
wrote (torch or ONNX), through the same predictor that serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml import env
from tailorml.data.examples import build_examples
from tailorml.data.readers import read_table
from tailorml.predictors import load_predictor
from tailorml.tasks.folder import head_data_config


def evaluate_file(
    run_dir: str | Path,
    data: str | Path,
    batch_size: int = 128,
    on_bad_rows: str = "error",
    text_column: str | None = None,
    label_column: str | None = None,
    head: str | None = None,
) -> dict[str, Any]:
    """Metrics of the model (one head of a multi-task model: `head`) on a labeled file. An
    image model: on labeled images (a class folder, idx or npz file; tailorml/evaluate/images)."""
    env.setup()
    from tailorml.predictors.images import is_image_folder

    if is_image_folder(run_dir):
        from tailorml.evaluate.images import evaluate_images

        out = evaluate_images(run_dir, Path(data), on_bad_rows)
        return {**out, "source": str(data), "model": str(run_dir)}
    pred = load_predictor(run_dir)
    h = pred.model_info.head(head, str(data))
    d = head_data_config(
        h, text_column=text_column, label_column=label_column, on_bad_rows=on_bad_rows
    )
    task = h.kind
    ex = build_examples(read_table(data, key="--data"), d, task, h.labels, "evaluation data")
    logits = pred.predict_sorted(ex.texts, chunk=batch_size, pairs=ex.pairs)[:, h.columns]
    metrics = task.compute_metrics(logits, ex.labels, h.labels)
    metrics["source"] = str(data)
    metrics["model"] = str(pred.folder)
    metrics["runtime"] = pred.runtime
    metrics["skipped_rows"] = len(ex.bad)
    metrics["truncated"] = pred.count_truncated(ex.texts, ex.pairs)
    return metrics
