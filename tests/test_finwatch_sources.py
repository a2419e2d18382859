"""finwatch ingest sources and the CLI: a followed file (kill -9 + restart), stdin, HTTP,
tiny real models scoring in micro-batches, replay and evaluate."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.events import Event
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.replay import TOPICS, Surge, make_stream
from tailorml.apps.finwatch.scorer import LabelScorer, ModelScorer, make_scorer
from tailorml.apps.finwatch.sources import read_stream
from tailorml.apps.finwatch.trends import window_counts

from .conftest import FILL, NEG, NEU, POS, make_rows, tiny_config, write_csv
from .finwatch_services import free_port

START = 1767571200.0
CLI = [sys.executable, "-m", "tailorml.cli", "finwatch"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def write_cfg(tmp: Path, db: str, **extra: Any) -> Path:
    import yaml

    cfg = {"db": db, "models": {"scorer": "labels"}, "batch_size": 64, **extra}
    p = tmp / "fw.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return p


def stream(hours: float = 12, seed: int = 5) -> list[dict[str, Any]]:
    return make_stream(
        hours,
        [Surge("Earnings", START + 8 * 3600, 45, 1.5)],
        rate_per_min=12,
        start=START,
        seed=seed,
    )


def db_state(url: str) -> dict[str, Any]:
    engine = store.make_engine(url)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(store.events.c.id)).scalars().all()
        alerts = conn.execute(sa.select(store.alerts.c.topic, store.alerts.c.window_start)).all()
        trend = window_counts(conn, 3600, 0, 1e12)
    engine.dispose()
    return {"ids": ids, "alerts": sorted(alerts), "volume": sum(r["volume"] for r in trend)}


def test_kill9_mid_stream_then_restart_loses_and_double_counts_nothing(tmp_path: Path) -> None:
    events = stream()
    half = len(events) // 2
    src = tmp_path / "events.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in events[:half]), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'fw.db'}"
    cfg = write_cfg(tmp_path, url, batch_size=16)  # small batches: many commits to kill between
    cmd = [*CLI, "watch", str(cfg), "--file", str(src), "--idle-exit", "2"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    engine = store.make_engine(url)
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline:
        try:
            stored = store.counts(engine)["events"]
        except sa.exc.OperationalError:
            stored = 0  # tables not created yet
        if stored > 300:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    engine.dispose()
    assert 0 < stored < half, "the kill must land mid-stream"
    # The stream goes on growing while the watcher is dead; restart follows it to the end.
    with src.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(e) + "\n" for e in events[half:]))
        fh.write("{this line is broken\n")
    out = subprocess.run([*cmd, "--final"], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    state = db_state(url)
    assert sorted(state["ids"]) == sorted(e["id"] for e in events)  # none lost, none twice
    assert state["volume"] == len(events)  # trends count each event once
    assert summary["database"]["dead_letters"] == 1
    # Same alerts as an uninterrupted run over the same stream.
    ref = f"sqlite:///{tmp_path / 'ref.db'}"
    c = FinwatchConfig(db=ref, models={"scorer": "labels"})
    w = Watcher(c, store.make_engine(ref), LabelScorer(c.models, TOPICS)).open()
    w.ingest(events, "ref")
    w.advance(final=True)
    w.engine.dispose()
    assert state["alerts"] == db_state(ref)["alerts"]
    assert any(t == "Earnings" for t, _ in state["alerts"])


def test_stdin_source_in_micro_batches(tmp_path: Path) -> None:
    events = stream(hours=3)
    text = "".join(json.dumps(e) + "\n" for e in events) + "not json\n"
    c = FinwatchConfig(
        db=f"sqlite:///{tmp_path / 'a.db'}", models={"scorer": "labels"}, batch_size=50
    )
    w = Watcher(c, store.make_engine(c.db), LabelScorer(c.models, TOPICS)).open()
    res = read_stream(w, io.StringIO(text))
    assert (res.accepted, res.rejected) == (len(events), 1)
    # The CLI reads a real pipe the same way.
    cfg = write_cfg(tmp_path, f"sqlite:///{tmp_path / 'b.db'}")
    out = subprocess.run(
        [*CLI, "watch", str(cfg), "--stdin"],
        input=text,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == len(events) and summary["rejected"] == 1


def test_http_post_events_batches(tmp_path: Path) -> None:
    import uvicorn

    from tailorml.apps.finwatch.server import create_app

    c = FinwatchConfig(db=f"sqlite:///{tmp_path / 'h.db'}", models={"scorer": "labels"})
    engine = store.make_engine(c.db)
    w = Watcher(c, engine, LabelScorer(c.models, TOPICS)).open()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(c, engine, w), host="127.0.0.1", port=port, log_level="warning")
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        events = stream(hours=12)
        with httpx.Client(base_url=base, timeout=30) as cli:
            got = {"accepted": 0, "alerts": 0}
            for i in range(0, len(events), 1000):
                r = cli.post("/v1/events", json={"events": events[i : i + 1000]})
                assert r.status_code == 200, r.text
                for k in got:
                    got[k] += r.json()[k]
            assert got["accepted"] == len(events) and got["alerts"] >= 1
            again = cli.post("/v1/events", json=events[:500] + [{"id": "bad"}]).json()
            assert again == {
                "accepted": 0,
                "duplicates": 500,
                "rejected": 1,
                "alerts": 0,
                "rejections": [{"index": 500, "id": "bad", "reason": "missing text"}],
            }
            assert cli.post("/v1/events", json={"nope": 1}).status_code == 422
            health = cli.get("/healthz").json()
            assert health["events"] == len(events) and health["dead_letters"] == 1
            alerts = cli.get("/api/alerts").json()["alerts"]
            assert any(a["topic"] == "Earnings" and len(a["events"]) >= 6 for a in alerts)
    finally:
        server.should_exit = True
        t.join(10)
        engine.dispose()


# -- tiny real models ---------------------------------------------------------------------------
TOPIC_NAMES = ["Earnings", "Macro", "IPO"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny topic model, a tiny sentiment model, and one tiny multi-task model with both
    heads, each fine-tuned once per session (a few seconds each)."""
    from tailorml.config.load import validate_mapping
    from tailorml.recipes.finetune import finetune

    out = {}
    names = dict(zip(["negative", "neutral", "positive"], TOPIC_NAMES, strict=True))
    files = {}
    for head in ("topic", "sentiment"):
        tmp = tmp_path_factory.mktemp(f"fw-{head}")
        rows = make_rows(240, 0)
        if head == "topic":
            rows = [{"text": r["text"], "label": names[r["label"]]} for r in rows]
        files[head] = str(write_csv(tmp / "train.csv", rows))
        raw = tiny_config(tmp, data={"train": files[head]})
        cfg, problems = validate_mapping(raw)
        assert cfg is not None, problems
        finetune(cfg)
        out[head] = tmp / "run" / "model"
    tmp = tmp_path_factory.mktemp("fw-multitask")
    raw = tiny_config(tmp)
    del raw["data"], raw["task"]
    raw["heads"] = {h: {"data": {"train": f, "max_length": 32}} for h, f in files.items()}
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    finetune(cfg)
    out["multitask"] = tmp / "run" / "model"
    return out


