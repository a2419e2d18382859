"""Multi-layer perceptrons with the sklearn interface: MLPClassifier (softmax output,
cross-entropy) and MLPRegressor (linear output, MSE), on network.py's hand-written backprop.

    MLPClassifier(hidden=(128,), activation="relu", optimizer="adam", lr=1e-3,
                  batch_size=128, epochs=10).fit(X, y).predict(X_test)

The same seed gives the same weights and the same batches, so the same model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .activations import softmax
from .base import Estimator, check_fitted, check_X, check_Xy, encode_labels
from .loop import run_epochs
from .network import Network
from .optim import make_optimizer


class _MLP(Estimator):
    _loss = ""

    def __init__(
        self,
        hidden: Sequence[int] = (64,),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        batch_size: int | None = 64,
        epochs: int = 20,
        l2: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.batch_size = batch_size
        self.epochs = epochs
        self.l2 = l2
        self.seed = seed

    def _train(self, X: np.ndarray, y: np.ndarray, n_out: int) -> None:
        rng = np.random.default_rng(self.seed)  # one generator: initial weights, then batches
        net = Network.create([X.shape[1], *self.hidden, n_out], self.activation, rng)
        self.loss_curve_ = run_epochs(
            net.params,
            lambda Xb, yb: net.loss_and_gradients(Xb, yb, self._loss, self.l2),
            X,
            y,
            optimizer=make_optimizer(self.optimizer, self.lr, self.momentum),
            epochs=self.epochs,
            batch_size=self.batch_size,
            rng=rng,
        )
        self.n_features_in_ = X.shape[1]
        self.network_ = net

    def _output(self, X: object) -> np.ndarray:
        check_fitted(self, "network_")
        return self.network_.forward(check_X(X, self.n_features_in_))

    @property
    def coefs_(self) -> list[np.ndarray]:
        check_fitted(self, "network_")
        return [layer.W for layer in self.network_.layers]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        check_fitted(self, "network_")
        return [layer.b for layer in self.network_.layers]


class MLPClassifier(_MLP):
    _loss = "cross_entropy"

    def fit(self, X: object, y: object) -> MLPClassifier:
        A, t = check_Xy(X, y)
        self.classes_, idx = encode_labels(t)
        self._train(A, idx, len(self.classes_))
        return self

    def predict_proba(self, X: object) -> np.ndarray:
        """(m, k), columns in the order of classes_."""
        return softmax(self._output(X))

    def predict(self, X: object) -> np.ndarray:
        best = self._output(X).argmax(axis=1)  # checks it is fitted first
        return self.classes_[best]

    def score(self, X: object, y: object) -> float:
        """Accuracy."""
        return float((self.predict(X) == np.asarray(y)).mean())


class MLPRegressor(_MLP):
    _loss = "mse"

    def fit(self, X: object, y: object) -> MLPRegressor:
        A, t = check_Xy(X, y)
        if t.ndim not in (1, 2):
            raise ValueError(f"y has shape {t.shape}: give (m,) or (m, k) targets.")
        t = t.astype(np.float64)
        T = t.reshape(len(t), -1)  # (m, k); one target is k = 1
        self._train(A, T, T.shape[1])
        self.y_ndim_ = t.ndim
        return self

    def predict(self, X: object) -> np.ndarray:
        """(m,) for a one-column y, else (m, k)."""
        out = self._output(X)
        return out[:, 0] if self.y_ndim_ == 1 else out

    def score(self, X: object, y: object) -> float:
        """R² averaged over targets (sklearn's default)."""
        t = np.asarray(y, dtype=np.float64).reshape(len(np.asarray(y)), -1)
        p = self.predict(X).reshape(t.shape)
        r2 = 1.0 - ((t - p) ** 2).sum(axis=0) / ((t - t.mean(axis=0)) ** 2).sum(axis=0)
        return float(r2.mean())
