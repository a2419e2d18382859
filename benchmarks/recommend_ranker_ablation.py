"""The fusion ranker's features, each left out in turn, on a `tailor recommend train` run.

    python benchmarks/recommend_ranker_ablation.py runs/recommend-movielens [--record OUT.json]

Reads the run folder (its text model, item features and item-to-item matrices) and its config's
data, builds the ranker's rows as training does (each target's candidates: the text model's top
`ranker.candidates`, the user's earlier items excluded) on the valid and on the test targets,
and fits the logistic ranker with every feature and with each feature left out. Two figures per
feature set: NDCG@10 on the valid targets, 5-fold cross-validated over users (what a choice of
features may read: the ranker is trained on the valid targets), and test NDCG@10 of the ranker
fitted on every valid target (read once, for the record). A target outside the candidates is a
miss; ties go to the earlier item, as in the protocol, so the "every feature" test figure is the
run's own text+fusion figure. Test is also split by whether the target came in the same second
as the event before it (MovieLens users rate in bursts; file order breaks those ties).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tailorml.apps.recommend.config import RecommendConfig  # noqa: E402
from tailorml.apps.recommend.data import load  # noqa: E402
from tailorml.apps.recommend.evaluate import history_matrix, split_leave_one_out  # noqa: E402
from tailorml.apps.recommend.ranker import FEATURES, FusionRanker, candidates, features  # noqa: E402
from tailorml.apps.recommend.service import Recommender  # noqa: E402
from tailorml.env import machine_info  # noqa: E402

FOLDS = 5


def rows(rec: Recommender, split: Any, which: str, n_cand: int) -> dict[str, np.ndarray]:
    """Features (users, candidates, F), the candidates, the target's column (-1: not among
    them), and whether each target shares its second with the event before it."""
    users, targets, hist, times = split.targets(which)
    n = split.n_items
    xs, cs, hit = [], [], []
    for s in range(0, len(users), 256):
        h, t = hist[s : s + 256], times[s : s + 256]
        hm = history_matrix(h, n)
        base = rec.model.score(hm, h, t)
        cand = candidates(base, hm, n_cand)
        xs.append(features(rec.stats, cand, np.take_along_axis(base, cand, 1), h, t))
        cs.append(cand)
        y = cand == targets[s : s + 256, None]
        hit.append(np.where(y.any(axis=1), y.argmax(axis=1), -1))
    idx = split.valid if which == "valid" else split.test
    pos = idx[users]
    same = split.events.time[pos] == split.events.time[pos - 1]
    return {"x": np.concatenate(xs), "cand": np.concatenate(cs), "hit": np.concatenate(hit),
            "same_second": same}  # fmt: skip


def ndcg(scores: np.ndarray, cand: np.ndarray, hit: np.ndarray, k: int) -> np.ndarray:
    """Per target: 1/log2(rank + 2) if its rank among the candidates (ties to the earlier
    item) is below k, else 0."""
    out = np.zeros(len(hit))
    for r in np.flatnonzero(hit >= 0):
        j = hit[r]
        s, items = scores[r], cand[r]
        rank = int((s > s[j]).sum() + ((s == s[j]) & (items < items[j])).sum())
        if rank < k:
            out[r] = 1.0 / np.log2(rank + 2.0)
    return out


def fit_predict(train: dict[str, np.ndarray], test: dict[str, np.ndarray], cols: list[int]):  # type: ignore[no-untyped-def]
    # Contiguous, as training has it: lbfgs' result moves with the memory layout at its
    # tolerance, and a few ranks with it.
    x, f = np.ascontiguousarray(train["x"][..., cols]), len(cols)
    y = np.zeros(x.shape[:2], dtype=bool)
    rows_ = np.flatnonzero(train["hit"] >= 0)
    y[rows_, train["hit"][rows_]] = True
    ranker = FusionRanker().fit(x.reshape(-1, f), y.ravel())
    xt = np.ascontiguousarray(test["x"][..., cols])
    return ranker.predict(xt.reshape(-1, f)).reshape(xt.shape[:2])


def subset(d: dict[str, np.ndarray], m: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[m] for k, v in d.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--record", type=Path, help="write the figures here (JSON)")
    args = ap.parse_args()
    started = time.time()
    rec = Recommender(args.run)
    cfg = RecommendConfig(**rec.meta["config"])
    items, events = load(cfg.data)
    if len(rec.ids) != len(items):
        sys.exit(f"{args.run} has items added since training; ablate a freshly trained run.")
    split = split_leave_one_out(events, len(items))
    k, n_cand = cfg.eval.k, cfg.ranker.candidates
    valid, test = rows(rec, split, "valid", n_cand), rows(rec, split, "test", n_cand)
    folds = np.random.default_rng(0).permutation(len(valid["hit"])) % FOLDS
    sets: list[tuple[str, list[int]]] = [("every feature", list(range(len(FEATURES))))]
    sets += [(f"without {name}", [j for j in range(len(FEATURES)) if j != i])
             for i, name in enumerate(FEATURES)]  # fmt: skip
    same = test["same_second"]
    table = []
    model_t = ndcg(test["x"][..., 0], test["cand"], test["hit"], k)
    model_v = ndcg(valid["x"][..., 0], valid["cand"], valid["hit"], k)
    table.append({"features": "text model alone (no ranker)", "valid": model_v.mean(),
                  "valid_cv": model_v.mean(), "test": model_t.mean(),
                  "test_same_second": model_t[same].mean(),
                  "test_later": model_t[~same].mean()})  # fmt: skip
    for name, cols in sets:
        cv = np.zeros(len(valid["hit"]))
        for f in range(FOLDS):
            tr, te = folds != f, folds == f
            part = subset(valid, te)
            cv[te] = ndcg(fit_predict(subset(valid, tr), part, cols), part["cand"], part["hit"], k)
        t = ndcg(fit_predict(valid, test, cols), test["cand"], test["hit"], k)
        table.append({"features": name, "valid_cv": cv.mean(), "test": t.mean(),
                      "test_same_second": t[same].mean(),
                      "test_later": t[~same].mean()})  # fmt: skip
    print(f"| ranker features | valid NDCG@{k} (5-fold CV) | test NDCG@{k} | test, same second "
          f"({int(same.sum())}) | test, later ({int((~same).sum())}) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['features']} | {r['valid_cv']:.4f} | {r['test']:.4f} | "
              f"{r['test_same_second']:.4f} | {r['test_later']:.4f} |")  # fmt: skip
    print(f"valid targets among the candidates: {(valid['hit'] >= 0).mean():.3f}; "
          f"test: {(test['hit'] >= 0).mean():.3f}")  # fmt: skip
    if args.record:
        from tailorml.files import atomic_json

        atomic_json(args.record, {
            "benchmark": "recommend_ranker_ablation",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(),
            "run": str(args.run),
            "run_config": rec.meta["config"],
            "command": " ".join(["python", sys.argv[0], *sys.argv[1:]]),
            "folds": FOLDS,
            "candidates": n_cand,
            "table": [{k2: (round(float(v), 4) if not isinstance(v, str) else v)
                       for k2, v in r.items()} for r in table],
            "seconds": round(time.time() - started, 1),
        })  # fmt: skip
        print(f"wrote {args.record}")


if __name__ == "__main__":
    main()
