"""Pair classification: one class per pair of texts (question/answer match, entailment, ...).

The classification task on two inputs: `data.text_column` and `data.text_pair_column` are
encoded together (`[CLS] a [SEP] b [SEP]` for BERT-like encoders).
"""

from __future__ import annotations

from typing import Any

from tailorml.tasks import register
from tailorml.tasks.classification import ClassificationTask
from tailorml.tasks.vocab import keyword_rows


def _pair_rows(n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Does the answer name the question's sentiment? `yes` when it does."""
    names = ["negative", "neutral", "positive"]
    rows = []
    for i, (text, label) in enumerate(keyword_rows(n, seed)):
        # Even rows name the right sentiment; odd rows one of the two wrong ones.
        shift = 0 if i % 2 == 0 else 1 + (i // 2) % 2
        answer = names[(names.index(label) + shift) % 3]
        rows.append({"question": text, "answer": answer, "label": "no" if shift else "yes"})
    return rows, {"text_column": "question", "text_pair_column": "answer"}


TASK = register(
    ClassificationTask(
        "pair-classification",
        pair=True,
        description="one class per pair of texts (data.text_pair_column)",
        examples=_pair_rows,
    )
)
