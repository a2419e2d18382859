"""The fully connected (dense) layer: z = X·W + b, and its backward pass.

Shapes, for a batch of m rows:  X (m, n_in)  W (n_in, n_out)  b (n_out,)  z (m, n_out).

Given G = dL/dz (m, n_out), the chain rule gives, one row at a time summed over the batch:

    dL/dW = Xᵀ · G          (n_in, n_out)   each weight collects input × output-gradient
    dL/db = Σ_rows G        (n_out,)        b is added to every row, so its gradient sums them
    dL/dX = G · Wᵀ          (m, n_in)       handed to the layer below

The loss already divides by m (losses.py), so no 1/m appears here. `backward` fills the
parameters' gradients; `input_grad` is the third line, which the first layer skips (its input
is the data, nothing to learn there, and it would cost as much as the forward pass).
"""

from __future__ import annotations

import numpy as np


def init_weights(n_in: int, n_out: int, activation: str, rng: np.random.Generator) -> np.ndarray:
    """He initialisation for ReLU (variance 2/n_in), Glorot for the saturating ones
    (variance 2/(n_in + n_out)): either keeps activations from shrinking or exploding layer by
    layer at the start of training."""
    fan = n_in if activation == "relu" else (n_in + n_out) / 2
    std = np.sqrt(2.0 / fan)
    return rng.normal(0.0, std, size=(n_in, n_out))


class Dense:
    """One fully connected layer. `forward` keeps its input for `backward`, which fills
    `grad_W` and `grad_b`; `input_grad` gives the gradient for the layer below."""

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        if W.ndim != 2 or b.shape != (W.shape[1],):
            raise ValueError(f"W {W.shape} and b {b.shape}: W is (n_in, n_out), b (n_out,).")
        self.W, self.b = W, b
        self.grad_W = np.zeros_like(W)
        self.grad_b = np.zeros_like(b)
        self._X: np.ndarray | None = None

    @classmethod
    def create(cls, n_in: int, n_out: int, activation: str, rng: np.random.Generator) -> Dense:
        return cls(init_weights(n_in, n_out, activation, rng), np.zeros(n_out))

    def forward(self, X: np.ndarray) -> np.ndarray:
        self._X = X
        return X @ self.W + self.b  # (m, n_out)

    def backward(self, G: np.ndarray) -> None:
        """G = dL/dz (m, n_out) -> grad_W, grad_b."""
        if self._X is None:
            raise RuntimeError("Dense.backward before forward: run forward on the batch first.")
        self.grad_W = self._X.T @ G  # (n_in, n_out)
        self.grad_b = G.sum(axis=0)  # (n_out,)

    def input_grad(self, G: np.ndarray) -> np.ndarray:
        """dL/dX (m, n_in), handed to the layer below."""
        return G @ self.W.T

    @property
    def params(self) -> list[np.ndarray]:
        return [self.W, self.b]

    @property
    def grads(self) -> list[np.ndarray]:
        return [self.grad_W, self.grad_b]
