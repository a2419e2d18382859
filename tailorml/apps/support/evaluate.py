"""Retrieval quality against known answers: for each query, the one document that answers it."""

from __future__ import annotations

import re
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
    run: str | Path,
    data: str | Path,
    assistant: Any = None,
    threads: int | None = None,
    doc_column: str | None = None,
) -> dict[str, Any]:
    """`tailor support evaluate RUN --data FILE`: the assistant on labelled messages (the
    columns of the run's `intents`; rows labelled out of scope, or of a held-out intent, are
    the unknowns). Top level: the full pipeline (template, retrieval, hand-off) with the run's
    calibrated thresholds; `intent_only`: the intent threshold's decision alone; `retrieval`:
    recall@1/@5 and MRR@10 of the knowledge base, when each row's article is known (a
    `doc_column`, or articles named after the intents). Writes RUN/support_eval.json."""
    from tailorml.apps.support.assistant import Assistant, read_support_json
    from tailorml.apps.support.train import intent_scores, read_intent_rows
    from tailorml.files import atomic_json

    root = Path(run)
    meta = read_support_json(root)
    oos = meta["out_of_scope_label"]
    # held-out intents kept by name here: their articles are still the right answers
    named = read_intent_rows(data, meta["text_column"], meta["label_column"], oos, [], "--data")
    held = set(meta["held_out"])
    rows = [{**r, "label": oos if r["label"] in held else r["label"]} for r in named]
    bot = (
        assistant if assistant is not None else Assistant.load(root, threads=threads, writer=False)
    )
    replies = bot.answer_many([r["text"] for r in rows])
    gold = [r["label"] for r in rows]
    intents = [str(a["intent"]) for a in replies]
    full = intent_scores(gold, intents, [not a["handoff"] for a in replies], oos)
    # the intent threshold alone, as calibrated alone for the target (the run's own threshold
    # is chosen together with the retrieval threshold)
    alone = meta.get("calibration", {}).get("intent_threshold", bot.threshold)
    confident = [a["confidence"] >= alone for a in replies]
    paths = Counter(str(a["path"]) for a in replies)
    result = {
        "data": str(data),
        "rows": len(rows),
        "oos_rows": sum(g == oos for g in gold),
        **full,
        "paths": {p: paths.get(p, 0) for p in ("template", "retrieval", "handoff")},
        "intent_only": intent_scores(gold, intents, confident, oos),
        "confidence_threshold": bot.threshold,
        "intent_threshold": alone,
        "retrieval_threshold": getattr(bot, "retrieval_threshold", None),
        "min_retrieval_score": getattr(bot, "min_retrieval_score", None),
    }
    if bot.retriever is not None:
        column = doc_column or meta.get("doc_column")
        gold_docs = _gold_documents(data, named, column, bot.retriever)
        if gold_docs is not None:
            queries = [r["text"] for r, d in zip(named, gold_docs, strict=True) if d]
            docs = [d for d in gold_docs if d]
            if queries:
                # retrieval answers (the assistant's own): was their first source the article?
                by_path = [
                    (a["sources"][0]["doc_id"] == d, g == oos)
                    for a, d, g in zip(replies, gold_docs, gold, strict=True)
                    if d and a["path"] == "retrieval"
                ]
                result["retrieval"] = {
                    "gold": f"column {column!r}" if column else "the intent's article",
                    **retrieval_scores(bot.retriever, queries, docs, k=10),
                    "answers": len(by_path),
                    "answers_right_article": _share([ok for ok, _ in by_path]),
                    "oos_answers": sum(o for _, o in by_path),
                    "oos_answers_right_article": _share([ok for ok, o in by_path if o]),
                }
    atomic_json(root / "support_eval.json", result)
    return result


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _gold_documents(
    data: str | Path, rows: list[dict[str, str]], column: str | None, retriever: Any
) -> list[str | None] | None:
    """Each row's gold article id (None: unknown), from `column` when the data has it, else
    the row's intent when the knowledge base has an article of that id; None when neither."""
    known = {p.doc_id for p in getattr(retriever, "passages_", [])}
    if column:
        from tailorml.data.readers import is_missing, read_table

        table = read_table(data, key="--data")
        if column not in table.columns:
            raise ConfigError(
                f"--data {data}: no column {column!r} (the doc column); it has "
                f"{', '.join(table.columns)}. Pass --doc-column with one of them, or none."
            )
        # rows as read_intent_rows kept them: it refuses a file with bad rows, so none skipped
        values = [r.get(column) for r in table.rows]
        out = [None if is_missing(v) or not str(v).strip() else str(v) for v in values]
        unknown = sorted({d for d in out if d and d not in known})
        if unknown:
            raise ConfigError(
                f"--data {data}: column {column!r} names articles that are not in the "
                f"knowledge base: {', '.join(map(repr, unknown[:5]))}. Use the article ids "
                "(file paths without extension, as in RUN/index/passages.json)."
            )
        return out
    out = intent_documents([r["label"] for r in rows], known)
    return out if any(out) else None


def intent_documents(labels: list[str], known: set[str]) -> list[str | None]:
    """Each intent's article id when the knowledge base has an article named after it (less the
    characters a file name cannot well hold: Banking77's `reverted_card_payment?` is
    reverted_card_payment.md), else None."""
    named = {re.sub(r"[^\w/.-]", "", d): d for d in known} | {d: d for d in known}
    return [named.get(x, named.get(re.sub(r"[^\w/.-]", "", x))) for x in labels]
