"""The fixed evaluation protocol, vectorised.

Per user, events by time (ties by file order): the last is the test target, the second-to-last the
validation target, the rest training (a user with fewer than 3 events only trains). Every model
ranks ALL items; the items the user interacted with before the target are excluded (so a target
the user had already met earlier counts as a miss, as in RecBole). Ties in score are broken by
item order (the earlier item in the items file ranks first). Metrics at k: Recall (hit rate: one
target), NDCG, MRR, item coverage (distinct items in all top-k lists / all items), and the same
ranking metrics on the cold subset (targets whose item has at most `cold_max_train` training
events).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from tailorml.apps.recommend.data import Events


@dataclass
class Split:
    n_users: int
    n_items: int
    events: Events
    train: np.ndarray  # bool mask over events
    valid: np.ndarray  # event index of each user's valid target (-1: none)
    test: np.ndarray  # event index of each user's test target (-1: none)
    starts: np.ndarray  # first event of each user (events are grouped by user)

    def train_matrix(self) -> sp.csr_matrix:
        e = self.events
        m = self.train
        x = sp.csr_matrix(
            (np.ones(int(m.sum()), dtype=np.float32), (e.user[m], e.item[m])),
            shape=(self.n_users, self.n_items),
        )
        x.data[:] = 1.0  # repeated events count once
        return x

    def train_counts(self) -> np.ndarray:
        return np.bincount(self.events.item[self.train], minlength=self.n_items)

    def train_sequences(self) -> list[np.ndarray]:
        e = self.events
        ends = self.valid.copy()
        no = ends < 0
        ends[no] = np.r_[self.starts[1:], len(e)][no]
        return [e.item[s:t] for s, t in zip(self.starts, ends, strict=True)]

    def targets(self, which: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
        """(users, target items, histories: the items before each target in order, the time of
        each history's last event)."""
        idx = self.valid if which == "valid" else self.test
        users = np.flatnonzero(idx >= 0)
        pos = idx[users]
        e = self.events
        hist = [e.item[self.starts[u] : p] for u, p in zip(users, pos, strict=True)]
        return users, e.item[pos], hist, e.time[pos - 1]


def split_leave_one_out(events: Events, n_items: int) -> Split:
    n_users = len(events.user_ids)
    counts = np.bincount(events.user, minlength=n_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    ends = starts + counts
    has = counts >= 3
    test = np.where(has, ends - 1, -1)
    valid = np.where(has, ends - 2, -1)
    train = np.ones(len(events), dtype=bool)
    train[test[has]] = False
    train[valid[has]] = False
    return Split(n_users, n_items, events, train, valid, test, starts)


def history_matrix(hist: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(hist)), [len(h) for h in hist])
    cols = np.concatenate(hist) if hist else np.zeros(0, dtype=np.int64)
    x = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(hist), n_items)
    )
    x.data[:] = 1.0
    return x


class Scorer(Protocol):
    """Ranks every item for each history: `hist` (rows x items, 1 = seen), `seqs` (the same
    histories in time order), `times` (the time of each history's last event)."""

    def score(
        self, hist: sp.csr_matrix, seqs: list[np.ndarray], times: np.ndarray | None = None
    ) -> np.ndarray: ...


def rank_of(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among its row (ties: the lower item index first)."""
    t = scores[np.arange(len(targets)), targets][:, None]
    idx = np.arange(scores.shape[1])[None, :]
    better = (scores > t) | ((scores == t) & (idx < targets[:, None]))
    return better.sum(axis=1)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best items of each row, best first (ties: lower item index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, 1).min(axis=1, keepdims=True)
    out = np.empty((len(scores), k), dtype=np.int64)
    for r in range(len(scores)):  # exact tie order: every item at or above the k-th score
        cand = np.flatnonzero(scores[r] >= kth[r])
        order = np.lexsort((cand, -scores[r, cand]))
        out[r] = cand[order[:k]]
    return out


def mask_history(scores: np.ndarray, hist: sp.csr_matrix) -> None:
    r, c = hist.nonzero()
    scores[r, c] = -np.inf


def ranks_and_lists(
    model: Scorer,
    users: np.ndarray,
    targets: np.ndarray,
    hist: list[np.ndarray],
    times: np.ndarray,
    n_items: int,
    k: int,
    batch: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    ranks = np.zeros(len(users), dtype=np.int64)
    lists = np.zeros((len(users), min(k, n_items)), dtype=np.int64)
    for s in range(0, len(users), batch):
        h = hist[s : s + batch]
        x = history_matrix(h, n_items)
        scores = np.asarray(model.score(x, h, times[s : s + batch]), dtype=np.float64)
        mask_history(scores, x)
        ranks[s : s + batch] = rank_of(scores, targets[s : s + batch])
        top = top_k(scores, k)
        top[np.isneginf(np.take_along_axis(scores, top, 1))] = -1  # fewer than k left to rank
        lists[s : s + batch] = top
    return ranks, lists


def metrics_from_ranks(ranks: np.ndarray, k: int, prefix: str = "") -> dict[str, float]:
    if len(ranks) == 0:
        return {f"{prefix}ndcg@{k}": 0.0, f"{prefix}recall@{k}": 0.0, f"{prefix}mrr@{k}": 0.0}
    hit = ranks < k
    return {
        f"{prefix}ndcg@{k}": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()),
        f"{prefix}recall@{k}": float(hit.mean()),
        f"{prefix}mrr@{k}": float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()),
    }


def evaluate(
    model: Scorer,
    split: Split,
    which: str,
    k: int = 10,
    cold_max_train: int = 5,
    detail: bool = False,
) -> dict[str, Any]:
    """The protocol's metrics of `model` on the valid or test targets (`detail`: also the ranks
    and each user's history length, for the report's buckets)."""
    users, targets, hist, times = split.targets(which)
    ranks, lists = ranks_and_lists(model, users, targets, hist, times, split.n_items, k)
    out: dict[str, Any] = metrics_from_ranks(ranks, k)
    out[f"coverage@{k}"] = float(len(np.unique(lists[lists >= 0])) / split.n_items)
    out["targets"] = int(len(users))
    cold = split.train_counts()[targets] <= cold_max_train
    out |= metrics_from_ranks(ranks[cold], k, "cold_")
    out["cold_targets"] = int(cold.sum())
    if detail:
        out["_ranks"] = ranks
        out["_history"] = np.array([len(h) for h in hist])
        out["_cold"] = cold
    return out


def public(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def tune(
    make: Callable[[Any], Any],
    values: list[Any],
    split: Split,
    k: int,
    cold_max_train: int,
) -> tuple[Any, Any, dict[str, float]]:
    """Fit one model per value; keep the best valid NDCG@k.
    Returns (model, value, {value: valid ndcg})."""
    best: tuple[float, Any, Any] | None = None
    tried: dict[str, float] = {}
    for v in values:
        m = make(v)
        ndcg = evaluate(m, split, "valid", k, cold_max_train)[f"ndcg@{k}"]
        tried[str(v)] = round(ndcg, 4)
        if best is None or ndcg > best[0]:
            best = (ndcg, v, m)
    assert best is not None
    return best[2], best[1], tried
