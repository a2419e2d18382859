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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tailorml.apps.support.config import template_slots
from tailorml.apps.support.grounded import answer_passages, declines
from tailorml.apps.support.retrieval import Hit
from tailorml.apps.support.train import max_softmax
from tailorml.errors import ConfigError


class IntentModel(Protocol):
    labels: list[str] | None

    def predict_sorted(self, texts: list[str]) -> np.ndarray: ...


class Searcher(Protocol):
    def search_many(self, queries: list[str], k: int = 10) -> list[list[Hit]]: ...


class AnswerWriter(Protocol):
    """Writes a retrieval answer from the passages (grounded.GroundedWriter: a causal LM)."""

    def write(self, message: str, hits: list[Hit], history: list[Any]) -> str: ...


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


@dataclass
class Signals:
    """What the assistant knows about one message before deciding: the intent model's top
    intent and confidence, the intent's template filled from the message (None: no template, or
    a slot the message does not fill), and the knowledge base's best documents."""

    intent: str
    confidence: float
    template: str | None
    hits: list[Hit]

    @property
    def score(self) -> float:
        """The best document's retrieval score (-inf when nothing was retrieved)."""
        return float(self.hits[0].score) if self.hits else float("-inf")


class Assistant:
    """Answers messages with a trained support run. Every part can be passed in (tests, or a
    compressed intent model: `Assistant.load(run, intent_model=load_predictor(variant))`).

    The decision, per message (`decide`):
      confident (confidence >= `threshold`):
          its intent's template, slots filled        -> template
          else best article score >= min_retrieval_score -> retrieval
      not confident:
          best article score >= retrieval_threshold  -> retrieval
      otherwise                                      -> hand-off
    `threshold` and `retrieval_threshold` are calibrated together on the eval split
    (calibrate.py) so that the whole assistant hands off `target_oos_recall` of the
    out-of-scope messages; `retrieval_threshold` None = `min_retrieval_score`."""

    def __init__(
        self,
        intent_model: IntentModel,
        threshold: float,
        answers: dict[str, str] | None = None,
        retriever: Searcher | None = None,
        min_retrieval_score: float = 0.45,
        sources: int = 3,
        handoff_message: str = "I am passing you to a colleague.",
        retrieval_threshold: float | None = None,
        writer: AnswerWriter | None = None,
    ):
        self.intent_model = intent_model
        self.threshold = threshold
        self.answers = answers or {}
        self.retriever = retriever
        self.min_retrieval_score = min_retrieval_score
        self.retrieval_threshold = (
            min_retrieval_score if retrieval_threshold is None else retrieval_threshold
        )
        self.sources = sources
        self.handoff_message = handoff_message
        self.writer = writer

    @classmethod
    def load(
        cls,
        run: str | Path,
        intent_model: IntentModel | None = None,
        threads: int | None = None,
        writer: AnswerWriter | None | bool = True,
    ) -> Assistant:
        """The run's assistant. `writer`: True = the run's `generation.run` if it has one (a
        grounded generated answer), False/None = extractive answers, or a writer object."""
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
        chosen: AnswerWriter | None = None
        if writer is True:
            if meta.get("generation"):
                from tailorml.apps.support.grounded import GroundedWriter

                chosen = GroundedWriter.load(meta["generation"], threads=threads)
        elif writer is not False:
            chosen = writer
        return cls(
            intent_model,
            threshold=meta["confidence_threshold"],
            answers=answers,
            retriever=retriever,
            min_retrieval_score=meta["min_retrieval_score"],
            retrieval_threshold=meta.get("retrieval_threshold"),
            sources=meta["sources"],
            handoff_message=meta["handoff_message"],
            writer=chosen,
        )

    def answer(self, message: str) -> dict[str, Any]:
        return self.answer_many([message])[0]

    def signals(self, messages: list[str]) -> list[Signals]:
        """The intent, confidence, filled template and retrieved documents of each message
        (the knowledge base is searched for every message: the decision needs its score)."""
        if not messages:
            return []
        labels = list(self.intent_model.labels or [])
        top, prob = max_softmax(self.intent_model.predict_sorted(list(messages)))
        hits = (
            self.retriever.search_many(list(messages), k=self.sources)
            if self.retriever is not None
            else [[] for _ in messages]
        )
        out = []
        for msg, t, p, found in zip(messages, top, prob, hits, strict=True):
            intent = labels[int(t)]
            template = self.answers.get(intent)
            out.append(
                # the confidence is the max softmax probability, unrounded, as the thresholds
                # were calibrated on it
                Signals(intent, float(p), fill_slots(template, msg) if template else None, found)
            )
        return out

    def decide(self, sig: Signals) -> str:
        """`template`, `retrieval` or `handoff` (the rule in the class docstring)."""
        confident = sig.confidence >= self.threshold
        if confident and sig.template is not None:
            return "template"
        bar = self.min_retrieval_score if confident else self.retrieval_threshold
        return "retrieval" if sig.score >= bar else "handoff"

    def answer_many(
        self, messages: list[str], history: list[list[dict[str, str]]] | None = None
    ) -> list[dict[str, Any]]:
        """One reply per message: {answer, intent, confidence, sources, handoff, path}; `path`
        says which branch answered (`template`, `retrieval` or `handoff`; a retrieval answer
        the writer wrote as the hand-off line, `grounded.NOT_COVERED`, is a hand-off).
        `history`: earlier turns of each message's conversation ({"message", "answer"}), for
        a writer."""
        out = []
        for j, sig in enumerate(self.signals(messages)):
            path = self.decide(sig)
            reply: dict[str, Any] = {"intent": sig.intent, "confidence": sig.confidence}
            if path == "retrieval":
                # sources: every retrieved article over the floor (the best one passed the bar)
                used = answer_passages(sig.hits, self.min_retrieval_score)
                text = used[0].text
                if self.writer is not None:
                    text = self.writer.write(messages[j], used, history[j] if history else [])
                    if declines(text):  # the writer judged that the passages do not answer
                        path = "handoff"
            if path == "template":
                assert sig.template is not None
                out.append({**reply, "answer": sig.template, "sources": [], "handoff": False})
            elif path == "retrieval":
                sources = [
                    {"doc_id": h.doc_id, "title": h.title, "score": round(float(h.score), 4)}
                    for h in used
                ]
                out.append({**reply, "answer": text, "sources": sources, "handoff": False})
            else:
                out.append(
                    {**reply, "answer": self.handoff_message, "sources": [], "handoff": True}
                )
            out[-1]["path"] = path
        return out


def read_support_json(root: Path) -> dict[str, Any]:
    path = root / "support.json"
    if not path.is_file():
        raise ConfigError(
            f"{root}: no support.json, so this is not a support run. Build one with "
            "`tailor support train CONFIG` (its output_dir)."
        )
    return dict(json.loads(path.read_text(encoding="utf-8")))
