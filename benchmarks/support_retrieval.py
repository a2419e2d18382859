"""Support retrieval on Banking77: each test question -> its intent's help article.

The knowledge base is data/banking77_help/articles/ (77 articles written for the demo, one per
intent, file name = intent); the queries are Banking77's test questions (3,080), each judged
right when its intent's article comes back. Scores: recall@1, recall@5 and MRR@10 for BM25,
dense (packaged all-MiniLM-L6-v2 + faiss) and their reciprocal-rank fusion (k=60), all from one
run; index build time and query throughput (median of --repeats passes over all queries, in
batches of --batch) for each.

`--tune-queries` adds dense and hybrid with the query encoder tuned contrastively on Banking77's
*training* questions, each toward its intent's article (apps/support/query_tuning.py; the
passages keep the packaged encoder's vectors), and records the tuning's time and loss.

    flock /tmp/tailorml-heavy.lock python benchmarks/support_retrieval.py --threads 2
    flock /tmp/tailorml-heavy.lock python benchmarks/support_retrieval.py --threads 2 --tune-queries
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    from tailorml.env import machine_info

    return machine_info()


def intent_file(intent: str) -> str:
    """The article id of an intent: its name less characters file systems refuse (the
    intent `reverted_card_payment?` is the file reverted_card_payment.md)."""
    return re.sub(r'[<>:"/\\|?*]', "", intent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--articles", type=Path, default=REPO / "data/banking77_help/articles")
    ap.add_argument("--test", type=Path, default=REPO / "data/banking77/test.csv")
    ap.add_argument("--limit", type=int, default=None, help="first N questions only (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256, help="queries per search_many call")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per retriever")
    ap.add_argument("--max-words", type=int, default=200, help="passage size (words)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: results/)")
    ap.add_argument("--tune-queries", action="store_true", help="add query-tuned dense/hybrid")
    ap.add_argument("--train", type=Path, default=REPO / "data/banking77/train.csv")
    ap.add_argument("--tune-epochs", type=float, default=2.0)
    ap.add_argument("--tune-lr", type=float, default=3e-5)
    ap.add_argument(
        "--tune-exclude", nargs="*", default=[],
        help="intents whose training questions the tuning never sees; every retriever is also "
        "scored on the test questions of these intents alone (`unseen`)",
    )  # fmt: skip
    ap.add_argument(
        "--mixes", type=float, nargs="*", default=[],
        help="query_mix values to compare (the tuned query vector's share); with them, "
        "--val-share of the tuned intents' training questions is kept out of the tuning and, "
        "with the training questions of --tune-exclude, chooses the mix (never the test set)",
    )  # fmt: skip
    ap.add_argument("--val-share", type=float, default=0.1)
    args = ap.parse_args()

    import torch

    from tailorml import env
    from tailorml.apps.support.evaluate import retrieval_scores
    from tailorml.apps.support.knowledge import load_passages
    from tailorml.apps.support.retrieval import BM25Retriever, DenseRetriever, HybridRetriever
    from tailorml.models.sentence import SentenceEncoder

    env.setup()
    torch.set_num_threads(args.threads)
    with args.test.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[: args.limit]
    queries = [r["text"] for r in rows]
    gold = [intent_file(r["category"]) for r in rows]
    passages = load_passages(args.articles, args.max_words)
    print(f"{len({p.doc_id for p in passages})} articles, {len(passages)} passages, "
          f"{len(queries)} questions", flush=True)  # fmt: skip

    t0 = time.perf_counter()
    encoder = SentenceEncoder("minilm", threads=args.threads)
    encoder.encode(["warm-up"])  # loads the weights: timed apart from the index build
    load_s = time.perf_counter() - t0

    tuning, query_base = None, None
    if args.tune_queries:
        import tempfile

        from tailorml.apps.support.query_tuning import tune_query_encoder

        with args.train.open(encoding="utf-8", newline="") as fh:
            train = list(csv.DictReader(fh))
        # with --mixes: a seeded share of the tuned intents' questions is kept for validation
        pick = random.Random(0)
        for r in train:
            excluded = r["category"] in args.tune_exclude
            r["val"] = "unseen" if excluded else "seen" if args.mixes and (
                pick.random() < args.val_share) else ""  # fmt: skip
        query_base = tempfile.mkdtemp(prefix="qenc-")
        tuning = tune_query_encoder(
            "minilm", passages, [r["text"] for r in train],
            [None if r["val"] else intent_file(r["category"]) for r in train], query_base,
            epochs=args.tune_epochs, lr=args.tune_lr, threads=args.threads, log=print,
        )  # fmt: skip
        print(f"query tuning: {tuning}", flush=True)

    def build(name: str) -> Any:
        if name == "bm25":
            return BM25Retriever()
        tuned = query_base if name.endswith("tuned") else None
        dense = DenseRetriever(threads=args.threads, encoder=encoder, query_base=tuned)
        return dense if name.startswith("dense") else HybridRetriever(BM25Retriever(), dense)

    names = ["bm25", "dense", "hybrid"] + (["dense-tuned", "hybrid-tuned"] if tuning else [])
    results: dict[str, Any] = {}
    for name in names:
        t0 = time.perf_counter()
        retriever = build(name).fit(passages)
        build_s = time.perf_counter() - t0
        passes = []
        scores: dict[str, Any] = {}
        for _ in range(args.repeats):
            # Scoring runs search_many in batches (as a service would); each pass is timed.
            t0 = time.perf_counter()
            scores = batched_scores(retriever, queries, gold, args.batch, retrieval_scores)
            passes.append(time.perf_counter() - t0)
        qps = [len(queries) / s for s in passes]
        unseen = [j for j, r in enumerate(rows) if r["category"] in args.tune_exclude]
        if unseen:
            scores["unseen"] = batched_scores(
                retriever, [queries[j] for j in unseen], [gold[j] for j in unseen],
                args.batch, retrieval_scores,
            )  # fmt: skip
        results[name] = {
            **scores,
            "index_build_s": round(build_s, 3),
            "queries_per_s_median": round(statistics.median(qps), 1),
            "queries_per_s_passes": [round(x, 1) for x in qps],
        }
        print(f"{name}: {results[name]}", flush=True)

    mixes = (
        mix_sweep(args, train, rows, passages, encoder, query_base, batched_scores)
        if tuning and args.mixes
        else None
    )
    report = {
        "benchmark": "support_retrieval",
        "machine": machine(),
        "threads": args.threads,
        "articles": str(args.articles.relative_to(REPO))
        if args.articles.is_relative_to(REPO)
        else str(args.articles),  # fmt: skip
        "passages": len(passages),
        "max_words": args.max_words,
        "queries": len(queries),
        "batch": args.batch,
        "repeats": args.repeats,
        "encoder_load_s": round(load_s, 2),
        "query_tuning": tuning,
        "tune_exclude": args.tune_exclude,
        "mixes": mixes,
        "results": results,
    }
    print()
    print(table(report))
    out = (
        args.out
        or REPO / "benchmarks/results" / f"support_retrieval_{time.strftime('%Y-%m-%d')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {out}")


def mix_sweep(
    args: argparse.Namespace,
    train: list[dict[str, str]],
    rows: list[dict[str, str]],
    passages: Any,
    encoder: Any,
    query_base: str,
    scores: Any,
) -> dict[str, Any]:
    """Dense retrieval with the tuned queries at each --mixes value, on the validation questions
    (tuned intents' kept-out share: `val_seen`; --tune-exclude intents: `val_unseen`) and the
    test questions; the mix with the best mean validation recall@1 is `chosen`."""
    from tailorml.apps.support.evaluate import retrieval_scores
    from tailorml.apps.support.retrieval import DenseRetriever

    sets = {
        "val_seen": [r for r in train if r["val"] == "seen"],
        "val_unseen": [r for r in train if r["val"] == "unseen"],
        "test": rows,
        "test_unseen": [r for r in rows if r["category"] in args.tune_exclude],
    }
    out: dict[str, Any] = {"sizes": {k: len(v) for k, v in sets.items()}, "by_mix": {}}
    for mix in args.mixes:
        r = DenseRetriever(threads=args.threads, encoder=encoder, query_base=query_base,
                           query_mix=mix).fit(passages)  # fmt: skip
        out["by_mix"][str(mix)] = {
            k: scores(r, [x["text"] for x in v], [intent_file(x["category"]) for x in v],
                      args.batch, retrieval_scores)
            for k, v in sets.items() if v
        }  # fmt: skip
        print(f"mix {mix}: {out['by_mix'][str(mix)]}", flush=True)
    val = [k for k in ("val_seen", "val_unseen") if sets[k]]
    out["chosen"] = max(
        args.mixes,
        key=lambda m: sum(out["by_mix"][str(m)][k]["recall@1"] for k in val) / len(val),
    )
    return out


def batched_scores(
    retriever: Any, queries: list[str], gold: list[str], batch: int, score: Any
) -> dict[str, Any]:
    """retrieval_scores over batches of queries, combined (weighted by batch size)."""
    total: dict[str, float] = {"recall@1": 0.0, "recall@5": 0.0, "mrr@10": 0.0}
    for i in range(0, len(queries), batch):
        part = score(retriever, queries[i : i + batch], gold[i : i + batch], k=10)
        for key in total:
            total[key] += part[key] * part["queries"]
    return {k: round(v / len(queries), 4) for k, v in total.items()} | {"queries": len(queries)}


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores ({m['cpu_flags']}), {r['threads']} threads, {m['date']}",
        f"{r['queries']} questions -> {r['passages']} passages (max {r['max_words']} words); "
        f"encoder load {r['encoder_load_s']} s",
        "",
        "| retriever | recall@1 | recall@5 | MRR@10 | index build (s) | queries/s (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in r["results"].items():
        lines.append(
            f"| {name} | {x['recall@1']:.4f} | {x['recall@5']:.4f} | {x['mrr@10']:.4f} | "
            f"{x['index_build_s']} | {x['queries_per_s_median']} |"
        )
    unseen = {n: x["unseen"] for n, x in r["results"].items() if "unseen" in x}
    if unseen:
        n = next(iter(unseen.values()))["queries"]
        lines += [
            "",
            f"Intents the tuning never saw ({', '.join(r['tune_exclude'])}): {n} test questions",
            "",
            "| retriever | recall@1 | recall@5 | MRR@10 |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {x['recall@1']:.4f} | {x['recall@5']:.4f} | {x['mrr@10']:.4f} |"
            for k, x in unseen.items()
        ]
    if r.get("mixes"):
        x = r["mixes"]
        lines += ["", f"Tuned query vector's share (query_mix); chosen on validation: "
                  f"{x['chosen']}  (sizes {x['sizes']})", "",
                  "| mix | val seen r@1 | val unseen r@1 | test r@1 | test MRR@10 | test unseen |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for mix, v in x["by_mix"].items():

            def g(k: str, m: str = "recall@1", v: dict = v) -> str:
                return f"{v[k][m]:.4f}" if k in v else "-"

            lines.append(f"| {mix} | {g('val_seen')} | {g('val_unseen')} | {g('test')} | "
                         f"{g('test', 'mrr@10')} | {g('test_unseen')} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
