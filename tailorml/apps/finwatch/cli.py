"""`tailor finwatch train|calibrate|watch|replay|evaluate|dashboard|demo`: parse, call the app."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tailorml.errors import TailorError
from tailorml.serve.settings import ENV_API_KEY

app = typer.Typer(
    help="Financial news monitor: topic + sentiment of a live stream, trends, surge alerts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. db=sqlite:///x.db")
]


def _fail(exc: TailorError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _config(config: Path | None, overrides: list[str] | None) -> Any:
    """The finwatch config, or exit with the problems (each names the field and the fix)."""
    from tailorml.apps.finwatch.config import load_finwatch_config

    try:
        return load_finwatch_config(config, overrides)
    except TailorError as exc:
        _fail(exc)


def _open(config: Path | None, overrides: list[str] | None) -> tuple[Any, Any, Any]:
    from tailorml.apps.finwatch.pipeline import Watcher
    from tailorml.apps.finwatch.scorer import make_scorer
    from tailorml.apps.finwatch.store import make_engine

    cfg = _config(config, overrides)
    engine = make_engine(cfg.db)
    watcher = Watcher(cfg, engine, make_scorer(cfg.models)).open()
    return cfg, engine, watcher


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT (Ctrl-C) and SIGTERM (systemd, docker stop, kill) stop the watcher cleanly: the
    first sets `stop`, which every source checks between micro-batches (the current one commits,
    pending alerts get a last delivery round, counts print); a second one interrupts at once.

    Set explicitly: a process started in the background by a non-interactive shell inherits
    SIGINT as *ignored*, and Python then never raises KeyboardInterrupt."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


ApiKey = Annotated[
    str | None,
    typer.Option(
        help="Require this key (`Authorization: Bearer KEY` or `X-API-Key: KEY`) on /v1/*, "
        "/api/* and /metrics; the dashboard page takes it as URL#key=KEY. "
        f"Also read from ${ENV_API_KEY}.",
        show_default=False,
    ),
]


def _api_key(given: str | None, host: str) -> str | None:
    """The key from --api-key or the environment; warns when a non-loopback host has none."""
    import os

    from tailorml.serve.kit import warn_if_open

    key = given or os.environ.get(ENV_API_KEY) or None
    warn_if_open(host, key, "post events and read the dashboard's data")
    return key


@app.command()
def watch(
    config: Annotated[Path, typer.Argument(help="finwatch YAML (see configs/finwatch.yaml).")],
    overrides: Overrides = None,
    file: Annotated[Path | None, typer.Option(help="JSONL file to read (and follow).")] = None,
    follow: Annotated[bool, typer.Option(help="Keep reading the file as it grows.")] = True,
    stdin: Annotated[bool, typer.Option(help="Read JSON lines from stdin.")] = False,
    http: Annotated[
        str | None, typer.Option(help="Serve POST /v1/events and the dashboard on HOST:PORT.")
    ] = None,
    api_key: ApiKey = None,
    redis: Annotated[str | None, typer.Option(help="Redis URL; read a stream in a group.")] = None,
    stream: Annotated[str, typer.Option(help="Redis stream key.")] = "finwatch:events",
    group: Annotated[str, typer.Option(help="Redis consumer group.")] = "finwatch",
    consumer: Annotated[str | None, typer.Option(help="Consumer name (default host-pid).")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Stop after this many idle seconds (file/redis).")
    ] = None,
    final: Annotated[bool, typer.Option(help="At the end, close the last window too.")] = False,
) -> None:
    """Ingest events, score them, store them, update trends and raise alerts."""
    from tailorml.apps.finwatch.notify import Notifier
    from tailorml.apps.finwatch.sources import follow_file, read_stream

    _logging()
    stop = threading.Event()
    _stop_on_signals(stop)
    if not (file or stdin or http or redis):
        _fail(TailorError("Give a source: --file PATH, --stdin, --http HOST:PORT or --redis URL."))
    hostport = _host_port(http) if http else None
    key = _api_key(api_key, hostport[0]) if hostport else None
    if redis:
        from tailorml.apps.finwatch.redis_source import connect

        try:
            connect(redis).close()  # fail now, with the fix, not as a traceback in a thread
        except TailorError as exc:
            _fail(exc)
    try:
        cfg, engine, watcher = _open(config, overrides)
    except TailorError as exc:
        _fail(exc)
    notifier = Notifier(engine, cfg.webhook) if cfg.webhook.url else None
    if notifier:
        notifier.start()
    threads: list[threading.Thread] = []
    server: _HttpThread | None = None
    try:
        if hostport:
            server = _HttpThread(cfg, engine, watcher, *hostport, key)
            server.start()
        if redis:
            from tailorml.apps.finwatch.redis_source import consume

            kw = {
                "stream": stream,
                "group": group,
                "consumer": consumer,
                "idle_exit_s": idle_exit,
                "stop": stop,
            }
            if file or stdin:
                t = threading.Thread(target=consume, args=(watcher, redis), kwargs=kw, daemon=True)
                t.start()
                threads.append(t)
            else:
                consume(watcher, redis, **kw)  # type: ignore[arg-type]
        if file:
            follow_file(watcher, file, follow=follow, idle_exit_s=idle_exit, stop=stop)
        elif stdin:
            read_stream(watcher, stop=stop)
        if server and not (file or stdin or redis):
            while not stop.wait(0.5) and server.thread.is_alive():
                pass
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if server:
            server.stop()
        for t in threads:
            t.join(30)  # a Redis consumer finishes its batch (it checks `stop` every 0.5 s)
        if final:
            watcher.advance(final=True)
        if notifier:
            from tailorml.apps.finwatch.notify import deliver_pending

            deliver_pending(engine, cfg.webhook)
            notifier.stop()
    from tailorml.apps.finwatch.store import counts

    # The watcher's own totals: every source's batches, including the ones a stop cut short.
    total = watcher.totals
    typer.echo(
        json.dumps(
            {
                "accepted": total.accepted,
                "duplicates": total.duplicates,
                "rejected": total.rejected,
                "alerts": len(total.alerts),
                "database": counts(engine),
            }
        )
    )


def _host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        _fail(TailorError(f"--http {hostport!r}: give HOST:PORT, e.g. --http 127.0.0.1:8780."))
    return host.strip("[]") or "127.0.0.1", int(port)


class _HttpThread:
    """uvicorn serving the finwatch app in a thread (signals stay with the main thread, which
    stops it)."""

    def __init__(self, cfg: Any, engine: Any, watcher: Any, host: str, port: int, key: Any):
        import uvicorn

        from tailorml.apps.finwatch.server import create_app
        from tailorml.serve.kit import Lifecycle
        from tailorml.serve.wire import WireLimits, uvicorn_config

        self.where = f"{host}:{port}"
        self.lifecycle = Lifecycle(ready=True)
        app = create_app(cfg, engine, watcher, api_key=key, lifecycle=self.lifecycle)
        # The same connection guard as `tailor serve` (header cap, slow clients, connections).
        self.server = uvicorn.Server(
            uvicorn_config(
                app,
                limits=WireLimits(hint="finwatch"),
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=30,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="finwatch-http")

    def start(self) -> None:
        """Returns once the server listens, or exits with the reason it cannot."""
        import time

        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                _fail(TailorError(f"--http {self.where}: cannot listen there (see above)."))
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop accepting; requests in flight are answered (and counted) before this returns."""
        self.lifecycle.draining = True
        self.server.should_exit = True
        self.thread.join(40)


