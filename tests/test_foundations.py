"""tailorml.foundations: every hand-written gradient against central finite differences and
against torch autograd (torch only here, never in the package), on random shapes; the optimisers
against torch.optim and the least-squares solution; the sklearn contract of every model.

All in float64, so the tolerances are tight: finite differences agree to ~1e-7 relative, autograd
to ~1e-10. Seconds in all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tailorml.foundations import (
    SGD,
    Adam,
    LinearRegression,
    LogisticRegression,
    MLPClassifier,
    MLPRegressor,
    Network,
    NotFittedError,
    SoftmaxClassifier,
)
from tailorml.foundations.activations import ACTIVATIONS, softmax
from tailorml.foundations.classifiers import logistic_gradient, softmax_gradient
from tailorml.foundations.layers import Dense
from tailorml.foundations.linear import lipschitz, mse_gradient
from tailorml.foundations.losses import binary_cross_entropy, cross_entropy, mse

FD_TOL = 1e-6  # relative: central differences with h = 1e-6 in float64
TORCH_TOL = 1e-10

# Random shapes: rows m, features n, outputs k, and the seed that draws the numbers.
shapes = settings(max_examples=12, deadline=None, derandomize=True)
M, N, K = st.integers(1, 9), st.integers(1, 6), st.integers(2, 5)
SEED = st.integers(0, 2**16)


def numgrad(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to the array x, perturbed in place:
    (f(x + h·e_i) − f(x − h·e_i)) / 2h, error O(h²)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


def close(a: np.ndarray | float, b: np.ndarray | float, tol: float) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    assert np.abs(a - b).max(initial=0.0) <= tol * scale, f"max diff {np.abs(a - b).max()}"


def t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def autograd(loss: torch.Tensor, *leaves: torch.Tensor) -> list[np.ndarray]:
    loss.backward()
    return [x.grad.numpy() for x in leaves]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Losses


@shapes
@given(M, K, SEED)
def test_mse_gradient(m: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for shape in [(m,), (m, k)]:
        pred, y = rng.normal(size=shape), rng.normal(size=shape)
        value, grad = mse(pred, y)
        close(grad, numgrad(lambda p=pred, y=y: mse(p, y)[0], pred), FD_TOL)
        tp = t(pred, grad=True)
        ref = 0.5 * ((tp - t(y)) ** 2).sum() / m  # J = 1/(2m)·Σ(ŷ − y)²
        close(value, ref.item(), TORCH_TOL)
        close(grad, autograd(ref, tp)[0], TORCH_TOL)


@shapes
@given(M, K, SEED)
def test_cross_entropy_gradient(m: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    z, y = rng.normal(scale=3, size=(m, k)), rng.integers(0, k, size=m)
    value, grad = cross_entropy(z, y)
    close(grad, numgrad(lambda: cross_entropy(z, y)[0], z), FD_TOL)
    tz = t(z, grad=True)
    ref = F.cross_entropy(tz, torch.tensor(y))
    close(value, ref.item(), TORCH_TOL)
    close(grad, autograd(ref, tz)[0], TORCH_TOL)


@shapes
@given(M, SEED)
def test_binary_cross_entropy_gradient(m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    z, y = rng.normal(scale=3, size=m), rng.integers(0, 2, size=m).astype(np.float64)
    value, grad = binary_cross_entropy(z, y)
    close(grad, numgrad(lambda: binary_cross_entropy(z, y)[0], z), FD_TOL)
    tz = t(z, grad=True)
    ref = F.binary_cross_entropy_with_logits(tz, t(y))
    close(value, ref.item(), TORCH_TOL)
    close(grad, autograd(ref, tz)[0], TORCH_TOL)


def test_losses_stay_finite_on_huge_logits() -> None:
    z = np.array([[1000.0, -1000.0, 0.0]])
    assert np.isfinite(cross_entropy(z, np.array([1]))[0])
    assert np.isfinite(binary_cross_entropy(np.array([800.0, -800.0]), np.array([0.0, 1.0]))[0])


# ---------------------------------------------------------------------------------------------
# Activations

TORCH_ACT = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": None}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@shapes
@given(M, K, SEED)
def test_activation_derivative(name: str, m: int, k: int, seed: int) -> None:
    act = ACTIVATIONS[name]
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3, size=(m, k))
    z[np.abs(z) < 1e-3] = 0.5  # ReLU has no derivative at 0: keep finite differences off it
    u = rng.normal(size=(m, k))  # a random upstream gradient: L = Σ u ⊙ f(z)
    grad = u * act.derivative(z, act.forward(z))
    close(grad, numgrad(lambda: float((u * act.forward(z)).sum()), z), FD_TOL)
    tz = t(z, grad=True)
    fn = TORCH_ACT[name]
    out = fn(tz) if fn is not None else tz
    close(act.forward(z), out.detach().numpy(), TORCH_TOL)
    close(grad, autograd((t(u) * out).sum(), tz)[0], TORCH_TOL)


def test_sigmoid_and_softmax_are_stable() -> None:
    z = np.array([[-800.0, 0.0, 800.0]])
    assert np.allclose(ACTIVATIONS["sigmoid"].forward(z), [[0.0, 0.5, 1.0]])
    assert np.allclose(softmax(z), [[0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# The dense layer


@shapes
@given(M, N, K, SEED)
def test_dense_layer_backward(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer = Dense(rng.normal(size=(n, k)), rng.normal(size=k))
    X, U = rng.normal(size=(m, n)), rng.normal(size=(m, k))

    def f() -> float:
        return float((layer.forward(X) * U).sum())  # L = Σ U ⊙ (XW + b): dL/dz = U

    layer.forward(X)
    layer.backward(U)
    gX = layer.input_grad(U)
    gW, gb = layer.grad_W.copy(), layer.grad_b.copy()
    close(gW, numgrad(f, layer.W), FD_TOL)
    close(gb, numgrad(f, layer.b), FD_TOL)
    close(gX, numgrad(f, X), FD_TOL)
    tX, tW, tb = t(X, True), t(layer.W, True), t(layer.b, True)
    ref = autograd(((tX @ tW + tb) * t(U)).sum(), tX, tW, tb)
    for mine, theirs in zip([gX, gW, gb], ref, strict=True):
        close(mine, theirs, TORCH_TOL)


def test_dense_backward_before_forward_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before forward"):
        Dense(np.zeros((2, 3)), np.zeros(3)).backward(np.zeros((1, 3)))


# ---------------------------------------------------------------------------------------------
# The whole MLP: backprop through every layer


def torch_loss(net: Network, X: np.ndarray, y: np.ndarray, loss: str, l2: float):  # type: ignore[no-untyped-def]
    """The same network in torch (same weights), autograd's gradients in the order of params."""
    leaves = [t(p, grad=True) for p in net.params]
    a = t(X)
    fn = TORCH_ACT[net.activation.name]
    for i in range(0, len(leaves), 2):
        a = a @ leaves[i] + leaves[i + 1]
        if i + 2 < len(leaves):
            a = fn(a)
    if loss == "mse":
        value = 0.5 * ((a - t(y)) ** 2).sum() / X.shape[0]
    else:
        value = F.cross_entropy(a, torch.tensor(y))
    value = value + 0.5 * l2 * sum((w**2).sum() for w in leaves[::2])
    return value.item(), autograd(value, *leaves)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@shapes
