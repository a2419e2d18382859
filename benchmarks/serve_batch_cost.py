"""What one input costs inside a model call: alone, in an unsorted batch, in length-sorted groups.

This is why `tailor serve` sorts each micro-batch by token length and splits it where padding would
waste more than 10%: on CPU, padding is pure waste and a call costs little beyond its compute.

    python benchmarks/serve_batch_cost.py MODEL_DIR --threads 2 --batch 32 --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's tailorml, not an installed one


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=128, help="Texts per measurement.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--texts", default=str(REPO / "data/twitter_fin_sentiment/sent_valid.csv"))
    args = ap.parse_args()

    from tailorml.predictors import load_predictor
    from tailorml.serve.batcher import plan_groups

    with open(args.texts, newline="", encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)][: args.n]
    p = load_predictor(args.model, threads=args.threads)
    p.predict(texts[:8])
    bs = args.batch

    def lengths(chunk: list[str]) -> list[int]:
        return p.lengths(chunk)

    def single() -> None:
        for t in texts:
            p.predict([t])

    def unsorted() -> None:
        for i in range(0, len(texts), bs):
            p.predict(texts[i : i + bs])

    def grouped(waste: float) -> None:
        for i in range(0, len(texts), bs):
            chunk = texts[i : i + bs]
            for g in plan_groups(lengths(chunk), waste):
                p.predict([chunk[j] for j in g])

    cases = {
        "one call per input": single,
        f"batches of {bs}, unsorted": unsorted,
        f"batches of {bs}, sorted, 30% waste": lambda: grouped(0.3),
        f"batches of {bs}, sorted, 10% waste (default)": lambda: grouped(0.1),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits every case alike
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / len(texts) * 1000)
    base = statistics.median(times["one call per input"])
    print(f"{args.model}: {len(texts)} texts, {args.threads} thread(s), median of {args.repeats}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:<42} {m:6.2f} ms/input   {m / base:4.2f}x one call per input")


if __name__ == "__main__":
    main()
