"""Pair classification: one class per pair of texts (question/answer match, entailment, ...).

The classification task on two inputs: `data.text_column` and `data.text_pair_column` are
encoded together (`[CLS] a [SEP] b [SEP]` for BERT-like encoders).
"""

from __future__ import annotations

from typing import Any

from tailorml.tasks import register
from tailorml.tasks.classification import ClassificationTask
from tailorml.tasks.vocab import FILLER, KEYWORDS, keyword_rows


def _pair_rows(n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Is the answer about the question? `yes` when it repeats the question's key word, `no` when
    it is about something else."""
    import random

    rng = random.Random(seed + 1)
    rows = []
    for i, (text, label) in enumerate(keyword_rows(n, seed)):
        word = next(w for w in text.split() if w in KEYWORDS[label])
        if i % 2 == 0:
            answer, match = f"yes it was {word} for the {rng.choice(FILLER)}", "yes"
        else:
            answer, match = f"the {rng.choice(FILLER)} {rng.choice(FILLER)} is unchanged", "no"
        rows.append({"question": text, "answer": answer, "label": match})
    return rows, {"text_column": "question", "text_pair_column": "answer"}


TASK = register(
    ClassificationTask(
        "pair-classification",
        pair=True,
        description="one class per pair of texts (data.text_pair_column)",
        examples=_pair_rows,
    )
)
