"""Topic and sentiment for a micro-batch of events.

`ModelScorer` runs a multi-task model folder (one encoder, a topic head and a sentiment head) or
two single-task folders through `tailorml.predictors.load_predictor`, so a torch run folder, a
dynamic-int8 one or an ONNX export from the compression stage all plug in unchanged. Each
micro-batch is sorted by length and cut into small chunks (little padding), run side by side.
The sentiment head's logits are divided by the temperature the folder's calibration.json holds
(calibrate.py), so p_negative is a probability the detector can sum.
`LabelScorer` trusts the `labels` of replayed labeled events (to measure the detector alone).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from tailorml.apps.finwatch.calibrate import load_temperature
from tailorml.apps.finwatch.config import ModelsConfig
from tailorml.apps.finwatch.events import MAX_TOPIC_CHARS, Event
from tailorml.errors import ConfigError
from tailorml.tasks.heads import named_heads

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


def _require_heads(cfg: ModelsConfig, heads: dict[str, Any], where: str) -> None:
    missing = [n for n in (cfg.topic_head, cfg.sentiment_head) if n not in heads]
    if missing:
        raise ConfigError(
            f"{where} heads {sorted(heads) or 'none'}, not {', '.join(map(repr, missing))}. "
            "Use the multi-task model `tailor finwatch train` writes, or set "
            "models.topic_head / models.sentiment_head."
        )


class ModelScorer:
    """One multi-task model (one encoder pass gives topic and sentiment) or two models."""

    def __init__(self, cfg: ModelsConfig):
        from concurrent.futures import ThreadPoolExecutor

        from tailorml.predictors import load_predictor

        self.cfg = cfg
        cores = cfg.threads or os.cpu_count() or 1
        workers = cores if cfg.parallel else 1
        # Each worker runs its share on one thread: several small single-threaded calls side by
        # side beat one call spread over the cores for tweet-sized inputs.
        threads = 1 if workers > 1 else cores
        self._pool = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="finwatch-score")
            if workers > 1
            else None
        )
        self.joint = None  # one model with both heads (else two single-task models)
        if cfg.model is not None:
            self.joint = load_predictor(cfg.model, threads=threads)
            heads = {h.name: h for h in named_heads(self.joint.heads)}
            _require_heads(cfg, heads, f"models.model {cfg.model} has")
            t_head, s_head = heads[cfg.topic_head], heads[cfg.sentiment_head]
            self._t_cols, self._s_cols = t_head.columns, s_head.columns
            self.topics = list(t_head.labels or [])
            labels = list(s_head.labels or [])
            calibration = (cfg.model, cfg.sentiment_head)
        else:
            assert cfg.topic is not None and cfg.sentiment is not None
            self.topic = load_predictor(cfg.topic, threads=threads)
            self.sentiment = load_predictor(cfg.sentiment, threads=threads)
            self.topics = list(self.topic.labels or [])
            labels = list(self.sentiment.labels or [])
            calibration = (cfg.sentiment, "")
        # Temperature scaling of the sentiment head (calibrate.py): the detector sums p_negative.
        self.temperature = load_temperature(*calibration) if cfg.calibrated else 1.0
        self._sent = [_norm(lab, cfg) for lab in labels]
        self._neg = [i for i, s in enumerate(self._sent) if s == "negative"]

    def problem(self, event: Event) -> str | None:
        return None

    def _logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        chunk = self.cfg.chunk_size
        if self.joint is not None:
            logits = self.joint.predict_sorted(texts, chunk, self._pool)
            return logits[:, self._t_cols], logits[:, self._s_cols]
        if self._pool is not None:
            # Two models: each runs on its own worker.
            fut = self._pool.submit(self.sentiment.predict_sorted, texts, chunk)
            return self.topic.predict_sorted(texts, chunk), fut.result()
        return self.topic.predict_sorted(texts, chunk), self.sentiment.predict_sorted(texts, chunk)

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        t_logits, s_logits = self._logits([e.text for e in events])
        s_prob = _softmax(s_logits / self.temperature)
        topics = [self.topics[i] if self.topics else str(i) for i in t_logits.argmax(axis=1)]
        sents = [self._sent[i] for i in s_prob.argmax(axis=1)]
        p_neg = s_prob[:, self._neg].sum(axis=1) if self._neg else np.zeros(len(events))
        return [(t, s, float(p)) for t, s, p in zip(topics, sents, p_neg, strict=True)]


class RemoteScorer:
    """Scores through a `tailor serve` service of a multi-task model (`models.url`): several
    watchers can share one model service, and the service's batching, auth and metrics apply.
    Requests that mean "try again" (429, 503, connection refused) are retried by the client, for
    about a minute and a half (backoff doubling from 0.1 s, at most 5 s apart); if scoring still
    fails, ingest raises before anything of the micro-batch is committed (nor the
    source position), so a restarted watcher scores it again: no event is lost."""

    def __init__(self, cfg: ModelsConfig):
        from tailorml.client import Client

        assert cfg.url is not None
        self.cfg = cfg
        self.client = Client(cfg.url, api_key=os.environ.get("TAILORML_API_KEY"), retries=20)
        card = self.client.model()
        heads = {h["name"]: h for h in card.get("heads") or []}
        _require_heads(cfg, heads, f"models.url {cfg.url} serves a model with")
        self.topics = list(heads[cfg.topic_head]["labels"] or [])
        self._labels = list(heads[cfg.sentiment_head]["labels"] or [])
        self._norm = {lab: _norm(lab, cfg) for lab in self._labels}

    def problem(self, event: Event) -> str | None:
        return None

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        out = []
        for p in self.client.predict([e.text for e in events]):
            heads = p["heads"]
            scores = heads[self.cfg.sentiment_head]["scores"]
            p_neg = sum(v for lab, v in scores.items() if self._norm[lab] == "negative")
            sentiment = self._norm[heads[self.cfg.sentiment_head]["label"]]
            out.append((heads[self.cfg.topic_head]["label"], sentiment, float(p_neg)))
        return out


class LabelScorer:
    def __init__(self, cfg: ModelsConfig, topics: list[str] | None = None):
        self.cfg = cfg
        self.topics = list(topics or [])

    def problem(self, event: Event) -> str | None:
        topic, sentiment = event.labels.get("topic"), event.labels.get("sentiment")
        if not (topic and topic.strip()) or not (sentiment and sentiment.strip()):
            return "missing labels.topic or labels.sentiment (models.scorer is `labels`)"
        if len(topic) > MAX_TOPIC_CHARS:
            return f"labels.topic longer than {MAX_TOPIC_CHARS} chars"
        return None

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        out = []
        for e in events:
            s = _norm(e.labels["sentiment"], self.cfg)
            out.append((e.labels["topic"], s, 1.0 if s == "negative" else 0.0))
        return out


def make_scorer(cfg: ModelsConfig) -> Scorer:
    if cfg.scorer == "labels":
        return LabelScorer(cfg)
    if cfg.url is not None and cfg.model is None:
        return RemoteScorer(cfg)
    return ModelScorer(cfg)


def is_outage(exc: BaseException) -> bool:
    """A scoring failure that is not the event's fault, so ingest raises it (nothing of the
    micro-batch is committed and its source offers it again) instead of dead-lettering: the
    model service unreachable or failing (no answer, 5xx, 429 after the client's retries, a
    refused key), or no memory. A service's 400 / 413 / 422 is about the text sent."""
    from tailorml.client import ServiceError

    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, ServiceError):
        return exc.status not in (400, 413, 422)
    return False
