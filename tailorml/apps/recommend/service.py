"""Serving a recommend run: the catalogue (items, vectors, faiss index, ranker features), the
answer for a history, `add-items`, and the HTTP app on the service kit.

    GET  /v1/recommend?user_id=U&k=10      a user of the run (their whole history)
    POST /v1/recommend {"history": [item ids, oldest first], "k": 10}   anyone
    -> {"items": [{"item_id", "score", "title", "because": [{"item_id", "title"}]}]}

`add-items` rewrites items.jsonl, item_text.npy, item_stats.npz and index.faiss (each by an
atomic rename, the index last); a running service sees the new index's mtime and reloads.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.recommend.data import Items
from tailorml.errors import DataError, TailorError

MAX_K = 100
MAX_HISTORY = 2000
BECAUSE = 2  # history items named per recommendation


def write_items(path: Path, items: Items) -> None:
    from tailorml.files import atomic_jsonl

    atomic_jsonl(
        path,
        (
            {"item_id": i, "title": t, "text": x, "genres": g}
            for i, t, x, g in zip(items.ids, items.titles, items.texts, items.genres, strict=True)
        ),
    )


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_index(folder: Path, vectors: np.ndarray) -> None:
    """item_vectors.npy and index.faiss (inner product over unit vectors = cosine)."""
    import faiss

    v = np.ascontiguousarray(vectors, dtype=np.float32)
    tmp = _tmp(folder / "item_vectors.npy")
    with tmp.open("wb") as fh:
        np.save(fh, v)
    tmp.replace(folder / "item_vectors.npy")
    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    tmp = _tmp(folder / "index.faiss")
    faiss.write_index(index, str(tmp))
    tmp.replace(folder / "index.faiss")


class Recommender:
    """A loaded run. `recommend(history, time, k)` ranks every item not in the history."""

    def __init__(self, run: Path | str):
        self.run = Path(run)
        if not (self.run / "recommend.json").is_file():
            raise TailorError(
                f"{self.run} is not a recommend run (no recommend.json). Give the output_dir of "
                "`tailor recommend train`."
            )
        self._lock = threading.Lock()
        self._stamp = -1
        self.load()

    def load(self) -> None:
        import faiss

        from tailorml.apps.recommend.models import TextRecommender
        from tailorml.apps.recommend.ranker import FusionRanker, ItemStats

        run = self.run
        stamp = (run / "index.faiss").stat().st_mtime_ns
        self.meta = json.loads((run / "recommend.json").read_text())
        rows = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
        self.ids = [r["item_id"] for r in rows]
        self.titles = [r["title"] for r in rows]
        self.index_of = {i: n for n, i in enumerate(self.ids)}
        model = TextRecommender.load(run / "model")
        text = np.load(run / "item_text.npy")
        n_model = model._net().n_items
        if len(text) > n_model:
            model.add_items(text[n_model:])
        self.model = model
        st = np.load(run / "item_stats.npz")
        self.genre_vocab = [str(g) for g in st["genre_vocab"]]
        cf, nxt, prv = (_item_matrix(run / f"{m}.npz", len(text)) for m in ("cf", "next", "prev"))
        recent = int(self.meta["config"]["ranker"].get("sequence_recent", 10))
        self.stats = ItemStats(
            st["counts"], st["first_time"], st["genres"], text, cf, nxt, prv, recent
        )
        self.index = faiss.read_index(str(run / "index.faiss"))
        self.ranker = (
            FusionRanker.load(run / "ranker.json") if (run / "ranker.json").is_file() else None
        )
        self.candidates = int(self.meta["config"]["ranker"]["candidates"])
        u = np.load(run / "users.npz")
        self.user_index = {str(x): n for n, x in enumerate(u["user_ids"])}
        self.offsets, self.user_items, self.user_time = u["offsets"], u["items"], u["last_time"]
        self.now = float(np.nanmax(self.user_time)) if len(self.user_time) else 0.0
        self._stamp = stamp

    def refresh(self) -> None:
        """Reload when add-items wrote a new index."""
        try:
            stamp = (self.run / "index.faiss").stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self.load()

    def user_history(self, user_id: str) -> tuple[np.ndarray, float] | None:
        n = self.user_index.get(str(user_id))
        if n is None:
            return None
        return self.user_items[self.offsets[n] : self.offsets[n + 1]], float(self.user_time[n])

    def item_indices(self, ids: list[str]) -> np.ndarray:
        unknown = [i for i in ids if str(i) not in self.index_of]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10])
            raise DataError(f"history: unknown item id(s) {shown}; use ids of the run's items.")
        return np.array([self.index_of[str(i)] for i in ids], dtype=np.int64)

    def recommend(self, seq: np.ndarray, when: float | None, k: int) -> list[dict[str, Any]]:
        from tailorml.apps.recommend.ranker import features

        n = len(self.ids)
        seen = set(seq.tolist())
        k = min(k, n - len(seen))
        if k <= 0:
            return []
        if len(seq) == 0:  # nothing to go on: the most popular items
            order = np.argsort(-self.stats.counts, kind="stable")[:k]
            return [self._item(int(i), float(self.stats.counts[i]), seq) for i in order]
        u = self.model.user_vectors([seq])
        pool = max(k, self.candidates) if self.ranker else k  # what the ranker re-orders
        want = min(n, pool + len(seen))
        scores, idx = self.index.search(u, want)
        keep = [(s, i) for s, i in zip(scores[0], idx[0], strict=True) if i >= 0 and i not in seen]
        cand = np.array([i for _, i in keep], dtype=np.int64)
        cs = np.array([s for s, _ in keep], dtype=np.float32)
        if self.ranker is not None and len(cand):
            cand, cs = cand[:pool], cs[:pool]
            t = np.array([when if when is not None else self.now])
            x = features(self.stats, cand[None], cs[None], [seq], t)[0]
            fused = self.ranker.predict(x)
            order = np.argsort(-fused, kind="stable")
            cand, cs = cand[order], fused[order]
        return [self._item(int(i), float(s), seq) for i, s in zip(cand[:k], cs[:k], strict=True)]

    def _item(self, i: int, score: float, seq: np.ndarray) -> dict[str, Any]:
        because: list[dict[str, str]] = []
        if len(seq):
            recent = np.unique(seq[-50:])
            v = self.model.item_vectors_
            assert v is not None
            sims = v[recent] @ v[i]
            for j in recent[np.argsort(-sims, kind="stable")[:BECAUSE]]:
                because.append({"item_id": self.ids[j], "title": self.titles[j]})
        return {
            "item_id": self.ids[i],
            "score": round(score, 6),
            "title": self.titles[i],
            "because": because,
        }


def _item_matrix(path: Path, n: int) -> Any:
    """A saved (items x items) sparse matrix grown to n (items added since training: no
    entries); None if the run has none."""
    if not path.is_file():
        return None
    import scipy.sparse as sp

    from tailorml.apps.recommend.ranker import _grow

    m = sp.csr_matrix(sp.load_npz(path))
    return _grow(m, n) if m.shape[0] < n else m


def add_items(run: Path | str, path: Path | str) -> int:
    """Embed the items of `path` (the config's item columns) and add them to the run's
    catalogue; items already there are refused. Returns the number added."""
    from tailorml.apps.recommend.config import DataConfig
    from tailorml.apps.recommend.models import encode_texts
    from tailorml.apps.recommend.ranker import genre_matrix
    from tailorml.files import atomic_jsonl

    rec = Recommender(run)
    run = rec.run
    d = DataConfig(**rec.meta["config"]["data"])
    from tailorml.apps.recommend.data import read_items

    new = read_items(d, Path(path), key="items.csv")
    dup = [i for i in new.ids if i in rec.index_of]
    if dup:
        shown = ", ".join(repr(x) for x in dup[:10])
        raise DataError(f"{path}: item id(s) already in the run: {shown}. Give only new items.")
    trained = run / "encoder"  # the item encoder trained with the model, if it was
    base = str(trained) if trained.is_dir() else rec.meta["config"]["model"]["encoder"]
    text = encode_texts(new.texts, base)
    rec.model.add_items(text)
    all_text = np.vstack([rec.stats.text, text]).astype(np.float32)
    genres = genre_matrix(new.genres, rec.genre_vocab)
    stats = rec.stats.extend(genres, text)
    rows = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
    rows += [
        {"item_id": i, "title": t, "text": x, "genres": g}
        for i, t, x, g in zip(new.ids, new.titles, new.texts, new.genres, strict=True)
    ]
    atomic_jsonl(run / "items.jsonl", rows)
    tmp = _tmp(run / "item_text.npy")
    with tmp.open("wb") as fh:
        np.save(fh, all_text)
    tmp.replace(run / "item_text.npy")
    tmp = _tmp(run / "item_stats.npz")
    with tmp.open("wb") as fh:
        np.savez(
            fh,
            counts=stats.counts,
            first_time=stats.first_time,
            genres=stats.genres,
            genre_vocab=np.array(rec.genre_vocab, dtype=str),
        )
    tmp.replace(run / "item_stats.npz")
    assert rec.model.item_vectors_ is not None
    write_index(run, rec.model.item_vectors_)  # last: a service reloads on its change
    return len(new)
