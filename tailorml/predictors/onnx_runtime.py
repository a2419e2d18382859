"""Run an ONNX model folder on onnxruntime. Nothing here imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailorml.predictors.base import Predictor
from tailorml.tasks.folder import ModelInfo


def make_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with the settings every tailorml session uses."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Spinning threads collapse on shared machines; see DESIGN.md.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(session: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Logits of one padded batch; inputs the graph does not take are left out."""
    names = {i.name for i in session.get_inputs()}
    (logits,) = session.run(["logits"], {k: v for k, v in batch.items() if k in names})
    return np.asarray(logits, dtype=np.float32)


class OnnxPredictor(Predictor):
    """`model.onnx` (task.json `onnx_file`): inputs `input_ids`, `attention_mask` and, when the
    graph takes them, `token_type_ids`, int64 (batch, seq_len); output `logits` (batch, columns)."""

    runtime = "onnxruntime"

    def __init__(self, model: ModelInfo, threads: int | None = None):
        super().__init__(model, threads)
        self.session = make_session(
            model.folder / model.raw.get("onnx_file", "model.onnx"), threads
        )

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return run_session(self.session, batch)
