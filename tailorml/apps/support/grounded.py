"""Grounded generated answers: a causal LM (`generation.run`: a causal-LM run folder, a model
folder or `smollm2`, loaded by predictors.generator.Generator.load) writes the reply from the
retrieved passages, told to use only them and to cite them as [1], [2]...

The sources are always returned with the reply (the Assistant's `sources`), and the text always
names them: when the model cited none of the passages it was given, a `Sources:` line naming
the passages it was given is added, so a reader can check the answer against the articles."""

from __future__ import annotations

import re
from typing import Any

from tailorml.apps.support.retrieval import Hit

INSTRUCTIONS = (
    "You are a customer-service assistant. Answer the customer's last message using only the "
    "help-centre passages below. Cite each passage you use by its number, like [1]. If the "
    "passages do not answer the question, say that a colleague will help. Be brief."
)
_CITE = re.compile(r"\[(\d+)\]")


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


def cite(text: str, hits: list[Hit]) -> str:
    """The answer, with a `Sources:` line naming the passages when it cites none of them (a
    number outside 1..len(hits) is not a citation)."""
    cited = {int(n) for n in _CITE.findall(text) if 1 <= int(n) <= len(hits)}
    text = text.strip()
    if cited or not hits:
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
