"""The training loop every gradient-trained model here shares: epochs of shuffled mini-batches,
one optimiser step per batch.

    for each epoch:
        for each batch (X_b, y_b):
            loss, grads = loss_and_grads(X_b, y_b)   # forward + backward
            optimizer.step(params, grads)            # params updated in place

`params` and the arrays in `grads` line up one to one. The curve records each epoch's mean
training loss (batch losses weighted by batch size), as sklearn's `loss_curve_` does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import minibatches
from .optim import SGD, Adam

LossAndGrads = Callable[[np.ndarray, np.ndarray], tuple[float, list[np.ndarray]]]


def run_epochs(
    params: list[np.ndarray],
    loss_and_grads: LossAndGrads,
    X: np.ndarray,
    y: np.ndarray,
    *,
    optimizer: SGD | Adam,
    epochs: int,
    batch_size: int | None,
    rng: np.random.Generator,
) -> list[float]:
    if epochs < 1:
        raise ValueError(f"epochs = {epochs}: train for at least one epoch.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: use a positive size, or None (full batch).")
    m = X.shape[0]
    curve = []
    for _ in range(epochs):
        total = 0.0
        for idx in minibatches(m, batch_size, rng):
            loss, grads = loss_and_grads(X[idx], y[idx])
            if not np.isfinite(loss):
                raise FloatingPointError(
                    "The training loss became NaN or infinite: lower lr (or scale the features)."
                )
            optimizer.step(params, grads)
            total += loss * len(idx)
        curve.append(total / m)
    return curve
