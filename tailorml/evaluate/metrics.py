"""Metric functions over predictions and gold labels; each task (tailorml/tasks/) picks its own."""

from __future__ import annotations

from typing import Any

import numpy as np

LOWER_IS_BETTER = {"loss", "mse", "mae", "rmse", "perplexity"}


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` beats `old` for `metric` (also `head/mse`, `mean_loss`: the plain metric
    name decides the direction)."""
    if old is None:
        return True
    plain = metric.rsplit("/", 1)[-1].removeprefix("mean_")
    return new < old if plain in LOWER_IS_BETTER else new > old


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _per_class(names: list[str], p: Any, r: Any, f: Any, s: Any) -> dict[str, dict[str, float]]:
    return {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(names)
    }


def classification_metrics(pred: np.ndarray, gold: np.ndarray, names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float((pred == gold).mean()),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, pred, labels=ids, average="weighted", zero_division=0)),
        "per_class": _per_class(names, p, r, f, s),
        "confusion_matrix": confusion_matrix(gold, pred, labels=ids).tolist(),
        "labels": names,
        "n": int(len(gold)),
    }


def multilabel_metrics(pred: np.ndarray, gold: np.ndarray, names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(gold, pred, zero_division=0)
    return {
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "subset_accuracy": float((pred == gold).all(axis=1).mean()),
        "per_class": _per_class(names, p, r, f, s),
        "labels": names,
        "n": int(len(gold)),
    }


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
    err = pred - gold
    mse = float(np.mean(err**2))
    var = float(np.var(gold))
    if len(gold) > 1 and np.std(pred) > 0 and np.std(gold) > 0:
        pearson = float(np.corrcoef(pred, gold)[0, 1])
    else:
        pearson = 0.0
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - mse / var) if var > 0 else 0.0,
        "pearson": pearson,
        "n": int(len(gold)),
    }


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "n"}
