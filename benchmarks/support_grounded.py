"""Grounded answers of the support assistant on Banking77: written answers against references.

Each question of data/banking77_answers/test.jsonl (231 Banking77 test questions, each with the
one-line answer written for its intent) is searched in the demo's knowledge base
(data/banking77_help/articles, one article per intent) as the assistant's retrieval path does
(the demo config's dense retriever, `--sources` passages: the best one and the others over
`--floor`), then answered two ways:

- extractive: the best passage, as the assistant answers without `generation.run`;
- generated: a causal LM (each `--generation`: `smollm2`, a run folder or a model folder) writes
  the reply from the passages with the assistant's own prompt (apps/support/grounded.py).

Scores against the reference answer: ROUGE-L F1 and token F1 (tailorml/evaluate/text_metrics.py;
citation markers like [1] are removed first, and the `Sources:` line the assistant adds when the
model cites nothing is not scored). Sources: `top1_right` is the share whose first returned
source is the question's intent article; for generated answers `cites_any` is the share citing
at least one passage and `cited_right` the share whose first citation is the right article
(answers citing nothing count as wrong there).

    flock /tmp/tailorml-heavy.lock python benchmarks/support_grounded.py --n 64 --generation smollm2
"""

from __future__ import annotations

import argparse
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


def strip_citations(text: str) -> str:
    return re.sub(r"\s*\[\d+\]", "", text).strip()


def scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    from tailorml.evaluate.text_metrics import text_scores

    got = text_scores(predictions, references)
    return {k: round(got[k], 4) for k in ("rouge_l", "token_f1")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--articles", type=Path, default=REPO / "data/banking77_help/articles")
    ap.add_argument("--test", type=Path, default=REPO / "data/banking77_answers/test.jsonl")
    ap.add_argument("--n", type=int, default=64, help="questions (a seeded sample; 0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generation", nargs="*", default=["smollm2"], help="causal LMs to compare")
    ap.add_argument("--sources", type=int, default=3, help="passages retrieved (support.sources)")
    ap.add_argument("--floor", type=float, default=0.45, help="min_retrieval_score for extra ones")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="answers generated per batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    args = ap.parse_args()

    import torch

    from tailorml import env
    from tailorml.apps.support.evaluate import intent_documents
    from tailorml.apps.support.grounded import (
        answer_passages,
        citations,
        cite,
        declines,
        grounded_messages,
    )
    from tailorml.apps.support.knowledge import load_passages
    from tailorml.apps.support.retrieval import DenseRetriever
    from tailorml.predictors.generator import Generator

    env.setup()
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.test.read_text(encoding="utf-8").splitlines()]
    if args.n and args.n < len(rows):
        rows = random.Random(args.seed).sample(rows, args.n)
    questions = [r["prompt"] for r in rows]
    refs = [r["response"] for r in rows]

    passages = load_passages(args.articles)
    gold = intent_documents([r["intent"] for r in rows], {p.doc_id for p in passages})
    retriever = DenseRetriever(threads=args.threads).fit(passages)
    hits = retriever.search_many(questions, k=args.sources)
    used = [answer_passages(h, args.floor) for h in hits]
    top1 = statistics.fmean(u[0].doc_id == g for u, g in zip(used, gold, strict=True))
    results: dict[str, Any] = {
        "extractive": {
            **scores([u[0].text for u in used], refs),
            "top1_right": round(top1, 4),
            "passages_per_answer": round(statistics.fmean(len(u) for u in used), 2),
        }
    }
    print(f"{len(rows)} questions; extractive: {results['extractive']}", flush=True)
    examples: dict[str, list[dict[str, Any]]] = {}
    for source in args.generation:
        t0 = time.perf_counter()
        gen = Generator.load(source)
        load_s = time.perf_counter() - t0
        chats = [grounded_messages(q, u) for q, u in zip(questions, used, strict=True)]
        t0 = time.perf_counter()
        outs = []
        for i in range(0, len(chats), args.batch):
            got = gen.generate(
                chats[i : i + args.batch], max_new_tokens=args.max_new_tokens,
                batch_size=args.batch,
            )  # fmt: skip
            outs += [g.output for g in got]
            print(f"  {source}: {len(outs)}/{len(chats)} answers", flush=True)
        gen_s = time.perf_counter() - t0
        cited = [citations(o, len(u)) for o, u in zip(outs, used, strict=True)]
        right = [
            bool(c) and u[c[0] - 1].doc_id == g for c, u, g in zip(cited, used, gold, strict=True)
        ]
        results[f"generated:{source}"] = {
            **scores([strip_citations(o) for o in outs], refs),
            "top1_right": round(top1, 4),
            "cites_any": round(statistics.fmean(bool(c) for c in cited), 4),
            "cited_right": round(statistics.fmean(right), 4),
            # which passage the answer cites first (0: none), e.g. always [1]
            "first_cited": {
                str(k): sum((c[0] if c else 0) == k for c in cited) for k in range(args.sources + 1)
            },  # fmt: skip
            "handoffs": sum(declines(o) for o in outs),
            "load_s": round(load_s, 1),
            "seconds_per_answer": round(gen_s / len(chats), 2),
        }
        examples[source] = [
            {"question": q, "reference": r, "answer": cite(o, u), "gold": g,
             "sources": [x.doc_id for x in u]}
            for q, r, o, u, g in list(zip(questions, refs, outs, used, gold, strict=True))[:8]
        ]  # fmt: skip
        print(f"{source}: {results[f'generated:{source}']}", flush=True)
        del gen

    from tailorml.env import machine_info

    report = {
        "benchmark": "support_grounded",
        "command": " ".join(sys.argv),
        "questions": len(rows),
        "seed": args.seed,
        "sources": args.sources,
        "floor": args.floor,
        "max_new_tokens": args.max_new_tokens,
        "machine": machine_info(),
        "results": results,
        "examples": examples,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
