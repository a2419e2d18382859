"""Retrieval quality against known answers: for each query, the one document that answers it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tailorml.errors import ConfigError


def retrieval_scores(
    retriever: Any, queries: Sequence[str], gold_doc_ids: Sequence[str], k: int = 10
) -> dict[str, float | int]:
    """recall@1, recall@5 (share of queries whose gold document is among the first 1 / 5 hits)
    and mrr@k (mean of 1 / the gold document's rank, 0 when it is not in the first k), from one
    `retriever.search_many(queries, k)`."""
    if len(queries) != len(gold_doc_ids):
        raise ConfigError(
            f"{len(queries)} queries but {len(gold_doc_ids)} gold document ids; give one per query."
        )
    if not queries:
        raise ConfigError("No queries to score. Give at least one query and its gold document id.")
    if k < 5:
        raise ConfigError(f"k = {k}: recall@5 needs k >= 5.")
    ranks = []
    for hits, gold in zip(retriever.search_many(list(queries), k), gold_doc_ids, strict=True):
        ids = [h.doc_id for h in hits]
        ranks.append(ids.index(gold) + 1 if gold in ids else None)
    n = len(ranks)
    return {
        "recall@1": sum(r == 1 for r in ranks) / n,
        "recall@5": sum(r is not None and r <= 5 for r in ranks) / n,
        f"mrr@{k}": sum(1 / r for r in ranks if r is not None) / n,
        "queries": n,
    }
