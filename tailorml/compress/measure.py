"""Measure a model folder the way it is served: `load_predictor(folder).predict(texts)`
(tokenization included), with pinned threads, warm-up excluded, several repetitions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Timing:
    b1_p50: float
    b1_p99: float
    b32_p50: float
    b32_p99: float
    throughput: float  # examples per second at batch 32

    def as_dict(self) -> dict[str, float]:
        return {
            "latency_ms_b1_p50": round(self.b1_p50, 3),
            "latency_ms_b1_p99": round(self.b1_p99, 3),
            "latency_ms_b32_p50": round(self.b32_p50, 3),
            "latency_ms_b32_p99": round(self.b32_p99, 3),
            "throughput_per_s_b32": round(self.throughput, 1),
        }


def latency_texts(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """A fixed random sample of eval texts (the same for every variant)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[int(i)] for i in idx]


def time_predictor(
    predictor: Any,
    texts: list[str],
    pairs: list[str] | None = None,
    repeats: int = 3,
    warmup: int = 5,
    batch: int = 32,
) -> Timing:
    """Per-request latency at batch 1 over every sampled text, `repeats` times; per-batch latency
    at batch `batch` over the same texts, `repeats` times. Warm-up calls are not timed."""

    if len(texts) < batch:  # fewer sampled texts than one batch: cycle them to fill it
        reps = batch // len(texts) + 1
        texts = (texts * reps)[:batch] if len(texts) < batch else texts
        pairs = (pairs * reps)[:batch] if pairs is not None else None

    def call(i: int, j: int) -> None:
        predictor.predict(texts[i:j], pairs[i:j] if pairs is not None else None)

    for i in range(warmup):
        call(i % len(texts), i % len(texts) + 1)
        call(0, batch)
    one: list[float] = []
    many: list[float] = []
    for _ in range(repeats):
        for i in range(len(texts)):
            t0 = time.perf_counter()
            call(i, i + 1)
            one.append(time.perf_counter() - t0)
        for i in range(0, len(texts) - batch + 1, batch):
            t0 = time.perf_counter()
            call(i, i + batch)
            many.append(time.perf_counter() - t0)
    a, b = np.asarray(one) * 1000, np.asarray(many) * 1000
    return Timing(
        float(np.percentile(a, 50)),
        float(np.percentile(a, 99)),
        float(np.percentile(b, 50)),
        float(np.percentile(b, 99)),
        float(batch * len(b) / (b.sum() / 1000)),
    )


def all_logits(
    predictor: Any, texts: list[str], pairs: list[str] | None = None, batch: int = 64
) -> np.ndarray:
    """Logits (n, num_labels) for every text, in order (batches sorted by length: less padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        chunk = predictor.predict(
            [texts[j] for j in idx], [pairs[j] for j in idx] if pairs is not None else None
        )
        if out is None:
            out = np.zeros((len(texts), chunk.shape[1]), dtype=np.float32)
        out[idx] = chunk
    assert out is not None
    return out


def drift(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """How far a variant's logits are from the fp32 reference on the same inputs (whether they
    still give the same answers is the task's `agreement`)."""
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return {
        "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if diff.size else 0.0,
        "n": int(len(ref)),
    }
