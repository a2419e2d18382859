"""finwatch detection on probabilities: the expected-count statistic, per-topic baselines with a
pooled prior (kept across a restart), temperature scaling, and the evaluation grid."""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.calibrate import fit_temperature, nll
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.detector import POOL, SurgeDetector, Window
from tailorml.apps.finwatch.events import Event
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.trends import window_counts

from .conftest import REPO

START = 1767571200.0
W = 900.0


# -- the statistic ------------------------------------------------------------------------------
def _soft_windows(
    rng: random.Random, n_windows: int, surges: set[int], extra: float = 0.5
) -> list[tuple[Window, Window]]:
    """Per window, the same events seen two ways: (probabilities, argmax labels). Background
    events have p_negative ~ U(0.3, 0.7) (a topic the model is unsure about: about half argmax
    negative); a surge window adds `extra` x the volume of events with p ~ U(0.8, 1.0)."""
    out = []
    for i in range(n_windows):
        ps = [rng.uniform(0.3, 0.7) for _ in range(60)]
        if i in surges:
            ps += [rng.uniform(0.8, 1.0) for _ in range(int(60 * extra))]
        e, q = sum(ps), sum(p * (1 - p) for p in ps)
        hard = sum(p > 0.5 for p in ps)
        out.append(
            (Window("T", W * i, len(ps), hard, e, q), Window("T", W * i, len(ps), hard)),
        )
    return out


def test_probabilities_find_surges_that_argmax_labels_miss() -> None:
    """Background p spread around 0.5 makes the argmax share noisy (binomial, 0.25 per event);
    the sum of p varies far less (0.013 per event), so a surge of +50% confident negatives stands
    out only on probabilities. Same windows, same detector settings."""
    rng = random.Random(0)
    surges = {60 + 25 * k for k in range(8)}
    wins = _soft_windows(rng, 60 + 25 * 8, surges)
    soft, hard = SurgeDetector().fit([]), SurgeDetector().fit([])
    hits = {"soft": set(), "hard": set()}
    false = {"soft": 0, "hard": 0}
    for i, (ws, wh) in enumerate(wins):
        for name, det, w in (("soft", soft, ws), ("hard", hard, wh)):
            if det.update(w):
                if i in surges:
                    hits[name].add(i)
                else:
                    false[name] += 1
    assert len(hits["soft"]) >= 7 and false["soft"] <= 1
    assert len(hits["hard"]) <= 3
    # The share baseline learned the spread of p: qm close to E[p (1 - p)] of U(0.3, 0.7).
    assert soft.state_["T"]["qm"] == pytest.approx(0.25 - 0.4**2 / 12, abs=0.01)
    assert hard.state_["T"]["qm"] == 0.0


def test_labels_are_the_special_case_p_in_0_1() -> None:
    """A window given as hard counts and one given as e = count, q = 0 are judged the same, and a
    state saved before the probability figures existed loads and behaves like hard labels."""
    rng = random.Random(1)
    rows = [("T", W * i, 40, rng.randint(2, 9)) for i in range(40)] + [("T", W * 40, 40, 26)]
    a, b = SurgeDetector().fit([]), SurgeDetector().fit([])
    out_a = [a.update(r) for r in rows]
    out_b = [b.update(Window(r[0], r[1], r[2], r[3], float(r[3]), 0.0)) for r in rows]
    assert out_a == out_b and out_a[-1] is not None
    assert a.get_state() == b.get_state()
    old = json.loads(json.dumps(a.get_state()))
    for st in old["state"].values():  # what an older watcher saved: no sv / qm / qc
        for k in ("sv", "qm", "qc"):
            st.pop(k, None)
    c = SurgeDetector().set_state(old)
    assert c.state_["T"]["qc"] == 0.0 and c.state_[POOL]["qm"] == 0.0
    assert c.update(("T", W * 41, 40, 5)) is None


def test_pooled_prior_gives_way_to_the_topic_history() -> None:
    """A quiet topic starts from the pooled baseline; its own history takes over as it grows."""
    det = SurgeDetector(prior_windows=3).fit([])
    for i in range(200):  # other topics: 10% negative
        det.update((f"t{i % 4}", W * i, 50, 5))
    first = det.baseline("New")
    assert first["windows"] == 0 and first["share"] == pytest.approx(0.1, abs=0.01)
    det.update(("New", W * 200, 50, 30))  # this topic runs at 60% negative
    one = det.baseline("New")
    assert one["own_weight"] == pytest.approx(1 / 4)
    assert one["share"] == pytest.approx((0.6 + 3 * det.state_[POOL]["mu"]) / 4, abs=1e-9)
    for i in range(201, 300):
        det.update(("New", W * i, 50, 30))
    late = det.baseline("New")
    assert late["own_weight"] > 0.97 and late["share"] == pytest.approx(0.6, abs=0.02)
    # The topic's normal 60% no longer alerts; a jump to 90% still does.
    assert det.predict([("New", W * 300, 50, 30)]) == [False]
    assert det.predict([("New", W * 300, 50, 45)]) == [True]


# -- persisted baselines ------------------------------------------------------------------------
class SoftScorer:
    """p_negative from a hash of the text (deterministic, spread over (0, 1)); the topic from the
    event's labels. Stands in for a model with soft scores."""

    topics = ["A", "B"]

    def problem(self, event: Event) -> str | None:
        return None

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        out = []
        for e in events:
            h = int(hashlib.sha256(e.text.encode()).hexdigest()[:8], 16) / 16**8
            p = 0.95 if e.labels.get("sentiment") == "Bearish" else 0.2 + 0.5 * h
            out.append((e.labels["topic"], "negative" if p > 0.5 else "neutral", p))
        return out


