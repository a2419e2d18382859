"""The fusion ranker: re-orders the model's top candidates by a logistic regression over the
model's score and other signals, trained on validation-style targets (each user's validation
item, history = the training events, candidates = the model's top `candidates`).

Features of (history, candidate): the model's cosine score and log rank, log popularity, the
item's age at the user's time (years since its first training event), a no-history flag, genre
match (cosine of the item's genres with the history's last 50), text match (cosine of the item's
text embedding with the mean of the history's last 20), user activity (log history length), and
a collaborative score: the history's sum of the tuned EASE baseline's weights towards the item,
each item's CF_KEEP largest weights kept (a sparse matrix served with the run; 0 without EASE),
and two of order: `next_after_recent`, how often the item came within `sequence_window` events
after each of the user's `sequence_recent` latest items in the training histories (each such
item's share of followers, weighted 1, 1/2, 1/3, ... from the latest; the log of the sum), and
`prev_of_recent`, the same for the events that came before those items.
The weights are plain numbers (ranker.json), no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tailorml.errors import TailorError

FEATURES = (
    "model_score",
    "log_rank",
    "log_popularity",
    "item_age_years",
    "no_history",
    "genre_match",
    "text_match",
    "log_activity",
    "popularity_x_activity",
    "cf_score",
    "next_after_recent",
    "prev_of_recent",
)
CF_KEEP = 200  # largest EASE weights kept per item for the cf_score feature
YEAR = 365.25 * 86400


@dataclass
class ItemStats:
    """What the ranker knows of each item (saved as item_stats.npz)."""

    counts: np.ndarray  # training events
    first_time: np.ndarray  # first training event (nan: none)
    genres: np.ndarray  # (n, g) float32 rows of unit length (zeros: no genre)
    text: np.ndarray  # (n, width) unit-length text embeddings
    cf: sp.csr_matrix | None = None  # (n, n) item-to-item weights (cf_score)
    nxt: sp.csr_matrix | None = None  # (n, n) share of each item's followers (next_after_recent)
    prv: sp.csr_matrix | None = None  # (n, n) share of each item's predecessors (prev_of_recent)
    recent: int = 10  # the user's latest items the two order features read

    @classmethod
    def build(
        cls,
        counts: np.ndarray,
        first_time: np.ndarray,
        genres: list[list[str]],
        text: np.ndarray,
        cf: sp.csr_matrix | None = None,
        nxt: sp.csr_matrix | None = None,
        prv: sp.csr_matrix | None = None,
        recent: int = 10,
    ) -> ItemStats:
        vocab = sorted({g for gs in genres for g in gs})
        return cls(counts, first_time, genre_matrix(genres, vocab), text, cf, nxt, prv, recent)

    def extend(self, genres: np.ndarray, text: np.ndarray) -> ItemStats:
        n = len(text)
        return ItemStats(
            np.r_[self.counts, np.zeros(n, dtype=self.counts.dtype)],
            np.r_[self.first_time, np.full(n, np.nan)],
            np.vstack([self.genres, genres]).astype(np.float32),
            np.vstack([self.text, text]).astype(np.float32),
            None if self.cf is None else _grow(self.cf, len(self.counts) + n),
            None if self.nxt is None else _grow(self.nxt, len(self.counts) + n),
            None if self.prv is None else _grow(self.prv, len(self.counts) + n),
            self.recent,
        )


def _grow(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """m with zero rows and columns added up to n x n (new items have no weights)."""
    indptr = np.r_[m.indptr, np.full(n - m.shape[0], m.indptr[-1])]
    return sp.csr_matrix((m.data, m.indices, indptr), shape=(n, n))


def cf_weights(b: np.ndarray, active: np.ndarray, n: int, keep: int = CF_KEEP) -> sp.csr_matrix:
    """EASE's weights (rows: history item, columns: candidate), each row's `keep` largest."""
    from tailorml.apps.recommend.baselines import _keep_top

    rows = sp.csr_matrix(np.where(b > 0, b, 0).astype(np.float32))
    coo = _keep_top(rows, keep).tocoo()
    return sp.csr_matrix(
        (coo.data, (active[coo.row], active[coo.col])), shape=(n, n), dtype=np.float32
    )


def order_matrices(
    seqs: list[np.ndarray], n: int, window: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The followers' and the predecessors' shares (next_matrix of the sequences, and of the
    sequences reversed)."""
    return next_matrix(seqs, n, window), next_matrix([s[::-1] for s in seqs], n, window)


