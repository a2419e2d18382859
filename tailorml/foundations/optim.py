"""Optimisers: update a list of parameter arrays in place, given their gradients.

Both follow torch.optim's update rules exactly (the tests compare them step by step):

    SGD with momentum μ:   v ← μ·v + g            p ← p − lr·v          (μ = 0: plain GD)
    Adam:                  m ← β1·m + (1 − β1)·g   v ← β2·v + (1 − β2)·g²
                           m̂ = m / (1 − β1ᵗ)       v̂ = v / (1 − β2ᵗ)
                           p ← p − lr · m̂ / (√v̂ + ε)

L2 regularisation is not here: the models add λ·W to the weights' gradient (the gradient of
λ/2·‖W‖² in the loss), which is what torch's `weight_decay` does for SGD and Adam alike.
"""

from __future__ import annotations

import numpy as np

from .base import check_positive


class SGD:
    def __init__(self, lr: float = 0.01, momentum: float = 0.0) -> None:
        check_positive("lr", lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum = {momentum}: it must be in [0, 1).")
        self.lr, self.momentum = lr, momentum
        self._velocity: list[np.ndarray] | None = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if self.momentum == 0.0:
            for p, g in zip(params, grads, strict=True):
                p -= self.lr * g
            return
        if self._velocity is None:  # torch starts the buffer at the first gradient
            self._velocity = [g.copy() for g in grads]
        else:
            for v, g in zip(self._velocity, grads, strict=True):
                v *= self.momentum
                v += g
        for p, v in zip(params, self._velocity, strict=True):
            p -= self.lr * v


class Adam:
    def __init__(
        self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        check_positive("lr", lr)
        check_positive("eps", eps)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas = {betas}: each must be in [0, 1).")
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self._m: list[np.ndarray] | None = None
        self._v: list[np.ndarray] | None = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        b1, b2 = self.betas
        if self._m is None or self._v is None:
            self._m = [np.zeros_like(p) for p in params]
            self._v = [np.zeros_like(p) for p in params]
        self.t += 1
        c1, c2 = 1.0 - b1**self.t, 1.0 - b2**self.t  # bias corrections: m, v start at 0
        for p, g, m, v in zip(params, grads, self._m, self._v, strict=True):
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def make_optimizer(name: str, lr: float, momentum: float = 0.0) -> SGD | Adam:
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum)
    if name == "adam":
        return Adam(lr=lr)
    raise ValueError(f"optimizer = {name!r}: choose 'sgd' (with momentum) or 'adam'.")
