"""Retrieval over the knowledge base: BM25 (bm25s), dense vectors (the packaged encoder in a
faiss index) and their reciprocal-rank fusion.

Each retriever follows sklearn's contract: `__init__` stores its arguments, `fit(passages)`
builds the index and returns self, learned state ends in `_`, and `search` before `fit` raises
NotFittedError. `search(query, k)` answers the k best DOCUMENTS, each as its best passage (an
article split into passages is found once, not once per passage):

    retriever = HybridRetriever().fit(load_passages("kb/"))
    retriever.search("my card has not arrived", k=5)  # [Hit(doc_id, passage_id, score, ...)]
    retriever.save("kb-index/")  # passages.json, dense.faiss, retriever.json
    load_retriever("kb-index/").search_many(questions, k=10)

A saved index holds no pickle: passages and settings are JSON, vectors a faiss index file
(faiss.write_index). BM25 is rebuilt from the passages on load: that costs milliseconds for a
help centre (0.02 s for the 77 Banking77 articles, measured) and keeps one format, ours, on disk.
The passages are indexed as "title\\ntext" by both retrievers: the title is the densest summary
of an article.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tailorml.apps.support.knowledge import Passage
from tailorml.errors import ConfigError
from tailorml.files import atomic_json

FORMAT = 1
QUERY_ENCODER = "query-encoder"  # a tuned query encoder's folder inside a saved index
# Ranked passages per query to look at before collapsing to documents, as a multiple of k;
# widened (x4) for a query whose first look holds fewer than k distinct documents.
DEPTH = 4


class NotFittedError(ValueError, AttributeError):
    """`search` or `save` before `fit` (sklearn's NotFittedError has the same bases)."""


@dataclass(frozen=True)
class Hit:
    doc_id: str
    passage_id: str
    score: float
    title: str
    text: str


class Encoder(Protocol):
    """Anything that embeds texts as (n, dim) rows (tailorml.models.sentence.SentenceEncoder);
    the retriever scales the rows to unit length, so inner product is cosine."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


Ranked = list[tuple[int, float]]  # (passage index, score), best first


class BM25Retriever:
    """BM25 over lowercased word tokens with English stopwords removed (bm25s.tokenize; no
    stemming). `k1`, `b`: the usual BM25 weights (bm25s' Lucene variant)."""

    kind = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str = "en"):
        self.k1 = k1
        self.b = b
        self.stopwords = stopwords

    def params(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "stopwords": self.stopwords}

    def fit(self, passages: Sequence[Passage]) -> BM25Retriever:
        import bm25s

        self.passages_ = _check_passages(passages)
        self.model_ = bm25s.BM25(k1=self.k1, b=self.b)
        self.model_.index(self._tokens([_indexed(p) for p in self.passages_]), show_progress=False)
        return self

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        out = bm25s.tokenize(texts, stopwords=self.stopwords, return_ids=False, show_progress=False)
        return list(out)  # type: ignore[arg-type]

    def rank_many(self, queries: Sequence[str]) -> Callable[[list[int], int], list[Ranked]]:
        """A ranker for these queries: (query indices, n) -> each one's n best passages. Only
        passages sharing a word with the query score above 0; the others are never returned."""
        _check_fitted(self, "model_")
        ids = [self.model_.get_tokens_ids(t) for t in self._tokens(list(queries))]

        def rank(which: list[int], n: int) -> list[Ranked]:
            out: list[Ranked] = []
            for i in which:
                if not ids[i]:  # every word a stopword or unseen: BM25 has nothing to say
                    out.append([])
                    continue
                scores = np.asarray(self.model_.get_scores_from_ids(ids[i]), dtype=np.float64)
                out.append(_top(scores, n, positive=True))
            return out

        return rank

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return _search_many(self, queries, k)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_many([query], k)[0]

    def save(self, folder: str | Path) -> None:
        _check_fitted(self, "model_")
        _save(folder, {"kind": self.kind, "params": self.params()}, self.passages_, {})


class DenseRetriever:
    """Cosine similarity of sentence embeddings, searched exactly (faiss IndexFlatIP over unit
    vectors). `base`: the encoder (`minilm`, the packaged all-MiniLM-L6-v2; a local folder;
    `tiny` for tests), or pass `encoder=` (any object with `encode(texts) -> (n, dim)`).
    `query_base`: a folder holding a separate encoder for the questions (one tuned on labelled
    questions by query_tuning.py; the passages keep `base`'s vectors); saved with the index.
    `query_mix`: a question's vector is `query_mix` x the tuned encoder's + (1 - query_mix) x
    `base`'s, renormalised (1 = the tuned one alone; lower keeps more of what `base` finds, e.g.
    articles the tuning never saw). `threads`: torch's and faiss's threads (None: as the
    process set them)."""

    kind = "dense"

    def __init__(
        self,
        base: str = "minilm",
        max_length: int = 256,
        batch_size: int = 64,
        threads: int | None = None,
        encoder: Encoder | None = None,
        query_base: str | None = None,
        query_mix: float = 1.0,
    ):
        self.base = base
        self.max_length = max_length
        self.batch_size = batch_size
        self.threads = threads
        self.encoder = encoder
        self.query_base = query_base
        self.query_mix = query_mix

    def params(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "query_mix": self.query_mix,
        }

    def _encoder(self) -> Encoder:
        if self.encoder is not None:
            return self.encoder
        from tailorml.models.sentence import SentenceEncoder

        return SentenceEncoder(self.base, self.max_length, self.batch_size, self.threads)

    def fit(self, passages: Sequence[Passage]) -> DenseRetriever:
        import faiss

        if not 0.0 <= self.query_mix <= 1.0:
            raise ConfigError(f"query_mix = {self.query_mix}: use a share from 0 to 1.")
        self.passages_ = _check_passages(passages)
        self.encoder_ = self._encoder()
        self.query_encoder_ = self._query_encoder()
        self._threads()
        vectors = _as_rows(self.encoder_.encode([_indexed(p) for p in self.passages_]))
        self.index_ = faiss.IndexFlatIP(vectors.shape[1])
        self.index_.add(vectors)  # (passages, dim)
        return self

    def _query_encoder(self) -> Encoder | None:
        if self.query_base is None:
            return None
        from tailorml.models.sentence import SentenceEncoder

        return SentenceEncoder(self.query_base, self.max_length, self.batch_size, self.threads)

    def _query_vectors(self, queries: list[str]) -> np.ndarray:
        tuned, mix = self.query_encoder_, self.query_mix
        if tuned is None or mix == 0.0:
            return _as_rows(self.encoder_.encode(queries))
        vectors = _as_rows(tuned.encode(queries))
        if mix < 1.0:  # both unit length: the mix, renormalised by _as_rows
            vectors = _as_rows(
                mix * vectors + (1.0 - mix) * _as_rows(self.encoder_.encode(queries))
            )
        return vectors

    def _threads(self) -> None:
        if self.threads:
            import faiss

            faiss.omp_set_num_threads(self.threads)

    def rank_many(self, queries: Sequence[str]) -> Callable[[list[int], int], list[Ranked]]:
        _check_fitted(self, "index_")
        self._threads()
        vectors = self._query_vectors(list(queries))  # (queries, dim), once
        if vectors.shape[1] != self.index_.d:
            raise ConfigError(
                f"The encoder gives {vectors.shape[1]}-dimensional vectors but the index holds "
                f"{self.index_.d}-dimensional ones. Search with the encoder the index was built "
                "with, or rebuild the index."
            )

        def rank(which: list[int], n: int) -> list[Ranked]:
            scores, idx = self.index_.search(vectors[which], n)  # (len(which), n) each
            return [
                [(int(i), float(s)) for i, s in zip(row_i, row_s, strict=True) if i >= 0]
                for row_i, row_s in zip(idx, scores, strict=True)
            ]

        return rank

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return _search_many(self, queries, k)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_many([query], k)[0]

    def save(self, folder: str | Path) -> None:
        _check_fitted(self, "index_")
        _save(
            folder, self._manifest(), self.passages_, {"dense.faiss": self.index_}, self._copied()
        )

    def _copied(self) -> dict[str, Path]:
        """Folders saved inside the index: the query encoder, when there is one."""
        return {QUERY_ENCODER: Path(self.query_base)} if self.query_base else {}

    def _manifest(self) -> dict[str, Any]:
        spec = getattr(self.encoder_, "spec", None)
        return {
            "kind": self.kind,
            "params": self.params(),
            "encoder": spec() if callable(spec) else None,
            "dim": int(self.index_.d),
            "index": "dense.faiss",
            "query_encoder": QUERY_ENCODER if self.query_base else None,
        }


class HybridRetriever:
    """Reciprocal-rank fusion (Cormack et al. 2009) of BM25 and dense retrieval: each retriever's
    top `candidates` documents, a document scoring sum(1 / (rrf_k + rank)) over the lists that hold
    it (rank from 1). The hit's passage is the one from the list that ranks the document higher.
    `bm25`, `dense`: the retrievers to fuse (default ones if None); `fit` fits them."""

    kind = "hybrid"

    def __init__(
        self,
        bm25: BM25Retriever | None = None,
        dense: DenseRetriever | None = None,
        rrf_k: int = 60,
        candidates: int = 100,
    ):
        self.bm25 = bm25
        self.dense = dense
        self.rrf_k = rrf_k
        self.candidates = candidates

    def params(self) -> dict[str, Any]:
        return {"rrf_k": self.rrf_k, "candidates": self.candidates}

    def fit(self, passages: Sequence[Passage]) -> HybridRetriever:
        if self.rrf_k < 0 or self.candidates < 1:
            raise ConfigError(
                f"rrf_k = {self.rrf_k}, candidates = {self.candidates}: use rrf_k >= 0 "
                "(60 is the usual value) and candidates >= 1."
            )
        self.passages_ = _check_passages(passages)
        self.bm25_ = (self.bm25 or BM25Retriever()).fit(self.passages_)
        self.dense_ = (self.dense or DenseRetriever()).fit(self.passages_)
        return self

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        _check_fitted(self, "dense_")
        _check_k(k)
        depth = max(self.candidates, k)
        lists = [_doc_rankings(r, queries, depth) for r in (self.dense_, self.bm25_)]
        doc_of = _doc_index(self.passages_)
        out = []
        for q in range(len(queries)):
            fused: dict[int, float] = {}
            best: dict[int, tuple[int, int]] = {}  # doc -> (best rank in any list, passage)
            for ranked in (lists[0][q], lists[1][q]):
                for rank, (p, _) in enumerate(ranked, start=1):
                    d = doc_of[p]
                    fused[d] = fused.get(d, 0.0) + 1.0 / (self.rrf_k + rank)
                    if d not in best or rank < best[d][0]:  # ties: the dense list's passage
                        best[d] = (rank, p)
            order = sorted(fused, key=lambda d: (-fused[d], best[d][0], d))[:k]
            out.append([_hit(self.passages_[best[d][1]], fused[d]) for d in order])
        return out

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_many([query], k)[0]

    def save(self, folder: str | Path) -> None:
        _check_fitted(self, "dense_")
        manifest = {
            "kind": self.kind,
            "params": self.params(),
            "bm25": {"params": self.bm25_.params()},
            "dense": self.dense_._manifest(),
        }
        indexes = {"dense.faiss": self.dense_.index_}
        _save(folder, manifest, self.passages_, indexes, self.dense_._copied())


Retriever = BM25Retriever | DenseRetriever | HybridRetriever


def load_retriever(
    folder: str | Path, encoder: Encoder | None = None, threads: int | None = None
) -> Retriever:
    """A retriever saved by `.save(folder)`, ready to search. A dense index built with an
    encoder object tailorml cannot rebuild needs that encoder again (`encoder=`). `threads`:
    the dense retriever's (a runtime choice, not saved)."""
    import faiss

    root = Path(folder)
    path = root / "retriever.json"
    if not path.is_file():
        raise ConfigError(
            f"{root}: no retriever.json, so this is not a saved retriever. Build one with "
            "`.fit(passages)` and `.save(folder)`."
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ConfigError(
            f"{path}: format {manifest.get('format')!r}, this tailorml reads {FORMAT}. Rebuild the "
            "index with this version."
        )
    raw = json.loads((root / "passages.json").read_text(encoding="utf-8"))
    passages = [Passage.from_json(p) for p in raw]

    def bm25(params: dict[str, Any]) -> BM25Retriever:
        return BM25Retriever(**params).fit(passages)

    def dense(meta: dict[str, Any]) -> DenseRetriever:
        spec = meta.get("encoder")
        if encoder is None and spec is None:
            raise ConfigError(
                f"{root}: the dense index was built with a custom encoder object. Pass it again: "
                "load_retriever(folder, encoder=...)."
            )
        params = dict(meta["params"])
        if spec is not None:
            params.update(spec)
        tuned = meta.get("query_encoder")
        query_base = str(root / tuned) if tuned else None
        r = DenseRetriever(**params, threads=threads, encoder=encoder, query_base=query_base)
        index: Any = faiss.read_index(str(root / meta["index"]))
        if index.ntotal != len(passages) or index.d != meta["dim"]:
            raise ConfigError(
                f"{root}: {meta['index']} holds {index.ntotal} vectors of {index.d} dimensions "
                f"but passages.json has {len(passages)} passages (dim {meta['dim']} expected). "
                "The folder is damaged or mixed; rebuild the index."
            )
        r.passages_, r.encoder_, r.index_ = passages, r._encoder(), index
        r.query_encoder_ = r._query_encoder()
        return r

    kind = manifest.get("kind")
    if kind == "bm25":
        return bm25(manifest["params"])
    if kind == "dense":
        return dense(manifest)
    if kind == "hybrid":
        h = HybridRetriever(**manifest["params"])
        h.passages_ = passages
        h.bm25_, h.dense_ = bm25(manifest["bm25"]["params"]), dense(manifest["dense"])
        return h
    raise ConfigError(f"{path}: unknown retriever kind {kind!r} (bm25, dense or hybrid).")


def _search_many(
    r: BM25Retriever | DenseRetriever, queries: Sequence[str], k: int
) -> list[list[Hit]]:
    _check_k(k)
    return [[_hit(r.passages_[p], s) for p, s in ranked] for ranked in _doc_rankings(r, queries, k)]


def _doc_rankings(
    r: BM25Retriever | DenseRetriever, queries: Sequence[str], k: int
) -> list[Ranked]:
    """Per query: the best passage of each of its k best documents, best first."""
    rank = r.rank_many(queries)
    doc_of = _doc_index(r.passages_)
    total, n_docs = len(doc_of), max(doc_of) + 1
    k = min(k, n_docs)
    n = min(total, DEPTH * k)
    out: list[Ranked] = [[] for _ in queries]
    todo = list(range(len(queries)))
    while todo:
        again = []
        for q, ranked in zip(todo, rank(todo, n), strict=True):
            out[q] = _collapse(ranked, doc_of, k)
            # n passages seen and fewer than k documents among them: look deeper.
            if len(out[q]) < k and len(ranked) == n < total:
                again.append(q)
        todo, n = again, min(total, n * DEPTH)
    return out


def _collapse(ranked: Ranked, doc_of: list[int], k: int) -> Ranked:
    seen: set[int] = set()
    out: Ranked = []
    for p, s in ranked:
        if doc_of[p] not in seen:
            seen.add(doc_of[p])
            out.append((p, s))
            if len(out) == k:
                break
    return out


def _top(scores: np.ndarray, n: int, positive: bool = False) -> Ranked:
    """The n highest scores (ties: lower index first), optionally only those above 0."""
    idx = np.flatnonzero(scores > 0) if positive else np.arange(len(scores))
    if len(idx) > n:
        idx = idx[np.argpartition(-scores[idx], n - 1)[:n]]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return [(int(i), float(scores[i])) for i in idx]


def _doc_index(passages: list[Passage]) -> list[int]:
    """Each passage's document as a number (first appearance order)."""
    ids: dict[str, int] = {}
    return [ids.setdefault(p.doc_id, len(ids)) for p in passages]


def _hit(p: Passage, score: float) -> Hit:
    return Hit(p.doc_id, p.passage_id, float(score), p.title, p.text)


def _indexed(p: Passage) -> str:
    return f"{p.title}\n{p.text}"


def _as_rows(vectors: Any) -> np.ndarray:
    """(n, dim) float32 rows of unit length: inner product = cosine, whatever the encoder."""
    import faiss

    rows = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    faiss.normalize_L2(rows)
    return rows


def _check_passages(passages: Sequence[Passage]) -> list[Passage]:
    passages = list(passages)
    if not passages:
        raise ConfigError("No passages to index. Load a knowledge folder with articles in it.")
    seen: set[str] = set()
    for p in passages:
        if not isinstance(p, Passage):
            raise TypeError(f"fit takes Passage objects (knowledge.load_passages), not {type(p)}")
        if p.passage_id in seen:
            raise ConfigError(f"Two passages share the id {p.passage_id!r}; ids must be unique.")
        seen.add(p.passage_id)
    return passages


def _check_fitted(r: object, attr: str) -> None:
    if not hasattr(r, attr):
        raise NotFittedError(
            f"This {type(r).__name__} is not fitted yet: call .fit(passages) (or "
            "load_retriever(folder)) before searching or saving."
        )


def _check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"k = {k}: ask for at least one result (k >= 1).")


def _save(
    folder: str | Path,
    manifest: dict[str, Any],
    passages: list[Passage],
    indexes: dict[str, Any],
    folders: dict[str, Path] | None = None,
) -> None:
    """Write the folder beside itself, then swap it in: a reader never sees half an index."""
    import faiss

    root = Path(folder)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    old = root.with_name(f".{root.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        atomic_json(tmp / "passages.json", [p.to_json() for p in passages])
        for name, index in indexes.items():
            faiss.write_index(index, str(tmp / name))
        for name, src in (folders or {}).items():
            shutil.copytree(src, tmp / name)
        atomic_json(tmp / "retriever.json", {"format": FORMAT, **manifest})
        if root.exists():
            root.rename(old)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
