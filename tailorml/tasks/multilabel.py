"""Multi-label classification: any number of labels per text (sigmoid per label, binary
cross-entropy). A row's labels are a JSON list (jsonl) or names joined by
`data.label_separator` (csv, default `;`); the labels above `multilabel_threshold` (0.5) are
predicted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from tailorml.data.examples import canonical_label, outside_names, split_multi
from tailorml.evaluate.metrics import multilabel_metrics, sigmoid
from tailorml.tasks import register
from tailorml.tasks.base import SEQUENCE_CLASSIFIER
from tailorml.tasks.vocab import ClassPrediction, api_scores, keyword_rows, names_of, top_k

if TYPE_CHECKING:
    import torch

    from tailorml.config.schema import DataConfig
    from tailorml.tasks.heads import HeadSpec


class MultilabelPrediction(ClassPrediction):
    labels: list[str] = Field(description="Every label whose probability is above threshold.")


class MultilabelTask:
    name = "multilabel"
    description = "any number of labels per text"
    family = SEQUENCE_CLASSIFIER
    problem_type = "multi_label_classification"
    pair = False
    has_labels = True
    stratify = False
    min_labels = 1
    metrics = ("loss", "micro_f1", "macro_f1", "subset_accuracy")
    default_metric = "micro_f1"
    label_help = "a JSON list of labels (jsonl) or labels joined by data.label_separator (csv)"
    api_model = MultilabelPrediction

    def config_problems(self, prefix: str, data: dict[str, Any]) -> list[str]:
        return []

    def infer_labels(self, values: Iterable[Any], d: DataConfig) -> list[str]:
        from tailorml.tasks.vocab import vocabulary

        return vocabulary((v for value in values for v in split_multi(value, d.label_separator)), d)

    def parse_label(
        self, value: Any, d: DataConfig, index: dict[str, int], role: str
    ) -> tuple[Any, str | None]:
        keys = [canonical_label(v, d.label_names) for v in split_multi(value, d.label_separator)]
        declared = [r for r in (outside_names(k, d.label_names) for k in keys) if r]
        if declared:
            return None, declared[0]
        unseen = [k for k in keys if k not in index]
        if unseen:
            return None, f"label(s) {unseen} in {role} were not seen in train"
        return sorted({index[k] for k in keys}), None

    def balance(self, ys: list[Any], labels: list[str] | None) -> dict[str, int]:
        counts = np.zeros(len(labels or []), dtype=np.int64)
        for ids in ys:
            counts[ids] += 1
        return {name: int(counts[i]) for i, name in enumerate(labels or [])}

    def example_rows(self, n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # Every other row also carries `market` (its text then says "market" too).
        rows = []
        for i, (text, label) in enumerate(keyword_rows(n, seed)):
            tags = [label, "market"] if i % 2 else [label]
            rows.append({"text": text + (" market" if i % 2 else ""), "label": ";".join(tags)})
        return rows, {}

    def head_size(self, labels: list[str] | None) -> int:
        return len(labels or [])

    def label_tensor(self, ys: list[Any], size: int) -> torch.Tensor:
        import torch

        t = torch.zeros((len(ys), size), dtype=torch.float32)
        for r, ids in enumerate(ys):
            t[r, ids] = 1.0
        return t

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        per = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
        return per.mean(dim=1)

    def _gold(self, ys: list[Any], k: int) -> np.ndarray:
        gold = np.zeros((len(ys), k), dtype=np.int64)
        for r, ids in enumerate(ys):
            gold[r, ids] = 1
        return gold

    def compute_metrics(
        self, logits: np.ndarray, ys: list[Any], labels: list[str] | None
    ) -> dict[str, Any]:
        gold = self._gold(ys, logits.shape[1])
        return multilabel_metrics(sigmoid(logits) >= 0.5, gold, labels or [])

    def format(self, logits: np.ndarray, head: HeadSpec, top_k_: int) -> list[dict[str, Any]]:
        probs = sigmoid(logits)
        names = names_of(head.labels, logits.shape[1])
        out = top_k(probs, names, top_k_)
        for item, p in zip(out, probs, strict=True):
            item["labels"] = [names[i] for i in np.flatnonzero(p >= head.multilabel_threshold)]
        return out

    def api_item(self, pred: dict[str, Any]) -> dict[str, Any]:
        return {**api_scores(pred), "labels": pred["labels"]}

    def agreement(self, ref: np.ndarray, got: np.ndarray, head: HeadSpec) -> float:
        """Rows whose predicted label set is the same."""
        t = head.multilabel_threshold
        same = ((sigmoid(ref) >= t) == (sigmoid(got) >= t)).all(axis=1)
        return float(same.mean()) if len(ref) else 1.0


TASK = register(MultilabelTask())
