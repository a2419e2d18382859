"""finwatch: events, storage (SQLite and a real PostgreSQL), trends, detector, alerts, webhook."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig, load_finwatch_config
from tailorml.apps.finwatch.detector import NotFittedError, SurgeDetector
from tailorml.apps.finwatch.events import Event, Rejected, parse_event
from tailorml.apps.finwatch.notify import deliver_pending
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.replay import TOPICS, Surge, make_stream, parse_surge
from tailorml.apps.finwatch.scorer import LabelScorer
from tailorml.apps.finwatch.trends import window_counts

from .conftest import REPO
from .finwatch_services import Receiver, db_url, postgres  # noqa: F401

START = 1767571200.0  # 2026-01-05T00:00Z


def label_watcher(url: str, **cfg: Any) -> Watcher:
    c = FinwatchConfig(db=url, models={"scorer": "labels"}, **cfg)
    return Watcher(c, store.make_engine(url), LabelScorer(c.models, TOPICS)).open()


def ev(i: int | str, t: float, topic: str = "Macro", sent: str = "Neutral") -> dict[str, Any]:
    return {
        "id": str(i),
        "time": t,
        "text": f"text {i}",
        "labels": {"topic": topic, "sentiment": sent},
    }


# -- events -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "bad JSON"),
        ('{"id": "a", "time": 1}', "missing text"),
        ('{"id": "a", "time": 1, "text": "  "}', "missing text"),
        ('{"time": 1, "text": "x"}', "missing id"),
        ('{"id": "a", "time": "yesterday", "text": "x"}', "unparseable time"),
        ('{"id": "a", "text": "x"}', "missing time"),
        ('{"id": "a", "time": 1, "text": "' + "x" * 5000 + '"}', "oversized"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_malformed_events_are_rejected_with_a_reason(raw: str, reason: str) -> None:
    out = parse_event(raw, "t", max_chars=4000)
    assert isinstance(out, Rejected) and out.reason.startswith(reason), out


def test_event_times_iso_and_unix() -> None:
    a = parse_event('{"id": 7, "time": "2026-01-05T00:00:00Z", "text": "x"}', "s", 100)
    b = parse_event({"id": "8", "time": START, "text": "y", "source": "wire"}, "s", 100)
    c = parse_event('{"id": "9", "time": "2026-01-05T01:00:00", "text": "z"}', "s", 100)
    assert isinstance(a, Event) and a.id == "7" and a.time == START and a.source == "s"
    assert isinstance(b, Event) and b.time == START and b.source == "wire"
    assert isinstance(c, Event) and c.time == START + 3600  # no zone = UTC


# -- storage ----------------------------------------------------------------------------------
def test_migrations_upgrade_an_old_database(db_url: str) -> None:  # noqa: F811
    engine = store.make_engine(db_url)
    assert store.migrate(engine, upto=1) == 1
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO alerts (topic, window_s, window_start, figures, event_ids, created_at)"
                " VALUES ('Macro', 900, 0, '{}', '[]', 0)"
            )
        )
    assert store.migrate(engine) == store.LATEST == 2
    assert store.migrate(engine) == 2  # idempotent
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("alerts")}
        row = conn.execute(sa.select(store.alerts)).one()
        versions = conn.execute(sa.select(store.schema_version.c.version)).scalars().all()
    assert {"delivered_at", "attempts", "next_attempt_at", "last_error"} <= cols
    assert row.topic == "Macro" and row.attempts == 0 and row.delivered_at is None
    assert sorted(versions) == [1, 2]
    if db_url.startswith("sqlite"):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_ingest_is_idempotent_and_dead_letters_bad_events(db_url: str) -> None:  # noqa: F811
    w = label_watcher(db_url)
    batch: list[Any] = [json.dumps(ev(i, START + i)) for i in range(30)]
    batch += [
        "{oops",
        json.dumps({"id": "x", "time": "never", "text": "t"}),
        json.dumps({"id": "y", "time": 1, "text": "no labels"}),  # labels scorer needs them
        json.dumps(ev(3, START + 3)),
    ]  # duplicate inside the batch
    r1 = w.ingest(batch, "test")
    assert (r1.accepted, r1.duplicates, r1.rejected) == (30, 1, 3)
    r2 = w.ingest(batch[:30] + [ev(100, START + 100)], "test")  # a resent batch + one new
    assert (r2.accepted, r2.duplicates) == (1, 30)
    c = store.counts(w.engine)
    assert c["events"] == 31 and c["dead_letters"] == 3
    with w.engine.connect() as conn:
        reasons = Counter(
            r.split(":")[0] for r in conn.execute(sa.select(store.dead_letters.c.reason)).scalars()
        )
    assert reasons == {
        "bad JSON": 1,
        "unparseable time": 1,
        "missing labels.topic or labels.sentiment (models.scorer is `labels`)": 1,
    }
    w.engine.dispose()


def _stream(hours: float = 12, surge_at_h: float = 9.0, topic: str = "Macro") -> list[dict]:
    return make_stream(
        hours,
        [Surge(topic, START + 3600 * surge_at_h, 45, 1.5)],
        rate_per_min=12,
        start=START,
        seed=3,
    )


def test_stream_with_a_surge_raises_one_alert_with_its_events(db_url: str) -> None:  # noqa: F811
    events = _stream()
    w = label_watcher(db_url)
    alerts: list[dict] = []
    for i in range(0, len(events), 700):
        alerts += w.ingest(events[i : i + 700], "replay").alerts
    alerts += w.advance(final=True)
    surge_start = START + 9 * 3600
    macro = [a for a in alerts if a["topic"] == "Macro"]
    assert len(macro) == 1, alerts  # hysteresis: one alert for the whole 45-minute surge
    a = macro[0]
    assert surge_start - 900 < a["window_start"] <= surge_start + 1800
    assert a["figures"]["negative_share"] > 2 * a["figures"]["baseline_share"]
    # The events behind the alert: the topic's negative events in that window, from the database.
    truth = {
        e["id"]
        for e in events
        if e["labels"]["topic"] == "Macro"
        and e["labels"]["sentiment"] == "Bearish"
        and a["window_start"] <= _ts(e) < a["window_start"] + 900
    }
    assert set(a["event_ids"]) == truth and len(truth) >= 6
    assert len(alerts) <= 2, alerts  # at most one false alert in 12 simulated hours
    # Stored once; running detection again stores nothing new.
    w.advance(final=True)
    assert store.counts(w.engine)["alerts"] == len(alerts)
    # Trends: counts per topic x window equal a count done here from the raw stream.
    expect: Counter = Counter()
    for e in events:
        ws = math.floor(_ts(e) / 3600) * 3600
        expect[(e["labels"]["topic"], ws, e["labels"]["sentiment"])] += 1
    with w.engine.connect() as conn:
        rows = window_counts(conn, 3600, 0, 1e12)
    got: Counter = Counter()
    for r in rows:
        for s, lab in (("negative", "Bearish"), ("neutral", "Neutral"), ("positive", "Bullish")):
            if r[s]:
                got[(r["topic"], r["window_start"], lab)] = r[s]
        assert r["volume"] == r["negative"] + r["neutral"] + r["positive"]
        assert r["net_sentiment"] == pytest.approx((r["positive"] - r["negative"]) / r["volume"])
    assert got == expect
    w.engine.dispose()


def _ts(e: dict) -> float:
    from tailorml.apps.finwatch.events import parse_time

    return parse_time(e["time"])


# -- detector ---------------------------------------------------------------------------------
def _windows(n: int, topic: str = "T", vol: int = 40, neg: int = 6) -> list[tuple]:
    return [(topic, 900.0 * i, vol, neg + (i % 3) - 1) for i in range(n)]


def test_detector_follows_the_sklearn_contract() -> None:
    d = SurgeDetector(z_on=4.0, cooldown=2)
    assert d.z_on == 4.0 and not hasattr(d, "state_")  # __init__ only stores
    with pytest.raises(NotFittedError, match="not fitted"):
        d.predict(_windows(3))
    with pytest.raises(NotFittedError):
        d.update(("T", 0.0, 10, 1))
    assert d.fit(_windows(20)) is d
    assert "T" in d.state_ and d.n_windows_ == 20
    before = json.dumps(d.get_state(), sort_keys=True)
    hot = [("T", 900.0 * 20, 40, 25)]
    assert d.predict(hot) == [True]
    assert json.dumps(d.get_state(), sort_keys=True) == before  # predict is pure
    with pytest.raises(Exception, match="z_off"):
        SurgeDetector(z_on=1.0, z_off=2.0).fit([])


def test_detector_hysteresis_cooldown_min_volume_and_per_topic() -> None:
    d = SurgeDetector(z_on=3.5, z_off=1.0, cooldown=4, min_volume=10, min_negative=6).fit(
        _windows(30)
    )
    flags = d.predict([("T", 900.0 * (30 + i), 40, 24) for i in range(4)])
    assert flags == [True, False, False, False]  # one alert per sustained surge
    # Surge ends, a new one 2 windows later is inside the cooldown; after it, it alerts again.
    seq = [
        ("T", 0.0, 40, 24),
        ("T", 1.0, 40, 5),
        ("T", 2.0, 40, 24),
        ("T", 3.0, 40, 5),
        ("T", 4.0, 40, 5),
        ("T", 5.0, 40, 5),
        ("T", 6.0, 40, 5),
        ("T", 7.0, 40, 24),
    ]
    assert d.predict(seq) == [True, False, False, False, False, False, False, True]
    assert d.predict([("T", 0.0, 7, 7)]) == [False]  # below min_volume
    quiet = SurgeDetector(per_topic={"T": {"z_on": 50.0, "z_count_on": 0}}).fit(_windows(30))
    assert quiet.predict([("T", 0.0, 40, 24)]) == [False]
    with pytest.raises(Exception, match="unknown"):
        SurgeDetector(per_topic={"T": {"zz": 1}}).fit([])


def test_detector_state_round_trip_equals_an_uninterrupted_run() -> None:
    wins = _windows(40) + [("T", 900.0 * 40, 40, 25)] + _windows(10)
    a = SurgeDetector().fit([])
    out_a = [a.update(w) for w in wins]
    b = SurgeDetector().fit([])
    out_b = [b.update(w) for w in wins[:25]]
    c = SurgeDetector().set_state(json.loads(json.dumps(b.get_state())))
    out_b += [c.update(w) for w in wins[25:]]
    assert out_a == out_b and sum(x is not None for x in out_a) == 1


# -- webhook ----------------------------------------------------------------------------------
def test_webhook_retries_with_backoff_until_the_receiver_is_back(tmp_path: Path) -> None:
    rec = Receiver()  # not started yet: the receiver is down
    w = label_watcher(
        f"sqlite:///{tmp_path / 'fw.db'}",
        webhook={"url": rec.url, "backoff_s": 0.05, "timeout_s": 1.0},
    )
    for i in range(0, len(events := _stream()), 2000):
        w.ingest(events[i : i + 2000], "replay")
    w.advance(final=True)
    n_alerts = store.counts(w.engine)["alerts"]
    assert n_alerts >= 1
    cfg = w.cfg.webhook
    assert deliver_pending(w.engine, cfg) == 0
    time.sleep(0.06)
    assert deliver_pending(w.engine, cfg) == 0
    with w.engine.connect() as conn:
        row = conn.execute(sa.select(store.alerts).order_by(store.alerts.c.pk)).first()
    assert row.attempts == 2 and row.delivered_at is None and "Connect" in row.last_error
    assert row.next_attempt_at - time.time() > 0.05  # backoff doubled: 0.1 s after 2 failures
    rec.start()
    try:
        delivered, deadline = 0, time.time() + 10
        while delivered < n_alerts and time.time() < deadline:
            delivered += deliver_pending(w.engine, cfg)
            time.sleep(0.05)
        assert delivered == n_alerts
        assert deliver_pending(w.engine, cfg) == 0  # delivered alerts are not sent again
        assert len(rec.received) == n_alerts
        body = next(b for b in rec.received if b["topic"] == "Macro")
        assert body["kind"] == "negative_surge" and body["window"]["seconds"] == 900
        assert len(body["events"]) == body["figures"]["n_negative"] >= 6
        assert all(k.startswith("finwatch-alert-") for k in rec.keys)
    finally:
        rec.stop()
        w.engine.dispose()


def test_watcher_retries_while_postgres_is_down(postgres: Any) -> None:  # noqa: F811
    import threading

    w = label_watcher(postgres.fresh_db("fw_down"))
    w.ingest([ev(i, START + i) for i in range(10)], "t")
    postgres.stop()
    result: dict[str, Any] = {}
    t = threading.Thread(
        target=lambda: result.update(r=w.ingest([ev(i, START + i) for i in range(10, 60)], "t"))
    )
    try:
        t.start()
        time.sleep(2.0)
        assert t.is_alive()  # blocked in retries, not failed
    finally:
        postgres.start()
    t.join(60)
    assert not t.is_alive() and result["r"].accepted == 50
    assert w.db_retries > 0 and store.counts(w.engine)["events"] == 60
    w.engine.dispose()


def test_store_retry_waits_out_a_locked_database_but_not_a_constraint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real SQLite errors: another writer's lock is transient (retried after the first backoff
    delay), a duplicate key is not (raised at once, nothing slept)."""
    import sqlite3

    path = tmp_path / "r.db"
    store.migrate(store.make_engine(f"sqlite:///{path}"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction holds the lock
    impatient = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    slept: list[float] = []
    retried: list[BaseException] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    def release(exc: BaseException) -> None:
        retried.append(exc)
        holder.rollback()

    def write(value: str) -> None:
        with impatient.begin() as conn:
            conn.execute(store.kv.insert().values(key="k", value=value))

    store.with_retry(lambda: write("1"), "a test write", on_retry=release)
    assert len(retried) == 1 and "locked" in str(retried[0])
    assert slept == [store.DB_BACKOFF.first_s]
    with pytest.raises(sa.exc.IntegrityError):
        store.with_retry(lambda: write("2"), "a duplicate", on_retry=retried.append)
    assert len(retried) == 1 and len(slept) == 1
    with impatient.connect() as conn:
        assert store.get_kv(conn, "k") == 1
    holder.close()
    impatient.dispose()


# -- configs ----------------------------------------------------------------------------------
def test_every_finwatch_config_parses() -> None:
    paths = sorted((REPO / "configs").glob("finwatch*.yaml"))
    assert paths
    for p in paths:
        if "train" in p.name:  # a multi-task run config with a topic and a sentiment head
            from tailorml.config.load import load_config

            run = load_config(p)
            assert run.heads is not None and {"topic", "sentiment"} <= set(run.heads)
        else:
            cfg = load_finwatch_config(p)
            assert cfg.detect_window in cfg.windows


def test_config_errors_name_the_field_and_the_fix() -> None:
    from tailorml.errors import ConfigError

    with pytest.raises(ConfigError, match="detect_window"):
        load_finwatch_config(None, ["models.scorer=labels", "detect_window=60"])
    with pytest.raises(ConfigError, match="models.model"):
        load_finwatch_config(None, [])
    with pytest.raises(ConfigError, match="per_topic.Macro"):
        load_finwatch_config(None, ["models.scorer=labels", "per_topic.Macro.z_on=-1"])


def test_a_mistyped_key_gets_the_closest_known_one(tmp_path: Path) -> None:
    """The run config's wording (config/load.py), not pydantic's bare "Extra inputs"."""
    from tailorml.errors import ConfigError

    p = tmp_path / "fw.yaml"
    p.write_text("finwatch:\n  models: {scorer: labels}\n  detector:\n    z_onn: 4\n")
    with pytest.raises(ConfigError) as info:
        load_finwatch_config(p, ["detect_windw=900", "per_topic.Macro.z_onn=4"])
    problems = info.value.problems
    assert "Unknown key `detector.z_onn`. Did you mean `detector.z_on`?" in problems[0]
    assert "configs/finwatch.yaml" in problems[0]  # where the keys are listed
    assert any("Unknown key `detect_windw`. Did you mean `detect_window`?" in p for p in problems)
    assert not any("Extra inputs" in p for p in problems)
    with pytest.raises(ConfigError, match="per_topic.Macro: Unknown key `z_onn`. Did you mean"):
        load_finwatch_config(None, ["models.scorer=labels", "per_topic.Macro.z_onn=4"])


def test_a_surge_spec_is_an_offset_and_a_length_not_a_clock_time() -> None:
    s = parse_surge("Macro@12:30:1.5", START)
    assert (s.start - START, s.minutes, s.intensity) == (12 * 3600, 30.0, 1.5)
    assert parse_surge("Macro@0.5", START).end - START == 1800 + 30 * 60  # default 30 minutes
    for bad in ("Macro@12:30pm", "Macro@1:2:3:4", "Macro@"):
        with pytest.raises(ValueError, match=r"e\.g\. 'Macro@12:30:1\.5'.*not a clock time"):
            parse_surge(bad, START)


def test_events_from_the_far_future_are_dead_lettered(tmp_path: Path) -> None:
    w = label_watcher(f"sqlite:///{tmp_path / 'f.db'}")
    res = w.ingest([ev(1, START), ev(2, time.time() + 10 * 86400)], "t")
    assert (res.accepted, res.rejected) == (1, 1)
    with w.engine.connect() as conn:
        reason = conn.execute(sa.select(store.dead_letters.c.reason)).scalar()
    assert reason.startswith("time in the future")
    w.engine.dispose()


@settings(max_examples=30, deadline=None)
@given(
    windows=st.lists(
        st.tuples(
            st.sampled_from(["A", "B"]),
            st.integers(0, 40),  # volume
            st.floats(0, 1),  # negative share
            st.integers(0, 4000),  # empty windows before it
        ),
        max_size=6,
    ),
    alpha=st.sampled_from([0.3, 0.9]),  # the count baseline reaches 0.0 within ~3000 windows
    z_off=st.sampled_from([0.0, 1.0]),  # 0: a surge never ends in empty windows
    tail=st.integers(0, 4000),
)
def test_empty_windows_in_runs_equal_one_by_one(
    windows: list[tuple[str, int, float, int]], alpha: float, z_off: float, tail: int
) -> None:
    """`update_empty` (used to close long gaps quickly) leaves exactly the state, bit for bit,
    and the alerts that judging each empty window alone does."""
    params = {"alpha": alpha, "warmup": 2, "min_volume": 3, "min_negative": 1, "z_off": z_off}
    fast = SurgeDetector(**params).fit([])
    slow = SurgeDetector(**params).fit([])
    w = 900.0
    start = 0.0
    fast_alerts, slow_alerts = [], []
    for topic, n, share, gap in [*windows, ("A", 0, 0.0, tail)]:
        fast_alerts += fast.update_empty(topic, start, gap, w)
        for k in range(gap):
            found = slow.update((topic, start + k * w, 0, 0))
            slow_alerts += [found] if found else []
        start += gap * w
        row = (topic, start, n, round(n * share))
        for det, out in ((fast, fast_alerts), (slow, slow_alerts)):
            found = det.update(row)
            out += [found] if found else []
        start += w
    assert fast.get_state() == slow.get_state()
    assert fast_alerts == slow_alerts