def next_matrix(seqs: list[np.ndarray], n: int, window: int) -> sp.csr_matrix:
    """(n, n): row i, each item's share of the events that came 1..window steps after item i in
    the sequences (a follower g steps later counts 1/g)."""
    rows, cols, vals = [], [], []
    for s in seqs:
        for g in range(1, min(window, len(s) - 1) + 1):
            rows.append(s[:-g])
            cols.append(s[g:])
            vals.append(np.full(len(s) - g, 1.0 / g, dtype=np.float32))
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    m = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n),
        dtype=np.float32,
    )
    total = np.asarray(m.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.where(total > 0, total, 1.0)) @ m, dtype=np.float32)


def recent_weights(seqs: list[np.ndarray], recent: int, n: int) -> sp.csr_matrix:
    """(users, n): each history's `recent` latest items, weighted 1, 1/2, 1/3, ... from the
    latest (what the order features read)."""
    rows, cols, vals = [], [], []
    for r, s in enumerate(seqs):
        last = np.asarray(s[-recent:][::-1], dtype=np.int64)
        rows.append(np.full(len(last), r))
        cols.append(last)
        vals.append(1.0 / np.arange(1, len(last) + 1, dtype=np.float32))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(seqs), n),
    )


def recent_share(w: sp.csr_matrix, m: sp.csr_matrix, cands: np.ndarray) -> np.ndarray:
    """(users, candidates): log(1e-4 + the weighted sum over the latest items j (`w`:
    recent_weights) of m[j, candidate]) (m: next_matrix, the share of j's followers)."""
    share = np.asarray((w @ m).todense())
    return np.log(1e-4 + np.take_along_axis(share, cands, 1))


def genre_matrix(genres: list[list[str]], vocab: list[str]) -> np.ndarray:
    index = {g: n for n, g in enumerate(vocab)}
    m = np.zeros((len(genres), max(1, len(vocab))), dtype=np.float32)
    for r, gs in enumerate(genres):
        for g in gs:
            if g in index:
                m[r, index[g]] = 1.0
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1.0, norms)


def features(
    stats: ItemStats,
    cands: np.ndarray,
    model_scores: np.ndarray,
    seqs: list[np.ndarray],
    times: np.ndarray,
) -> np.ndarray:
    """(users, candidates, len(FEATURES)) for the candidate items of each history."""
    b, c = cands.shape
    out = np.zeros((b, c, len(FEATURES)), dtype=np.float32)
    out[..., 0] = model_scores
    out[..., 1] = np.log1p(np.arange(c))[None, :]
    logpop = np.log1p(stats.counts[cands])
    out[..., 2] = logpop
    first = stats.first_time[cands]
    age = (times[:, None] - first) / YEAR
    out[..., 3] = np.clip(np.nan_to_num(age, nan=0.0), -5.0, 30.0)
    out[..., 4] = np.isnan(first)
    for r, s in enumerate(seqs):
        g = stats.genres[s[-50:]].mean(axis=0) if len(s) else np.zeros(stats.genres.shape[1])
        t = stats.text[s[-20:]].mean(axis=0) if len(s) else np.zeros(stats.text.shape[1])
        gn, tn = np.linalg.norm(g), np.linalg.norm(t)
        out[r, :, 5] = stats.genres[cands[r]] @ g / gn if gn else 0.0
        out[r, :, 6] = stats.text[cands[r]] @ t / tn if tn else 0.0
    activity = np.log1p(np.array([len(s) for s in seqs], dtype=np.float32))
    out[..., 7] = activity[:, None]
    out[..., 8] = logpop * activity[:, None]
    if stats.cf is not None:
        from tailorml.apps.recommend.evaluate import history_matrix

        cf = np.asarray((history_matrix(seqs, stats.cf.shape[0]) @ stats.cf).todense())
        out[..., 9] = np.take_along_axis(cf, cands, 1)
    if seqs and (stats.nxt is not None or stats.prv is not None):
        w = recent_weights(seqs, stats.recent, len(stats.counts))  # once for both features
        for col, m in ((10, stats.nxt), (11, stats.prv)):
            if m is not None:
                out[..., col] = recent_share(w, m, cands)
    return out