@given(M, N, K, st.lists(st.integers(1, 5), min_size=0, max_size=3), SEED)
def test_mlp_backprop(
    activation: str, loss: str, m: int, n: int, k: int, hidden: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    net = Network.create([n, *hidden, k], activation, rng)
    for p in net.params[1::2]:
        p += rng.normal(scale=0.5, size=p.shape)  # non-zero biases, so their gradients matter
    X = rng.normal(size=(m, n))
    y = rng.normal(size=(m, k)) if loss == "mse" else rng.integers(0, k, size=m)
    l2 = float(rng.choice([0.0, 0.1]))
    value, grads = net.loss_and_gradients(X, y, loss, l2)
    for p, g in zip(net.params, grads, strict=True):
        g = g.copy()
        fd = numgrad(lambda: net.loss_and_gradients(X, y, loss, l2)[0], p)
        if activation == "relu":  # a kink within h of a unit's 0 can spoil one difference
            fd_ok = np.isclose(g, fd, rtol=1e-5, atol=1e-6)
            assert fd_ok.mean() >= 0.95, (g, fd)
        else:
            close(g, fd, FD_TOL)
    ref_value, ref_grads = torch_loss(net, X, y, loss, l2)
    close(value, ref_value, TORCH_TOL)
    for mine, theirs in zip(grads, ref_grads, strict=True):
        close(mine, theirs, TORCH_TOL)


# ---------------------------------------------------------------------------------------------
# Linear, logistic and softmax gradients


@shapes
@given(M, N, SEED)
def test_linear_regression_gradient(m: int, n: int, seed: int) -> None:
    """∇w J = (1/m)·Xᵀ(ŷ − y) for J = 1/(2m)·Σ(ŷ − y)² (docs/foundations.md derives it)."""
    rng = np.random.default_rng(seed)
    X, y, w = rng.normal(size=(m, n)), rng.normal(size=m), rng.normal(size=n)
    b = np.array([rng.normal()])
    loss, gw, gb = mse_gradient(X, y, w, float(b[0]))
    close(gw, numgrad(lambda: mse_gradient(X, y, w, float(b[0]))[0], w), FD_TOL)
    close(gb, numgrad(lambda: mse_gradient(X, y, w, float(b[0]))[0], b)[0], FD_TOL)
    tw, tb = t(w, True), t(b, True)
    ref = ((t(X) @ tw + tb - t(y)) ** 2).sum() / (2 * m)
    close(loss, ref.item(), TORCH_TOL)
    rw, rb = autograd(ref, tw, tb)
    close(gw, rw, TORCH_TOL)
    close(gb, rb[0], TORCH_TOL)
    # The misprints docs/foundations.md corrects are measurably wrong, not equivalent forms.
    r = X @ w + b[0] - y
    if not np.allclose(rw, 0):
        assert not np.allclose((X * X).sum(axis=0) / m, rw)  # x where the residual belongs
        assert not np.allclose(2 * X.T @ r / m, rw)  # a stray factor 2 against the ½
        assert not np.allclose(X.T @ (y - X @ w - b[0]) / m, rw)  # y − ŷ with the − update


@shapes
@given(M, N, SEED)
def test_logistic_gradient(m: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(m, n)), rng.integers(0, 2, size=m).astype(np.float64)
    w, b, l2 = rng.normal(size=n), rng.normal(size=1), 0.3
    loss, gw, gb = logistic_gradient(X, y, w, b, l2)
    close(gw, numgrad(lambda: logistic_gradient(X, y, w, b, l2)[0], w), FD_TOL)
    close(gb, numgrad(lambda: logistic_gradient(X, y, w, b, l2)[0], b), FD_TOL)
    tw, tb = t(w, True), t(b, True)
    ref = F.binary_cross_entropy_with_logits(t(X) @ tw + tb, t(y)) + 0.5 * l2 * (tw**2).sum()
    close(loss, ref.item(), TORCH_TOL)
    for mine, theirs in zip([gw, gb], autograd(ref, tw, tb), strict=True):
        close(mine, theirs, TORCH_TOL)


@shapes
@given(M, N, K, SEED)
def test_softmax_gradient(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(m, n)), rng.integers(0, k, size=m)
    W, b, l2 = rng.normal(size=(n, k)), rng.normal(size=k), 0.3
    loss, gW, gb = softmax_gradient(X, y, W, b, l2)
    close(gW, numgrad(lambda: softmax_gradient(X, y, W, b, l2)[0], W), FD_TOL)
    close(gb, numgrad(lambda: softmax_gradient(X, y, W, b, l2)[0], b), FD_TOL)
    tW, tb = t(W, True), t(b, True)
    ref = F.cross_entropy(t(X) @ tW + tb, torch.tensor(y)) + 0.5 * l2 * (tW**2).sum()
    close(loss, ref.item(), TORCH_TOL)
    for mine, theirs in zip([gW, gb], autograd(ref, tW, tb), strict=True):
        close(mine, theirs, TORCH_TOL)


# ---------------------------------------------------------------------------------------------
# Optimisers


def regression_data(m: int = 80, n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n)) * np.array([1.0, 3.0, 0.5, 2.0])[:n] + 1.0  # uneven scales
    return X, X @ rng.normal(size=n) - 2.0 + 0.1 * rng.normal(size=m)


