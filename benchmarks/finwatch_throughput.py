"""End-to-end finwatch throughput: ingest -> score (two model folders) -> store -> aggregate ->
detect, events per second, through the real watcher into SQLite (WAL) in a temp folder.

Compares the micro-batched watcher (batch_size B) with the same watcher scoring one event at a
time (batch_size 1) on the same events, model and machine, and prints the ratio; repeats and
reports medians (shared machines are noisy). Models: a topic and a sentiment model folder (torch,
torch dynamic-int8 via task.json, or ONNX — whatever `load_predictor` runs).

    flock /tmp/tailorml-heavy.lock python benchmarks/finwatch_throughput.py \\
        --topic runs/finwatch-topic/model --sentiment runs/finwatch-sentiment/model --int8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def int8_copy(folder: Path, dst: Path) -> Path:
    """Dynamic-int8 variant: same weights; task.json asks the runtime to quantize Linear layers."""
    shutil.copytree(folder, dst)
    info = json.loads((dst / "task.json").read_text())
    info["torch_dynamic_int8"] = True
    (dst / "task.json").write_text(json.dumps(info))
    return dst


def run_once(
    topic: Path, sentiment: Path, events: list, batch: int, threads: int, parallel: bool = True
) -> float:
    from tailorml.apps.finwatch import store
    from tailorml.apps.finwatch.config import FinwatchConfig
    from tailorml.apps.finwatch.pipeline import Watcher
    from tailorml.apps.finwatch.scorer import ModelScorer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = FinwatchConfig(
            db=f"sqlite:///{tmp}/b.db",
            batch_size=batch,
            models={
                "topic": topic,
                "sentiment": sentiment,
                "threads": threads,
                "parallel": parallel,
            },
        )
        scorer = ModelScorer(cfg.models)
        w = Watcher(cfg, store.make_engine(cfg.db), scorer).open()
        chunk = max(batch, 256)
        t0 = time.perf_counter()
        for i in range(0, len(events), chunk):
            w.ingest(events[i : i + chunk], "bench")
        w.advance(final=True)
        secs = time.perf_counter() - t0
        assert store.counts(w.engine)["events"] == len(events)
        w.engine.dispose()
    return len(events) / secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", type=Path, required=True)
    ap.add_argument("--sentiment", type=Path, required=True)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--int8", action="store_true", help="Also run dynamic-int8 variants.")
    ap.add_argument(
        "--pair",
        action="append",
        default=[],
        help="Another variant NAME=TOPIC_FOLDER,SENTIMENT_FOLDER (e.g. ONNX int8 exports).",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/finwatch-throughput.json"))
    args = ap.parse_args()

    from tailorml.apps.finwatch.replay import make_stream

    events = make_stream(24, [], rate_per_min=20, seed=0)[: args.events]
    variants = {"fp32": (args.topic, args.sentiment)}
    variants["fp32-sequential"] = (args.topic, args.sentiment)  # both models on all threads
    tmpdir = Path(tempfile.mkdtemp(prefix="fw-int8-"))
    if args.int8:
        variants["int8"] = (
            int8_copy(args.topic, tmpdir / "topic"),
            int8_copy(args.sentiment, tmpdir / "sentiment"),
        )
    for spec in args.pair:
        name, _, folders = spec.partition("=")
        t, _, s = folders.partition(",")
        variants[name] = (Path(t), Path(s))
    rows = []
    for name, (t, s) in variants.items():
        for batch in (args.batch, 1):
            if batch == 1 and name != "fp32":
                continue  # one-at-a-time only for the reference variant (saves shared CPU time)
            n = args.events if batch > 1 else max(200, args.events // 5)
            rates = [
                run_once(t, s, events[:n], batch, args.threads, name != "fp32-sequential")
                for _ in range(args.repeats)
            ]
            rows.append(
                {
                    "variant": name,
                    "batch_size": batch,
                    "events": n,
                    "events_per_s_median": statistics.median(rates),
                    "runs": rates,
                }
            )
            print(
                f"{name:5s} batch={batch:3d} events={n:5d} "
                f"median {statistics.median(rates):7.1f} events/s "
                f"runs {[round(r) for r in rates]}",
                flush=True,
            )
    for name in ["fp32"]:
        b = next(r for r in rows if r["variant"] == name and r["batch_size"] > 1)
        one = next(r for r in rows if r["variant"] == name and r["batch_size"] == 1)
        print(
            f"{name}: micro-batched / one-at-a-time = "
            f"{b['events_per_s_median'] / one['events_per_s_median']:.2f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
