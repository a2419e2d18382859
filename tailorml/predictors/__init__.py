"""Run a model folder with no training code: the contract between compress, serve, evaluate,
predict and the apps. A served model is a folder, not a Python object.

    from tailorml.predictors import load_predictor
    pred = load_predictor("runs/finsent/compressed/onnx-int8")
    pred.format(pred.predict(["Fed holds rates"]))

The ONNX path imports neither torch nor transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

from tailorml.predictors.base import Predictor
from tailorml.tasks.folder import read_model_info, resolve_model_dir


def load_predictor(folder: str | Path, threads: int | None = None) -> Predictor:
    """A run folder, RUN_DIR/model or RUN_DIR/compressed/<variant> -> its predictor. The runtime
    comes from task.json (`runtime`), else `onnxruntime` when the ONNX file is there, else torch.
    `threads` defaults to $TAILORML_THREADS, else the runtime's default."""
    info = read_model_info(resolve_model_dir(folder))
    raw = info.raw
    runtime = raw.get("runtime") or (
        "onnxruntime" if (info.folder / raw.get("onnx_file", "model.onnx")).is_file() else "torch"
    )
    if threads is None and os.environ.get("TAILORML_THREADS"):
        threads = int(os.environ["TAILORML_THREADS"])
    if runtime == "onnxruntime":
        from tailorml.predictors.onnx_runtime import OnnxPredictor

        return OnnxPredictor(info, threads)
    from tailorml.predictors.torch_runtime import TorchPredictor

    return TorchPredictor(info, threads)


__all__ = ["Predictor", "load_predictor"]
