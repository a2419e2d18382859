"""The variant `tailor compress` chose vs the Hugging Face `pipeline` on the same fp32 model.

Same texts (a fixed sample of the run's eval split), same thread count, one process, one run:
repetitions alternate between the two, and the table reports medians over repetitions.

    python benchmarks/compress_vs_pipeline.py RUN_DIR [--threads 1] [--texts 100] [--repeats 5]

Both sides return labels: the pipeline's {label, score}; ours `predictor.format(logits)`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# This checkout's tailorml, also when an installed copy exists elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see DESIGN.md: shared cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variant", help="compressed variant (default: the chosen one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--texts", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import pipeline

    from tailorml.compress.inputs import check_inputs
    from tailorml.compress.measure import latency_texts
    from tailorml.config.compress import CompressOptions
    from tailorml.models.base import quiet_transformers
    from tailorml.predictors import load_predictor

    quiet_transformers()
    torch.set_num_threads(args.threads)
    comp = json.loads((args.run_dir / "compression.json").read_text())
    variant = args.variant or next(v["name"] for v in comp if v["chosen"])
    folder = args.run_dir / "model" if variant == "fp32" else args.run_dir / "compressed" / variant
    inp = check_inputs(args.run_dir, CompressOptions(variants=["onnx-fp32"]))
    texts = latency_texts(inp.eval.texts, args.texts)

    ours = load_predictor(folder, threads=args.threads)
    pipe = pipeline(
        "text-classification", model=str(args.run_dir / "model"), device=-1, truncation=True
    )
    max_len = int(inp.info.get("max_length", 128))
    pipe.tokenizer.model_max_length = max_len  # same truncation as ours

    def ours_one(t: str) -> object:
        return ours.format(ours.predict([t]), top_k=1)

    def pipe_one(t: str) -> object:
        return pipe(t)

    def ours_batch(ts: list[str]) -> object:
        return ours.format(ours.predict(ts), top_k=1)

    def pipe_batch(ts: list[str]) -> object:
        return pipe(ts, batch_size=len(ts))

    # Same answers first: label agreement of the two on the benchmark texts.
    a = [p["label"] for p in ours_batch(texts)]  # type: ignore[attr-defined]
    b = [p["label"] for p in pipe_batch(texts)]  # type: ignore[attr-defined]
    agree = float(np.mean([x == y for x, y in zip(a, b, strict=True)]))

    for _ in range(5):  # warm-up, not timed
        ours_one(texts[0]), pipe_one(texts[0])
        ours_batch(texts[: args.batch]), pipe_batch(texts[: args.batch])

    res: dict[str, dict[str, list[float]]] = {
        k: {"b1": [], "b32": []} for k in ("pipeline", "ours")
    }
    for _ in range(args.repeats):
        for name, one, many in (
            ("pipeline", pipe_one, pipe_batch),
            ("ours", ours_one, ours_batch),
        ):
            lat = []
            for t in texts:
                t0 = time.perf_counter()
                one(t)
                lat.append(time.perf_counter() - t0)
            res[name]["b1"].append(float(np.median(lat)) * 1000)
            lat = []
            for i in range(0, len(texts) - args.batch + 1, args.batch):
                t0 = time.perf_counter()
                many(texts[i : i + args.batch])
                lat.append(time.perf_counter() - t0)
            res[name]["b32"].append(float(np.median(lat)) * 1000)

    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res.items()}
    print(f"run: {args.run_dir}  variant: {variant}  threads: {args.threads}  texts: {len(texts)}")
    print(f"repetitions: {args.repeats} (alternating), label agreement: {agree:.4f}")
    print(f"{'':34} {'b1 p50 ms':>10} {f'b{args.batch} p50 ms':>12}")
    print(
        f"{'HF pipeline, fp32 PyTorch':34} {med['pipeline']['b1']:10.2f} "
        f"{med['pipeline']['b32']:12.1f}"
    )
    print(f"{'tailorml ' + variant:34} {med['ours']['b1']:10.2f} {med['ours']['b32']:12.1f}")
    r1 = med["pipeline"]["b1"] / med["ours"]["b1"]
    r32 = med["pipeline"]["b32"] / med["ours"]["b32"]
    print(f"ratio (pipeline / ours): batch 1 {r1:.2f}x, batch {args.batch} {r32:.2f}x")
    print(json.dumps({"variant": variant, "ratio_b1": r1, "ratio_b32": r32, "medians": med}))


if __name__ == "__main__":
    main()
