"""Detection quality on replayed streams with injected surges.

Each stream runs through the real watcher (parse -> score -> store -> windows -> detector) into
its own database. Matching: an alert on topic T for the window starting at s detects a surge on T
when s lies in [window of the surge start, surge end + 2 windows). Delay (windows) = (s - start of
the window holding the surge start) / w: 0 means the alert came for the very window the surge
began in (it is raised when that window closes). Unmatched alerts are false alerts.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.events import Event
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.replay import (
    SENT_CSV,
    SENT_HELDOUT_CSV,
    TOPIC_CSV,
    TOPIC_HELDOUT_CSV,
    make_stream,
    random_surges,
    topic_texts,
    truth_json,
)
from tailorml.apps.finwatch.scorer import Scorer, make_scorer
from tailorml.apps.finwatch.store import make_engine
from tailorml.files import atomic_json


class CachedScorer:
    """Scores each distinct text once (replayed streams repeat the same tweets)."""

    def __init__(self, base: Scorer, batch: int = 128):
        self.base, self.batch = base, batch
        self.topics = base.topics
        self.cache: dict[str, tuple[str, str, float]] = {}

    def prime(self, texts: list[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for i in range(0, len(todo), self.batch):
            chunk = todo[i : i + self.batch]
            evs = [Event(id=str(k), time=0.0, text=t) for k, t in enumerate(chunk)]
            self.cache.update(zip(chunk, self.base.score(evs), strict=True))

    def problem(self, event: Event) -> str | None:
        return self.base.problem(event)

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        self.prime([e.text for e in events])
        return [self.cache[e.text] for e in events]


MIN_POOL = 20  # fewest distinct texts a topic needs to carry injected surges (model scoring)


def model_surge_pools(scorer: Scorer) -> tuple[CachedScorer, dict[str, list[str]]]:
    """For model-scored replays: score every held-out text once, and pool, per topic, the texts
    the models score as that topic and negative (what a surge on it is made of)."""
    cached = CachedScorer(scorer)
    cached.prime(topic_texts(TOPIC_HELDOUT_CSV, SENT_HELDOUT_CSV))
    pools: dict[str, list[str]] = {}
    for text, (topic, sent, _p) in cached.cache.items():
        if sent == "negative":
            pools.setdefault(topic, []).append(text)
    return cached, pools


def match(alerts: list[dict[str, Any]], truth: list[dict[str, Any]], w: int) -> dict[str, Any]:
    used: set[int] = set()
    delays: list[float] = []
    detected = 0
    for s in truth:
        first = math.floor(s["start"] / w) * w
        hits = [
            (a["window_start"], k)
            for k, a in enumerate(alerts)
            if a["topic"] == s["topic"] and first <= a["window_start"] < s["end"] + 2 * w
        ]
        if hits:
            detected += 1
            ws, _ = min(hits)
            delays.append((ws - first) / w)
            used.update(k for _, k in hits)
    return {
        "surges": len(truth),
        "detected": detected,
        "alerts": len(alerts),
        "true_alerts": len(used),
        "false_alerts": len(alerts) - len(used),
        "delays": delays,
    }


def run_stream(
    cfg: FinwatchConfig,
    events: list[dict[str, Any]],
    scorer: Scorer,
    db_dir: Path,
    chunk: int = 500,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    engine = make_engine(f"sqlite:///{db_dir / 'eval.db'}")
    watcher = Watcher(cfg.model_copy(update={"db": str(engine.url)}), engine, scorer).open()
    alerts: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(0, len(events), chunk):
        alerts += watcher.ingest(events[i : i + chunk], "replay").alerts
    alerts += watcher.advance(final=True)
    secs = time.perf_counter() - t0
    engine.dispose()
    return alerts, {"events": len(events), "seconds": secs}


def evaluate(
    cfg: FinwatchConfig,
    streams: int = 5,
    hours: float = 48.0,
    surges_per_stream: int = 8,
    rate_per_min: float = 20.0,
    intensity: float = 1.0,
    minutes: float = 30.0,
    seed: int = 0,
    scorer: Scorer | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`progress`, when given, gets a line per step (scoring the texts, then each stream)."""
    say = progress or (lambda _line: None)
    scorer = scorer or make_scorer(cfg.models)
    w = cfg.detect_window
    pools: dict[str, list[str]] | None = None
    topics_for_surges: list[str] | None = None
    topic_csv, sent_csv = TOPIC_CSV, SENT_CSV
    if cfg.models.scorer == "model":
        # Replay texts the models were not trained on (the valid splits). Score every text a
        # stream can carry once (the models are deterministic per text), then inject, as surges
        # on T, texts the models themselves score as topic T and negative: the truth is then
        # defined in the models' own terms, and the background carries their errors.
        topic_csv, sent_csv = TOPIC_HELDOUT_CSV, SENT_HELDOUT_CSV
        say("scoring every held-out tweet once with the model (streams repeat them)")
        scorer, pools = model_surge_pools(scorer)
        topics_for_surges = sorted(t for t, v in pools.items() if len(v) >= MIN_POOL)
    totals = {"surges": 0, "detected": 0, "alerts": 0, "true_alerts": 0, "false_alerts": 0}
    delays: list[float] = []
    per_stream = []
    ev_total, sec_total = 0.0, 0.0
    for k in range(streams):
        rng = random.Random(seed * 1000 + k)
        start = 1767571200.0  # 2026-01-05T00:00Z
        surges = random_surges(
            hours,
            surges_per_stream,
            rng,
            start,
            minutes=minutes,
            intensity=intensity,
            topics=topics_for_surges,
        )
        events = make_stream(
            hours,
            surges,
            rate_per_min=rate_per_min,
            start=start,
            seed=seed * 1000 + k,
            window_s=w,
            surge_texts=pools,
            topic_csv=topic_csv,
            sent_csv=sent_csv,
        )
        truth = truth_json(surges)
        with tempfile.TemporaryDirectory() as tmp:
            alerts, perf = run_stream(cfg, events, scorer, Path(tmp))
        m = match(alerts, truth, w)
        say(
            f"stream {k + 1}/{streams}: {perf['events']} events in {perf['seconds']:.0f} s, "
            f"{m['detected']}/{m['surges']} surges detected, {m['false_alerts']} false alert(s)"
        )
        for key in totals:
            totals[key] += m[key]
        delays += m["delays"]
        ev_total += perf["events"]
        sec_total += perf["seconds"]
        per_stream.append(
            {
                "seed": seed * 1000 + k,
                "start": start,
                **{k2: m[k2] for k2 in totals},
                "events": perf["events"],
                "truth": truth,
                "alerts": [
                    {
                        "topic": a["topic"],
                        "window_start": a["window_start"],
                        "figures": a["figures"],
                    }
                    for a in alerts
                ],
            }
        )
    days = streams * hours / 24
    return {
        "scorer": cfg.models.scorer,
        "models": (
            {"model": str(cfg.models.model)}
            if cfg.models.model is not None
            else {"topic": str(cfg.models.topic), "sentiment": str(cfg.models.sentiment)}
        )
        if cfg.models.scorer == "model"
        else None,
        "streams": streams,
        "hours_per_stream": hours,
        "simulated_days": days,
        "rate_per_min": rate_per_min,
        "surge_minutes": minutes,
        "surge_intensity": intensity,
        "detect_window_s": w,
        "detector": cfg.detector.model_dump(),
        **totals,
        "precision": totals["true_alerts"] / totals["alerts"] if totals["alerts"] else None,
        "recall": totals["detected"] / totals["surges"] if totals["surges"] else None,
        "median_delay_windows": statistics.median(delays) if delays else None,
        "false_alerts_per_day": totals["false_alerts"] / days,
        "events": int(ev_total),
        "pipeline_events_per_s": ev_total / sec_total if sec_total else None,
        "per_stream": per_stream,
    }


