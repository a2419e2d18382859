"""Losses, each returning (value, gradient with respect to the model's output).

Conventions (the same everywhere in this package and in docs/foundations.md), for m rows:

    mse(ŷ, y)               J = 1/(2m) · Σ (ŷ − y)²          dJ/dŷ = (ŷ − y) / m
    cross_entropy(z, y)     J = −1/m · Σ log softmax(z)[y]    dJ/dz = (softmax(z) − onehot(y)) / m
    binary_cross_entropy    J = 1/m · Σ [log(1 + e^z) − y·z]  dJ/dz = (σ(z) − y) / m

The ½ in the MSE cancels the 2 that differentiating the square brings down, so the gradient is
the plain residual over m (no stray factor 2). Cross-entropy takes logits z, not
probabilities: softmax and the log fused are exact and stable, and their joint gradient is the
simple "probabilities minus one-hot". Multi-output MSE sums over outputs and averages over rows.
"""

from __future__ import annotations

import numpy as np

from .activations import log_softmax, sigmoid, softmax


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """pred and target of the same shape, (m,) or (m, k)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape.")
    m = pred.shape[0]
    r = pred - target  # the residual ŷ − y
    return float((r * r).sum() / (2 * m)), r / m


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """logits (m, k) scores; y (m,) class indices in [0, k)."""
    m, k = logits.shape
    if y.shape != (m,) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"y must be {m} class indices in [0, {k}); got shape {y.shape}.")
    rows = np.arange(m)
    value = -log_softmax(logits)[rows, y].sum() / m
    grad = softmax(logits)
    grad[rows, y] -= 1.0
    return float(value), grad / m


def binary_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """logits (m,) scores; y (m,) in {0, 1}. Two-class cross-entropy with one logit a row:
    log(1 + e^z) − y·z is −[y log σ(z) + (1 − y) log(1 − σ(z))] written without σ's rounding."""
    if logits.shape != y.shape:
        raise ValueError(f"logits {logits.shape} and y {y.shape} differ in shape.")
    m = logits.shape[0]
    softplus = np.logaddexp(0.0, logits)  # log(1 + e^z), stable for large |z|
    value = (softplus - y * logits).sum() / m
    return float(value), (sigmoid(logits) - y) / m
