"""A progress bar for training: step, loss, lr, samples/s and ETA (main process only)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# soft_wrap: a long path or message stays on one line in logs (rich would cut it at 80 columns).
console = Console(stderr=True, soft_wrap=True)


class TrainProgress:
    def __init__(self, total_steps: int, enabled: bool = True, label: str = "train"):
        self.total = total_steps
        self.label = label
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task: Any = None
        self._t0 = time.perf_counter()
        self._start_step = 0
        self._start_samples = 0
        # Off a terminal (CI logs), print a line every 10% instead of redrawing a bar.
        self._plain = not sys.stderr.isatty()
        self._next_plain = 0

    def start(self, step: int, samples: int = 0) -> None:
        self._start_step, self._start_samples = step, samples
        self._t0 = time.perf_counter()
        if not self.enabled or self._plain:
            return
        self._bar = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=self.total, completed=step, info="")

    def update(self, step: int, loss: float, lr: float, samples: int) -> None:
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = (step - self._start_step) / elapsed
        per_s = (samples - self._start_samples) / elapsed
        # A slow run (a 135M causal LM on CPU: a packed block every few seconds) keeps a decimal.
        info = f"loss {loss:.4f} lr {lr:.2e} {per_s:.{0 if per_s >= 10 else 2}f} samples/s"
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step >= self._next_plain or step == self.total:
            eta = (self.total - step) / max(rate, 1e-9)
            console.print(f"{self.label} step {step}/{self.total} {info} eta {eta:.0f}s")
            self._next_plain = step + max(1, self.total // 10)

    def extend(self, total_steps: int) -> None:
        """The run goes on to `total_steps` (a cool-down after early stopping)."""
        self.total = total_steps
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total_steps)

    def note(self, text: str) -> None:
        if self.enabled:
            console.print(text)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
