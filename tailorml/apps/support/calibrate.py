"""Calibrating the assistant's two thresholds on the eval split, so that the WHOLE assistant
(template, retrieval and hand-off together, not the intent model alone) hands off
`support.target_oos_recall` of the out-of-scope messages.

The assistant answers a message by retrieval when its intent is confident (confidence >=
`threshold`) and the best article reaches `min_retrieval_score` (a fixed floor), or when its intent
is not confident and the best article reaches `retrieval_threshold`. Out-of-scope questions often
resemble help articles (the dense retriever scores an unrelated banking article ~0.6), so with one
floor for both, retrieval answered nearly every message the intent threshold handed off.

`joint_thresholds` searches (threshold, retrieval_threshold) pairs on the eval split: among the
pairs whose whole-assistant out-of-scope recall reaches the target, the one with the best
in-scope accuracy (then the fewest hand-offs). The figures are computed by the same rule the
Assistant applies (`Assistant.decide`), so `tailor support evaluate RUN --data
RUN/data/eval_all.csv` reproduces them.

    tailor support calibrate RUN [--target 0.9]     # again, without retraining
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.support.train import calibrate_threshold, intent_scores, read_intent_rows

MAX_CANDIDATES = 256  # per threshold: a 256 x 256 grid over the eval split


def _candidates(values: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Thresholds worth trying: each distinct value (a row passes at >= its value), one above the
    largest (nobody passes), subsampled evenly to MAX_CANDIDATES; `floor`: none below it."""
    v = np.unique(values[np.isfinite(values)])
    if floor is not None:
        v = v[v >= floor]
        v = np.concatenate([[floor], v])
    if v.size > MAX_CANDIDATES:
        v = v[np.linspace(0, v.size - 1, MAX_CANDIDATES).round().astype(int)]
    top = np.nextafter(v.max(), np.inf) if v.size else np.inf
    return np.unique(np.concatenate([v, [top, np.inf]]))


def handoffs(
    confidence: np.ndarray,
    has_template: np.ndarray,
    score: np.ndarray,
    threshold: float,
    retrieval_threshold: float,
    min_score: float,
) -> np.ndarray:
    """Which rows the assistant hands off under these thresholds (Assistant.decide, vectorized)."""
    confident = confidence >= threshold
    answered = (confident & has_template) | (confident & (score >= min_score))
    answered |= ~confident & (score >= retrieval_threshold)
    return ~answered


def joint_thresholds(
    confidence: np.ndarray,
    correct: np.ndarray,
    is_oos: np.ndarray,
    has_template: np.ndarray,
    score: np.ndarray,
    min_score: float,
    target: float,
) -> tuple[float, float]:
    """(threshold, retrieval_threshold): among the pairs whose whole-assistant out-of-scope
    recall is >= target, the one with the best in-scope accuracy, then the fewest hand-offs,
    then the lowest thresholds. A pair always reaches the target: trusting no intent and no
    article (both above every value) hands everything off."""
    conf = np.asarray(confidence, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    correct, is_oos = np.asarray(correct, bool), np.asarray(is_oos, bool)
    has_template = np.asarray(has_template, bool)
    n_oos, n_in = max(int(is_oos.sum()), 1), max(int((~is_oos).sum()), 1)
    ts, rs = _candidates(conf), _candidates(score, floor=min_score)
    best: tuple[Any, ...] | None = None
    for t in ts:
        confident = conf >= t
        fixed = (confident & has_template) | (confident & (score >= min_score))
        # rows x retrieval thresholds: answered by retrieval while unsure
        by_r = (~confident & ~fixed)[:, None] & (score[:, None] >= rs[None, :])
        handed = ~(fixed[:, None] | by_r)
        recall = (handed & is_oos[:, None]).sum(0) / n_oos
        acc = (~handed & (correct & ~is_oos)[:, None]).sum(0) / n_in
        rate = handed.mean(0)
        for j in np.flatnonzero(recall >= target - 1e-12):
            key = (acc[j], -rate[j], -t, -rs[j])  # higher is better
            if best is None or key > best[0]:
                best = (key, float(t), float(rs[j]))
    assert best is not None  # t = r = inf hands off every row
    return best[1], best[2]


def calibrate(
    bot: Any, rows: list[dict[str, str]], oos: str, target: float | None
) -> dict[str, Any]:
    """Set `bot.threshold` and `bot.retrieval_threshold` from the eval rows ({text, label},
    out of scope labelled `oos`) for `target` (None: keep the bot's thresholds, measure them);
    returns the thresholds and the eval split's figures, for the intent threshold alone and the
    whole assistant."""
    sig = bot.signals([r["text"] for r in rows])
    gold = [r["label"] for r in rows]
    named = [s.intent for s in sig]
    conf = np.array([s.confidence for s in sig], dtype=np.float64)
    is_oos = np.array([g == oos for g in gold])
    correct = np.array([g == p for g, p in zip(gold, named, strict=True)])
    has_template = np.array([s.template is not None for s in sig])
    score = np.array([s.score for s in sig], dtype=np.float64)
    intent_threshold = bot.threshold
    if target is not None:
        intent_threshold = calibrate_threshold(conf[is_oos], target)
        bot.threshold, bot.retrieval_threshold = joint_thresholds(
            conf, correct, is_oos, has_template, score, bot.min_retrieval_score, target
        )
    handed = handoffs(
        conf, has_template, score, bot.threshold, bot.retrieval_threshold, bot.min_retrieval_score
    )
    return {
        "confidence_threshold": bot.threshold,
        "retrieval_threshold": bot.retrieval_threshold,
        "intent_threshold": intent_threshold,
        "split": "eval",
        "rows": len(rows),
        "oos_rows": int(is_oos.sum()),
        # the intent threshold alone (calibrated by itself for the target)
        **intent_scores(gold, named, conf >= intent_threshold, oos),
        "assistant": intent_scores(gold, named, ~handed, oos),
    }


def calibrate_run(
    run: str | Path, target: float | None = None, threads: int | None = None
) -> dict[str, Any]:
    """`tailor support calibrate RUN`: calibrate a trained run again on its eval split
    (RUN/data/eval_all.csv), for `target` or the run's own target; updates support.json and
    report.md."""
    from tailorml.apps.support.assistant import Assistant, read_support_json
    from tailorml.apps.support.train import write_summary

    root = Path(run)
    meta = read_support_json(root)
    oos = meta["out_of_scope_label"]
    rows = read_intent_rows(root / "data" / "eval_all.csv", "text", "label", oos, [], key="eval")
    target = meta.get("target_oos_recall") if target is None else target
    if target is not None and not any(r["label"] == oos for r in rows):
        from tailorml.errors import ConfigError

        raise ConfigError(
            f"{root / 'data' / 'eval_all.csv'}: no out-of-scope rows, so no threshold can be "
            "calibrated for a target recall. Retrain with out-of-scope rows in `intents.eval` "
            "or intents in `intents.held_out`, or pass no --target to a run calibrated without "
            "one."
        )
    bot = Assistant.load(root, threads=threads, writer=False)
    cal = calibrate(bot, rows, oos, target)
    if meta.get("index") and not meta.get("retriever"):  # a run written before it was kept
        import json

        manifest = json.loads((root / meta["index"] / "retriever.json").read_text())
        meta["retriever"] = manifest.get("kind")
    meta.update(
        confidence_threshold=cal.pop("confidence_threshold"),
        retrieval_threshold=cal.pop("retrieval_threshold"),
        target_oos_recall=target,
        calibration=cal,
    )
    write_summary(root, meta)
    return meta
