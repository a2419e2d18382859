"""Real servers on 127.0.0.1 for the serving tests: in a thread (fast) or as `tailor serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO, make_rows, tiny_config, write_csv


def train_tiny(tmp: Path, task: str, path: Path, epochs: int = 3, **data: Any) -> Path:
    """A tiny model (tiny_config) trained on `path`; returns its model folder."""
    from tailorml.config.load import validate_mapping
    from tailorml.recipes.finetune import finetune

    raw = tiny_config(
        tmp,
        data={"train": str(path), **data},
        task={"type": task},
        train={"epochs": epochs, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1},
    )
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    finetune(cfg)
    return tmp / "run" / "model"


_TRAINED: dict[str, Path] = {}


def trained_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The keyword classifier every serving test module shares, trained once per pytest run
    (a session fixture defined in two modules would train it twice)."""
    if "cls" not in _TRAINED:
        tmp = tmp_path_factory.mktemp("serve_cls")
        rows = write_csv(tmp / "train.csv", make_rows(240, 0))
        _TRAINED["cls"] = train_tiny(tmp, "classification", rows, 10)
    return _TRAINED["cls"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """uvicorn serving `create_app(settings, predictor)` in a background thread, with the same
    connection guard as `tailor serve` (`parser`: "auto", "httptools" or "h11")."""

    def __init__(self, predictor: Any, parser: str = "auto", **settings: Any):
        import uvicorn

        from tailorml.serve.app import create_app
        from tailorml.serve.settings import ServeSettings
        from tailorml.serve.wire import limits_of, uvicorn_config

        self.port = free_port()
        self.settings = ServeSettings(
            model=str(predictor.folder), port=self.port, **{"threads": 1, **settings}
        )
        config = uvicorn_config(
            create_app(self.settings, predictor=predictor),
            limits=limits_of(self.settings),
            parser=parser,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class AppServer:
    """Any ASGI app (a `kit.install` result) under uvicorn in a thread on 127.0.0.1, with the
    connection guard."""

    def __init__(self, asgi: Any, **limits: Any):
        import uvicorn

        from tailorml.serve.wire import WireLimits, uvicorn_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn_config(
            asgi, limits=WireLimits(**limits), host="127.0.0.1", port=self.port,
            log_level="warning",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class ProcessServer:
    """`python -m tailorml.cli serve ...` as a child process, output captured in a log file."""

    def __init__(self, folder: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.cmd = [
            sys.executable, "-m", "tailorml.cli", "serve", str(folder),
            "--port", str(self.port), *args,
        ]  # fmt: skip
        self.env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ProcessServer:
        self.fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, stdout=self.fh, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text(errors='replace')}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready: {self.log.read_text(errors='replace')}")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.fh.close()
        return rc

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        return self.log.read_text(errors="replace")
