"""The predictor: tokenize, run a model folder, label the outputs — with no training code.

Subclasses implement `_run(batch) -> logits` for one runtime (torch_runtime.py,
onnx_runtime.py); `tailorml.predictors.load_predictor(folder)` picks the runtime from task.json.
`predict(texts, pairs)` returns logits (batch, columns); `format(logits)` the labelled
predictions (`tailor predict`'s shape), `api_outputs(logits)` the service's. A multi-task folder's
columns are split into its heads (see `tailorml.tasks.heads`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailorml.predictors.encoder import TextEncoder
from tailorml.tasks.folder import ModelInfo
from tailorml.tasks.heads import api_outputs, format_outputs


class Predictor:
    runtime = "base"

    def __init__(self, model: ModelInfo, threads: int | None = None):
        self.model_info = model
        self.folder: Path = model.folder
        self.info: dict[str, Any] = model.raw  # task.json as written
        self.heads = model.heads
        self.task: str = model.task
        self.labels: list[str] | None = model.labels
        self.max_length = model.max_length
        self.threads = threads
        self.encoder = TextEncoder(model.folder, self.max_length)

    # ---- inputs ---------------------------------------------------------------------------

    def _pad(self, ids: list[list[int]], types: list[list[int]]) -> dict[str, np.ndarray]:
        """One batch padded to its longest row: int64 arrays of shape (batch, seq_len)."""
        width = max((len(x) for x in ids), default=1)
        batch = {
            "input_ids": np.full((len(ids), width), self.encoder.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(ids), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(ids), width), dtype=np.int64),
        }
        for j, (row, typ) in enumerate(zip(ids, types, strict=True)):
            batch["input_ids"][j, : len(row)] = row
            batch["attention_mask"][j, : len(row)] = 1
            batch["token_type_ids"][j, : len(typ)] = typ
        return batch

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        return self._pad(*self.encoder.encode(texts, pairs))

    def lengths(self, texts: list[str], pairs: list[str] | None = None) -> list[int]:
        """Tokens per input after truncation (what a batch will be padded to)."""
        return [len(x) for x in self.encoder.encode(texts, pairs)[0]]

    def count_truncated(self, texts: list[str], pairs: list[str] | None = None) -> int:
        full = self.encoder.untruncated_lengths(texts, pairs)
        return sum(1 for n in full if n > self.max_length)

    # ---- running --------------------------------------------------------------------------

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Logits (batch, columns) for one batch of texts."""
        return self._run(self.encode(texts, pairs))

    def predict_sorted(
        self, texts: list[str], chunk: int = 8, pool: Any = None, pairs: list[str] | None = None
    ) -> np.ndarray:
        """Logits for many texts, computed in chunks of texts of similar length.

        A batch is padded to its longest text, and on a CPU the padding costs as much as real
        tokens: sorting by length and running chunks of `chunk` texts keeps padding near zero.
        With a thread pool (`concurrent.futures.Executor`) the chunks run side by side (torch and
        onnxruntime release the GIL; give the predictor one thread per worker)."""
        if not texts:
            return np.zeros((0, self.model_info.width), dtype=np.float32)
        ids, types = self.encoder.encode(texts, pairs)
        order = np.argsort([len(x) for x in ids], kind="stable")
        parts = [order[i : i + chunk] for i in range(0, len(order), chunk)]

        def run(rows: np.ndarray) -> np.ndarray:
            return self._run(self._pad([ids[r] for r in rows], [types[r] for r in rows]))

        outs = list(pool.map(run, parts)) if pool is not None else [run(p) for p in parts]
        logits = np.concatenate(outs)
        result = np.empty_like(logits)
        result[order] = logits
        return result

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    # ---- outputs --------------------------------------------------------------------------

    def format(self, logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        """`tailor predict`'s prediction per row (per head for a multi-task model)."""
        return format_outputs(self.heads, logits, top_k)

    def api_outputs(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """The service's prediction objects per row."""
        return api_outputs(self.heads, logits)
