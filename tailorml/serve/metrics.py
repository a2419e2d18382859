"""Prometheus metrics: requests, latency, batch sizes, queue depth, errors.

One worker: metrics live in the app's own registry. Several workers (`--workers N`): the parent sets
PROMETHEUS_MULTIPROC_DIR before the workers start, each worker writes its values to files there and
`/metrics` (answered by whichever worker the kernel picks) sums them over every worker.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tailorml_requests", "HTTP requests answered.", ["path", "status"], registry=r
        )
        self.latency = Histogram(
            "tailorml_request_latency_seconds",
            "Time from request received to response, by path.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inputs = Counter("tailorml_inputs", "Inputs predicted.", registry=r)
        self.batch_size = Histogram(
            "tailorml_batch_size", "Inputs per model call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "tailorml_batch_seconds",
            "Model time per batch (tokenize + forward + format).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "tailorml_queue_depth",
            "Inputs waiting for the model.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.errors = Counter(
            "tailorml_errors",
            "Requests refused or failed, by kind (auth, validation, too_large, queue_full, "
            "timeout, internal).",
            ["kind"],
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
