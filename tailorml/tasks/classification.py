"""Single-label classification: one class per text (softmax, cross-entropy).

Also the base of pair classification (`tailorml/tasks/pair.py`): the same task on text pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorml.data.examples import canonical_label, outside_names
from tailorml.evaluate.metrics import classification_metrics, softmax
from tailorml.tasks import register
from tailorml.tasks.base import SEQUENCE_CLASSIFIER
from tailorml.tasks.vocab import (
    ClassPrediction,
    api_scores,
    keyword_rows,
    names_of,
    top_k,
    vocabulary,
)

if TYPE_CHECKING:
    import torch

    from tailorml.config.schema import DataConfig
    from tailorml.tasks.heads import HeadSpec

Rows = tuple[list[dict[str, Any]], dict[str, Any]]


def _text_rows(n: int, seed: int) -> Rows:
    return [{"text": t, "label": y} for t, y in keyword_rows(n, seed)], {}


class ClassificationTask:
    family = SEQUENCE_CLASSIFIER
    problem_type = "single_label_classification"
    has_labels = True
    stratify = True
    min_labels = 2
    metrics = ("loss", "accuracy", "macro_f1", "weighted_f1")
    default_metric = "accuracy"
    label_help = "one class name (or an integer id named by data.label_names) per row"
    api_model = ClassPrediction

    def __init__(
        self,
        name: str = "classification",
        pair: bool = False,
        description: str = "one class per text",
        examples: Callable[[int, int], Rows] = _text_rows,
    ):
        self.name = name
        self.pair = pair
        self.description = description
        self._examples = examples

    def config_problems(self, prefix: str, data: dict[str, Any]) -> list[str]:
        if self.pair and not data.get("text_pair_column"):
            return [
                f"`{prefix}task.type` is {self.name} but `{prefix}data.text_pair_column` is not "
                "set. Name the column that holds the second text."
            ]
        return []

    def infer_labels(self, values: Iterable[Any], d: DataConfig) -> list[str]:
        return vocabulary(values, d)

    def parse_label(
        self, value: Any, d: DataConfig, index: dict[str, int], role: str
    ) -> tuple[Any, str | None]:
        key = canonical_label(value, d.label_names)
        declared = outside_names(key, d.label_names)
        if declared:
            return None, declared
        if key not in index:
            return None, f"label {key!r} in {role} was not seen in train"
        return index[key], None

    def balance(self, ys: list[Any], labels: list[str] | None) -> dict[str, int]:
        counts = np.bincount(np.asarray(ys, dtype=np.int64), minlength=len(labels or []))
        return {name: int(counts[i]) for i, name in enumerate(labels or [])}

    def example_rows(self, n: int, seed: int) -> Rows:
        return self._examples(n, seed)

    def head_size(self, labels: list[str] | None) -> int:
        return len(labels or [])

    def label_tensor(self, ys: list[Any], size: int) -> torch.Tensor:
        import torch

        return torch.tensor(ys, dtype=torch.long)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), targets, reduction="none")

    def compute_metrics(
        self, logits: np.ndarray, ys: list[Any], labels: list[str] | None
    ) -> dict[str, Any]:
        gold = np.asarray(ys, dtype=np.int64)
        return classification_metrics(logits.argmax(-1), gold, labels or [])

    def format(self, logits: np.ndarray, head: HeadSpec, top_k_: int) -> list[dict[str, Any]]:
        return top_k(softmax(logits), names_of(head.labels, logits.shape[1]), top_k_)

    def api_item(self, pred: dict[str, Any]) -> dict[str, Any]:
        return api_scores(pred)

    def agreement(self, ref: np.ndarray, got: np.ndarray, head: HeadSpec) -> float:
        return float((ref.argmax(-1) == got.argmax(-1)).mean()) if len(ref) else 1.0


TASK = register(ClassificationTask())
