"""End-to-end finwatch throughput: ingest -> score -> store -> aggregate -> detect, in events per
second, through the real watcher into SQLite (WAL) in a temp folder, fresh database per run.

Variants, all measured in the same run, repeats interleaved (round robin) so that a drifting
load on a shared machine hits them alike; medians reported:

- the multi-task model (one encoder, topic + sentiment heads) as fp32 torch and as the
  compression stage's onnx-int8, each scored
  - as one padded batch per micro-batch on all threads (`chunk = batch`, no workers), and
  - sorted by length in chunks of C texts, one worker thread per core (finwatch's default);
- onnx-int8 with chunk sizes 1, 4, 16 (the choice of the default);
- two encoders (the same onnx-int8 folder run as the topic and as the sentiment model: the cost
  of two separately trained models of this size), side by side;
- onnx-int8, one event at a time (batch_size 1).

    flock /tmp/tailorml-heavy.lock python benchmarks/finwatch_throughput.py \\
        --model runs/finwatch-model/model --onnx runs/finwatch-model/compressed/onnx-int8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_once(models: dict[str, Any], events: list, batch: int) -> float:
    from tailorml.apps.finwatch import store
    from tailorml.apps.finwatch.config import FinwatchConfig
    from tailorml.apps.finwatch.pipeline import Watcher
    from tailorml.apps.finwatch.scorer import ModelScorer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = FinwatchConfig(db=f"sqlite:///{tmp}/b.db", batch_size=batch, models=models)
        scorer = ModelScorer(cfg.models)
        w = Watcher(cfg, store.make_engine(cfg.db), scorer).open()
        step = max(batch, 256)
        t0 = time.perf_counter()
        for i in range(0, len(events), step):
            w.ingest(events[i : i + step], "bench")
        w.advance(final=True)
        secs = time.perf_counter() - t0
        assert store.counts(w.engine)["events"] == len(events)
        w.engine.dispose()
        if scorer._pool is not None:
            scorer._pool.shutdown()
    return len(events) / secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True, help="multi-task fp32 model folder")
    ap.add_argument("--onnx", type=Path, required=True, help="its onnx-int8 folder")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the slow fp32 variants")
    ap.add_argument("--out", type=Path, default=Path("runs/finwatch-throughput.json"))
    args = ap.parse_args()

    from tailorml.apps.finwatch.replay import make_stream

    events = make_stream(24, [], rate_per_min=20, seed=0)[: args.events]
    th, b, c = args.threads, args.batch, args.chunk

    def multi(folder: Path, chunk: int, parallel: bool) -> dict[str, Any]:
        return {"model": folder, "threads": th, "chunk_size": chunk, "parallel": parallel}

    # name -> (models config, batch_size, events)
    variants: dict[str, tuple[dict[str, Any], int, int]] = {}
    if not args.quick:
        n_slow = max(400, args.events // 4)
        variants["fp32, one padded batch"] = (multi(args.model, b, False), b, n_slow)
        variants[f"fp32, sorted chunks of {c}"] = (multi(args.model, c, True), b, n_slow)
    variants["onnx-int8, one padded batch"] = (multi(args.onnx, b, False), b, args.events)
    for chunk in sorted({1, 4, 8, c, 16}):
        variants[f"onnx-int8, sorted chunks of {chunk}"] = (
            multi(args.onnx, chunk, True),
            b,
            args.events,
        )
    two = {"topic": args.onnx, "sentiment": args.onnx, "threads": th, "chunk_size": c}
    variants[f"two encoders onnx-int8, chunks of {c}"] = (two, b, args.events)
    variants["onnx-int8, one event at a time"] = (multi(args.onnx, 1, False), 1, args.events // 2)

    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for name, (models, batch, n) in variants.items():
            rate = run_once(models, events[:n], batch)
            rates[name].append(rate)
            print(f"[{r + 1}/{args.repeats}] {name:40s} {rate:7.1f} events/s", flush=True)
    rows = [
        {
            "variant": name,
            "batch_size": variants[name][1],
            "events": variants[name][2],
            "events_per_s_median": round(statistics.median(rs), 1),
            "runs": [round(x, 1) for x in rs],
        }
        for name, rs in rates.items()
    ]
    print(f"\n{'variant':40s} {'median ev/s':>12s}  runs")
    for row in rows:
        print(f"{row['variant']:40s} {row['events_per_s_median']:12.1f}  {row['runs']}")
    ours = rates[f"onnx-int8, sorted chunks of {c}"]
    for other in ("onnx-int8, one padded batch", f"two encoders onnx-int8, chunks of {c}"):
        ratios = [a / o for a, o in zip(ours, rates[other], strict=True)]
        print(f"ours / {other}: median of per-round ratios {statistics.median(ratios):.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "threads": th,
                "batch": b,
                "chunk": c,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
