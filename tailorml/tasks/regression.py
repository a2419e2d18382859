"""Regression: one number per text (mean squared error)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from tailorml.evaluate.metrics import regression_metrics
from tailorml.tasks import register
from tailorml.tasks.base import SEQUENCE_CLASSIFIER
from tailorml.tasks.vocab import keyword_rows

if TYPE_CHECKING:
    import torch

    from tailorml.config.schema import DataConfig
    from tailorml.tasks.heads import HeadSpec

# Two predictions agree when they differ by less than this share of the reference's spread.
AGREE_STD_SHARE = 0.05


class ValuePrediction(BaseModel):
    value: float = Field(description="Predicted value.")


class RegressionTask:
    name = "regression"
    description = "one number per text"
    family = SEQUENCE_CLASSIFIER
    problem_type = "regression"
    pair = False
    has_labels = False
    stratify = False
    min_labels = 0
    metrics = ("loss", "mse", "mae", "rmse", "r2", "pearson")
    default_metric = "mse"
    label_help = "a finite number per row"
    api_model = ValuePrediction

    def config_problems(self, prefix: str, data: dict[str, Any]) -> list[str]:
        if data.get("label_names") is not None:
            return [
                f"`{prefix}data.label_names` is set but `{prefix}task.type` is regression. "
                "Remove label_names."
            ]
        return []

    def infer_labels(self, values: Iterable[Any], d: DataConfig) -> None:
        return None

    def parse_label(
        self, value: Any, d: DataConfig, index: dict[str, int], role: str
    ) -> tuple[Any, str | None]:
        try:
            y = float(value)
        except (TypeError, ValueError):
            return None, f"label {value!r} is not a number"
        if not np.isfinite(y):
            return None, f"label {value!r} is not a finite number"
        return y, None

    def balance(self, ys: list[Any], labels: list[str] | None) -> dict[str, int]:
        return {}

    def example_rows(self, n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        score = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
        return [{"text": t, "label": score[y]} for t, y in keyword_rows(n, seed)], {}

    def head_size(self, labels: list[str] | None) -> int:
        return 1

    def label_tensor(self, ys: list[Any], size: int) -> torch.Tensor:
        import torch

        return torch.tensor(ys, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.mse_loss(logits.reshape(-1).float(), targets.float(), reduction="none")

    def compute_metrics(
        self, logits: np.ndarray, ys: list[Any], labels: list[str] | None
    ) -> dict[str, Any]:
        return regression_metrics(logits.reshape(-1), np.asarray(ys, dtype=np.float64))

    def format(self, logits: np.ndarray, head: HeadSpec, top_k: int) -> list[dict[str, Any]]:
        return [{"value": float(v)} for v in logits.reshape(-1)]

    def api_item(self, pred: dict[str, Any]) -> dict[str, Any]:
        return {"value": pred["value"]}

    def agreement(self, ref: np.ndarray, got: np.ndarray, head: HeadSpec) -> float:
        if not len(ref):
            return 1.0
        ref, got = ref.reshape(-1), got.reshape(-1)
        tol = AGREE_STD_SHARE * max(float(ref.std()), 1e-6)
        return float((np.abs(ref - got) <= tol).mean())


TASK = register(RegressionTask())