def save(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "finwatch_eval.json"
    atomic_json(js, result)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    ps = result["per_stream"][0]
    w = result["detect_window_s"]
    t0 = ps["start"]
    for s in ps["truth"]:
        axes[0].axvspan(
            (s["start"] - t0) / 3600, (s["end"] - t0) / 3600, color="tab:red", alpha=0.25
        )
    for a in ps["alerts"]:
        axes[0].axvline((a["window_start"] + w - t0) / 3600, color="k", lw=1)
    axes[0].set_xlim(0, result["hours_per_stream"])
    axes[0].set_title("stream 1: injected surges (red) and alerts (black, at window end)")
    axes[0].set_xlabel("hours")
    axes[0].set_yticks([])
    names = ["precision", "recall"]
    vals = [result["precision"] or 0, result["recall"] or 0]
    axes[1].bar(
        names + ["false/day", "median delay"],
        vals + [result["false_alerts_per_day"], result["median_delay_windows"] or 0],
        color=["tab:blue", "tab:green", "tab:red", "tab:gray"],
    )
    axes[1].set_title(f"{result['streams']} streams, {result['simulated_days']:.0f} simulated days")
    for i, v in enumerate(
        vals + [result["false_alerts_per_day"], result["median_delay_windows"] or 0]
    ):
        axes[1].text(i, v, f"{v:.2f}", ha="center", va="bottom")
    fig.tight_layout()
    png = out_dir / "finwatch_eval.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return js, png
