"""Scores of a generated answer against its reference, on simple tokens (lowercased, split on
whitespace, punctuation stripped from each end): ROUGE-L F1 (longest common subsequence), token
F1 (bag of tokens, as SQuAD scores answers) and exact match. Written here rather than loaded:
`evaluate.load()` downloads its metric scripts."""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = string.punctuation + "“”‘’«»…"


def words(text: str) -> list[str]:
    """Lowercased whitespace tokens with punctuation stripped from their ends (empty ones
    dropped)."""
    out = (w.strip(_PUNCT) for w in text.lower().split())
    return [w for w in out if w]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row kept)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: LCS-based precision and recall, harmonic mean (1.0 when both are empty)."""
    p, r = words(prediction), words(reference)
    if not p and not r:
        return 1.0
    return _f1(lcs_length(p, r), len(p), len(r))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the shared tokens, counted with multiplicity (1.0 when both are empty)."""
    p, r = words(prediction), words(reference)
    if not p and not r:
        return 1.0
    overlap = sum((Counter(p) & Counter(r)).values())
    return _f1(overlap, len(p), len(r))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two are the same tokens (case, spacing and edge punctuation aside)."""
    return float(words(prediction) == words(reference))


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean of each score over the pairs."""
    n = len(predictions)
    if n == 0:
        return {"rouge_l": 0.0, "token_f1": 0.0, "exact_match": 0.0}
    pairs = list(zip(predictions, references, strict=True))
    return {
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
        "token_f1": sum(token_f1(p, r) for p, r in pairs) / n,
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
    }
