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
        bot = Assistant.load(run, intent_model=_intent_model(model, threads), threads=threads)
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
