"""`tailor serve PATH`: the command, registered in tailorml/cli.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tailorml.errors import TailorError
from tailorml.serve.settings import ENV_API_KEY, ServeSettings


def _doc(name: str) -> str:
    return str(ServeSettings.model_fields[name].description)


def serve(
    path: Annotated[Path, typer.Argument(help=_doc("model"))],
    host: Annotated[str, typer.Option(help=_doc("host"))] = "127.0.0.1",
    port: Annotated[int, typer.Option(help=_doc("port"))] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help=_doc("api_key") + f" Also read from ${ENV_API_KEY}.", show_default=False),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help=_doc("max_batch_size"))] = 32,
    max_wait_ms: Annotated[float, typer.Option(help=_doc("max_wait_ms"))] = 5.0,
    max_queue: Annotated[int, typer.Option(help=_doc("max_queue"))] = 1024,
    timeout: Annotated[float, typer.Option("--timeout", help=_doc("timeout_s"))] = 30.0,
    max_inputs: Annotated[int, typer.Option(help=_doc("max_inputs"))] = 64,
    max_chars: Annotated[int, typer.Option(help=_doc("max_chars"))] = 20_000,
    max_body_bytes: Annotated[int, typer.Option(help=_doc("max_body_bytes"))] = 4 * 1024 * 1024,
    workers: Annotated[int, typer.Option(help=_doc("workers"))] = 1,
    threads: Annotated[int | None, typer.Option(help=_doc("threads"), show_default=False)] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a model folder over HTTP (POST /v1/predict; docs at /docs)."""
    from pydantic import ValidationError

    from tailorml.serve.server import run

    try:
        settings = ServeSettings(
            model=str(path),
            host=host,
            port=port,
            api_key=api_key or os.environ.get(ENV_API_KEY) or None,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            timeout_s=timeout,
            max_inputs=max_inputs,
            max_chars=max_chars,
            max_body_bytes=max_body_bytes,
            workers=workers,
            threads=threads,
        )
    except ValidationError as exc:
        problems = [
            f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        ]
        _fail(TailorError(problems))
        return
    try:
        run(settings, log_level=log_level)
    except TailorError as exc:
        _fail(exc)


def _fail(exc: TailorError) -> None:
    from tailorml.train.progress import console

    console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)
