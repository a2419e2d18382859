"""Run the service: one uvicorn process, or a parent with N workers sharing one socket.

Both paths build the app from TAILORML_SERVE_SETTINGS (a JSON copy of `ServeSettings`), so a worker
process needs nothing but the environment. SIGTERM (or Ctrl+C) drains: the listening socket closes
(new connections are refused), requests already received are answered, the queue empties, then the
process exits. With workers, the parent forwards SIGTERM to each worker and waits for all of them.
Either way the process ends by SIGTERM (exit status 143) after a SIGTERM, and with 0 after Ctrl+C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from tailorml import env
from tailorml.errors import ConfigError
from tailorml.serve.kit import warn_if_open
from tailorml.serve.settings import ENV_API_KEY, ENV_SETTINGS, ServeSettings
from tailorml.serve.wire import limits_of, uvicorn_config

log = logging.getLogger("uvicorn.error")

APP = "tailorml.serve.app:app_from_env"  # an import string: each worker builds its own app


def check(settings: ServeSettings) -> None:
    """Fail early, with the fix, before any worker starts."""
    from tailorml.predictors.generator import is_causal_lm, resolve_causal_folder
    from tailorml.tasks.folder import read_model_info, resolve_model_dir

    if is_causal_lm(settings.model):
        if settings.model != "smollm2":
            settings.model = str(resolve_causal_folder(settings.model))
    else:
        from tailorml.predictors.images import is_image_folder

        folder = resolve_model_dir(settings.model)
        if not is_image_folder(folder):  # an image folder is checked by loading it (run)
            read_model_info(folder)
        settings.model = str(folder)
    if settings.max_queue < settings.max_inputs:
        raise ConfigError(
            f"--max-queue ({settings.max_queue}) is smaller than --max-inputs "
            f"({settings.max_inputs}): a full request could never be queued; raise --max-queue."
        )


def run(settings: ServeSettings, log_level: str = "info") -> None:
    import uvicorn

    env.setup()  # OMP_WAIT_POLICY etc., inherited by worker processes
    check(settings)
    warn_if_open(settings.host, settings.api_key, "use the model")
    os.environ[ENV_SETTINGS] = settings.to_env()
    if settings.api_key:
        os.environ[ENV_API_KEY] = settings.api_key
    else:
        os.environ.pop(ENV_API_KEY, None)
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers write their metrics here; /metrics on any worker sums all of them.
        metrics_dir = tempfile.mkdtemp(prefix="tailorml-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    options: dict[str, Any] = dict(
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=log_level,
        access_log=False,
        # In-flight requests get their own deadline plus slack to finish during a drain.
        timeout_graceful_shutdown=int(settings.timeout_s) + 10,
        server_header=False,
        # uvicorn kills a worker that misses a 5 s ping; a worker importing torch on a busy
        # 2-core machine can miss it and be killed over and over while it loads.
        timeout_worker_healthcheck=120,
    )
    # Load the model here, before any server starts: a folder that cannot be loaded is a clear
    # error (exit 2), not a traceback from inside the ASGI lifespan. One process keeps it.
    from tailorml.predictors import load_predictor
    from tailorml.predictors.generator import is_causal_lm

    if is_causal_lm(settings.model):
        from tailorml.serve.generation import load_generator

        predictor: Any = load_generator(settings)
    else:
        predictor = load_predictor(settings.model, settings.worker_threads())
    stopped_by = None
    try:
        if settings.workers > 1:
            del predictor  # each worker loads its own
            # The connection guard (header cap, slow-client timeouts, connection bound) comes
            # with the config, in every worker.
            stopped_by = _supervise(uvicorn_config(APP, limits=limits_of(settings), **options))
        else:
            from tailorml.serve.app import create_app

            options.pop("factory")
            app = create_app(settings, predictor=predictor)
            config = uvicorn_config(app, limits=limits_of(settings), **options)
            # One process: uvicorn itself re-raises SIGTERM once drained (exit status 143);
            # Ctrl+C ends as KeyboardInterrupt, which is a normal stop (status 0).
            server = uvicorn.Server(config)
            with contextlib.suppress(KeyboardInterrupt):
                server.run()
            if not server.started:
                sys.exit(3)  # what uvicorn.run does when the app could not start
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if stopped_by == signal.SIGTERM:
        # As one process does: die by the signal, so a supervisor sees SIGTERM, not success.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def _supervise(config: Any) -> int | None:
    """uvicorn's supervisor of `config.workers` processes sharing one socket (what `uvicorn.run`
    does with workers > 1), noting which signal stopped it: SIGTERM, SIGINT, or None when it
    stopped by itself (a worker failed to start: a ConfigError, exit status 2)."""
    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    supervisor = Multiprocess(config, sockets=[sock])  # installs its signal handlers
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)

        def note(signum: int, frame: Any, prev: Any = prev) -> None:
            received.append(signum)
            if callable(prev):
                prev(signum, frame)

        signal.signal(sig, note)
    try:
        supervisor.run()  # returns once every worker has drained and exited
    finally:
        sock.close()
    if not received:
        raise ConfigError(
            "a worker process failed to start (its error is in the log above); "
            "the service stopped. Fix that, or try --workers 1 to see it directly."
        )
    return received[0]
