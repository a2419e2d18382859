"""Run the service: one uvicorn process, or a parent with N workers sharing one socket.

Both paths build the app from TAILORML_SERVE_SETTINGS (a JSON copy of `ServeSettings`), so a worker
process needs nothing but the environment. SIGTERM (or Ctrl+C) drains: the listening socket closes
(new connections are refused), requests already received are answered, the queue empties, then the
process exits. With workers, the parent forwards SIGTERM to each worker and waits for all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from tailorml import runtime  # noqa: F401  (OMP_WAIT_POLICY etc., inherited by workers)
from tailorml.errors import ConfigError
from tailorml.serve.kit import warn_if_open
from tailorml.serve.settings import ENV_API_KEY, ENV_SETTINGS, ServeSettings

log = logging.getLogger("uvicorn.error")


def check(settings: ServeSettings) -> None:
    """Fail early, with the fix, before any worker starts."""
    from tailorml.recipes.evaluate import model_dir
    from tailorml.runtimes import read_task

    folder = model_dir(settings.model)
    read_task(folder)
    settings.model = str(folder)
    if settings.max_queue < settings.max_inputs:
        raise ConfigError(
            f"--max-queue ({settings.max_queue}) is smaller than --max-inputs "
            f"({settings.max_inputs}): a full request could never be queued; raise --max-queue."
        )


def run(settings: ServeSettings, log_level: str = "info") -> None:
    import uvicorn

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
    try:
        uvicorn.run(
            "tailorml.serve.app:app_from_env",
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
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
