"""`tailor serve PATH`: the command, registered in tailorml/cli.py.

Every option is a field of `ServeSettings` (its doc is the --help text); `--config FILE` reads
any of them from YAML (`tailor config schema serve`), and the flags given win."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tailorml.errors import TailorError
from tailorml.serve.settings import ENV_API_KEY, ServeSettings


def _doc(name: str) -> str:
    return str(ServeSettings.model_fields[name].description)


def serve(
    path: Annotated[
        Path | None, typer.Argument(help=_doc("model") + " (or `model:` in --config).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML of these settings (`tailor config schema serve`); flags win."),
    ] = None,
    host: Annotated[str | None, typer.Option(help=_doc("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_doc("port"))] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help=_doc("api_key") + f" Also read from ${ENV_API_KEY}.", show_default=False),
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help=_doc("max_batch_size"))] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help=_doc("max_wait_ms"))] = None,
    max_queue: Annotated[int | None, typer.Option(help=_doc("max_queue"))] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help=_doc("timeout_s"))] = None,
    max_inputs: Annotated[int | None, typer.Option(help=_doc("max_inputs"))] = None,
    max_chars: Annotated[int | None, typer.Option(help=_doc("max_chars"))] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help=_doc("max_body_bytes"))] = None,
    max_header_bytes: Annotated[int | None, typer.Option(help=_doc("max_header_bytes"))] = None,
    header_timeout: Annotated[
        float | None, typer.Option("--header-timeout", help=_doc("header_timeout_s"))
    ] = None,
    body_timeout: Annotated[
        float | None, typer.Option("--body-timeout", help=_doc("body_timeout_s"))
    ] = None,
    keepalive_timeout: Annotated[
        float | None, typer.Option("--keepalive-timeout", help=_doc("keepalive_timeout_s"))
    ] = None,
    max_connections: Annotated[int | None, typer.Option(help=_doc("max_connections"))] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help=_doc("max_new_tokens"))] = None,
    max_prompt_tokens: Annotated[int | None, typer.Option(help=_doc("max_prompt_tokens"))] = None,
    workers: Annotated[int | None, typer.Option(help=_doc("workers"))] = None,
    threads: Annotated[int | None, typer.Option(help=_doc("threads"), show_default=False)] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a model folder over HTTP: POST /v1/predict for a classifier or regressor run;
    POST /v1/generate and the OpenAI-compatible /v1/chat/completions for a generation run or
    causal-LM folder (or `smollm2`). Docs at /docs."""
    from tailorml.config.load import load_options
    from tailorml.serve.server import run

    flags = {
        "model": str(path) if path is not None else None,
        "host": host,
        "port": port,
        "api_key": api_key,
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "max_queue": max_queue,
        "timeout_s": timeout,
        "max_inputs": max_inputs,
        "max_chars": max_chars,
        "max_body_bytes": max_body_bytes,
        "max_header_bytes": max_header_bytes,
        "header_timeout_s": header_timeout,
        "body_timeout_s": body_timeout,
        "keepalive_timeout_s": keepalive_timeout,
        "max_connections": max_connections,
        "max_new_tokens": max_new_tokens,
        "max_prompt_tokens": max_prompt_tokens,
        "workers": workers,
        "threads": threads,
    }
    try:
        settings = load_options(
            ServeSettings,
            config,
            flags,
            "serve",
            {
                "timeout_s": "--timeout",
                "header_timeout_s": "--header-timeout",
                "body_timeout_s": "--body-timeout",
                "keepalive_timeout_s": "--keepalive-timeout",
                "model": "the PATH argument, or `model:` in --config",
            },
        )
        if settings.api_key is None and os.environ.get(ENV_API_KEY):
            settings.api_key = os.environ[ENV_API_KEY]
        run(settings, log_level=log_level)
    except TailorError as exc:
        _fail(exc)


def _fail(exc: TailorError) -> NoReturn:
    from tailorml.train.progress import console

    console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)
