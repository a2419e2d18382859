"""Compress an image model: ONNX fp32 (the network traced with a fixed image size and a dynamic
batch axis) and ONNX int8 (static quantization: int8 weights per channel and int8 activations,
their ranges calibrated on training images, in QDQ format after folding batch norms into the
convolutions). Each variant folder holds model.onnx and task.json and runs with
`tailorml.predictors.images` (onnxruntime only, no torch).

Measured per variant: accuracy on the run's eval and test images (the splits the run used,
rebuilt from its config.yaml and seed, or `--data`), agreement with fp32, folder size, batch-1
latency and images/s at batch 64.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.compress.select import accuracy_drop
from tailorml.errors import ConfigError

IMAGE_VARIANTS = ("onnx-fp32", "onnx-int8")
OPSET = 17
DESCRIBE = {
    "onnx-fp32": "ONNX fp32 (onnxruntime)",
    "onnx-int8": "ONNX int8, static (calibrated activations, per-channel weights)",
}


def export_image_onnx(model: Any, shape: tuple[int, int, int], path: Path) -> None:
    """`path`: the network as ONNX, input `pixels` (batch, c, h, w) float32, output `logits`."""
    import onnx
    import torch

    h, w, c = shape
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, c, h, w)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:  # pragma: no cover - exporter bug
        raise ConfigError(f"The exported ONNX graph failed onnx.checker: {exc}") from None


def quantize_image_onnx(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static int8 of `src` into `dst`, activation ranges from `calibration` (n, c, h, w) float32
    (normalised like the model's inputs)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calibration[i : i + 32] for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    pre = dst.with_name("pre.onnx")
    logging.disable(logging.WARNING)
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # folds BN into Conv
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        logging.disable(logging.NOTSET)
        pre.unlink(missing_ok=True)


def run_splits(run: Path, threads: int) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """The run's train, eval and test images and labels, rebuilt from its config.yaml (same
    files and seed: the same splits)."""
    from tailorml.config.load import load_config
    from tailorml.data.image_splits import prepare_image_splits
    from tailorml.tasks import find_task

    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run} has no config.yaml: give the images to measure on with --data.")
    cfg = load_config(path)
    splits = prepare_image_splits(cfg, find_task(cfg.task.type))  # type: ignore[arg-type]
    xs = {s: getattr(splits, s).x for s in ("train", "eval", "test")}
    return xs, dict(splits.ys)


class AsTexts:
    """An image predictor behind the text predictors' `predict(items, pairs)`, so the one timing
    code (`compress.measure.time_predictor`) times both: `items` is a list of (h, w, c) images."""

    def __init__(self, pred: Any):
        self.pred = pred

    def predict(self, items: list[np.ndarray], pairs: Any = None) -> np.ndarray:
        return np.asarray(self.pred.predict(np.stack(items)))


def split_stats(
    head: Any,
    logits: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    ys: dict[str, list[int]],
) -> dict[str, Any]:
    """A variant's accuracy on eval and test with their standard errors, its test drop against
    fp32 with the standard error of the paired difference, and its test agreement with fp32:
    the keys a text run's variants carry (docs/compress.md, Outputs)."""
    out: dict[str, Any] = {}
    for split, prefix in (("eval", ""), ("test", "test_")):
        y = np.asarray(ys[split], dtype=np.int64)
        got = logits[split][:, head.columns]
        m = head.kind.compute_metrics(got, ys[split], head.labels)
        correct = (got.argmax(-1) == y).astype(np.float64)
        n = max(len(y), 1)
        out[f"{prefix}accuracy"] = m["accuracy"]
        out[f"{prefix}macro_f1"] = m["macro_f1"]
        se = float(correct.std(ddof=1) / n**0.5) if n > 1 else 0.0
        out[f"{prefix}accuracy_se"] = round(se, 6)
        if split == "test":
            ref_correct = (ref[split][:, head.columns].argmax(-1) == y).astype(np.float64)
            diff = ref_correct - correct
            se = float(diff.std(ddof=1) / n**0.5) if n > 1 else 0.0
            out["test_accuracy_drop_points"] = accuracy_drop(ref_correct.mean(), correct.mean())
            out["test_drop_se_points"] = round(100 * se, 4)
            same = got.argmax(-1) == ref[split][:, head.columns].argmax(-1)
            out["test_agreement"] = round(float(same.mean()), 6)
    return out