def _events(hours: float, surge_h: float) -> list[dict[str, Any]]:
    rng = random.Random(3)
    evs, t, i = [], START, 0
    while t < START + 3600 * hours:
        t += rng.expovariate(1 / 20)
        topic = "A" if rng.random() < 0.6 else "B"
        bear = topic == "B" and surge_h * 3600 <= t - START < (surge_h + 0.5) * 3600
        bear = bear or rng.random() < 0.02
        evs.append(
            {
                "id": f"e{i}",
                "time": t,
                "text": f"tweet {i} about {topic}",
                "labels": {"topic": topic, "sentiment": "Bearish" if bear else "Neutral"},
            }
        )
        i += 1
    return evs


def test_a_restarted_watcher_resumes_the_baselines(tmp_path: Path) -> None:
    """The per-topic baselines live in the database with the closed windows: a watcher opened
    again on it judges with the same baselines (bit for bit) and raises the same alerts as one
    that never stopped; the stored windows carry the sums of p and p (1 - p)."""
    evs = _events(10, 8.0)
    half = len(evs) // 2

    def watcher(name: str) -> Watcher:
        c = FinwatchConfig(db=f"sqlite:///{tmp_path / name}", models={"scorer": "labels"})
        return Watcher(c, store.make_engine(c.db), SoftScorer()).open()  # type: ignore[arg-type]

    ref = watcher("ref.db")
    ref_alerts = [a["window_start"] for a in ref.ingest(evs, "x").alerts]
    ref_alerts += [a["window_start"] for a in ref.advance(final=True)]
    first = watcher("run.db")
    alerts = [a["window_start"] for a in first.ingest(evs[:half], "x").alerts]
    before = first.detector.baseline("A")  # type: ignore[union-attr]
    state = first.detector.get_state()  # type: ignore[union-attr]
    first.engine.dispose()
    again = watcher("run.db")
    assert again.detector.get_state() == state  # type: ignore[union-attr]
    assert again.detector.baseline("A") == before  # type: ignore[union-attr]
    assert before["windows"] > 10 and 0.2 < before["share"] < 0.5
    alerts += [a["window_start"] for a in again.ingest(evs[half:], "x").alerts]
    alerts += [a["window_start"] for a in again.advance(final=True)]
    assert alerts == ref_alerts and len(alerts) >= 1
    with again.engine.connect() as conn:
        rows = window_counts(conn, 900, 0, 1e12, topic="A")
    ps = [
        p
        for _, _, p in SoftScorer().score(
            [
                Event(id="x", time=0, text=e["text"], labels=e["labels"])
                for e in evs
                if e["labels"]["topic"] == "A"
            ]
        )
    ]  # noqa: E501
    assert sum(r["expected_negative"] for r in rows) == pytest.approx(sum(ps))
    assert sum(r["var_negative"] for r in rows) == pytest.approx(sum(p * (1 - p) for p in ps))
    again.engine.dispose()
    ref.engine.dispose()


# -- temperature scaling ------------------------------------------------------------------------
def _generated(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the "model" reports z * scale (over-confident if > 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    return z * scale, y


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_temperature_scaling_lowers_held_out_nll(scale: float) -> None:
    fit_logits, fit_y = _generated(4000, scale, 0)
    t = fit_temperature(fit_logits, fit_y)
    assert t == pytest.approx(scale, rel=0.15)  # it undoes the miscalibration
    test_logits, test_y = _generated(4000, scale, 1)
    assert nll(test_logits, test_y, t) < nll(test_logits, test_y) - 0.02
    assert (test_logits / t).argmax(axis=1).tolist() == test_logits.argmax(axis=1).tolist()
    # Already calibrated: T stays near 1 and the NLL does not move.
    ok_logits, ok_y = _generated(4000, 1.0, 2)
    assert fit_temperature(ok_logits, ok_y) == pytest.approx(1.0, abs=0.12)


# -- the evaluation grid ------------------------------------------------------------------------
def test_evaluate_reports_each_intensity_over_seeds(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            *[sys.executable, "-m", "tailorml.cli", "finwatch", "evaluate"],
            "configs/finwatch-replay.yaml",
            *["--streams", "1", "--hours", "15", "--surges", "2"],
            *["--intensities", "1,5", "--seeds", "0,1", "--out", str(tmp_path)],
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "labels 5x seed 1: recall" in r.stderr  # progress per run
    res = json.loads((tmp_path / "finwatch_eval.json").read_text())
    assert [(row["variant"], row["intensity"]) for row in res["rows"]] == [
        ("labels", 1.0),
        ("labels", 5.0),
    ]
    for row in res["rows"]:
        runs = [x for x in res["runs"] if x["surge_intensity"] == row["intensity"]]
        assert [x["surges"] for x in runs] == [2, 2]
        recalls = [x["recall"] for x in runs]
        assert row["recall"]["mean"] == pytest.approx(statistics.fmean(recalls))
        assert row["recall"]["std"] == pytest.approx(statistics.stdev(recalls))
        for x in runs:
            assert x["true_alerts"] + x["false_alerts"] == x["alerts"]
            sep = x["separability"]
            assert sep["surges"] == 2 and sep["normal_windows"] > 100
            assert 0.5 <= sep["auc"] <= 1
    assert res["rows"][1]["recall"]["mean"] >= 0.75
    table = (tmp_path / "finwatch_eval.md").read_text()
    assert "| labels | 5× |" in table and table.strip() in r.stdout
    assert (tmp_path / "finwatch_eval.png").stat().st_size > 5000
