"""The support assistant: one message in, one answer out.

intent model -> confident (max softmax >= the calibrated threshold) and the intent has a
                template whose slots the message fills: the template
             -> otherwise the knowledge base: the best article's best passage (extractive),
                with its sources, when the retrieval score reaches `min_retrieval_score`
             -> otherwise a hand-off to a person

from tailorml.apps.support.assistant import Assistant
bot = Assistant.load("runs/support")
bot.answer("my card has not arrived")
# {answer, intent, confidence, sources, handoff, path}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tailorml.apps.support.config import template_slots
from tailorml.apps.support.retrieval import Hit
from tailorml.apps.support.train import max_softmax
from tailorml.errors import ConfigError


class IntentModel(Protocol):
    labels: list[str] | None

    def predict_sorted(self, texts: list[str]) -> np.ndarray: ...


class Searcher(Protocol):
    def search_many(self, queries: list[str], k: int = 10) -> list[list[Hit]]: ...


_SYMBOL = {"$": "USD", "€": "EUR", "£": "GBP"}
_CODES = ("USD", "EUR", "GBP", "CHF", "JPY", "AUD", "CAD")
_NAMES = {"dollar": "USD", "euro": "EUR", "pound": "GBP"}
_AMOUNT = re.compile(r"(?P<sym>[$€£])\s?(?P<num>\d[\d,]*(?:\.\d+)?)|(?P<num2>\d[\d,]*(?:\.\d+)?)")
_CURRENCY = re.compile(r"\b(" + "|".join(_CODES) + r")\b|[$€£]|\b(dollar|euro|pound)s?\b", re.I)


def fill_slots(template: str, message: str) -> str | None:
    """The template with its `{slot}`s filled from the message, or None when one cannot be
    (then the assistant does not use the template). Slots: `{amount}` (the first number, with
    its currency symbol if it has one), `{currency}` (a symbol, ISO code or name: USD, EUR...)."""
    values: dict[str, str] = {}
    for slot in set(template_slots(template)):
        if slot == "amount":
            m = _AMOUNT.search(message)
            if m is None:
                return None
            values[slot] = (m["sym"] + m["num"]) if m["sym"] else m["num2"]
        elif slot == "currency":
            c = _CURRENCY.search(message)
            if c is None:
                return None
            word = c.group(0)
            values[slot] = _SYMBOL.get(word) or _NAMES.get(word.lower().rstrip("s")) or word.upper()
        else:
            return None
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        return None


class Assistant:
    """Answers messages with a trained support run. Every part can be passed in (tests, or a
    compressed intent model: `Assistant.load(run, intent_model=load_predictor(variant))`)."""

    def __init__(
        self,
        intent_model: IntentModel,
        threshold: float,
        answers: dict[str, str] | None = None,
        retriever: Searcher | None = None,
        min_retrieval_score: float = 0.45,
        sources: int = 3,
        handoff_message: str = "I am passing you to a colleague.",
    ):
        self.intent_model = intent_model
        self.threshold = threshold
        self.answers = answers or {}
        self.retriever = retriever
        self.min_retrieval_score = min_retrieval_score
        self.sources = sources
        self.handoff_message = handoff_message

    @classmethod
    def load(
        cls, run: str | Path, intent_model: IntentModel | None = None, threads: int | None = None
    ) -> Assistant:
        root = Path(run)
        meta = read_support_json(root)
        if intent_model is None:
            from tailorml.predictors import load_predictor

            intent_model = load_predictor(root / meta["intent_model"], threads=threads)
        if list(intent_model.labels or []) != list(meta["intents"]):
            raise ConfigError(
                f"{root}: the intent model's labels are not the {len(meta['intents'])} intents "
                "this support run was trained with. Use the run's own model (RUN/intent) or a "
                "compressed variant of it (RUN/intent/compressed/<variant>)."
            )
        retriever = None
        if meta.get("index"):
            from tailorml.apps.support.retrieval import load_retriever

            retriever = load_retriever(root / meta["index"], threads=threads)
        answers = {}
        if meta.get("answers"):
            answers = json.loads((root / meta["answers"]).read_text(encoding="utf-8"))
        return cls(
            intent_model,
            threshold=meta["confidence_threshold"],
            answers=answers,
            retriever=retriever,
            min_retrieval_score=meta["min_retrieval_score"],
            sources=meta["sources"],
            handoff_message=meta["handoff_message"],
        )

    def answer(self, message: str) -> dict[str, Any]:
        return self.answer_many([message])[0]

    def answer_many(self, messages: list[str]) -> list[dict[str, Any]]:
        """One reply per message: {answer, intent, confidence, sources, handoff, path}; `path`
        says which branch answered (`template`, `retrieval` or `handoff`)."""
        if not messages:
            return []
        labels = list(self.intent_model.labels or [])
        top, prob = max_softmax(self.intent_model.predict_sorted(list(messages)))
        # (message) intent and confidence: the max softmax probability, unrounded, as the
        # threshold was calibrated on it
        said: list[dict[str, Any]] = [
            {"intent": labels[int(t)], "confidence": float(p)}
            for t, p in zip(top, prob, strict=True)
        ]
        out: list[dict[str, Any] | None] = [None] * len(messages)
        need_search = []
        for j, msg in enumerate(messages):
            reply = said[j]
            confident = reply["confidence"] >= self.threshold
            template = self.answers.get(reply["intent"]) if confident else None
            text = fill_slots(template, msg) if template is not None else None
            if text is not None:
                out[j] = {
                    **reply,
                    "answer": text,
                    "sources": [],
                    "handoff": False,
                    "path": "template",
                }
            else:
                need_search.append(j)
        hits = (
            self.retriever.search_many([messages[j] for j in need_search], k=self.sources)
            if self.retriever is not None and need_search
            else [[] for _ in need_search]
        )
        for j, found in zip(need_search, hits, strict=True):
            reply = said[j]
            if found and found[0].score >= self.min_retrieval_score:
                best = found[0]
                sources = [
                    {"doc_id": h.doc_id, "title": h.title, "score": round(float(h.score), 4)}
                    for h in found
                    if h.score >= self.min_retrieval_score
                ]
                out[j] = {
                    **reply,
                    "answer": best.text,
                    "sources": sources,
                    "handoff": False,
                    "path": "retrieval",
                }
            else:
                out[j] = {
                    **reply,
                    "answer": self.handoff_message,
                    "sources": [],
                    "handoff": True,
                    "path": "handoff",
                }
        return [o for o in out if o is not None]


def read_support_json(root: Path) -> dict[str, Any]:
    path = root / "support.json"
    if not path.is_file():
        raise ConfigError(
            f"{root}: no support.json, so this is not a support run. Build one with "
            "`tailor support train CONFIG` (its output_dir)."
        )
    return dict(json.loads(path.read_text(encoding="utf-8")))
