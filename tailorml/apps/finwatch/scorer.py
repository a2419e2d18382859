"""Topic and sentiment for a micro-batch of events.

`ModelScorer` runs two model folders through `tailorml.runtimes.load_predictor`, so a torch run
folder, a dynamic-int8 one or an ONNX export from the compression stage all plug in unchanged.
`LabelScorer` trusts the `labels` of replayed labeled events (to measure the detector alone).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from tailorml.apps.finwatch.config import ModelsConfig
from tailorml.apps.finwatch.events import Event

SENTIMENTS = ("negative", "neutral", "positive")


class Scorer(Protocol):
    topics: list[str]

    def problem(self, event: Event) -> str | None: ...

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        """(topic, sentiment in SENTIMENTS, p_negative) per event."""
        ...


def _norm(label: str, cfg: ModelsConfig) -> str:
    if label == cfg.negative_label or label.lower() in ("negative", "bearish"):
        return "negative"
    if label == cfg.positive_label or label.lower() in ("positive", "bullish"):
        return "positive"
    return "neutral"


def _softmax(x: np.ndarray) -> np.ndarray:  # (batch, classes)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ModelScorer:
    def __init__(self, cfg: ModelsConfig):
        from tailorml.runtimes import load_predictor

        assert cfg.topic is not None and cfg.sentiment is not None
        self.cfg = cfg
        threads = cfg.threads
        self._pool = None
        if cfg.parallel:
            # The two models run side by side, one thread pool each, splitting the cores; torch
            # and onnxruntime release the GIL while they compute.
            from concurrent.futures import ThreadPoolExecutor

            threads = max(1, (threads or os.cpu_count() or 2) // 2)
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="finwatch-score")
        self.topic = load_predictor(cfg.topic, threads=threads)
        self.sentiment = load_predictor(cfg.sentiment, threads=threads)
        self.topics = list(self.topic.labels or [])
        labels = list(self.sentiment.labels or [])
        self._sent = [_norm(lab, cfg) for lab in labels]
        self._neg = [i for i, s in enumerate(self._sent) if s == "negative"]

    def problem(self, event: Event) -> str | None:
        return None

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        texts = [e.text for e in events]
        if self._pool is not None:
            fut = self._pool.submit(self.sentiment.predict, texts)
            t_logits = self.topic.predict(texts)  # (batch, n_topics)
            s_prob = _softmax(fut.result())  # (batch, n_sentiments)
        else:
            t_logits = self.topic.predict(texts)
            s_prob = _softmax(self.sentiment.predict(texts))
        topics = [self.topics[i] if self.topics else str(i) for i in t_logits.argmax(axis=1)]
        sents = [self._sent[i] for i in s_prob.argmax(axis=1)]
        p_neg = s_prob[:, self._neg].sum(axis=1) if self._neg else np.zeros(len(events))
        return [(t, s, float(p)) for t, s, p in zip(topics, sents, p_neg, strict=True)]


class LabelScorer:
    def __init__(self, cfg: ModelsConfig, topics: list[str] | None = None):
        self.cfg = cfg
        self.topics = list(topics or [])

    def problem(self, event: Event) -> str | None:
        if "topic" not in event.labels or "sentiment" not in event.labels:
            return "missing labels.topic or labels.sentiment (models.scorer is `labels`)"
        return None

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        out = []
        for e in events:
            s = _norm(e.labels["sentiment"], self.cfg)
            out.append((e.labels["topic"], s, 1.0 if s == "negative" else 0.0))
        return out


def make_scorer(cfg: ModelsConfig) -> Scorer:
    return ModelScorer(cfg) if cfg.scorer == "model" else LabelScorer(cfg)
