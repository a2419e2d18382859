"""Two watchers in one Redis consumer group split a stream: no event processed twice, none lost."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import redis

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.redis_source import consume
from tailorml.apps.finwatch.replay import TOPICS, Surge, make_stream
from tailorml.apps.finwatch.scorer import LabelScorer

from .finwatch_services import RedisServer, db_url, postgres, redis_server  # noqa: F401

START = 1767571200.0


def test_two_watchers_split_one_stream(
    redis_server: RedisServer,  # noqa: F811
    db_url: str,  # noqa: F811
) -> None:
    events = make_stream(
        12, [Surge("Macro", START + 9 * 3600, 45, 1.5)], rate_per_min=8, start=START, seed=11
    )
    r = redis.Redis.from_url(redis_server.url)
    stream = f"fw:test-split-{db_url.split(':')[0]}"
    pipe = r.pipeline()
    for e in events:
        pipe.xadd(stream, {"event": json.dumps(e)})
    pipe.xadd(stream, {"event": "{broken"})
    pipe.execute()
    url = db_url  # one database shared by both watchers (SQLite file or PostgreSQL)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        c = FinwatchConfig(db=url, models={"scorer": "labels"}, batch_size=32)
        w = Watcher(c, store.make_engine(url), LabelScorer(c.models, TOPICS)).open()
        results[name] = consume(
            w,
            redis_server.url,
            stream=stream,
            group="g",
            consumer=name,
            idle_exit_s=1.5,
            block_ms=200,
            processed=seen[name],
        )
        w.engine.dispose()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    a, b = set(seen["a"]), set(seen["b"])
    assert len(a) > 0.2 * len(events) and len(b) > 0.2 * len(events)  # both did real work
    assert not a & b  # no event processed twice
    assert a | b == {e["id"] for e in events}  # none lost
    assert results["a"].accepted + results["b"].accepted == len(events)
    assert results["a"].rejected + results["b"].rejected == 1
    assert r.xpending(stream, "g")["pending"] == 0  # everything acknowledged
    engine = store.make_engine(url)
    c = store.counts(engine)
    assert c["events"] == len(events) and c["dead_letters"] == 1
    with engine.connect() as conn:
        alerts = conn.execute(store.alerts.select()).all()
    assert [a.topic for a in alerts].count("Macro") == 1
    engine.dispose()
    r.close()


def test_a_restarted_consumer_rereads_its_unacked_entries(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    stream = "fw:test-pending"
    events = [
        {
            "id": f"p{i}",
            "time": START + i,
            "text": "t",
            "labels": {"topic": "Macro", "sentiment": "Neutral"},
        }
        for i in range(50)
    ]
    for e in events:
        r.xadd(stream, {"event": json.dumps(e)})
    r.xgroup_create(stream, "g", id="0")
    # A consumer read 20 entries and died before storing or acknowledging them.
    r.xreadgroup("g", "w1", {stream: ">"}, count=20)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    c = FinwatchConfig(db=url, models={"scorer": "labels"}, batch_size=16)
    w = Watcher(c, store.make_engine(url), LabelScorer(c.models, TOPICS)).open()
    res = consume(
        w, redis_server.url, stream=stream, group="g", consumer="w1", idle_exit_s=0.5, block_ms=100
    )
    assert res.accepted == 50 and store.counts(w.engine)["events"] == 50
    assert r.xpending(stream, "g")["pending"] == 0
    w.engine.dispose()


def test_redis_not_running_is_a_clear_error(tmp_path: Path) -> None:
    """Issue 18 #8: `--redis URL` with no server there: one line naming --redis, the URL and the
    fix, exit 2 (was redis-py's ConnectionError traceback). A URL without a scheme likewise."""
    import subprocess
    import sys

    from .finwatch_services import free_port

    cfg = tmp_path / "fw.yaml"
    db = f"sqlite:///{tmp_path / 'r.db'}"
    cfg.write_text(json.dumps({"db": db, "models": {"scorer": "labels"}}), encoding="utf-8")
    url = f"redis://127.0.0.1:{free_port()}/0"
    for given, needles in (
        (url, [f"--redis {url}: cannot reach Redis", "Start redis-server"]),
        ("localhost:6379", ["--redis localhost:6379", "redis://127.0.0.1:6379/0"]),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "tailorml.cli", "finwatch", "watch", str(cfg), "--redis", given],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2, (res.returncode, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        assert res.stdout == ""