def test_gradient_descent_converges_to_the_least_squares_solution() -> None:
    X, y = regression_data()
    exact = LinearRegression(solver="lstsq").fit(X, y)
    gd = LinearRegression(solver="gd", tol=1e-10, max_iter=100_000).fit(X, y)
    assert gd.n_iter_ < 100_000  # it stopped on the gradient's norm, not on the budget
    assert np.allclose(gd.coef_, exact.coef_, atol=1e-8)
    assert abs(gd.intercept_ - exact.intercept_) < 1e-8
    assert np.all(np.diff(gd.loss_curve_) <= 1e-15)  # lr = 1/L: the loss never goes up
    theta, *_ = np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)
    assert np.allclose(exact.coef_, theta[:-1]) and np.isclose(exact.intercept_, theta[-1])


def test_gradient_descent_above_two_over_L_diverges_with_a_clear_error() -> None:
    X, y = regression_data()
    with pytest.raises(FloatingPointError, match="Lower lr"):
        LinearRegression(solver="gd", lr=2.5 / lipschitz(X)).fit(X, y)
    ok = LinearRegression(solver="gd", lr=1.9 / lipschitz(X), max_iter=100_000).fit(X, y)
    assert np.allclose(ok.coef_, LinearRegression().fit(X, y).coef_, atol=1e-6)


