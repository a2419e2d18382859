"""Linear regression, two ways: the closed form (least squares) and gradient descent.

Model: ŷ = X·w + b.  Loss, for m rows:  J(w, b) = 1/(2m) · Σ (ŷ − y)².
Gradient (derived step by step in docs/foundations.md):

    ∇w J = (1/m) · Xᵀ (ŷ − y)        ∇b J = (1/m) · Σ (ŷ − y)

Gradient descent steps against it, w ← w − lr·∇w J; on this convex quadratic it converges to
the least-squares solution that `solver="lstsq"` computes directly (a test checks both agree).
"""

from __future__ import annotations

import numpy as np

from .base import Estimator, check_fitted, check_positive, check_X, check_Xy


def mse_gradient(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float
) -> tuple[float, np.ndarray, float]:
    """J = 1/(2m)·Σ(ŷ − y)² and its gradient (∇w J, ∂J/∂b) at (w, b). X (m, n), y (m,), w (n,)."""
    m = X.shape[0]
    residual = X @ w + b - y  # ŷ − y, (m,)
    loss = float(residual @ residual / (2 * m))
    return loss, X.T @ residual / m, float(residual.sum() / m)


class LinearRegression(Estimator):
    """Least squares. solver "lstsq": solve it exactly (numpy.linalg.lstsq on [X, 1]);
    "gd": full-batch gradient descent from zero until the gradient's norm is below `tol`.

    lr None (the default) picks 1/L, L the largest eigenvalue of [X, 1]ᵀ[X, 1]/m: the loss's
    curvature along its steepest direction. Any step below 2/L converges on this quadratic;
    above it, gradient descent diverges (try lr=2.5/L in notebooks/gradient_descent.ipynb).
    """

    def __init__(
        self,
        solver: str = "lstsq",
        lr: float | None = None,
        max_iter: int = 10_000,
        tol: float = 1e-8,
    ) -> None:
        self.solver = solver
        self.lr = lr
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: object, y: object) -> LinearRegression:
        A, t = check_Xy(X, y)
        if t.ndim != 1:
            raise ValueError(f"y has shape {t.shape}: linear regression takes one target (m,).")
        t = t.astype(np.float64)
        self.n_features_in_ = A.shape[1]
        if self.solver == "lstsq":
            Xb = np.hstack([A, np.ones((A.shape[0], 1))])  # the intercept as a column of ones
            theta, *_ = np.linalg.lstsq(Xb, t, rcond=None)
            self.coef_, self.intercept_ = theta[:-1], float(theta[-1])
            self.n_iter_ = 0
            self.loss_curve_ = [mse_gradient(A, t, self.coef_, self.intercept_)[0]]
        elif self.solver == "gd":
            self._fit_gd(A, t)
        else:
            raise ValueError(f"solver = {self.solver!r}: choose 'lstsq' or 'gd'.")
        return self

    def _fit_gd(self, X: np.ndarray, y: np.ndarray) -> None:
        lr = self.lr if self.lr is not None else 1.0 / lipschitz(X)
        check_positive("lr", lr)
        w, b = np.zeros(X.shape[1]), 0.0
        curve = []
        for it in range(1, self.max_iter + 1):
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below
                loss, gw, gb = mse_gradient(X, y, w, b)
            curve.append(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"Gradient descent diverged at step {it} with lr = {lr:g}: the step is "
                    f"above 2/L = {2 / lipschitz(X):g}. Lower lr (or leave it None)."
                )
            if np.sqrt(gw @ gw + gb * gb) < self.tol:
                break
            w, b = w - lr * gw, b - lr * gb  # step against the gradient
        self.coef_, self.intercept_ = w, b
        self.n_iter_ = it
        self.loss_curve_ = curve

    def predict(self, X: object) -> np.ndarray:
        check_fitted(self, "coef_")
        return check_X(X, self.n_features_in_) @ self.coef_ + self.intercept_

    def score(self, X: object, y: object) -> float:
        """R², as sklearn's: 1 − Σ(y − ŷ)² / Σ(y − ȳ)²."""
        t = np.asarray(y, dtype=np.float64)
        r = t - self.predict(X)
        return float(1.0 - (r @ r) / ((t - t.mean()) @ (t - t.mean())))


def lipschitz(X: np.ndarray) -> float:
    """L: the largest eigenvalue of the MSE's Hessian [X, 1]ᵀ[X, 1]/m (w and b together)."""
    Xb = np.hstack([X, np.ones((X.shape[0], 1))])
    return float(np.linalg.eigvalsh(Xb.T @ Xb / X.shape[0])[-1])
