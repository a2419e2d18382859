"""SIGINT/SIGTERM during training: note the signal; the loop checkpoints at the next step and
exits (code 130), so Ctrl-C or a scheduler's SIGTERM never loses more than one step."""

from __future__ import annotations

import signal
from typing import Any


class StopRequested:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
