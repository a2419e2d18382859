"""What every foundations model shares: the sklearn contract, input checks, mini-batches.

The contract (as sklearn's): `__init__` only stores its arguments; `fit` checks the data, learns,
and returns `self`; everything learned ends in `_` (`coef_`, `classes_`, `loss_curve_`);
`predict` before `fit` raises `NotFittedError`. Randomness comes from one seeded
`numpy.random.Generator` made in `fit`, so two fits with the same seed give the same model.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import numpy as np


class NotFittedError(ValueError, AttributeError):
    """`predict` (or `predict_proba`, `score`) before `fit`; sklearn's has the same bases."""


class Estimator:
    """get_params/set_params read and write the constructor's arguments (so sklearn's `clone`,
    `GridSearchCV` and `Pipeline` accept these models)."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = inspect.signature(type(self).__init__).parameters
        return {n: getattr(self, n) for n in names if n != "self"}

    def set_params(self, **params: Any) -> Estimator:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"{name!r} is not a parameter of {type(self).__name__}: {sorted(valid)}."
                )
            setattr(self, name, value)
        return self


def check_fitted(model: object, attr: str) -> None:
    if not hasattr(model, attr):
        raise NotFittedError(
            f"This {type(model).__name__} is not fitted yet: call .fit(X, y) before predicting."
        )


def check_X(X: object, n_features: int | None = None) -> np.ndarray:
    """X as a float64 matrix (m rows, n features), finite, with the width `fit` saw."""
    a = np.asarray(X, dtype=np.float64)
    if a.ndim == 1:
        raise ValueError(
            f"X has shape {a.shape}: pass a 2-d array (m rows, n features); "
            "a single feature is X.reshape(-1, 1)."
        )
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"X has shape {a.shape}: pass a 2-d array with at least one row.")
    if not np.isfinite(a).all():
        raise ValueError("X holds NaN or infinite values: clean or impute them first.")
    if n_features is not None and a.shape[1] != n_features:
        raise ValueError(f"X has {a.shape[1]} features; the model was fitted on {n_features}.")
    return a


def check_Xy(X: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    """X (m, n) and y with m rows (y may be (m,) or (m, k))."""
    a = check_X(X)
    t = np.asarray(y)
    if t.shape[0] != a.shape[0]:
        raise ValueError(f"X has {a.shape[0]} rows but y has {t.shape[0]}: give one target a row.")
    return a, t


def encode_labels(y: np.ndarray, at_least: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Class labels of any kind -> (classes_, indices into classes_), as sklearn orders them."""
    if y.ndim != 1:
        raise ValueError(f"y has shape {y.shape}: a classifier takes one label a row (m,).")
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < at_least:
        raise ValueError(f"y holds {len(classes)} class(es): a classifier needs {at_least}.")
    return classes, idx


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} = {value!r}: it must be > 0.")


def minibatches(m: int, batch_size: int | None, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Row indices of one epoch: shuffled, cut into batches (the last may be smaller).
    batch_size None (or >= m) is full-batch gradient descent, in the original order."""
    if batch_size is None or batch_size >= m:
        yield np.arange(m)
        return
    order = rng.permutation(m)
    for start in range(0, m, batch_size):
        yield order[start : start + batch_size]