def _against_torch(mine: SGD | Adam, theirs: type, kwargs: dict, steps: int = 6) -> None:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(3, 4)), rng.normal(size=4)]
    leaves = [t(p.copy(), grad=True) for p in params]
    opt = theirs(leaves, **kwargs)
    for _ in range(steps):
        grads = [rng.normal(size=p.shape) for p in params]  # the same gradients to both
        mine.step(params, grads)
        for leaf, g in zip(leaves, grads, strict=True):
            leaf.grad = t(g)
        opt.step()
        for p, leaf in zip(params, leaves, strict=True):
            close(p, leaf.detach().numpy(), 1e-12)


def test_adam_matches_torch_optim_adam() -> None:
    _against_torch(Adam(lr=0.05, betas=(0.8, 0.99), eps=1e-6), torch.optim.Adam,
                   {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6})  # fmt: skip


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_torch_optim_sgd(momentum: float) -> None:
    _against_torch(SGD(lr=0.1, momentum=momentum), torch.optim.SGD,
                   {"lr": 0.1, "momentum": momentum})  # fmt: skip


def test_logistic_regression_reaches_sklearns_optimum() -> None:
    """The same L2-regularised objective, solved by lbfgs in sklearn: J = mean BCE + λ/2‖w‖² is
    sklearn's C·Σ BCE + ½‖w‖² divided by C·m, so λ = 1/(C·m)."""
    from sklearn.datasets import make_moons
    from sklearn.linear_model import LogisticRegression as SkLogistic

    X, y = make_moons(200, noise=0.3, random_state=0)
    lam = 0.01
    ours = LogisticRegression(lr=1.0, epochs=3000, momentum=0.9, l2=lam).fit(X, y)
    ref = SkLogistic(C=1 / (lam * len(X)), tol=1e-10, max_iter=10_000).fit(X, y)
    assert np.allclose(ours.coef_, ref.coef_[0], atol=1e-5)
    assert np.isclose(ours.intercept_, ref.intercept_[0], atol=1e-5)


def test_softmax_classifier_reaches_sklearns_optimum() -> None:
    from sklearn.datasets import make_blobs
    from sklearn.linear_model import LogisticRegression as SkLogistic

    X, y = make_blobs(150, centers=3, cluster_std=2.5, random_state=0)
    lam = 0.01
    ours = SoftmaxClassifier(lr=0.1, epochs=3000, momentum=0.9, l2=lam).fit(X, y)
    ref = SkLogistic(C=1 / (lam * len(X)), tol=1e-10, max_iter=10_000).fit(X, y)
    # b is only determined up to a constant added to every class: compare probabilities.
    assert np.allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The sklearn contract

MODELS = [
    LinearRegression(),
    LinearRegression(solver="gd"),
    LogisticRegression(),
    SoftmaxClassifier(),
    MLPClassifier(hidden=(8,), epochs=3),
    MLPRegressor(hidden=(8,), epochs=3),
]
IDS = ["lstsq", "gd", "logistic", "softmax", "mlp-classifier", "mlp-regressor"]


