"""Shared by the task types that predict from a label vocabulary (classification, pairs,
multi-label): the vocabulary from training labels, top-k formatting, synthetic keyword rows."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from tailorml.data.examples import canonical_label, label_order

if TYPE_CHECKING:
    from tailorml.config.schema import DataConfig


class ClassPrediction(BaseModel):
    label: str = Field(description="Best label.")
    score: float = Field(description="Probability of `label`.")
    scores: dict[str, float] = Field(description="Probability of every label.")


def vocabulary(keys: Iterable[Any], d: DataConfig) -> list[str]:
    """Stable label order of the canonical label keys (see `label_order`)."""
    return label_order({canonical_label(k, d.label_names) for k in keys}, d.label_names)


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[dict[str, Any]]:
    """Per row: best label, its score and the k best (label, score), highest first."""
    k = min(k, len(names))
    out = []
    for p in probs:
        order = np.argsort(-p)[:k]
        top = [{"label": names[i], "score": float(p[i])} for i in order]
        out.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    return out


def api_scores(pred: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": pred["label"],
        "score": pred["score"],
        "scores": {t["label"]: t["score"] for t in pred["top_k"]},
    }


def names_of(labels: list[str] | None, width: int) -> list[str]:
    return labels or [str(i) for i in range(width)]


# Words whose presence decides the label: a tiny model learns these rows in a few epochs.
KEYWORDS = {
    "negative": ["terrible", "weak", "miss", "crash", "downgrade", "loss", "plunge", "cut"],
    "neutral": ["meeting", "report", "schedule", "update", "announces", "conference", "filing"],
    "positive": ["great", "excellent", "strong", "beat", "rally", "upgrade", "record", "gain"],
}
FILLER = ["the", "company", "shares", "today", "market", "quarter", "said", "on", "its", "stock"]


def keyword_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(text, label) pairs: short filler sentences holding one keyword of their label."""
    rng = random.Random(seed)
    labels = list(KEYWORDS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 12))]
        words.insert(rng.randint(0, len(words)), rng.choice(KEYWORDS[label]))
        rows.append((" ".join(words), label))
    return rows
