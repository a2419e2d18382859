"""Run an image model folder (task.json `family: image-classifier`) with no training code: the
torch network (model.safetensors + arch.json) or an ONNX file (`tailor compress`). Images come in
as uint8 arrays (n, h, w, c) or as encoded files (png/jpg bytes, decoded and resized to the
model's input); normalisation is the model's own (task.json `normalize`).

The ONNX path imports neither torch nor transformers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.errors import ConfigError, TailorError
from tailorml.tasks.base import IMAGE_CLASSIFIER
from tailorml.tasks.folder import read_task_json, resolve_model_dir
from tailorml.tasks.heads import api_outputs, format_outputs, specs_from_info


class ImagePredictor:
    """`predict(x)` -> logits (n, classes) of uint8 images; `decode(files)` -> such images."""

    def __init__(self, folder: Path, info: dict[str, Any], threads: int | None = None):
        self.folder, self.info = folder, info
        self.heads = specs_from_info(info)
        im = info["image"]
        self.shape = (int(im["height"]), int(im["width"]), int(im["channels"]))
        norm = info["normalize"]
        self.mean = np.asarray(norm["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(norm["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.threads = threads
        self.runtime = str(info.get("runtime") or "torch")
        self._run = self._onnx() if self.runtime == "onnxruntime" else self._torch()

    def _torch(self) -> Any:
        import torch

        from tailorml.models.images import load_image_classifier

        if self.threads:
            torch.set_num_threads(self.threads)
        model = load_image_classifier(self.folder)
        fmt = torch.channels_last if self.info.get("channels_last") else torch.contiguous_format
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]

        def run(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                t = torch.from_numpy(pixels).contiguous(memory_format=fmt)
                return model(t).float().numpy()

        return run

    def _onnx(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        path = self.folder / str(self.info.get("onnx_file", "model.onnx"))
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(pixels: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {name: pixels})[0], dtype=np.float32)

        return run

    def pixels(self, x: np.ndarray) -> np.ndarray:
        """uint8 (n, h, w, c) -> the network's normalised float32 input (n, c, h, w)."""
        f = x.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        return np.ascontiguousarray((f - self.mean) / self.std, dtype=np.float32)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ConfigError(
                f"{self.folder} takes images of shape {self.shape} (h, w, c), got {x.shape[1:]}."
            )
        parts = [
            self._run(self.pixels(x[i : i + batch_size])) for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.width), dtype=np.float32)

    @property
    def width(self) -> int:
        return max(h.offset + h.size for h in self.heads)

    def decode(self, files: list[bytes]) -> np.ndarray:
        """Encoded image files -> (n, h, w, c) uint8 for this model; ValueError naming the index
        of the first one that is not a readable image."""
        from tailorml.data.images import decode_image

        out = np.zeros((len(files), *self.shape), dtype=np.uint8)
        for i, data in enumerate(files):
            out[i] = decode_image(data, self.shape, f"inputs[{i}]")
        return out

    def format(self, logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        return format_outputs(self.heads, logits, top_k)

    def api_outputs(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return api_outputs(self.heads, logits)


def is_image_folder(path: str | Path) -> bool:
    from tailorml.tasks.folder import folder_family

    return folder_family(path) == IMAGE_CLASSIFIER


def load_image_predictor(path: str | Path, threads: int | None = None) -> ImagePredictor:
    """A run folder, RUN_DIR/model or RUN_DIR/compressed/<variant> of an image model."""
    folder = resolve_model_dir(path)
    info = read_task_json(folder)
    if info.get("family") != IMAGE_CLASSIFIER:
        raise ConfigError(f"{folder} is not an image model (task.json family).")
    if threads is None and os.environ.get("TAILORML_THREADS"):
        threads = int(os.environ["TAILORML_THREADS"])
    try:
        return ImagePredictor(folder, info, threads)
    except TailorError:
        raise
    except Exception as exc:  # the folder's files fail in each library's own way
        from tailorml.predictors import refusal

        raise ConfigError(refusal(folder, exc)) from None
