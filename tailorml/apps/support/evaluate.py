"""Retrieval quality against known answers: for each query, the one document that answers it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
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


def evaluate_support(
    run: str | Path, data: str | Path, assistant: Any = None, threads: int | None = None
) -> dict[str, Any]:
    """`tailor support evaluate RUN --data FILE`: the assistant on labelled messages (the
    columns of the run's `intents`; rows labelled out of scope, or of a held-out intent, are
    the unknowns). `assistant`: the answers of the full pipeline (template, retrieval,
    hand-off); `intent_only`: the threshold's decision alone. Writes RUN/support_eval.json."""
    from tailorml.apps.support.assistant import Assistant, read_support_json
    from tailorml.apps.support.train import intent_scores, read_intent_rows
    from tailorml.files import atomic_json

    root = Path(run)
    meta = read_support_json(root)
    oos = meta["out_of_scope_label"]
    rows = read_intent_rows(
        data, meta["text_column"], meta["label_column"], oos, meta["held_out"], key="--data"
    )
    bot = assistant if assistant is not None else Assistant.load(root, threads=threads)
    replies = bot.answer_many([r["text"] for r in rows])
    gold = [r["label"] for r in rows]
    intents = [str(a["intent"]) for a in replies]
    full = intent_scores(gold, intents, [not a["handoff"] for a in replies], oos)
    confident = [a["confidence"] >= bot.threshold for a in replies]
    paths = Counter(str(a["path"]) for a in replies)
    result = {
        "data": str(data),
        "rows": len(rows),
        "oos_rows": sum(g == oos for g in gold),
        **full,
        "paths": {p: paths.get(p, 0) for p in ("template", "retrieval", "handoff")},
        "intent_only": intent_scores(gold, intents, confident, oos),
        "confidence_threshold": bot.threshold,
    }
    atomic_json(root / "support_eval.json", result)
    return result
