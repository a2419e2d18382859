"""Prometheus metrics: requests, latency, batch sizes, queue depth, errors.

One worker: metrics live in the app's own registry. Several workers (`--workers N`): the parent sets
PROMETHEUS_MULTIPROC_DIR before the workers start, each worker writes its values to files there and
`/metrics` (answered by whichever worker the kernel picks) sums them over every worker.
"""

from __future__ import annotations

import os
import time

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


class GenerationMetrics(Metrics):
    """The kit's request metrics, plus tokens, time to first token and the decode batch."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.generated = Counter(
            "tailorml_generated_tokens", "Tokens generated (rate() = tokens/s).", registry=r
        )
        self.prompt_tokens = Counter(
            "tailorml_prompt_tokens", "Prompt tokens prefilled.", registry=r
        )
        self.ttft = Histogram(
            "tailorml_time_to_first_token_seconds",
            "From request queued to its first token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Gauge(
            "tailorml_tokens_per_second",
            "Tokens generated per second over the last few seconds.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.running = Gauge(
            "tailorml_running_sequences",
            "Generations in the decode batch.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.finished = Counter(
            "tailorml_generations", "Generations ended, by finish_reason.", ["reason"], registry=r
        )
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    def on_step(self, rows: int, tokens: int, seconds: float) -> None:
        """Called by the engine thread after each decode step."""
        self.batch_size.observe(rows)
        self.batch_seconds.observe(seconds)
        self.generated.inc(tokens)
        self.running.set(rows)
        self._window_tokens += tokens
        now = time.perf_counter()
        if now - self._window_start >= 2.0:
            self.tokens_per_second.set(self._window_tokens / (now - self._window_start))
            self._window_start, self._window_tokens = now, 0
