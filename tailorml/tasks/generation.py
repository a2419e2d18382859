"""Generation: supervised fine-tuning of a causal LM on prompt -> response pairs (or chats).

Not a classifier head: the model's output is the vocabulary, so this task implements
`TaskInfo` (name, family, metrics, config checks, example rows) and `tailor finetune` trains it
with the recipe of its family (tailorml/recipes/sft.py). The data path is tailorml/data/sft.py
(rows -> chats -> tokens with the loss on assistant tokens only -> packed blocks)."""

from __future__ import annotations

import random
from typing import Any

from tailorml.tasks import register
from tailorml.tasks.base import CAUSAL_LM

# Toy facts a tiny model memorises in seconds (the conformance rows of this task).
_TOY = [
    ("What colour is the sky?", "Blue."),
    ("How many legs has a cat?", "Four."),
    ("Say hello.", "Hello!"),
    ("What is two plus two?", "Four, of course."),
    ("Name a fruit.", "An apple."),
    ("What do bees make?", "Honey."),
]


class GenerationTask:
    name = "generation"
    description = (
        "Fine-tune a causal LM (smollm2) to answer prompts: learns the response tokens only."
    )
    family = CAUSAL_LM
    metrics = ("loss", "perplexity")
    default_metric = "loss"
    label_help = (
        "the wanted answer: a `data.response_column` next to `data.prompt_column`, or the "
        "assistant turns of a chat in `data.messages_column` (jsonl: [{role, content}, ...])"
    )

    def config_problems(self, prefix: str, data: dict[str, Any]) -> list[str]:
        out: list[str] = []
        if prefix:
            out.append(
                f"`{prefix}task.type` is `generation`: a causal LM cannot share a model with "
                "classifier heads. Train it as its own run (top-level `data` and `task`)."
            )
        prompt, response = data.get("prompt_column"), data.get("response_column")
        messages = data.get("messages_column")
        if messages and (prompt or response):
            out.append(
                f"Both `{prefix}data.messages_column` and `{prefix}data.prompt_column`/"
                "`response_column` are set. Choose one: a chat column, or prompt + response."
            )
        elif not messages and not (prompt and response):
            missing = [k for k in ("prompt_column", "response_column") if not data.get(k)]
            out.append(
                f"A generation task reads prompt -> response pairs, but "
                f"{' and '.join(f'`{prefix}data.{k}`' for k in missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set. Set `data.prompt_column` "
                "and `data.response_column`, or `data.messages_column` for chats."
            )
        if data.get("text_pair_column"):
            out.append(
                f"`{prefix}data.text_pair_column` is set, but a generation task reads no text "
                "pairs. Remove it."
            )
        return out

    def example_rows(self, n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rng = random.Random(seed)
        rows = [{"prompt": p, "response": r} for p, r in (rng.choice(_TOY) for _ in range(n))]
        return rows, {"prompt_column": "prompt", "response_column": "response"}


register(GenerationTask())
