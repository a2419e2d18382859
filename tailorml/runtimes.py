"""Predictors for a model folder, with no training code: the contract between compress and serve.

A model folder holds `task.json` (task, labels, max_length, ...) and the tokenizer files, plus
either

- `model.onnx` (run on onnxruntime; `task.json` has `"runtime": "onnxruntime"`), inputs
  `input_ids`, `attention_mask` and (when the model takes them) `token_type_ids`, all int64 of shape
  (batch, seq_len); output `logits` (batch, num_labels); or
- Hugging Face weights (`config.json`, `model.safetensors`; run on torch). When `task.json` has
  `"torch_dynamic_int8": true` the Linear layers are quantized to int8 on load; with
  `"torch_int8_state": "model_int8.pt"` too, the int8 weights are read from that file (written by
  `tailor compress`; no fp32 safetensors needed). Structurally pruned folders
  (`"tailorml_pruned": true` in config.json) load through `models.base.load_classifier`.

`load_predictor(folder)` picks the runtime; `predictor.predict(texts, pairs)` returns logits as
a numpy array (batch, num_labels), and `predictor.format(logits)` the labelled predictions.
A multi-task folder (`"task": "multitask"`, see `tailorml.models.heads`) is an ordinary classifier
whose logit columns are split into heads: `predict` returns all columns, `format` labels each head.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.errors import ConfigError


def read_task(folder: Path) -> dict[str, Any]:
    path = folder / "task.json"
    if not path.is_file():
        raise ConfigError(
            f"{folder} is not a tailorml model folder (no task.json). Point at RUN_DIR/model or "
            "RUN_DIR/compressed/<variant>."
        )
    return dict(json.loads(path.read_text(encoding="utf-8")))


class Predictor:
    """Tokenize, run, and label. Subclasses implement `_run(batch) -> logits`."""

    runtime = "base"

    def __init__(self, folder: Path, info: dict[str, Any], threads: int | None = None):
        from transformers import AutoTokenizer

        from tailorml.models.base import quiet_transformers

        quiet_transformers()
        self.folder = folder
        self.info = info
        self.task: str = info["task"]
        self.labels: list[str] | None = info.get("labels")
        self.max_length = int(info.get("max_length", 128))
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.threads = threads

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="np",
        )
        return {k: v.astype(np.int64) for k, v in enc.items()}

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Logits (batch, num_labels) for a batch of texts."""
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
            return np.zeros((0, len(self.labels or []) or 1), dtype=np.float32)
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        ids: list[list[int]] = enc["input_ids"]
        types: list[list[int]] | None = enc.get("token_type_ids")
        order = np.argsort([len(x) for x in ids], kind="stable")
        parts = [order[i : i + chunk] for i in range(0, len(order), chunk)]
        pad = self.tokenizer.pad_token_id or 0

        def run(rows: np.ndarray) -> np.ndarray:
            width = max(len(ids[r]) for r in rows)
            batch = {
                "input_ids": np.full((len(rows), width), pad, dtype=np.int64),
                "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
            }
            if types is not None:
                batch["token_type_ids"] = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                n = len(ids[r])
                batch["input_ids"][j, :n] = ids[r]
                batch["attention_mask"][j, :n] = 1
                if types is not None:
                    batch["token_type_ids"][j, :n] = types[r]
            return self._run(batch)

        outs = list(pool.map(run, parts)) if pool is not None else [run(p) for p in parts]
        logits = np.concatenate(outs)
        result = np.empty_like(logits)
        result[order] = logits
        return result

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def format(self, logits: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        from tailorml.recipes.predict import format_for

        return format_for(self.info, logits, top_k)


class TorchPredictor(Predictor):
    runtime = "torch"

    def __init__(self, folder: Path, info: dict[str, Any], threads: int | None = None):
        super().__init__(folder, info, threads)
        import torch

        from tailorml.models.base import load_classifier

        if threads:
            torch.set_num_threads(threads)
        int8_state = info.get("torch_int8_state")
        if int8_state:
            # Saved int8 weights (`tailor compress`): build the fp32 skeleton from config.json,
            # quantize it the same way, then load the stored int8 state (Linear weights at a
            # quarter of their fp32 bytes; embeddings stay fp32).
            from transformers import AutoConfig, AutoModelForSequenceClassification

            config = AutoConfig.from_pretrained(str(folder))
            model = AutoModelForSequenceClassification.from_config(config)
            model.eval()
            model = _quantize_linear(model)
            with warnings.catch_warnings():  # qint8 tensors load through TypedStorage
                warnings.simplefilter("ignore")
                state = torch.load(str(folder / int8_state), weights_only=True)
            model.load_state_dict(state)
        else:
            model = load_classifier(folder)
            model.eval()
            if info.get("torch_dynamic_int8"):
                model = _quantize_linear(model)
        self.model = model
        # inspect.signature follows the decorators' __wrapped__; co_varnames would not.
        self._accepts_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
        if not self._accepts_types:
            inputs.pop("token_type_ids", None)
        with torch.inference_mode():
            return self.model(**inputs).logits.float().numpy()


def _quantize_linear(model: Any) -> Any:
    """PyTorch dynamic int8 of every Linear layer (weights int8, activations quantized per call)."""
    import torch

    with warnings.catch_warnings():  # torch.ao.quantization prints a migration notice
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class OnnxPredictor(Predictor):
    runtime = "onnxruntime"

    def __init__(self, folder: Path, info: dict[str, Any], threads: int | None = None):
        super().__init__(folder, info, threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Spinning threads collapse on shared machines; see DESIGN.md.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        name = info.get("onnx_file", "model.onnx")
        self.session = ort.InferenceSession(
            str(folder / name), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in batch.items() if k in self._inputs}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)


def load_predictor(folder: str | Path, threads: int | None = None) -> Predictor:
    folder = Path(folder)
    if (folder / "model" / "task.json").is_file() and not (folder / "task.json").is_file():
        folder = folder / "model"
    info = read_task(folder)
    runtime = info.get("runtime") or (
        "onnxruntime" if (folder / info.get("onnx_file", "model.onnx")).is_file() else "torch"
    )
    if threads is None and os.environ.get("TAILORML_THREADS"):
        threads = int(os.environ["TAILORML_THREADS"])
    if runtime == "onnxruntime":
        return OnnxPredictor(folder, info, threads)
    return TorchPredictor(folder, info, threads)
