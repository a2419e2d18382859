"""Activation functions and their derivatives, elementwise.

Each activation is a pair: `forward(z) -> a` and `derivative(z, a) -> da/dz`. Backpropagation
through an activation multiplies the incoming gradient by the derivative (chain rule, elementwise):

    dL/dz = dL/da * da/dz

The derivative takes both z and a because some are cheapest from the output: σ'(z) = a(1 − a),
tanh'(z) = 1 − a², while ReLU's needs the input: 1 where z > 0, else 0 (0 at z = 0, as torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z), computed without overflow for large |z|."""
    out = np.empty_like(z, dtype=np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])  # z < 0: e^z <= 1, no overflow
    out[~pos] = ez / (1.0 + ez)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (m, k) scores; subtracting the row maximum changes nothing but
    keeps exp() from overflowing."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax(z), row-wise, stable: z − max − log Σ exp(z − max)."""
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Activation:
    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (z, a) -> da/dz


RELU = Activation(
    "relu",
    forward=lambda z: np.maximum(z, 0.0),
    derivative=lambda z, a: (z > 0).astype(z.dtype),
)
SIGMOID = Activation("sigmoid", forward=sigmoid, derivative=lambda z, a: a * (1.0 - a))
TANH = Activation("tanh", forward=np.tanh, derivative=lambda z, a: 1.0 - a * a)
IDENTITY = Activation("identity", forward=lambda z: z, derivative=lambda z, a: np.ones_like(z))

ACTIVATIONS = {a.name: a for a in (RELU, SIGMOID, TANH, IDENTITY)}


def get_activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation = {name!r}: choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]
