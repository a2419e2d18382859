"""`tailor support train|evaluate|ask` — thin: parse, then call the app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tailorml.errors import TailorError

app = typer.Typer(
    help="Customer-service assistant: intents, answer templates, help-centre retrieval, hand-off.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.epochs=1")
]


IntentModelOpt = Annotated[
    Path | None,
    typer.Option(
        help="Intent model folder to use instead of RUN/intent, e.g. a compressed variant "
        "(RUN/intent/compressed/onnx-int8) of it.",
    ),
]


def _intent_model(folder: Path | None, threads: int | None) -> Any:
    if folder is None:
        return None
    from tailorml.predictors import load_predictor

    return load_predictor(folder, threads=threads)


def _fail(exc: TailorError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="support YAML (see configs/support.yaml).")],
    overrides: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output_dir.")] = False,
) -> None:
    """Train the intent model, build the knowledge index, calibrate the hand-off threshold."""
    from tailorml import env
    from tailorml.apps.support.config import load_support_config
    from tailorml.apps.support.train import train_support

    env.setup()
    try:
        cfg = load_support_config(config, overrides)
        res = train_support(cfg, config, overwrite=overwrite)
    except TailorError as exc:
        _fail(exc)
    typer.echo(f"support run: {cfg.output_dir}")
    _print_calibration(res)


def _print_calibration(meta: dict[str, Any]) -> None:
    c = meta["calibration"]
    a = c["assistant"]
    typer.echo(
        f"thresholds: intent confidence {meta['confidence_threshold']:.4f}, retrieval score "
        f"{meta['retrieval_threshold']:.4f} when unsure (min {meta['min_retrieval_score']}); "
        f"eval split, whole assistant: in-scope accuracy {a['in_scope_accuracy']}, "
        f"out-of-scope recall {a['oos_recall']}, hand-off rate {a['handoff_rate']}"
    )


@app.command()
def calibrate(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    target: Annotated[
        float | None,
        typer.Option(
            help="Out-of-scope recall to calibrate for (default: the run's own).", min=0.01, max=1.0
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
) -> None:
    """Calibrate the run's thresholds again on its eval split (no retraining)."""
    from tailorml import env
    from tailorml.apps.support.calibrate import calibrate_run

    env.setup()
    try:
        meta = calibrate_run(run, target=target, threads=threads)
    except TailorError as exc:
        _fail(exc)
    _print_calibration(meta)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    data: Annotated[Path, typer.Option(help="Labelled messages, the columns of `intents`.")],
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    model: IntentModelOpt = None,
    doc_column: Annotated[
        str | None,
        typer.Option(help="Column of --data naming each message's article (retrieval recall@k)."),
    ] = None,
) -> None:
    """Score the assistant on labelled messages; writes RUN/support_eval.json."""
    from tailorml import env
    from tailorml.apps.support.assistant import Assistant
    from tailorml.apps.support.evaluate import evaluate_support

    env.setup()
    try:
        # the decisions and figures do not depend on the answer's words: no generation here
        bot = Assistant.load(
            run, intent_model=_intent_model(model, threads), threads=threads, writer=False
        )
        res = evaluate_support(run, data, assistant=bot, doc_column=doc_column)
    except TailorError as exc:
        _fail(exc)
    rows = [
        ("rows", res["rows"]),
        ("out-of-scope rows", res["oos_rows"]),
        ("in_scope_accuracy", res["in_scope_accuracy"]),
        ("oos_recall", res["oos_recall"]),
        ("oos_precision", res["oos_precision"]),
        ("handoff_rate", res["handoff_rate"]),
        *((f"answered by {p}", n) for p, n in res["paths"].items()),
        ("confidence_threshold", round(res["confidence_threshold"], 4)),
        ("retrieval_threshold", round(res["retrieval_threshold"], 4)),
        *((f"intent only: {k}", v) for k, v in res["intent_only"].items()),
        *(
            (f"retrieval {k}", round(v, 4))
            for k, v in res.get("retrieval", {}).items()
            if isinstance(v, float)
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")
    typer.echo(f"wrote {Path(run) / 'support_eval.json'}")


@app.command()
def ask(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    message: Annotated[str, typer.Argument(help="The customer's message.")],
    model: IntentModelOpt = None,
) -> None:
    """Answer one message; prints {answer, intent, confidence, sources, handoff, path}."""
    from tailorml import env
    from tailorml.apps.support.assistant import Assistant

    env.setup()
    try:
        reply = Assistant.load(run, intent_model=_intent_model(model, None)).answer(message)
    except TailorError as exc:
        _fail(exc)
    typer.echo(json.dumps(reply, ensure_ascii=False, indent=2))


Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL for conversations and tickets (default sqlite:///RUN/support.db; "
        "postgresql+psycopg://USER@HOST:PORT/DB for PostgreSQL).",
    ),
]


def _store(run: Path, db: str | None) -> Any:
    from tailorml.apps.support.assistant import read_support_json
    from tailorml.apps.support.store import Store, default_url

    read_support_json(run)  # a clear error when RUN is not a support run
    return Store(db or default_url(run))


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require it on /v1/* and /metrics. Also read from $TAILORML_API_KEY."),
    ] = None,
    db: Db = None,
    model: IntentModelOpt = None,
    extractive: Annotated[
        bool, typer.Option(help="Answer with the best passage even if generation is set.")
    ] = False,
    generation: Annotated[
        str | None,
        typer.Option(
            help="Write retrieval answers with this causal LM (a generation run, a causal-LM "
            "folder or `smollm2`) instead of the run's `generation.run`."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="With --generation.")] = 96,
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 64 * 1024,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the assistant: POST /v1/chat, tickets, and a chat page at /."""
    import contextlib
    import os

    import uvicorn

    from tailorml import env
    from tailorml.apps.support.assistant import Assistant
    from tailorml.apps.support.server import create_app
    from tailorml.serve.kit import freeze_startup_objects, warn_if_open
    from tailorml.serve.settings import ENV_API_KEY
    from tailorml.serve.wire import WireLimits, uvicorn_config

    env.setup()
    key = api_key or os.environ.get(ENV_API_KEY) or None
    warn_if_open(host, key, "chat with the assistant and read every conversation")
    try:
        writer: Any = not extractive
        if generation and not extractive:
            from tailorml.apps.support.grounded import GroundedWriter
            from tailorml.predictors.generator import resolve_causal_folder

            resolve_causal_folder(generation)  # a clear error for a wrong path
            settings = {"run": generation, "max_new_tokens": max_new_tokens}
            writer = GroundedWriter.load(settings, threads=threads)
        bot = Assistant.load(
            run, intent_model=_intent_model(model, threads), threads=threads, writer=writer
        )
        store = _store(run, db)
    except TailorError as exc:
        _fail(exc)
    bot.answer("hello")  # warm up: the first request is not the slow one
    freeze_startup_objects()
    config = uvicorn_config(
        create_app(bot, store, api_key=key, max_body_bytes=max_body_bytes),
        limits=WireLimits(hint="`tailor support serve`"),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=40,
        server_header=False,
    )
    typer.echo(f"support assistant on http://{host}:{port}/", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    store.close()


@app.command()
def chat(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    session: Annotated[
        str | None, typer.Option(help="Continue this session (default: a new one).")
    ] = None,
    db: Db = None,
    model: IntentModelOpt = None,
) -> None:
    """A conversation in the terminal: one message per line on stdin (Ctrl+D ends it); every
    turn is logged as the service logs it, hand-offs open tickets."""
    import sys
    import uuid

    from tailorml import env
    from tailorml.apps.support.assistant import Assistant

    env.setup()
    try:
        bot = Assistant.load(run, intent_model=_intent_model(model, None))
        store = _store(run, db)
    except TailorError as exc:
        _fail(exc)
    sid = session or f"cli-{uuid.uuid4().hex[:12]}"
    typer.echo(f"session {sid} (one message per line; Ctrl+D to end)", err=True)
    for line in sys.stdin:
        message = line.strip()
        if not message:
            continue
        history = store.history(sid) if bot.writer is not None else []
        reply = bot.answer_many([message], history=[history])[0]
        logged = store.log_turn(sid, message, reply)
        typer.echo(f"assistant: {reply['answer']}")
        for s in reply["sources"]:
            typer.echo(f"  source: {s['title']} ({s['doc_id']})")
        if reply["handoff"]:
            typer.echo(f"  [handed off: ticket #{logged['ticket_id']}]")
        else:
            typer.echo(f"  [{reply['path']}: {reply['intent']} {reply['confidence']:.2f}]")
    store.close()


@app.command()
def tickets(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    status: Annotated[str, typer.Option(help="open, resolved or all.")] = "open",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: Db = None,
) -> None:
    """List hand-offs (newest first) with their conversations."""
    if status not in ("open", "resolved", "all"):
        _fail(TailorError(f"--status {status!r}: use open, resolved or all."))
    try:
        store = _store(run, db)
    except TailorError as exc:
        _fail(exc)
    found = store.list_tickets(None if status == "all" else status, limit=1000)
    store.close()
    if as_json:
        typer.echo(json.dumps(found, ensure_ascii=False, indent=2))
        return
    if not found:
        typer.echo(f"no {'' if status == 'all' else status + ' '}tickets")
    for t in found:
        typer.echo(f"#{t['id']} {t['status']} session {t['session_id']} (turn {t['turn']})")
        for turn in t["conversation"]:
            typer.echo(f"  customer: {turn['message']}")
            typer.echo(f"  assistant: {turn['answer'][:200]}")


@app.command()
def resolve(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    ticket: Annotated[int, typer.Argument(help="The ticket's number.")],
    intent: Annotated[
        str | None,
        typer.Option(help="What the customer wanted (exported as the turn's label)."),
    ] = None,
    note: Annotated[str | None, typer.Option(help="A note kept with the ticket.")] = None,
    db: Db = None,
) -> None:
    """Close an open ticket, with the intent a person gave it."""
    try:
        store = _store(run, db)
        if not store.resolve(ticket, intent, note):
            raise TailorError(
                f"no open ticket #{ticket}; `tailor support tickets {run}` lists them."
            )
    except TailorError as exc:
        _fail(exc)
    store.close()
    typer.echo(f"ticket #{ticket} resolved" + (f" as {intent}" if intent else ""))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A support run folder (output_dir).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write (text,label).")],
    db: Db = None,
) -> None:
    """Write the logged messages people labelled (resolved tickets) as text,label rows that
    `tailor finetune` / `tailor support train` accept."""
    import csv
    import io

    from tailorml.files import atomic_write_text, writable

    try:
        writable(output)
        store = _store(run, db)
        rows = store.corrected()
        store.close()
        if not rows:
            raise TailorError(
                f"{run}: no labelled messages to export yet. Resolve hand-offs with an intent "
                f"(`tailor support resolve {run} TICKET --intent INTENT`, or POST "
                "/v1/tickets/ID/resolve) first."
            )
    except TailorError as exc:
        _fail(exc)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["text", "label"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(output, buf.getvalue())
    typer.echo(f"wrote {len(rows)} rows to {output}")


@app.command("grounded-data")
def grounded_data(
    source: Annotated[
        Path,
        typer.Argument(
            help="A support run (its index, sources and min_retrieval_score are used) or a "
            "folder of help articles (indexed with the dense retriever)."
        ),
    ],
    data: Annotated[Path, typer.Option(help="Messages with their answer and article.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="jsonl to write (messages).")],
    text_column: Annotated[str, typer.Option(help="Column of the message.")] = "text",
    answer_column: Annotated[str, typer.Option(help="Column of the reference answer.")] = "answer",
    doc_column: Annotated[
        str, typer.Option(help="Column naming the article (an article id or an intent).")
    ] = "label",
    sources: Annotated[int, typer.Option(help="Passages retrieved (articles folder).", min=1)] = 3,
    floor: Annotated[float, typer.Option(help="min_retrieval_score (articles folder).")] = 0.45,
    threads: Annotated[int | None, typer.Option(help="Threads for the encoder.")] = None,
) -> None:
    """Write fine-tuning chats for the grounded writer: the prompt the assistant builds from
    the retrieved passages, answered with the reference citing its article (`generation` task,
    `data.messages_column: messages`; docs/support.md)."""
    from tailorml import env
    from tailorml.apps.support.assistant import read_support_json
    from tailorml.apps.support.grounded import grounded_data as build
    from tailorml.data.readers import read_table
    from tailorml.files import writable

    env.setup()
    try:
        writable(output)
        table = read_table(data, key="--data")
        if table.bad:
            raise TailorError(
                f"--data {data}: {len(table.bad)} rows cannot be parsed (first at line "
                f"{table.bad[0].line}). Fix or remove them."
            )
        if (source / "support.json").is_file():
            from tailorml.apps.support.retrieval import load_retriever

            meta = read_support_json(source)
            if not meta.get("index"):
                raise TailorError(
                    f"{source}: this support run has no knowledge index (`knowledge` was not "
                    "set). Give a folder of articles instead, or train with `knowledge`."
                )
            retriever = load_retriever(source / meta["index"], threads=threads)
            sources, floor = int(meta["sources"]), float(meta["min_retrieval_score"])
        else:
            from tailorml.apps.support.knowledge import load_passages
            from tailorml.apps.support.retrieval import DenseRetriever

            retriever = DenseRetriever(threads=threads).fit(load_passages(source))
        counts = build(
            retriever, table.rows, text_column, answer_column, doc_column, output, sources, floor
        )
    except TailorError as exc:
        _fail(exc)
    cited = ", ".join(f"[{k.split('_')[1]}] {v}" for k, v in counts.items() if k[:6] == "cited_")
    typer.echo(
        f"wrote {counts['rows']} chats to {output}: reply cites {cited}; "
        f"{counts['not_covered']} not covered by the passages (taught to hand off)"
    )