class FusionRanker:
    """sklearn-style: `fit(X, y)` on candidate features; `predict(X)` -> scores."""

    def __init__(self, c: float = 1.0):
        self.c = c
        self.coef_: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> FusionRanker:
        from sklearn.linear_model import LogisticRegression

        self.mean_ = x.mean(axis=0)
        self.std_ = x.std(axis=0) + 1e-6
        lr = LogisticRegression(C=self.c, max_iter=2000)
        lr.fit((x - self.mean_) / self.std_, y)
        self.coef_ = lr.coef_[0].astype(np.float64)
        self.intercept_ = float(lr.intercept_[0])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.coef_ is None:
            raise TailorError("FusionRanker is not fitted: call fit() or load() first.")
        return ((x - self.mean_) / self.std_) @ self.coef_ + self.intercept_

    def to_json(self) -> dict[str, Any]:
        assert self.coef_ is not None
        return {
            "features": list(FEATURES),
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FusionRanker:
        if obj.get("features") != list(FEATURES):
            raise TailorError("ranker.json was written for other features; retrain the run.")
        self = cls()
        self.mean_, self.std_ = np.array(obj["mean"]), np.array(obj["std"])
        self.coef_, self.intercept_ = np.array(obj["coef"]), float(obj["intercept"])
        return self

    def save(self, path: Path) -> None:
        from tailorml.files import atomic_json

        atomic_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> FusionRanker:
        return cls.from_json(json.loads(path.read_text()))


def candidates(scores: np.ndarray, hist: sp.csr_matrix, n: int) -> np.ndarray:
    """The n best items of each row (history masked), best first."""
    from tailorml.apps.recommend.evaluate import mask_history, top_k

    s = np.array(scores, dtype=np.float64)
    mask_history(s, hist)
    return top_k(s, n)


class Fused:
    """A scorer: the model's top candidates re-ordered by the ranker, every other item below
    them in the model's order."""

    def __init__(self, model: Any, ranker: FusionRanker, stats: ItemStats, n: int):
        self.model, self.ranker, self.stats, self.n = model, ranker, stats, n
        self.name = f"{getattr(model, 'name', 'model')}+fusion"

    def rerank(
        self, hist: sp.csr_matrix, seqs: list[np.ndarray], times: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(model scores, candidates, ranker scores of the candidates)."""
        base = self.model.score(hist, seqs, times)
        cands = candidates(base, hist, self.n)
        cs = np.take_along_axis(base, cands, 1)
        x = features(self.stats, cands, cs, seqs, times)
        fused = self.ranker.predict(x.reshape(-1, x.shape[-1])).reshape(cands.shape)
        return base, cands, fused

    def score(self, hist: sp.csr_matrix, seqs: list[np.ndarray], times: Any = None) -> np.ndarray:
        base, cands, fused = self.rerank(hist, seqs, np.asarray(times, dtype=np.float64))
        out = np.asarray(base, dtype=np.float64) - 1e6  # below every candidate
        np.put_along_axis(out, cands, fused, 1)
        return out


def training_rows(
    model: Any, stats: ItemStats, split: Any, n: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Candidate features and labels on the validation targets; also the share of targets
    among the candidates (the ceiling of any re-ordering)."""
    from tailorml.apps.recommend.evaluate import history_matrix

    users, targets, hist, times = split.targets("valid")
    xs, ys, found = [], [], 0
    for s in range(0, len(users), 256):
        h = hist[s : s + 256]
        hm = history_matrix(h, split.n_items)
        base = model.score(hm, h, times[s : s + 256])
        cands = candidates(base, hm, n)
        cs = np.take_along_axis(base, cands, 1)
        x = features(stats, cands, cs, h, times[s : s + 256])
        y = cands == targets[s : s + 256, None]
        found += int(y.any(axis=1).sum())
        xs.append(x.reshape(-1, x.shape[-1]))
        ys.append(y.ravel())
    return np.vstack(xs), np.concatenate(ys), found / max(1, len(users))