@app.command()
def dashboard(
    config: Annotated[Path, typer.Argument(help="finwatch YAML.")],
    overrides: Overrides = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8765,
    api_key: ApiKey = None,
) -> None:
    """Serve the dashboard (trend charts, volume, alerts with their events; live refresh)."""
    import uvicorn

    from tailorml.apps.finwatch.server import create_app
    from tailorml.apps.finwatch.store import make_engine, migrate
    from tailorml.serve.wire import WireLimits, uvicorn_config

    _logging()
    key = _api_key(api_key, host)
    cfg = _config(config, overrides)
    engine = make_engine(cfg.db)
    migrate(engine)
    where = f"http://{host}:{port}/" + ("#key=YOUR_KEY" if key else "")
    typer.echo(f"finwatch dashboard on {where}", err=True)
    config_ = uvicorn_config(
        create_app(cfg, engine, api_key=key),
        limits=WireLimits(hint="finwatch"),
        host=host,
        port=port,
        log_level="warning",
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is the normal way to stop it
        uvicorn.Server(config_).run()


@app.command()
def replay(
    out: Annotated[Path | None, typer.Option(help="Append JSONL here (default stdout).")] = None,
    hours: Annotated[float, typer.Option(help="Simulated hours.")] = 24.0,
    surge: Annotated[
        list[str] | None,
        typer.Option(
            help="TOPIC@HOURS[:MINUTES[:INTENSITY]], repeatable. HOURS after the stream start "
            "(not a clock time), MINUTES long (default 30), INTENSITY x the topic's rate "
            "(default 1): Macro@12:30:1.5 is 12 h in, 30 minutes, 1.5x."
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option(help="Mean background events per simulated minute.")
    ] = 20.0,
    speed: Annotated[
        float,
        typer.Option(
            help="Speed-up: 60 writes a simulated minute per second (24 h take 24 minutes); "
            "0 = as fast as possible."
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    start: Annotated[
        str, typer.Option(help="Stream start, ISO 8601 UTC.")
    ] = "2026-01-05T00:00:00Z",
    truth: Annotated[Path | None, typer.Option(help="Write the injected surges as JSON.")] = None,
) -> None:
    """Turn the bundled labeled tweets into a timed stream with injected negative surges."""
    from tailorml.apps.finwatch.events import parse_time
    from tailorml.apps.finwatch.replay import make_stream, parse_surge, truth_json, write_stream

    t0 = parse_time(start)
    try:
        surges = [parse_surge(s, t0) for s in surge or []]
    except ValueError as exc:
        _fail(TailorError(str(exc)))
    events = make_stream(hours, surges, rate_per_min=rate, start=t0, seed=seed)
    if truth:
        truth.write_text(json.dumps(truth_json(surges), indent=2), encoding="utf-8")
    if out is None:
        write_stream(events, sys.stdout, speed)
    else:
        with out.open("a", encoding="utf-8") as fh:
            write_stream(events, fh, speed)
    typer.echo(f"{len(events)} events, {len(surges)} surges", err=True)


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals:
        _fail(TailorError(f"--{what} {text!r}: give comma-separated numbers, e.g. 0.5,1,2,5."))
    return vals


@app.command()
def evaluate(
    config: Annotated[Path | None, typer.Argument(help="finwatch YAML (detector, scorer).")] = None,
    overrides: Overrides = None,
    streams: Annotated[int, typer.Option(help="Independent replayed streams per run.")] = 5,
    hours: Annotated[float, typer.Option(help="Simulated hours per stream.")] = 48.0,
    surges: Annotated[int, typer.Option(help="Injected surges per stream.")] = 8,
    rate: Annotated[float, typer.Option(help="Background events per simulated minute.")] = 20.0,
    intensities: Annotated[
        str, typer.Option(help="Surge rates x the topic's rate, comma-separated.")
    ] = "0.5,1,2,5",
    minutes: Annotated[float, typer.Option(help="Surge length in minutes.")] = 30.0,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated (mean ± std).")] = "0,1,2",
    labels: Annotated[
        bool, typer.Option(help="With a model, also run the replay labels (the detector alone).")
    ] = True,
    out: Annotated[Path, typer.Option(help="Folder for finwatch_eval.json, .md and .png.")] = Path(
        "runs/finwatch-eval"
    ),
) -> None:
    """Replay streams with injected surges at each intensity and seed; report recall, precision,
    false alerts per day and median delay (mean ± std over the seeds), with the labels and with
    the model's probabilities (and its argmax labels), and how separable surge windows are."""
    from tailorml.apps.finwatch.evaluate import evaluate_grid, grid_table, save_grid

    cfg = _config(config, overrides)
    logging.getLogger("tailorml.finwatch").setLevel(logging.ERROR)
    try:
        res = evaluate_grid(
            cfg,
            intensities=_floats(intensities, "intensities"),
            seeds=[int(x) for x in _floats(seeds, "seeds")],
            with_labels=labels,
            progress=lambda line: typer.echo(line, err=True),
            streams=streams,
            hours=hours,
            surges_per_stream=surges,
            rate_per_min=rate,
            minutes=minutes,
        )
    except TailorError as exc:
        _fail(exc)
    js, png = save_grid(res, out)
    typer.echo(grid_table(res))
    typer.echo(f"wrote {js}, {js.with_suffix('.md')} and {png}", err=True)


DEMO_DIR = Path("runs/finwatch-demo")


@app.command()
def demo(
    config: Annotated[
        Path | None, typer.Argument(help="finwatch YAML; default: labels scorer.")
    ] = None,
    overrides: Overrides = None,
    topic: Annotated[str, typer.Option(help="Topic to inject the surge on.")] = "Energy | Oil",
    at_hours: Annotated[float, typer.Option(help="Surge start, hours into the stream.")] = 18.0,
    intensity: Annotated[
        float, typer.Option(help="Surge rate as a multiple of the topic's own rate.")
    ] = 1.5,
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for the demo's database and resolved config (the dashboard reads them); "
            "its database is replaced on each run."
        ),
    ] = DEMO_DIR,
) -> None:
    """One command: replay 24 h with a negative surge injected, watch it, show the alert."""
    from tailorml.apps.finwatch.replay import make_stream, parse_surge
    from tailorml.apps.finwatch.sources import follow_file

    _logging()
    ov = list(overrides or [])
    own_db = not any(o.startswith("db=") for o in ov)
    if own_db:
        # The demo's own database, kept (not a temporary one) so that the dashboard command it
        # prints shows what it found; never the config's `db`, which may hold real data.
        ov.append(f"db=sqlite:///{out / 'finwatch.db'}")
    if config is None:
        ov.append("models.scorer=labels")
    cfg = _config(config, ov)
    if own_db:
        # A second run on the first one's database would find every window already judged and
        # alert on nothing: start from an empty one.
        for suffix in ("", "-wal", "-shm"):
            (out / f"finwatch.db{suffix}").unlink(missing_ok=True)
    saved = _save_config(cfg, out / "finwatch.yaml")
    try:
        cfg, engine, watcher = _open(saved, None)
        s = parse_surge(f"{topic}@{at_hours}:45:{intensity}", 1767571200.0)
    except (TailorError, ValueError) as exc:
        _fail(TailorError(str(exc)))
    extra: dict[str, Any] = {}
    if cfg.models.scorer == "model":
        # The models score the texts: replay held-out tweets, and make the surge of texts
        # the models score as this topic and negative (as `evaluate` does).
        from tailorml.apps.finwatch.evaluate import MIN_POOL, model_surge_pools
        from tailorml.apps.finwatch.replay import SENT_HELDOUT_CSV, TOPIC_HELDOUT_CSV

        typer.echo("scoring the held-out tweets once (the replay repeats them)", err=True)
        watcher.scorer, pools = model_surge_pools(watcher.scorer)
        if len(pools.get(topic, [])) < MIN_POOL:
            ok = sorted(t for t, v in pools.items() if len(v) >= MIN_POOL)
            fix = (
                f"Choose one of {ok}."
                if ok
                else "No topic has that many: the model seldom says negative. Train it as "
                "configs/finwatch-train.yaml does (all of both sets, 3 epochs), or run the "
                "demo on the labels (`tailor finwatch demo`)."
            )
            _fail(
                TailorError(
                    f"--topic {topic!r}: the models score fewer than {MIN_POOL} held-out "
                    f"tweets as this topic and negative. {fix}"
                )
            )
        extra = {
            "surge_texts": pools,
            "topic_csv": TOPIC_HELDOUT_CSV,
            "sent_csv": SENT_HELDOUT_CSV,
        }
    events = make_stream(24, [s], start=1767571200.0, seed=7, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        typer.echo(
            f"replaying {len(events)} events (24 h) with a negative surge on {topic!r} "
            f"at +{at_hours} h",
            err=True,
        )
        res = follow_file(watcher, path, follow=False)
    res.alerts.extend(watcher.advance(final=True))
    for a in res.alerts:
        f = a["figures"]
        typer.echo(
            f"ALERT {a['topic']} window {a['window_start_iso']}: {f['n_negative']}/"
            f"{f['n']} negative ({f['negative_share']:.0%} vs baseline "
            f"{f['baseline_share']:.0%}, z={f['z_share']}), {len(a['event_ids'])} events"
        )
    hit = any(a["topic"] == topic for a in res.alerts)
    typer.echo(
        f"surge on {topic!r} {'DETECTED' if hit else 'MISSED'}; "
        f"{len(res.alerts)} alert(s), {res.accepted} events stored"
    )
    typer.echo(f"dashboard: tailor finwatch dashboard {saved}   # http://127.0.0.1:8765/")
    engine.dispose()


def _save_config(cfg: Any, path: Path) -> Path:
    """Write the resolved finwatch config (nested under `finwatch:`, as configs/ are) atomically."""
    import yaml

    from tailorml.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"finwatch": cfg.model_dump(mode="json")}
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(help="Multi-task run config with heads `topic` and `sentiment`.")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="e.g. train.epochs=1 heads.topic.data.limit=500")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
) -> None:
    """Fine-tune one encoder with a topic head and a sentiment head (a multi-task run)."""
    from tailorml.apps.finwatch.train import train_model

    try:
        res = train_model(config, overrides or [], overwrite=overwrite, resume=resume)
    except TailorError as exc:
        _fail(exc)
    typer.echo(json.dumps(res, indent=2))


@app.command()
def calibrate(
    config: Annotated[Path, typer.Argument(help="finwatch YAML whose models.model to calibrate.")],
    overrides: Overrides = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Labeled sentiment CSV (text,label); default: the eval split."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows.")] = None,
) -> None:
    """Fit the sentiment head's temperature on labeled data; write calibration.json beside it."""
    from tailorml.apps.finwatch.calibrate import calibrate_folder
    from tailorml.apps.finwatch.replay import SENT_HELDOUT_CSV

    cfg = _config(config, overrides)
    m = cfg.models
    folder, head = (m.model, m.sentiment_head) if m.model is not None else (m.sentiment, "")
    if folder is None:
        _fail(TailorError("models.model (or models.sentiment) is not set: nothing to calibrate."))
    try:
        res = calibrate_folder(
            folder, data or SENT_HELDOUT_CSV, head, threads=m.threads, limit=limit
        )
    except TailorError as exc:
        _fail(exc)
    typer.echo(json.dumps(res, indent=2))
