"""Turn the labeled tweet sets into a timed stream with injected negative surges.

How times are made (the tweet sets carry no timestamps): arrivals are a Poisson process starting
at `start`, with a daily cycle (rate x (1 + diurnal x sin(2 pi (hour - 9) / 24)), busiest at 15:00
UTC). Each background event is a random row of the topic set (its topic is the row's label); its
sentiment label is drawn from the sentiment set's class shares (15% Bearish, 20% Bullish, 65%
Neutral), because no bundled tweet carries both a topic and a sentiment label. A surge on topic T
from t0 for `minutes` adds, on top of the background, Bearish tweets of the sentiment set labeled
topic T at `intensity` x T's background rate (at least `min_per_window` per detection window).
All randomness comes from `seed`: the same arguments give the same stream.

Each event: {"id", "time" (ISO 8601 UTC), "text", "source": "replay", "labels": {topic,
sentiment}, "surge": true on injected ones}. The truth (surge intervals) is returned alongside.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[3]
TOPIC_CSV = REPO / "data/twitter_fin_topic/topic_train.csv"
SENT_CSV = REPO / "data/twitter_fin_sentiment/sent_train.csv"
# Texts the models were not trained on: the model-scored evaluation replays these.
TOPIC_HELDOUT_CSV = REPO / "data/twitter_fin_topic/topic_valid.csv"
SENT_HELDOUT_CSV = REPO / "data/twitter_fin_sentiment/sent_valid.csv"
TOPICS = [
    "Analyst Update",
    "Fed | Central Banks",
    "Company | Product News",
    "Treasuries | Corporate Debt",
    "Dividend",
    "Earnings",
    "Energy | Oil",
    "Financials",
    "Currencies",
    "General News | Opinion",
    "Gold | Metals | Materials",
    "IPO",
    "Legal | Regulation",
    "M&A | Investments",
    "Macro",
    "Markets",
    "Politics",
    "Personnel Change",
    "Stock Commentary",
    "Stock Movement",
]
SENTIMENTS = ["Bearish", "Bullish", "Neutral"]


@dataclass
class Surge:
    topic: str
    start: float  # Unix seconds
    minutes: float = 30.0
    intensity: float = 1.0
    min_per_window: int = 12

    @property
    def end(self) -> float:
        return self.start + 60 * self.minutes


def _read(path: Path) -> list[tuple[str, int]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [(r["text"], int(r["label"])) for r in csv.DictReader(fh)]


def parse_surge(spec: str, start: float) -> Surge:
    """`TOPIC@HOURS[:MINUTES[:INTENSITY]]`: the surge starts HOURS after the stream start (not at
    a clock time), lasts MINUTES, at INTENSITY x the topic's own rate; `Macro@12:30:1.5` is 12 h
    in, 30 minutes long, 1.5x."""
    topic, _, rest = spec.rpartition("@")
    if topic not in TOPICS:
        raise ValueError(f"surge topic {topic!r} is not one of {TOPICS}")
    parts = rest.split(":")
    try:
        if len(parts) > 3:
            raise ValueError
        nums = [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"surge {spec!r}: write TOPIC@HOURS[:MINUTES[:INTENSITY]] with numbers, e.g. "
            f"'{topic}@12:30:1.5' (12 h after the stream start, 30 minutes long, 1.5x the "
            "topic's rate); HOURS is an offset, not a clock time"
        ) from None
    s = Surge(topic, start + 3600 * nums[0])
    if len(nums) > 1:
        s.minutes = nums[1]
    if len(nums) > 2:
        s.intensity = nums[2]
    return s


def make_stream(
    hours: float,
    surges: list[Surge],
    rate_per_min: float = 20.0,
    diurnal: float = 0.5,
    start: float | None = None,
    seed: int = 0,
    window_s: int = 900,
    topic_csv: Path = TOPIC_CSV,
    sent_csv: Path = SENT_CSV,
    surge_texts: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """`surge_texts` (topic -> texts) replaces the Bearish tweets injected in surges, e.g. texts
    that the models themselves score as that topic and negative (model-scored evaluation)."""
    rng = random.Random(seed)
    start = start if start is not None else datetime(2026, 1, 5, tzinfo=UTC).timestamp()
    topic_rows = _read(topic_csv)
    sent_rows = _read(sent_csv)
    bearish = [t for t, lab in sent_rows if lab == 0]
    shares = [sum(1 for _, lab in sent_rows if lab == k) / len(sent_rows) for k in range(3)]
    topic_share = [
        sum(1 for _, lab in topic_rows if lab == k) / len(topic_rows) for k in range(len(TOPICS))
    ]
    peak = rate_per_min * (1 + diurnal) / 60.0  # events per second, thinning bound
    out: list[tuple[float, dict[str, Any]]] = []
    t, i, end = start, 0, start + 3600 * hours
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            break
        hour = (t % 86400) / 3600
        if rng.random() > (1 + diurnal * math.sin(2 * math.pi * (hour - 9) / 24)) / (1 + diurnal):
            continue
        text, lab = rng.choice(topic_rows)
        sent = rng.choices(SENTIMENTS, weights=shares)[0]
        out.append(
            (
                t,
                {
                    "id": f"bg-{seed}-{i}",
                    "text": text,
                    "labels": {"topic": TOPICS[lab], "sentiment": sent},
                },
            )
        )
        i += 1
    for k, s in enumerate(surges):
        base = rate_per_min / 60.0 * topic_share[TOPICS.index(s.topic)]  # per second
        rate = max(s.intensity * base, s.min_per_window / window_s)
        t, j = s.start, 0
        while True:
            t += rng.expovariate(rate)
            if t >= s.end:
                break
            out.append(
                (
                    t,
                    {
                        "id": f"surge-{seed}-{k}-{j}",
                        "text": rng.choice(surge_texts[s.topic] if surge_texts else bearish),
                        "labels": {"topic": s.topic, "sentiment": "Bearish"},
                        "surge": True,
                    },
                )
            )
            j += 1
    out.sort(key=lambda x: x[0])
    events = []
    for ts, ev in out:
        ev["time"] = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
        ev["source"] = "replay"
        events.append(ev)
    return events


def topic_texts(topic_csv: Path = TOPIC_CSV, sent_csv: Path = SENT_CSV) -> list[str]:
    """Every text a replayed stream can carry (topic rows and Bearish sentiment rows)."""
    texts = [t for t, _ in _read(topic_csv)] + [t for t, lab in _read(sent_csv) if lab == 0]
    return list(dict.fromkeys(texts))


def random_surges(
    hours: float,
    n: int,
    rng: random.Random,
    start: float,
    warmup_h: float = 6.0,
    topics: list[str] | None = None,
    minutes: float = 30.0,
    intensity: float = 1.0,
) -> list[Surge]:
    """n surges at random times after the warmup, at least 3 h apart, on random topics."""
    topics = topics or TOPICS
    slots = [warmup_h + 3 * k for k in range(int((hours - warmup_h - 1) // 3))]
    chosen = sorted(rng.sample(slots, min(n, len(slots))))
    return [
        Surge(rng.choice(topics), start + 3600 * (h + rng.uniform(0, 2)), minutes, intensity)
        for h in chosen
    ]


def write_stream(
    events: list[dict[str, Any]], out: TextIO, speed: float = 0.0, flush_every: int = 1
) -> None:
    """Write JSONL, pacing by event time / speed (speed 0 = as fast as possible)."""
    t0_wall = time.monotonic()
    t0_ev: float | None = None
    for k, ev in enumerate(events):
        if speed > 0:
            ts = datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
            t0_ev = ts if t0_ev is None else t0_ev
            wait = (ts - t0_ev) / speed - (time.monotonic() - t0_wall)
            if wait > 0:
                out.flush()
                time.sleep(wait)
        out.write(json.dumps(ev) + "\n")
        if k % flush_every == 0:
            out.flush()
    out.flush()


def truth_json(surges: list[Surge]) -> list[dict[str, Any]]:
    return [asdict(s) | {"end": s.end} for s in surges]


if __name__ == "__main__":  # pragma: no cover
    write_stream(make_stream(24, []), sys.stdout)
