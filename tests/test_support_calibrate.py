"""The two thresholds calibrated together, so that the whole assistant (not the intent model
alone) reaches the target out-of-scope recall: checked against brute force, on a case computed
by hand, and through the Assistant's own decision rule."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tailorml.apps.support.assistant import Assistant
from tailorml.apps.support.calibrate import calibrate, handoffs, joint_thresholds
from tailorml.apps.support.retrieval import Hit


def _figures(conf, correct, is_oos, tmpl, score, t, r, floor):  # type: ignore[no-untyped-def]
    handed = handoffs(conf, tmpl, score, t, r, floor)
    recall = (handed & is_oos).sum() / is_oos.sum()
    acc = (~handed & correct & ~is_oos).sum() / (~is_oos).sum()
    return recall, acc, handed.mean()


def test_joint_thresholds_match_brute_force_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(8, 40))
        is_oos = rng.random(n) < 0.4
        is_oos[0], is_oos[1] = True, False
        # out-of-scope rows are less confident and retrieve worse, on average
        conf = np.clip(rng.normal(np.where(is_oos, 0.5, 0.8), 0.2), 0, 1)
        score = np.clip(rng.normal(np.where(is_oos, 0.5, 0.7), 0.15), 0, 1)
        score[rng.random(n) < 0.1] = -np.inf  # nothing retrieved
        correct = ~is_oos & (rng.random(n) < 0.8)
        tmpl = rng.random(n) < 0.2
        floor, target = 0.3, float(rng.uniform(0.3, 1.0))
        t, r = joint_thresholds(conf, correct, is_oos, tmpl, score, floor, target)
        recall, acc, rate = _figures(conf, correct, is_oos, tmpl, score, t, r, floor)
        # every pair of thresholds that makes a difference: each value, one above all, inf
        ts = sorted({*conf, np.nextafter(conf.max(), 2), np.inf})
        rs = sorted({floor, *score[score >= floor], np.inf})
        every = [
            _figures(conf, correct, is_oos, tmpl, score, a, b, floor)
            for a, b in itertools.product(ts, rs)
        ]
        feasible = [f for f in every if f[0] >= target - 1e-12]
        assert recall >= target - 1e-12
        top = max(f[1] for f in feasible)
        assert acc == pytest.approx(top)
        assert rate == pytest.approx(min(f[2] for f in feasible if f[1] == top))
        assert r >= floor


def test_a_hand_computed_case() -> None:
    # rows: (confidence, correct, out of scope, template, best article score)
    rows = [
        (0.95, True, False, False, 0.80),  # confident, good article: retrieval
        (0.90, True, False, True, 0.10),  # confident, template
        (0.40, True, False, False, 0.90),  # unsure, but its article is close: keep if r <= .9
        (0.60, False, True, False, 0.70),  # out of scope, looks like an article
        (0.30, False, True, False, 0.85),  # out of scope, looks even more like one
        (0.20, False, True, False, 0.20),
    ]
    conf, correct, is_oos, tmpl, score = (np.array(c) for c in zip(*rows, strict=True))
    # target 2/3: the intent threshold must exceed 0.60 (else row 3 is confident and answered
    # at the 0.5 floor); then unsure rows are answered when their article reaches r: r in
    # (0.85, 0.90] keeps row 2 and hands off rows 3 and 4 -> every in-scope row right.
    # target 2/3: row 5 is always handed off; one of rows 3, 4 must be too. The fewest
    # hand-offs keeping every in-scope row: trust intents from 0.4 (row 2 answered while
    # confident; row 3 answered too) and hand off unsure rows whose article is under 0.9 (row 4).
    t, r = joint_thresholds(conf, correct, is_oos, tmpl, score, 0.5, 2 / 3)
    assert (t, r) == (0.4, 0.9)
    assert _figures(conf, correct, is_oos, tmpl, score, t, r, 0.5) == (2 / 3, 1.0, 1 / 3)
    # target 1: row 3 must be unsure (t > 0.6); rows 0, 1, 2 are still answered at t = 0.9
    t, r = joint_thresholds(conf, correct, is_oos, tmpl, score, 0.5, 1.0)
    assert (t, r) == (0.9, 0.9)
    assert _figures(conf, correct, is_oos, tmpl, score, t, r, 0.5) == (1.0, 1.0, 0.5)
    # row 3 certain and templated: only trusting no intent at all hands it off; then the
    # unsure rows' articles decide (row 2's 0.9 is kept, row 0's 0.8 is below row 4's 0.85)
    conf[3], tmpl[3] = 1.0, True
    t, r = joint_thresholds(conf, correct, is_oos, tmpl, score, 0.5, 1.0)
    assert t > 1.0 and r == 0.9
    assert _figures(conf, correct, is_oos, tmpl, score, t, r, 0.5) == (1.0, 1 / 3, 5 / 6)


class Model:
    labels = ["a", "b"]

    def __init__(self, logits: dict[str, list[float]]):
        self.logits = logits

    def predict_sorted(self, texts: list[str]) -> np.ndarray:
        return np.array([self.logits[t] for t in texts])


class Kb:
    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def search_many(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        return [[Hit("d", "d#0", self.scores[q], "D", "text")] for q in queries]


def test_calibrated_assistant_hands_off_what_its_single_floor_answered() -> None:
    """The known weakness: with one retrieval floor (0.45), every message the intent threshold
    handed off was answered by retrieval. Calibrated, the whole assistant reaches the target."""
    msgs = {f"in{j}": ([4.0, 0.0], 0.6 + j / 100) for j in range(10)}  # confident, in scope
    msgs |= {f"out{j}": ([0.2, 0.0], 0.5 + j / 100) for j in range(10)}  # unsure, look alike
    model = Model({m: v[0] for m, v in msgs.items()})
    bot = Assistant(model, threshold=0.7, retriever=Kb({m: v[1] for m, v in msgs.items()}))
    rows = [{"text": m, "label": "out" if m.startswith("out") else "a"} for m in msgs]
    before = [r["handoff"] for r in bot.answer_many(list(msgs))]
    assert sum(before) == 0  # the floor 0.45 answers every one
    cal = calibrate(bot, rows, "out", 0.8)
    replies = bot.answer_many(list(msgs))
    handed_out = sum(r["handoff"] for r, m in zip(replies, msgs, strict=True) if "out" in m)
    assert handed_out >= 8 and cal["assistant"]["oos_recall"] == handed_out / 10
    assert cal["assistant"]["in_scope_accuracy"] == 1.0  # confident in-scope rows still answered
    assert all(not r["handoff"] for r, m in zip(replies, msgs, strict=True) if "in" in m)
    assert bot.retrieval_threshold == cal["retrieval_threshold"] > 0.45


def test_a_template_slot_no_training_message_fills_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tailorml.apps.support.train import warn_unfilled_slots

    rows = [
        {"text": "top up 20 EUR", "label": "top_up"},
        {"text": "where is my card", "label": "card_arrival"},
        {"text": "is my card coming", "label": "card_arrival"},
    ]
    answers = {
        "top_up": "Your top-up of {amount} is on its way.",  # filled by a message
        "card_arrival": "We sent {amount} cards.",  # no card message holds a number
        "pin_blocked": "Unblock it in settings.",  # no slot
    }
    with caplog.at_level("WARNING", logger="tailorml.support"):
        assert warn_unfilled_slots(answers, rows, "answers.yaml") == ["card_arrival"]
    [record] = caplog.records
    assert "answers.yaml" in record.getMessage() and "'card_arrival'" in record.getMessage()
    assert "{amount}" in record.getMessage() and "2 training" in record.getMessage()


def test_articles_named_after_intents_are_the_gold_documents() -> None:
    from tailorml.apps.support.evaluate import _gold_documents
    from tailorml.apps.support.knowledge import Passage

    class Kb:
        passages_ = [Passage(d, f"{d}#0", d, "x") for d in ("reverted_card_payment", "pin")]

    rows = [
        {"text": "a", "label": "reverted_card_payment?"},  # `?` is not in the file's name
        {"text": "b", "label": "pin"},
        {"text": "c", "label": "out_of_scope"},  # no article: not scored
    ]
    assert _gold_documents("d.csv", rows, None, Kb()) == ["reverted_card_payment", "pin", None]
    assert _gold_documents("d.csv", rows[2:], None, Kb()) is None  # no intent has an article


def test_calibrating_a_run_without_out_of_scope_rows_is_named(tmp_path: Path) -> None:
    from tailorml.apps.support.calibrate import calibrate_run
    from tailorml.errors import ConfigError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval_all.csv").write_text("text,label\nhi,a\nho,b\n")
    meta = {"out_of_scope_label": "out_of_scope", "target_oos_recall": None}
    (tmp_path / "support.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"eval_all\.csv: no out-of-scope rows.*held_out"):
        calibrate_run(tmp_path, target=0.9)
