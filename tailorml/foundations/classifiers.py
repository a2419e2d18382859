"""Linear classifiers trained by gradient descent: logistic regression (two classes, one score a
row) and the softmax classifier (k classes, k scores a row; multinomial logistic regression).

    logistic:  z = X·w + b (m,)     p = σ(z)           J = BCE(z, y) + λ/2·‖w‖²
               ∇w J = Xᵀ(σ(z) − y)/m + λw              ∂J/∂b = Σ(σ(z) − y)/m
    softmax:   Z = X·W + b (m, k)   P = softmax(Z)      J = CE(Z, y) + λ/2·‖W‖²
               ∇W J = Xᵀ(P − Y)/m + λW                 ∇b J = Σ_rows (P − Y)/m

(Y the one-hot labels). The same shape as linear regression's gradient, with the residual
ŷ − y taken on probabilities. The bias is not regularised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .activations import sigmoid, softmax
from .base import Estimator, check_fitted, check_X, check_Xy, encode_labels
from .loop import run_epochs
from .losses import binary_cross_entropy, cross_entropy
from .optim import make_optimizer


def logistic_gradient(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, l2: float = 0.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """X (m, n), y (m,) in {0, 1}, w (n,), b (1,) -> (J, ∇w J, ∇b J)."""
    loss, g = binary_cross_entropy(X @ w + b[0], y)  # g = (σ(z) − y)/m
    return loss + 0.5 * l2 * float(w @ w), X.T @ g + l2 * w, np.array([g.sum()])


def softmax_gradient(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, l2: float = 0.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """X (m, n), y (m,) class indices, W (n, k), b (k,) -> (J, ∇W J, ∇b J)."""
    loss, G = cross_entropy(X @ W + b, y)  # G = (P − Y)/m, (m, k)
    return loss + 0.5 * l2 * float((W * W).sum()), X.T @ G + l2 * W, G.sum(axis=0)


GradFn = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, float], tuple[float, np.ndarray, np.ndarray]
]


class _LinearClassifier(Estimator):
    # Set by fit (annotations only: hasattr stays False until then).
    classes_: np.ndarray
    coef_: np.ndarray
    intercept_: float | np.ndarray
    n_features_in_: int

    def __init__(
        self,
        lr: float = 0.1,
        epochs: int = 200,
        batch_size: int | None = None,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        l2: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.momentum = momentum
        self.l2 = l2
        self.seed = seed

    def _train(
        self, X: np.ndarray, y: np.ndarray, params: list[np.ndarray], grad_fn: GradFn
    ) -> None:
        def loss_and_grads(Xb: np.ndarray, yb: np.ndarray) -> tuple[float, list[np.ndarray]]:
            loss, gw, gb = grad_fn(Xb, yb, params[0], params[1], self.l2)
            return loss, [gw, gb]

        self.loss_curve_ = run_epochs(
            params,
            loss_and_grads,
            X,
            y,
            optimizer=make_optimizer(self.optimizer, self.lr, self.momentum),
            epochs=self.epochs,
            batch_size=self.batch_size,
            rng=np.random.default_rng(self.seed),
        )

    def decision_function(self, X: object) -> np.ndarray:
        """The linear scores X·w + b: (m,) for logistic regression, (m, k) for softmax."""
        check_fitted(self, "coef_")
        return check_X(X, self.n_features_in_) @ self.coef_ + self.intercept_

    def predict_proba(self, X: object) -> np.ndarray:
        raise NotImplementedError  # each classifier turns its scores into probabilities

    def predict(self, X: object) -> np.ndarray:
        best = self.predict_proba(X).argmax(axis=1)  # checks it is fitted first
        return self.classes_[best]

    def score(self, X: object, y: object) -> float:
        """Accuracy."""
        return float((self.predict(X) == np.asarray(y)).mean())


class LogisticRegression(_LinearClassifier):
    """Two classes (any labels; `classes_[1]` is the positive one)."""

    def fit(self, X: object, y: object) -> LogisticRegression:
        A, t = check_Xy(X, y)
        self.classes_, idx = encode_labels(t)
        if len(self.classes_) != 2:
            raise ValueError(
                f"y holds {len(self.classes_)} classes: LogisticRegression takes two; "
                "use SoftmaxClassifier for more."
            )
        self.n_features_in_ = A.shape[1]
        w, b = np.zeros(A.shape[1]), np.zeros(1)  # a convex loss: zeros are a fine start
        self._train(A, idx.astype(np.float64), [w, b], logistic_gradient)
        self.coef_, self.intercept_ = w, float(b[0])
        return self

    def predict_proba(self, X: object) -> np.ndarray:
        """(m, 2): P(classes_[0]), P(classes_[1])."""
        p = sigmoid(self.decision_function(X))
        return np.stack([1.0 - p, p], axis=1)


class SoftmaxClassifier(_LinearClassifier):
    """k >= 2 classes, one linear score each, softmax over them."""

    def fit(self, X: object, y: object) -> SoftmaxClassifier:
        A, t = check_Xy(X, y)
        self.classes_, idx = encode_labels(t)
        self.n_features_in_ = A.shape[1]
        W, b = np.zeros((A.shape[1], len(self.classes_))), np.zeros(len(self.classes_))
        self._train(A, idx, [W, b], softmax_gradient)
        self.coef_, self.intercept_ = W, b
        return self

    def predict_proba(self, X: object) -> np.ndarray:
        """(m, k), rows summing to 1, columns in the order of classes_."""
        return softmax(self.decision_function(X))