@pytest.mark.parametrize("layout", ["multitask", "two-models"])
def test_model_scorer_scores_in_micro_batches(
    tiny_models: dict[str, Path], tmp_path: Path, layout: str
) -> None:
    import random

    models: dict[str, Any] = {"threads": 2, "chunk_size": 4}
    if layout == "multitask":
        models["model"] = tiny_models["multitask"]
    else:
        models.update(topic=tiny_models["topic"], sentiment=tiny_models["sentiment"])
    c = FinwatchConfig(db=f"sqlite:///{tmp_path / 'm.db'}", batch_size=16, models=models)
    scorer = ModelScorer(c.models)
    assert sorted(scorer.topics) == sorted(TOPIC_NAMES)
    calls: list[int] = []
    pred = scorer.joint if layout == "multitask" else scorer.topic
    orig = pred.predict_sorted
    pred.predict_sorted = lambda texts, chunk=8, pool=None: (
        calls.append(len(texts))
        or orig(  # type: ignore[method-assign]
            texts, chunk, pool
        )
    )
    w = Watcher(c, store.make_engine(c.db), scorer).open()
    rng = random.Random(0)
    evs = []
    for i in range(40):
        word = rng.choice(NEG if i % 2 else POS)
        evs.append(
            {
                "id": f"e{i}",
                "time": START + 60 * i,
                "text": f"{rng.choice(FILL)} {word} {rng.choice(FILL)}",
            }
        )
    res = w.ingest(evs, "t")
    assert res.accepted == 40 and calls == [16, 16, 8]
    with w.engine.connect() as conn:
        rows = conn.execute(sa.select(store.events)).all()
    neg = [r for r in rows if int(r.id[1:]) % 2]
    # The tiny sentiment model learned the keywords: negative words -> negative, and p_negative
    # is its probability.
    assert sum(r.sentiment == "negative" for r in neg) >= 16
    assert all(0 <= r.p_negative <= 1 for r in rows)
    assert {r.topic for r in rows} <= set(TOPIC_NAMES)
    assert NEU  # keyword lists come from conftest
    w.engine.dispose()


