"""`tailor recommend train|evaluate|serve|add-items` — thin: parse, then call the app."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tailorml.errors import TailorError
from tailorml.serve.settings import ENV_API_KEY

app = typer.Typer(
    help="Recommender: behaviour logs + item text -> ranked items; baselines, fusion, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. model.epochs=5")
]
Run = Annotated[Path, typer.Argument(help="A recommend run folder (output_dir).")]


def _fail(exc: TailorError) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(help="recommend YAML (configs/recommend-movielens.yaml).")
    ],
    overrides: Overrides = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output_dir.")] = False,
) -> None:
    """Fit the baselines, the text-aware model and the fusion ranker; write the run folder."""
    from tailorml import env
    from tailorml.apps.recommend.config import load_recommend_config
    from tailorml.apps.recommend.report import format_table
    from tailorml.apps.recommend.train import train_recommend

    env.setup()
    try:
        cfg = load_recommend_config(config, overrides)
        res = train_recommend(cfg, config, overwrite=overwrite, log=_log)
    except TailorError as exc:
        _fail(exc)
    typer.echo(format_table(res, cfg.eval.k))
    typer.echo(f"recommend run: {cfg.output_dir} (served: {res['served']})")


@app.command()
def evaluate(run: Run) -> None:
    """Score the run's model (with and without fusion) on the protocol; writes RUN/eval.json."""
    from tailorml import env
    from tailorml.apps.recommend.report import format_table
    from tailorml.apps.recommend.train import evaluate_run

    env.setup()
    try:
        res = evaluate_run(run)
    except TailorError as exc:
        _fail(exc)
    typer.echo(format_table(res, res["protocol"]["k"]))
    typer.echo(f"wrote {Path(run) / 'eval.json'}")


@app.command("add-items")
def add_items_cmd(
    run: Run,
    items: Annotated[Path, typer.Argument(help="New items: the columns of `data.items`.")],
) -> None:
    """Embed new items from their text and add them to the run's index (no retraining)."""
    from tailorml import env
    from tailorml.apps.recommend.service import add_items

    env.setup()
    try:
        n = add_items(run, items)
    except TailorError as exc:
        _fail(exc)
    typer.echo(f"added {n} item(s) to {run}")


@app.command()
def serve(
    run: Run,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            help=f"Require this key on /v1/* and /metrics. Also read from ${ENV_API_KEY}.",
            show_default=False,
        ),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1024 * 1024,
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
) -> None:
    """Serve GET/POST /v1/recommend (API key, limits, metrics and drain as `tailor serve`)."""
    import uvicorn

    from tailorml import env
    from tailorml.apps.recommend.server import create_app
    from tailorml.apps.recommend.service import Recommender
    from tailorml.serve.kit import Lifecycle, freeze_startup_objects, warn_if_open
    from tailorml.serve.wire import WireLimits, uvicorn_config

    env.setup()
    key = api_key or os.environ.get(ENV_API_KEY) or None
    warn_if_open(host, key, "read recommendations")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        rec = Recommender(run)
    except TailorError as exc:
        _fail(exc)
    lifecycle = Lifecycle(ready=True)
    gate = create_app(rec, api_key=key, max_body_bytes=max_body_bytes, lifecycle=lifecycle)
    freeze_startup_objects()
    config = uvicorn_config(
        gate, limits=WireLimits(hint="recommend"), host=host, port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    _log(f"recommend service on http://{host}:{port}/v1/recommend")
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