def data_for(model: object, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 3))
    if isinstance(model, LinearRegression | MLPRegressor):
        return X, X @ np.array([1.0, -2.0, 0.5]) + 0.3
    labels = np.array(["cat", "dog"]) if isinstance(model, LogisticRegression) else np.arange(3)
    return X, labels[(X[:, 0] > 0).astype(int) + (X[:, 1] > 1) * (len(labels) - 2)]


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_fit_predict_contract(model: object) -> None:
    from sklearn.base import clone

    fresh = clone(model)  # sklearn's clone works: __init__ only stores its arguments
    assert not [k for k in vars(fresh) if k.endswith("_")]
    X, y = data_for(model)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        fresh.predict(X)  # type: ignore[attr-defined]
    before = set(vars(fresh))
    assert fresh.fit(X, y) is fresh  # type: ignore[attr-defined]
    learned = set(vars(fresh)) - before
    assert learned and all(k.endswith("_") for k in learned), learned
    pred = fresh.predict(X)  # type: ignore[attr-defined]
    assert pred.shape == (len(X),)
    if hasattr(fresh, "predict_proba"):
        proba = fresh.predict_proba(X)
        assert proba.shape == (len(X), len(fresh.classes_))
        assert np.allclose(proba.sum(axis=1), 1.0)
        assert set(pred) <= set(fresh.classes_)
        assert np.array_equal(pred, fresh.classes_[proba.argmax(axis=1)])
    again = clone(model).fit(X, y).predict(X)  # type: ignore[attr-defined]
    assert np.array_equal(pred, again)  # seeded: the same fit twice is the same model
    with pytest.raises(ValueError, match="fitted on 3"):
        fresh.predict(X[:, :2])  # type: ignore[attr-defined]


def test_bad_inputs_say_what_to_do() -> None:
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match="reshape"):
        LinearRegression().fit(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="one target a row"):
        LinearRegression().fit(X, np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        LinearRegression().fit(np.full((4, 2), np.nan), np.zeros(4))
    with pytest.raises(ValueError, match="SoftmaxClassifier"):
        LogisticRegression().fit(np.zeros((3, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match="needs 2"):
        SoftmaxClassifier().fit(X, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="optimizer"):
        MLPClassifier(optimizer="rmsprop").fit(X, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(activation="gelu").fit(X, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="solver"):
        LinearRegression(solver="qr").fit(X, np.zeros(4))


def test_mlp_seeds_and_learning() -> None:
    """The seed decides everything (another seed: another model), and the MLP learns a
    non-linear boundary that no linear classifier can."""
    from sklearn.datasets import make_moons

    X, y = make_moons(300, noise=0.15, random_state=0)
    kw = {"hidden": (32,), "epochs": 60, "lr": 0.01, "batch_size": 32}
    a, b = MLPClassifier(**kw, seed=1).fit(X, y), MLPClassifier(**kw, seed=1).fit(X, y)
    assert a.loss_curve_ == b.loss_curve_
    assert not np.array_equal(a.coefs_[0], MLPClassifier(**kw, seed=2).fit(X, y).coefs_[0])
    assert a.loss_curve_[-1] < 0.5 * a.loss_curve_[0]
    assert a.score(X, y) > 0.95 > LogisticRegression(lr=0.5).fit(X, y).score(X, y)
    sgd = MLPClassifier(**{**kw, "lr": 0.1}, optimizer="sgd", momentum=0.9).fit(X, y)
    assert sgd.score(X, y) > 0.95


def test_mlp_regressor_fits_a_curve_and_two_targets() -> None:
    x = np.linspace(-2, 2, 200).reshape(-1, 1)
    Y = np.c_[np.sin(2 * x[:, 0]), x[:, 0] ** 2]
    reg = MLPRegressor(hidden=(32,), activation="tanh", epochs=300, lr=0.01, batch_size=32)
    assert reg.fit(x, Y).predict(x).shape == (200, 2)
    assert reg.score(x, Y) > 0.95
    assert MLPRegressor(hidden=(16,), epochs=2).fit(x, Y[:, 0]).predict(x).shape == (200,)


def test_the_package_imports_no_torch_and_nothing_else_from_tailorml() -> None:
    """numpy only: checked on the source (ast), as tests/test_architecture.py checks layers."""
    import ast
    import sys
    from pathlib import Path

    import tailorml.foundations as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                ok = top == "numpy" or top in sys.stdlib_module_names
                assert ok, f"{path.name} imports {name}: numpy and the standard library only"
    # ... and the engine does not lean on it (teaching code stays free to change).
    engine = Path(pkg.__file__).parents[1]
    users = [
        p.relative_to(engine).as_posix()
        for p in engine.rglob("*.py")
        if "foundations" not in p.parts and "tailorml.foundations" in p.read_text(encoding="utf-8")
    ]
    assert not users, users


def test_a_diverging_fit_stops_with_a_clear_error() -> None:
    X, y = regression_data()
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="lower lr"):
        MLPRegressor(hidden=(8,), optimizer="sgd", lr=1e3, momentum=0.9, epochs=50).fit(X, y)
