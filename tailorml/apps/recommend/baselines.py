"""Baselines on the interaction matrix, sklearn-style (`fit(X)` returns self; learned state ends
in `_`; `score(hist, seqs)` ranks every item for each history row).

- Popularity: training events per item.
- ItemKNN: cosine similarity between item columns, `neighbours` kept per item.
- EASE (Steck 2019): B = I - P / diag(P), P = (X'X + λI)^-1, zero diagonal; one inverse.
- Implicit ALS (Hu, Koren, Volinsky 2008): confidence 1 + α on observed pairs; users are folded
  in from their history at scoring time, so a history the model never saw is scored too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from tailorml.errors import TailorError


class _Fitted:
    def _check(self, attr: str) -> Any:
        value = getattr(self, attr, None)
        if value is None:
            raise TailorError(f"{type(self).__name__} is not fitted: call fit(X) first.")
        return value


class Popularity(_Fitted):
    name = "pop"

    def fit(self, x: sp.csr_matrix) -> Popularity:
        self.counts_ = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
        return self

    def score(self, hist: sp.csr_matrix, seqs: Any = None, times: Any = None) -> np.ndarray:
        counts = self._check("counts_")
        return np.broadcast_to(counts, (hist.shape[0], len(counts))).copy()


class ItemKNN(_Fitted):
    name = "itemknn"

    def __init__(self, neighbours: int = 100):
        self.neighbours = neighbours

    def fit(self, x: sp.csr_matrix) -> ItemKNN:
        xc = sp.csc_matrix(x, dtype=np.float32)
        norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel())
        norms[norms == 0] = 1.0
        xn = xc @ sp.diags(1.0 / norms).astype(np.float32)
        sim = sp.csr_matrix(xn.T @ xn)
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        self.sim_ = _keep_top(sim, self.neighbours)
        return self

    def score(self, hist: sp.csr_matrix, seqs: Any = None, times: Any = None) -> np.ndarray:
        sim = self._check("sim_")
        return np.asarray((hist @ sim).todense())


def _keep_top(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's k largest entries (the rest dropped)."""
    indptr, data, indices = m.indptr, m.data, m.indices
    keep = np.zeros(len(data), dtype=bool)
    for r in range(m.shape[0]):
        s, e = indptr[r], indptr[r + 1]
        if e - s <= k:
            keep[s:e] = True
        else:
            keep[s + np.argpartition(-data[s:e], k - 1)[:k]] = True
    rows = np.repeat(np.arange(m.shape[0]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (rows[keep], indices[keep])), shape=m.shape)


class EASE(_Fitted):
    name = "ease"

    def __init__(self, lam: float = 200.0):
        self.lam = lam

    def fit(self, x: sp.csr_matrix) -> EASE:
        n = x.shape[1]
        active = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)
        xa = x[:, active].astype(np.float32)
        # float32: the diagonal (>= λ) keeps the system well conditioned; half float64's time.
        g = np.asarray((xa.T @ xa).todense(), dtype=np.float32)
        g[np.diag_indices_from(g)] += self.lam
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self.active_ = active
        self.b_ = b.astype(np.float32)
        self.n_items_ = n
        return self

    def score(self, hist: sp.csr_matrix, seqs: Any = None, times: Any = None) -> np.ndarray:
        b = self._check("b_")
        out = np.zeros((hist.shape[0], self.n_items_), dtype=np.float32)
        out[:, self.active_] = hist[:, self.active_] @ b
        return out


class ImplicitALS(_Fitted):
    name = "als"

    def __init__(
        self,
        factors: int = 64,
        reg: float = 10.0,
        alpha: float = 10.0,
        iterations: int = 10,
        seed: int = 0,
    ):
        self.factors, self.reg, self.alpha = factors, reg, alpha
        self.iterations, self.seed = iterations, seed

    def _solve(self, x: sp.csr_matrix, y: np.ndarray) -> np.ndarray:
        """Least-squares factors of the rows of x given the other side's factors y."""
        f = y.shape[1]
        yty = y.T @ y
        out = np.zeros((x.shape[0], f), dtype=np.float64)
        eye = self.reg * np.eye(f)
        for s in range(0, x.shape[0], 1024):
            rows = range(s, min(s + 1024, x.shape[0]))
            a = np.empty((len(rows), f, f))
            b = np.zeros((len(rows), f))
            for j, r in enumerate(rows):
                idx = x.indices[x.indptr[r] : x.indptr[r + 1]]
                yu = y[idx]
                a[j] = yty + self.alpha * (yu.T @ yu) + eye
                b[j] = (1.0 + self.alpha) * yu.sum(axis=0)
            out[s : s + len(rows)] = np.linalg.solve(a, b[..., None])[..., 0]
        return out

    def fit(self, x: sp.csr_matrix) -> ImplicitALS:
        rng = np.random.default_rng(self.seed)
        x = sp.csr_matrix(x)
        xt = sp.csr_matrix(x.T)
        items = rng.normal(0, 0.01, (x.shape[1], self.factors))
        for _ in range(self.iterations):
            users = self._solve(x, items)
            items = self._solve(xt, users)
        self.items_ = items.astype(np.float32)
        return self

    def score(self, hist: sp.csr_matrix, seqs: Any = None, times: Any = None) -> np.ndarray:
        items = self._check("items_")
        users = self._solve(sp.csr_matrix(hist), items.astype(np.float64))
        return (users @ items.T).astype(np.float32)
