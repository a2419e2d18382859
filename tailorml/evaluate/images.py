"""Score an image model (any runtime: torch or ONNX) on labeled images: what `tailor evaluate`
and `tailor compress` measure. Images are read as training reads them (tailorml/data/images.py),
at the model's input size and channels; labels must be the model's classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailorml.data.image_splits import _raise_bad
from tailorml.data.images import ImageSet, read_images
from tailorml.data.readers import BadRow
from tailorml.errors import DataError
from tailorml.evaluate.metrics import softmax


def read_labeled(pred: Any, path: Path, on_bad_rows: str = "error") -> tuple[ImageSet, list[int]]:
    """Images of `path` for `pred`'s model and their label ids in its vocabulary; bad images and
    unknown labels are reported with their paths (or dropped and counted with `skip`)."""
    from tailorml.config.schema import DataConfig, ImagesConfig
    from tailorml.data.examples import canonical_label

    h, w, c = pred.shape
    images = read_images(
        path, ImagesConfig.model_validate({"size": [h, w], "grayscale": c == 1}), "--data"
    )
    head = pred.heads[0]
    labels = list(head.labels or [])
    names = labels if all(not str(x).lstrip("-").isdigit() for x in labels) else None
    d = DataConfig.model_validate({"label_names": names})
    index = {name: i for i, name in enumerate(labels)}
    keep, ys, bad = [], [], list(images.bad)
    for i, value in enumerate(images.labels):
        key = canonical_label(value, d.label_names)
        if key not in index:
            bad.append(BadRow(images.names[i], 0, f"label {key!r} is not a class of the model"))
            continue
        keep.append(i)
        ys.append(index[key])
    if bad and on_bad_rows == "error":
        _raise_bad(bad, images.source, "--data")
    out = images.subset(keep)
    out.bad = bad
    if not len(out):
        raise DataError(f"{path} has no usable images for this model.")
    return out, ys


def score(pred: Any, x: np.ndarray, ys: list[int]) -> dict[str, Any]:
    """The task's metrics and the cross-entropy loss of `pred` on images `x` with labels `ys`."""
    head = pred.heads[0]
    logits = pred.predict(x)[:, head.columns]
    probs = softmax(logits)
    y = np.asarray(ys, dtype=np.int64)
    loss = float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean())
    return {**head.kind.compute_metrics(logits, ys, head.labels), "loss": loss}


def evaluate_images(
    model: str | Path, data: Path, on_bad_rows: str = "error", threads: int | None = None
) -> dict[str, Any]:
    """`tailor evaluate` on an image model: metrics on the images at `data`."""
    from tailorml.predictors.images import load_image_predictor

    pred = load_image_predictor(model, threads)
    images, ys = read_labeled(pred, data, on_bad_rows)
    out = score(pred, images.x, ys)
    out["bad_rows_skipped"] = len(images.bad)
    return out
