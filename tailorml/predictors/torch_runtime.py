"""Run a Hugging Face weights folder on torch (fp32, dynamic int8, structurally pruned)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np

from tailorml.predictors.base import Predictor
from tailorml.tasks.folder import ModelInfo


class TorchPredictor(Predictor):
    """`config.json` + `model.safetensors`. task.json's `"torch_dynamic_int8": true` quantizes the
    Linear layers on load; `"torch_int8_state": FILE` reads saved int8 weights instead (written by
    `tailor compress`; no fp32 safetensors needed)."""

    runtime = "torch"

    def __init__(self, model: ModelInfo, threads: int | None = None):
        super().__init__(model, threads)
        import torch

        from tailorml.models.classifier import load_classifier

        if threads:
            torch.set_num_threads(threads)
        folder, info = model.folder, model.raw
        int8_state = info.get("torch_int8_state")
        if int8_state:
            # Build the fp32 skeleton from config.json, quantize it the same way, then load the
            # stored int8 state (Linear weights at a quarter of their fp32 bytes).
            from transformers import AutoConfig

            from tailorml.models.pooling import classifier_from_config

            config = AutoConfig.from_pretrained(str(folder))
            net = classifier_from_config(config)
            net.eval()
            net = quantize_linear(net)
            with warnings.catch_warnings():  # qint8 tensors load through TypedStorage
                warnings.simplefilter("ignore")
                state = torch.load(str(folder / int8_state), weights_only=True)
            net.load_state_dict(state)
        else:
            net = load_classifier(folder)
            net.eval()
            if info.get("torch_dynamic_int8"):
                net = quantize_linear(net)
        self.model = net
        # inspect.signature follows the decorators' __wrapped__; co_varnames would not.
        params = inspect.signature(net.forward).parameters
        self._inputs = {k for k in ("input_ids", "attention_mask", "token_type_ids") if k in params}

    def _run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        inputs = {k: torch.from_numpy(v) for k, v in batch.items() if k in self._inputs}
        with torch.inference_mode():
            return self.model(**inputs).logits.float().numpy()


def quantize_linear(model: Any) -> Any:
    """PyTorch dynamic int8 of every Linear layer (weights int8, activations quantized per call)."""
    import torch

    with warnings.catch_warnings():  # torch.ao.quantization prints a migration notice
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
