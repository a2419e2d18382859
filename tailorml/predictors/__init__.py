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

from tailorml.errors import ConfigError, TailorError
from tailorml.predictors.base import Predictor
from tailorml.tasks.folder import read_model_info, resolve_model_dir


def load_predictor(folder: str | Path, threads: int | None = None) -> Predictor:
    """A run folder, RUN_DIR/model or RUN_DIR/compressed/<variant> -> its predictor. The runtime
    comes from task.json (`runtime`), else `onnxruntime` when the ONNX file is there, else torch.
    `threads` defaults to $TAILORML_THREADS, else the runtime's default. An image model's folder
    gets an `ImagePredictor` (tailorml/predictors/images.py: images in, the same outputs)."""
    from tailorml.predictors.images import is_image_folder, load_image_predictor

    if is_image_folder(folder):
        return load_image_predictor(folder, threads)  # type: ignore[return-value]
    info = read_model_info(resolve_model_dir(folder))
    raw = info.raw
    runtime = raw.get("runtime") or (
        "onnxruntime" if (info.folder / raw.get("onnx_file", "model.onnx")).is_file() else "torch"
    )
    if threads is None and os.environ.get("TAILORML_THREADS"):
        threads = int(os.environ["TAILORML_THREADS"])
    try:
        if runtime == "onnxruntime":
            from tailorml.predictors.onnx_runtime import OnnxPredictor

            return OnnxPredictor(info, threads)
        from tailorml.predictors.torch_runtime import TorchPredictor

        return TorchPredictor(info, threads)
    except TailorError:
        raise
    except Exception as exc:  # the folder's files fail in each library's own way
        raise ConfigError(refusal(info.folder, exc)) from None


def refusal(folder: Path, exc: BaseException) -> str:
    """Why a model folder's files could not be loaded, for a person."""
    import pickle
    import re

    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        # torch's own message suggests weights_only=False: exactly what must not be done.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it names {found.group(1)}" if found else "it is not plain tensors"
        return (
            f"{folder}: refused to load a file that is a general pickle ({what}). tailorml loads "
            "weights only from safetensors or as plain tensors (torch.load weights_only=True) and "
            "never runs code from a model folder. Re-create the folder with `tailor finetune` or "
            "`tailor compress`, or save its weights as safetensors."
        )
    return (
        f"{folder}: the model files could not be loaded ({type(exc).__name__}: {first}). "
        "They may be damaged or from another tool: re-create the folder with `tailor finetune` "
        "or `tailor compress`."
    )


__all__ = ["Predictor", "load_predictor"]