def test_an_event_the_model_service_refuses_is_a_dead_letter(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Scoring through a real `tailor serve` (models.url) whose max_chars is below the watcher's
    max_text_chars: the service refuses one text (413), that event is dead-lettered ("cannot be
    scored") and the rest of its micro-batch is stored. What is not the event's fault raises
    and commits nothing, so the source offers the batch again: a service that refuses every
    text (even a plain probe), and a service that is down."""
    from tailorml.apps.finwatch.scorer import RemoteScorer
    from tailorml.client import ServiceError
    from tailorml.predictors import load_predictor

    from .serve_helpers import ThreadServer

    pred = load_predictor(tiny_models["multitask"], threads=1)
    url = f"sqlite:///{tmp_path / 'r.db'}"

    def events(prefix: str, long_at: int | None = None) -> list[dict[str, Any]]:
        return [
            {"id": f"{prefix}{i}", "time": START + 60 * i, "text": "x " * 60 if i == long_at
             else f"shares {NEG[i % len(NEG)]} today"}
            for i in range(5)
        ]  # fmt: skip

    with ThreadServer(pred, max_chars=100) as srv:
        c = FinwatchConfig(db=url, models={"url": srv.url}, batch_size=8)
        scorer = RemoteScorer(c.models)
        w = Watcher(c, store.make_engine(url), scorer).open()
        res = w.ingest(events("a", long_at=2), "t")
        assert (res.accepted, res.rejected) == (4, 1)
        assert res.rejections[0]["id"] == "a2"
        assert res.rejections[0]["reason"].startswith("cannot be scored")
        assert "413" in res.rejections[0]["reason"] and "max_chars" in res.rejections[0]["reason"]
    before = store.counts(w.engine)
    with ThreadServer(pred, max_chars=5) as broken:  # refuses every text, the probe's too
        scorer.client = type(scorer.client)(broken.url, retries=1)
        with pytest.raises(ServiceError, match="413"):
            w.ingest(events("b", long_at=2), "t")
    assert store.counts(w.engine) == before
    # That server is gone now: the service is down (connection refused).
    with pytest.raises(ServiceError, match="cannot reach"):
        w.ingest(events("c"), "t")
    assert store.counts(w.engine) == before
    w.engine.dispose()


# -- replay and evaluate --------------------------------------------------------------------------
def test_replay_cli_is_deterministic_and_marks_surges(tmp_path: Path) -> None:
    outs = []
    for k in range(2):
        p = tmp_path / f"s{k}.jsonl"
        r = subprocess.run(
            [
                *CLI,
                "replay",
                "--hours",
                "6",
                "--surge",
                "Macro@3:30:2",
                "--out",
                str(p),
                "--truth",
                str(tmp_path / "truth.json"),
            ],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        outs.append(p.read_text())
    assert outs[0] == outs[1]
    evs = [json.loads(x) for x in outs[0].splitlines()]
    surge = [e for e in evs if e.get("surge")]
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth[0]["topic"] == "Macro" and truth[0]["minutes"] == 30
    assert surge and all(e["labels"] == {"topic": "Macro", "sentiment": "Bearish"} for e in surge)
    times = [e["time"] for e in evs]
    assert times == sorted(times)
    assert 6 * 60 * 20 * 0.5 < len(evs) - len(surge) < 6 * 60 * 20 * 1.5


def test_demo_command_fires_the_alert_and_its_dashboard_shows_it(tmp_path: Path) -> None:
    """Run where a user would (the default folder under runs/), then the dashboard command the
    demo prints; a second run starts from an empty database and finds the surge again."""
    import shlex

    def run_demo() -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*CLI, "demo"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert "surge on 'Energy | Oil' DETECTED" in r.stdout, r.stdout
        return r

    r = run_demo()
    alerts = sorted(line.split(" window ")[0][6:] for line in r.stdout.splitlines()
                    if line.startswith("ALERT "))  # fmt: skip
    assert "Energy | Oil" in alerts
    line = next(x for x in r.stdout.splitlines() if x.startswith("dashboard: "))
    cmd = shlex.split(line.removeprefix("dashboard: ").split("#")[0])
    assert cmd[:3] == ["tailor", "finwatch", "dashboard"], line
    assert (tmp_path / cmd[3]).is_file() and (tmp_path / "runs/finwatch-demo/finwatch.db").is_file()
    port = free_port()
    dash = subprocess.Popen(
        [*CLI, *cmd[2:], "--port", str(port)],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                break
            except httpx.TransportError:
                assert dash.poll() is None and time.time() < deadline, dash.stderr
                time.sleep(0.3)
        shown = httpx.get(f"http://127.0.0.1:{port}/api/alerts", timeout=10).json()["alerts"]
    finally:
        dash.terminate()
        dash.wait(30)
    assert sorted(a["topic"] for a in shown) == alerts
    assert f"{health['events']} events stored" in r.stdout
    again = run_demo()  # not "MISSED" on the first run's already-judged windows
    assert f"{health['events']} events stored" in again.stdout


@pytest.mark.slow  # ~40 s: the labels demo above runs the same command path by default
def test_demo_with_the_model_scores_held_out_tweets(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """`demo CONFIG` with a model: surges are made of texts the model scores as the topic and
    negative; a topic the model never gives is refused with the topics that work."""
    import yaml

    cfg = tmp_path / "fw.yaml"
    models = {"model": str(tiny_models["multitask"]), "threads": 1}
    cfg.write_text(yaml.safe_dump({"finwatch": {"models": models}}), encoding="utf-8")
    out = ["--out", str(tmp_path / "demo")]
    r = subprocess.run([*CLI, "demo", str(cfg), *out], env=ENV, capture_output=True, text=True)
    assert r.returncode != 0 and "--topic 'Energy | Oil'" in r.stderr, r.stderr[-2000:]
    ok = [t for t in TOPIC_NAMES if repr(t) in r.stderr.rpartition("Choose one of")[2]]
    assert ok, r.stderr[-2000:]
    r = subprocess.run(
        [*CLI, "demo", str(cfg), "--topic", ok[0], "--intensity", "3", *out],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"surge on {ok[0]!r} " in r.stdout and "events stored" in r.stdout


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_cli_watch_http_with_webhook_delivers_alerts(tmp_path: Path, stop_signal: str) -> None:
    """Also: the watcher stops cleanly on SIGINT or SIGTERM even when started with SIGINT
    ignored, as a background job of a non-interactive shell is (it once hung there)."""
    from .finwatch_services import Receiver

    rec = Receiver()
    rec.start()
    port = free_port()
    cfg = write_cfg(
        tmp_path, f"sqlite:///{tmp_path / 'w.db'}", webhook={"url": rec.url, "backoff_s": 0.1}
    )
    proc = subprocess.Popen(
        [*CLI, "watch", str(cfg), "--http", f"127.0.0.1:{port}"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        events = stream(hours=12)
        for i in range(0, len(events), 2000):
            r = httpx.post(f"{base}/v1/events", json=events[i : i + 2000], timeout=60)
            assert r.status_code == 200, r.text
        deadline = time.time() + 30
        while time.time() < deadline and not any(b["topic"] == "Earnings" for b in rec.received):
            time.sleep(0.1)
        assert any(b["topic"] == "Earnings" and b["events"] for b in rec.received)
        html = httpx.get(f"{base}/", timeout=5).text
        assert "finwatch" in html and "/api/trends" in html
    finally:
        proc.send_signal(getattr(signal, stop_signal))
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"watch did not stop on SIGINT; stderr: {err[-3000:]}") from None
        finally:
            rec.stop()
    assert proc.returncode == 0, err[-2000:]
    assert "ALERT negative surge: topic=Earnings" in err
    assert json.loads(out.strip().splitlines()[-1])["database"]["events"] > 0  # the final counts


def test_file_follower_survives_a_huge_line(tmp_path: Path) -> None:
    from tailorml.apps.finwatch.sources import follow_file

    events = stream(hours=1)
    src = tmp_path / "e.jsonl"
    with src.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(events[0]) + "\n")
        fh.write('{"id": "huge", "time": 1, "text": "' + "x" * (5 << 20) + '"}\n')
        fh.writelines(json.dumps(e) + "\n" for e in events[1:])
    c = FinwatchConfig(db=f"sqlite:///{tmp_path / 'h.db'}", models={"scorer": "labels"})
    w = Watcher(c, store.make_engine(c.db), LabelScorer(c.models, TOPICS)).open()
    res = follow_file(w, src, follow=False)
    assert res.accepted == len(events) and res.rejected >= 1
    with w.engine.connect() as conn:
        reasons = conn.execute(sa.select(store.dead_letters.c.reason)).scalars().all()
    assert all(r.startswith("oversized") for r in reasons)
    w.engine.dispose()


def test_evaluate_with_models_injects_texts_the_models_score_negative(
    tiny_models: dict[str, Path],
) -> None:
    from tailorml.apps.finwatch.evaluate import evaluate_grid

    c = FinwatchConfig(
        models={"topic": tiny_models["topic"], "sentiment": tiny_models["sentiment"], "threads": 1}
    )
    # The grid: the model's probabilities and its argmax labels on the same scored streams.
    lines: list[str] = []
    grid = evaluate_grid(
        c,
        [1.0],
        [0],
        with_labels=False,
        progress=lines.append,
        streams=1,
        hours=18,
        surges_per_stream=2,
        rate_per_min=10,
    )
    assert [r["variant"] for r in grid["rows"]] == ["model", "model-argmax"]
    assert sum("scoring every held-out tweet once" in x for x in lines) == 1  # scored once
    probs, argmax = grid["runs"]
    assert probs["scorer"] == "model" and probs["surges"] == argmax["surges"] == 2
    assert probs["per_stream"][0]["truth"] == argmax["per_stream"][0]["truth"]
    assert {t["topic"] for t in probs["per_stream"][0]["truth"]} <= set(TOPIC_NAMES)
    stats = grid["score_stats"]  # how the model scores each topic's background and surges
    assert sum(t["background"] for t in stats.values()) == 4117  # topic_valid.csv's rows
    for t in stats.values():
        assert (
            0 <= t["p_mean"] <= 1 and t["p_one_minus_p"] <= t["p_mean"] * (1 - t["p_mean"]) + 1e-3
        )
    for res in (probs, argmax):
        assert res["true_alerts"] + res["false_alerts"] == res["alerts"]
        assert res["recall"] is not None and 0 <= res["recall"] <= 1


def test_calibration_is_written_beside_the_model_and_used_by_the_scorer(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """`tailor finwatch calibrate` fits the sentiment head's temperature on labeled texts and
    writes calibration.json into the model folder; the scorer divides the logits by it (the
    argmax is unchanged), and `models.calibrated: false` turns it off."""
    import shutil

    import numpy as np

    folder = tmp_path / "model"
    shutil.copytree(tiny_models["multitask"], folder)  # the fixture's folder stays uncalibrated
    labeled = [
        {"text": r["text"], "label": r["label"]} for r in make_rows(150, 7)
    ]  # noisy labels: a third flipped, so the confident tiny model is over-confident
    for k, r in enumerate(labeled):
        if k % 3 == 0:
            r["label"] = ["negative", "neutral", "positive"][(k // 3) % 3]
    data = write_csv(tmp_path / "cal.csv", labeled)
    cfg = write_cfg(tmp_path, "sqlite:///x.db", models={"model": str(folder), "threads": 1})
    r = subprocess.run(
        [*CLI, "calibrate", str(cfg), "--data", str(data)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((folder / "calibration.json").read_text())
    assert info == json.loads(r.stdout) and info["examples"] == 150
    assert info["temperature"] > 1.2 and info["nll_after"] < info["nll_before"]
    texts = [x["text"] for x in labeled[:20]]
    evs = [Event(id=str(k), time=0.0, text=t) for k, t in enumerate(texts)]
    m = FinwatchConfig(models={"model": folder, "threads": 1}).models
    cal, raw = ModelScorer(m), ModelScorer(m.model_copy(update={"calibrated": False}))
    assert cal.temperature == pytest.approx(info["temperature"]) and raw.temperature == 1.0
    logits = raw.joint.predict(texts)[:, raw._s_cols]
    got = [p for _, _, p in cal.score(evs)]
    neg = [i for i, s in enumerate(cal._sent) if s == "negative"]
    z = logits / info["temperature"]
    want = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True))[:, neg].sum(axis=1)
    assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert [s for _, s, _ in cal.score(evs)] == [s for _, s, _ in raw.score(evs)]
    assert got != pytest.approx([p for _, _, p in raw.score(evs)], abs=1e-3)


def test_scoring_through_tailor_serve_matches_local(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """models.url: the watcher scores through a real `tailor serve` app on 127.0.0.1 serving the
    multi-task model, and stores what scoring the same folder locally gives."""
    from tailorml.apps.finwatch.scorer import RemoteScorer
    from tailorml.errors import ConfigError
    from tailorml.predictors import load_predictor

    from .serve_helpers import ThreadServer

    texts = [f"{FILL[i % len(FILL)]} {(NEG + POS)[i % 16]} shares" for i in range(30)]
    evs = [{"id": f"r{i}", "time": START + 30 * i, "text": t} for i, t in enumerate(texts)]
    local = ModelScorer(
        FinwatchConfig(models={"model": tiny_models["multitask"], "threads": 1}).models
    )
    want = local.score([Event(id=e["id"], time=0.0, text=e["text"]) for e in evs])
    with ThreadServer(load_predictor(tiny_models["multitask"], threads=1)) as srv:
        c = FinwatchConfig(
            db=f"sqlite:///{tmp_path / 'r.db'}", batch_size=8, models={"url": srv.url}
        )
        w = Watcher(c, store.make_engine(c.db), make_scorer(c.models)).open()
        assert isinstance(w.scorer, RemoteScorer)
        assert sorted(w.scorer.topics) == sorted(TOPIC_NAMES)
        assert w.ingest(evs, "t").accepted == 30
        with w.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(sa.select(store.events))}
        for e, (topic, sent, p_neg) in zip(evs, want, strict=True):
            r = rows[e["id"]]
            assert (r.topic, r.sentiment) == (topic, sent)
            assert r.p_negative == pytest.approx(p_neg, abs=1e-5)
        w.engine.dispose()
    # A service of a single-task model is refused with the fix.
    with (
        ThreadServer(load_predictor(tiny_models["topic"], threads=1)) as srv,
        pytest.raises(ConfigError, match="heads"),
    ):
        make_scorer(FinwatchConfig(models={"url": srv.url}).models)


@pytest.mark.parametrize("source", ["file", "http"])
def test_sigterm_reports_what_was_ingested(tmp_path: Path, source: str) -> None:
    """Issue 18 #4: `watch` stopped by SIGTERM reports the events it stored and the alerts it
    raised (it printed zeros: a followed file's or HTTP's counts were lost). With --http, the
    key comes from $TAILORML_API_KEY, as for `tailor serve`."""
    key = "fw-key-890"
    events = stream(hours=12)
    cfg = write_cfg(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    port = free_port()
    if source == "file":
        src = tmp_path / "e.jsonl"
        src.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        args = ["--file", str(src)]  # followed: only a signal ends it
    else:
        args = ["--http", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*CLI, "watch", str(cfg), *args],
        env={**ENV, "TAILORML_API_KEY": key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 90
        if source == "http":
            base = f"http://127.0.0.1:{port}"
            while time.time() < deadline:
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            refused = httpx.post(f"{base}/v1/events", json=events[:10], timeout=10)
            assert refused.status_code == 401, refused.text
            for i in range(0, len(events), 3000):
                r = httpx.post(
                    f"{base}/v1/events",
                    json=events[i : i + 3000],
                    headers={"X-API-Key": key},
                    timeout=60,
                )
                assert r.status_code == 200, r.text
        engine = store.make_engine(f"sqlite:///{tmp_path / 's.db'}")
        stored = 0
        while time.time() < deadline and stored < len(events):
            time.sleep(0.2)
            with contextlib.suppress(sa.exc.OperationalError):  # tables not created yet
                stored = store.counts(engine)["events"]
        engine.dispose()
        assert stored == len(events)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    db = summary["database"]
    assert summary["accepted"] == db["events"] == len(events), summary
    assert summary["alerts"] == db["alerts"] >= 1, summary
    assert "Traceback" not in err, err[-3000:]
