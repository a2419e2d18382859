"""Grounded generated answers: a causal LM (`generation.run`: a causal-LM run folder, a model
folder or `smollm2`, loaded by predictors.generator.Generator.load) writes the reply from the
retrieved passages, told to use only them and to cite them as [1], [2]...

The sources are always returned with the reply (the Assistant's `sources`), and the text always
names them: when the model cited none of the passages it was given, a `Sources:` line naming
the passages it was given is added, so a reader can check the answer against the articles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tailorml.apps.support.retrieval import Hit
from tailorml.errors import ConfigError

INSTRUCTIONS = (
    "You are a customer-service assistant. Answer the customer's last message using only the "
    "help-centre passages below. Cite each passage you use by its number, like [1]. If the "
    "passages do not answer the question, say that a colleague will help. Be brief."
)
_CITE = re.compile(r"\[(\d+)\]")
# the reply taught (grounded_data) when the passages do not hold the question's article
NOT_COVERED = "Our help centre does not cover this, so a colleague will help you."


def declines(text: str) -> bool:
    """Whether a written answer is the hand-off line taught by `grounded_data` (the writer
    judged that the passages do not answer): the assistant then hands off."""
    return NOT_COVERED.lower().rstrip(".") in text.lower()


def answer_passages(hits: list[Hit], floor: float) -> list[Hit]:
    """The passages a retrieval answer uses: the best one (it passed the assistant's bar) and
    the others scoring at least `floor` (min_retrieval_score)."""
    return hits[:1] + [h for h in hits[1:] if h.score >= floor]


def grounded_messages(
    message: str, hits: list[Hit], history: list[dict[str, str]] | None = None
) -> list[dict[str, str]]:
    """The chat the model completes: the instructions and numbered passages (system), earlier
    turns of the conversation, then the customer's message."""
    passages = "\n\n".join(
        f"[{n}] {h.title} ({h.doc_id})\n{h.text.strip()}" for n, h in enumerate(hits, 1)
    )
    chat = [{"role": "system", "content": f"{INSTRUCTIONS}\n\nPassages:\n\n{passages}"}]
    for turn in history or []:
        chat.append({"role": "user", "content": turn["message"]})
        chat.append({"role": "assistant", "content": turn["answer"]})
    chat.append({"role": "user", "content": message})
    return chat


def citations(text: str, passages: int) -> list[int]:
    """The passage numbers an answer cites, in the order it cites them (a number outside
    1..passages is not a citation)."""
    return [int(n) for n in _CITE.findall(text) if 1 <= int(n) <= passages]


def cite(text: str, hits: list[Hit]) -> str:
    """The answer, with a `Sources:` line naming the passages when it cites none of them (a
    number outside 1..len(hits) is not a citation)."""
    text = text.strip()
    if citations(text, len(hits)) or not hits:
        return text
    names = "; ".join(f"[{n}] {h.title}" for n, h in enumerate(hits, 1))
    return f"{text}\n\nSources: {names}" if text else f"Sources: {names}"


class GroundedWriter:
    """Writes retrieval answers with a causal LM (greedy, `max_new_tokens`)."""

    def __init__(self, generator: Any, max_new_tokens: int = 96):
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.last_prompt: list[dict[str, str]] | None = None  # for tests and debugging

    @classmethod
    def load(cls, settings: dict[str, Any], threads: int | None = None) -> GroundedWriter:
        """From support.json's `generation` ({run, max_new_tokens})."""
        from tailorml.predictors.generator import Generator

        if threads:
            import torch

            torch.set_num_threads(threads)
        return cls(Generator.load(settings["run"]), int(settings.get("max_new_tokens", 96)))

    def write(self, message: str, hits: list[Hit], history: list[Any]) -> str:
        chat = grounded_messages(message, hits, history)
        self.last_prompt = chat
        out = self.generator.generate([chat], max_new_tokens=self.max_new_tokens)[0]
        return cite(out.output, hits)


def grounded_data(
    retriever: Any,
    rows: list[dict[str, Any]],
    text_column: str,
    answer_column: str,
    doc_column: str,
    out: str | Path,
    sources: int = 3,
    floor: float = 0.45,
) -> dict[str, int]:
    """Fine-tuning data for the writer: each row's message is searched as the assistant does
    (`sources` passages, `answer_passages`), and the chat the writer will see is written with
    the row's answer as the reply, citing the passage of the row's article ([k]); when the
    passages miss that article the reply is NOT_COVERED, so the model learns to hand off
    rather than answer from the wrong article. jsonl with a `messages` column (a generation
    run's `data.messages_column`). Returns counts: rows, cited (by position), not_covered."""
    from tailorml.apps.support.evaluate import intent_documents
    from tailorml.files import atomic_jsonl

    known = {p.doc_id for p in getattr(retriever, "passages_", [])}
    for col in (text_column, answer_column, doc_column):
        if rows and col not in rows[0]:
            raise ConfigError(
                f"--data: no column {col!r}; it has {', '.join(rows[0])}. Name the message, "
                "answer and article columns with --text-column, --answer-column, --doc-column."
            )
    for n, r in enumerate(rows, 1):
        empty = [c for c in (text_column, answer_column) if not str(r[c] or "").strip()]
        if empty:
            raise ConfigError(
                f"--data: row {n} has an empty {' and '.join(map(repr, empty))}. Every row "
                "needs a message and its answer; fill or remove it."
            )
    docs = intent_documents([str(r[doc_column] or "") for r in rows], known)
    unknown = sorted({str(r[doc_column]) for r, d in zip(rows, docs, strict=True) if d is None})
    if unknown:
        raise ConfigError(
            f"--data: column {doc_column!r} names articles the knowledge base does not have: "
            f"{', '.join(map(repr, unknown[:5]))}. Use article ids (file paths without "
            "extension) or intents named like the article files."
        )
    messages = [str(r[text_column]) for r in rows]
    found = retriever.search_many(messages, k=sources)
    counts = {"rows": len(rows), "not_covered": 0}
    counts |= {f"cited_{k}": 0 for k in range(1, sources + 1)}
    lines = []
    for msg, row, doc, hits in zip(messages, rows, docs, found, strict=True):
        used = answer_passages(hits, floor)
        ids = [h.doc_id for h in used]
        if doc in ids:
            k = ids.index(doc) + 1
            reply = f"{str(row[answer_column]).strip()} [{k}]"
            counts[f"cited_{k}"] += 1
        else:
            reply = NOT_COVERED
            counts["not_covered"] += 1
        chat = grounded_messages(msg, used) + [{"role": "assistant", "content": reply}]
        lines.append({"messages": chat})
    atomic_jsonl(out, lines)
    return counts
