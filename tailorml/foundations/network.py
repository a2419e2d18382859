"""A multi-layer perceptron as a stack of dense layers, with backpropagation written out.

    forward:   a₀ = X
               zᵢ = aᵢ₋₁·Wᵢ + bᵢ,   aᵢ = f(zᵢ)          hidden layers (f: relu, sigmoid, tanh)
               out = a_{L-1}·W_L + b_L                 the last layer has no activation: it
                                                       gives logits (cross-entropy) or values (MSE)
    backward:  G = dJ/d out                            from the loss (losses.py)
               for each layer, last to first:
                   grads of W, b from G (layers.py)
                   unless it is the first layer:
                       G ← (G·Wᵀ) ⊙ f'(z) of the layer below  (chain rule through f)

L2 adds λ/2·Σ‖Wᵢ‖² to the loss and λ·Wᵢ to each weight gradient (biases are not regularised).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .activations import Activation, get_activation
from .layers import Dense
from .losses import cross_entropy, mse

LOSSES = {"mse": mse, "cross_entropy": cross_entropy}


class Network:
    def __init__(self, layers: list[Dense], activation: str = "relu") -> None:
        if not layers:
            raise ValueError("A network needs at least one layer.")
        self.layers = layers
        self.activation: Activation = get_activation(activation)
        self._cache: list[tuple[np.ndarray, np.ndarray]] = []  # (z, a) of each hidden layer

    @classmethod
    def create(cls, sizes: Sequence[int], activation: str, rng: np.random.Generator) -> Network:
        """sizes = (n_in, hidden..., n_out), e.g. (784, 128, 10)."""
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes = {tuple(sizes)}: give (n_in, [hidden...,] n_out), all >= 1.")
        act = get_activation(activation).name
        layers = [Dense.create(a, b, act, rng) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        return cls(layers, act)

    def forward(self, X: np.ndarray) -> np.ndarray:
        self._cache = []
        a = X
        for layer in self.layers[:-1]:
            z = layer.forward(a)
            a = self.activation.forward(z)
            self._cache.append((z, a))
        return self.layers[-1].forward(a)  # (m, n_out)

    def backward(self, G: np.ndarray) -> None:
        """G = dJ/d(output), (m, n_out); fills every layer's grad_W and grad_b."""
        for i in range(len(self.layers) - 1, -1, -1):
            self.layers[i].backward(G)
            if i > 0:  # the first layer's input is the data: no gradient to pass down
                z, a = self._cache[i - 1]
                G = self.layers[i].input_grad(G) * self.activation.derivative(z, a)

    def loss_and_gradients(
        self, X: np.ndarray, y: np.ndarray, loss: str, l2: float = 0.0
    ) -> tuple[float, list[np.ndarray]]:
        """One forward and backward pass: (J, gradients in the order of `params`)."""
        value, G = LOSSES[loss](self.forward(X), y)
        self.backward(G)
        grads = []
        for layer in self.layers:
            value += 0.5 * l2 * float((layer.W * layer.W).sum())
            grads += [layer.grad_W + l2 * layer.W, layer.grad_b]
        return value, grads

    @property
    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params]
